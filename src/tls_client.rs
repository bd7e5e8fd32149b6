//! TLS for the binary's own client connections — `memlog import` to a `rediss://` Redis,
//! `memlog status`/`failover` to a proxy that serves TLS: the CA that signed the server's
//! certificate and, for a server that asks for one, a client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};

/// A connection, plain or TLS, behind one type.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why a CA, certificate or key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
}

/// A client certificate and its key, both PEM files.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// A client configuration trusting only the certificates in the PEM file `ca`, presenting
/// `identity` when the server asks for a certificate.
pub fn client_config(ca: &Path, identity: Option<Identity<'_>>) -> Result<Arc<rustls::ClientConfig>, TlsFileError> {
    let bad = |path: &Path| {
        let path = path.to_path_buf();
        move |reason: String| TlsFileError::Pem { path, reason }
    };
    let pem = std::fs::read(ca).map_err(|source| TlsFileError::File { path: ca.to_path_buf(), source })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.map_err(|e| bad(ca)(e.to_string()))?).map_err(|e| bad(ca)(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad(ca)("no PEM certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(ca)(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(Identity { cert, key }) => {
            let pem = std::fs::read(cert).map_err(|source| TlsFileError::File { path: cert.to_path_buf(), source })?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert)(e.to_string()))?;
            if chain.is_empty() {
                return Err(bad(cert)("no PEM certificate in it".into()));
            }
            let pem = std::fs::read(key).map_err(|source| TlsFileError::File { path: key.to_path_buf(), source })?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(key)(e.to_string()))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| bad(key)(e.to_string()))?
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_certificates_or_keys_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(&empty, None).unwrap_err().to_string();
        assert!(err.contains("empty.pem") && err.contains("no PEM certificate"), "{err}");
        let err = client_config(&dir.path().join("missing.pem"), None).unwrap_err().to_string();
        assert!(err.starts_with("cannot read ") && err.contains("missing.pem"), "{err}");

        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).unwrap();
        assert!(client_config(&ca_path, None).is_ok());
        let identity = Identity { cert: &ca_path, key: &empty };
        let err = client_config(&ca_path, Some(identity)).unwrap_err().to_string();
        assert!(err.contains("empty.pem"), "a key file without a key: {err}");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, ca.key_pair.serialize_pem()).unwrap();
        assert!(client_config(&ca_path, Some(Identity { cert: &ca_path, key: &key_path })).is_ok());
    }
}
