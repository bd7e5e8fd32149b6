//! TLS to the Redis nodes (`[backend] tls`, README "Security"): the CA that signs the nodes'
//! certificates, and optionally the proxy's own certificate — presented to nodes run with
//! `tls-auth-clients yes`, and served on the snapshot-serving port, which a node run with
//! `tls-replication yes` reaches over TLS as it would its primary.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::BackendConfig;

/// Why the `[backend]` TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    #[error("[backend] {0} is set but tls is not: set tls = true, or remove it")]
    WithoutTls(&'static str),
    #[error("[backend] tls = true needs ca: the PEM file of the CA that signs the nodes' certificates")]
    NoCa,
    #[error("[backend] cert and key go together: set both or neither")]
    HalfIdentity,
    #[error("[backend] server_name {0:?} is not a DNS name or an IP address")]
    BadServerName(String),
    #[error("[backend] cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("[backend] {0} holds no certificate")]
    NoCertificate(String),
    #[error("[backend] cert {cert} and key {key} cannot be used together: {reason}")]
    Identity { cert: String, key: String, reason: rustls::Error },
    #[error("[backend] TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the proxy needs to reach nodes over TLS, checked at start. The PEM files are
/// reloadable ([`BackendTls::reload`], on SIGHUP): connections opened afterwards — to the nodes
/// and on the snapshot-serving port — use what they hold then, open ones keep theirs.
pub struct BackendTls {
    files: Files,
    /// The name every node's certificate is checked against; each node's host when `None`.
    server_name: Option<ServerName<'static>>,
    configs: ArcSwap<Configs>,
}

/// The paths of `[backend]`'s PEM files.
struct Files {
    ca: String,
    /// The proxy's certificate and key.
    identity: Option<(String, String)>,
}

/// What the files held when last read.
struct Configs {
    client: Arc<rustls::ClientConfig>,
    /// The snapshot-serving port's side: present only with a proxy certificate.
    serving: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .field("certificate", &self.files.identity.is_some())
            .finish()
    }
}

impl BackendTls {
    /// The TLS settings of `[backend]`: `None` when `tls` is off (then no other TLS key may be set).
    pub fn from_config(cfg: &BackendConfig) -> Result<Option<Arc<BackendTls>>, BackendTlsError> {
        if !cfg.tls {
            let stray = [("ca", &cfg.ca), ("cert", &cfg.cert), ("key", &cfg.key), ("server_name", &cfg.server_name)];
            return match stray.into_iter().find(|(_, value)| value.is_some()) {
                Some((name, _)) => Err(BackendTlsError::WithoutTls(name)),
                None => Ok(None),
            };
        }
        let ca = cfg.ca.clone().ok_or(BackendTlsError::NoCa)?;
        let identity = match (&cfg.cert, &cfg.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => return Err(BackendTlsError::HalfIdentity),
        };
        let server_name = match &cfg.server_name {
            Some(name) => {
                Some(ServerName::try_from(name.clone()).map_err(|_| BackendTlsError::BadServerName(name.clone()))?)
            }
            None => None,
        };
        let files = Files { ca, identity };
        let configs = ArcSwap::from_pointee(files.load()?);
        Ok(Some(Arc::new(BackendTls { files, server_name, configs })))
    }

    /// Re-reads the PEM files; on error the ones in use stay (the error names the file).
    pub fn reload(&self) -> Result<(), BackendTlsError> {
        self.configs.store(Arc::new(self.files.load()?));
        Ok(())
    }

    /// A connector for the nodes.
    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.configs.load().client.clone())
    }

    /// The name the certificate of the node at `addr` (`host:port`) must carry: `server_name`
    /// when set, else the node's host (an IP address or a DNS name).
    pub(crate) fn name_for(&self, addr: &str) -> Result<ServerName<'static>, String> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host).trim_matches(['[', ']']);
        match host.parse::<IpAddr>() {
            Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
            Err(_) => ServerName::try_from(host.to_string())
                .map_err(|_| format!("{host:?} is not a name a certificate can carry; set [backend] server_name")),
        }
    }

    /// An acceptor for the snapshot-serving port; `None` without a proxy certificate.
    pub(crate) fn serving_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.configs.load().serving.clone().map(tokio_rustls::TlsAcceptor::from)
    }
}

impl Files {
    fn load(&self) -> Result<Configs, BackendTlsError> {
        let mut roots = RootCertStore::empty();
        for cert in read_certificates(&self.ca)? {
            roots.add(cert).map_err(|e| BackendTlsError::Read { path: self.ca.clone(), reason: e.to_string() })?;
        }
        let roots = Arc::new(roots);
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone());
        let Some((cert, key)) = &self.identity else {
            return Ok(Configs { client: Arc::new(client.with_no_client_auth()), serving: None });
        };
        let chain = read_certificates(cert)?;
        let identity_err = |reason| BackendTlsError::Identity { cert: cert.clone(), key: key.clone(), reason };
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| BackendTlsError::Read { path: key.clone(), reason: e.to_string() })?;
        // A node presents its certificate to the serving port only when it has one configured
        // for it; whatever it presents must be signed by `ca`.
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| BackendTlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let serving = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(identity_err)?;
        let client = client.with_client_auth_cert(chain, key).map_err(identity_err)?;
        Ok(Configs { client: Arc::new(client), serving: Some(Arc::new(serving)) })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, BackendTlsError> {
    let read_err =
        |e: rustls_pki_types::pem::Error| BackendTlsError::Read { path: path.to_string(), reason: e.to_string() };
    let certs =
        CertificateDer::pem_file_iter(path).map_err(read_err)?.collect::<Result<Vec<_>, _>>().map_err(read_err)?;
    if certs.is_empty() {
        return Err(BackendTlsError::NoCertificate(path.to_string()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tls: bool) -> BackendConfig {
        BackendConfig { tls, ..BackendConfig::default() }
    }

    #[test]
    fn settings_are_checked_with_errors_that_name_what_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let ca_path = dir.path().join("ca.pem").display().to_string();
        let key_path = dir.path().join("key.pem").display().to_string();
        let empty_path = dir.path().join("empty.pem").display().to_string();
        std::fs::write(&ca_path, ca.cert.pem()).unwrap();
        std::fs::write(&key_path, ca.key_pair.serialize_pem()).unwrap();
        std::fs::write(&empty_path, "nothing\n").unwrap();
        let err = |cfg: BackendConfig| BackendTls::from_config(&cfg).unwrap_err().to_string();

        assert!(BackendTls::from_config(&cfg(false)).unwrap().is_none());
        let stray = BackendConfig { ca: Some(ca_path.clone()), ..cfg(false) };
        assert_eq!(err(stray), "[backend] ca is set but tls is not: set tls = true, or remove it");
        assert!(err(cfg(true)).contains("tls = true needs ca"));
        let missing = BackendConfig { ca: Some(dir.path().join("nope.pem").display().to_string()), ..cfg(true) };
        assert!(err(missing).contains("nope.pem"));
        let empty = BackendConfig { ca: Some(empty_path.clone()), ..cfg(true) };
        assert!(err(empty).contains("holds no certificate"));
        let half = BackendConfig { ca: Some(ca_path.clone()), cert: Some(ca_path.clone()), ..cfg(true) };
        assert_eq!(err(half), "[backend] cert and key go together: set both or neither");
        let bad_name = BackendConfig { ca: Some(ca_path.clone()), server_name: Some("a b".into()), ..cfg(true) };
        assert!(err(bad_name).contains("server_name \"a b\""));
        let bad_key = BackendConfig {
            ca: Some(ca_path.clone()),
            cert: Some(ca_path.clone()),
            key: Some(empty_path),
            ..cfg(true)
        };
        assert!(err(bad_key).contains("empty.pem"));

        let plain =
            BackendTls::from_config(&BackendConfig { ca: Some(ca_path.clone()), ..cfg(true) }).unwrap().unwrap();
        assert!(plain.serving_acceptor().is_none());
        assert_eq!(plain.name_for("127.0.0.1:7000").unwrap(), ServerName::try_from("127.0.0.1").unwrap());
        assert_eq!(plain.name_for("[::1]:7000").unwrap(), ServerName::try_from("::1").unwrap());
        assert_eq!(plain.name_for("redis-0.local:7000").unwrap(), ServerName::try_from("redis-0.local").unwrap());
        let full = BackendConfig {
            ca: Some(ca_path.clone()),
            cert: Some(ca_path),
            key: Some(key_path),
            server_name: Some("node.memlog".into()),
            ..cfg(true)
        };
        let full = BackendTls::from_config(&full).unwrap().unwrap();
        assert!(full.serving_acceptor().is_some());
        assert_eq!(full.name_for("127.0.0.1:7000").unwrap(), ServerName::try_from("node.memlog").unwrap());
    }

    /// Whether a connection from `connector` to `acceptor` completes its handshake, on both sides.
    async fn handshake(connector: tokio_rustls::TlsConnector, acceptor: tokio_rustls::TlsAcceptor) -> bool {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let both = async { tokio::join!(connector.connect(name, client), acceptor.accept(server)) };
        match tokio::time::timeout(std::time::Duration::from_secs(10), both).await {
            Ok((client, server)) => client.is_ok() && server.is_ok(),
            Err(_) => panic!("the handshake hung"),
        }
    }

    /// The files rewritten in place and reloaded: connectors and acceptors made afterwards use
    /// them (the node side and the snapshot-serving side), ones made before keep the old files,
    /// and files that do not load leave the ones in use, with an error naming the file.
    #[tokio::test]
    async fn reload_swaps_the_files_for_new_connections_and_keeps_them_when_new_ones_do_not_load() {
        use journal_service::cluster_ca::ClusterCa;

        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let (ca, cert, key) = (path("ca.pem"), path("proxy.pem"), path("proxy.key"));
        let install = |authority: &ClusterCa| {
            let issued = authority.issue_for_names(vec!["127.0.0.1".to_string()]).unwrap();
            std::fs::write(&ca, authority.cert_pem()).unwrap();
            std::fs::write(&cert, issued.cert).unwrap();
            std::fs::write(&key, issued.key).unwrap();
        };
        install(&ClusterCa::generate_named("first").unwrap());
        let files =
            BackendConfig { ca: Some(ca.clone()), cert: Some(cert.clone()), key: Some(key.clone()), ..cfg(true) };
        let tls = BackendTls::from_config(&files).unwrap().unwrap();
        let (old_connector, old_acceptor) = (tls.connector(), tls.serving_acceptor().unwrap());
        assert!(handshake(old_connector.clone(), old_acceptor.clone()).await);

        install(&ClusterCa::generate_named("second").unwrap());
        tls.reload().unwrap();
        let (connector, acceptor) = (tls.connector(), tls.serving_acceptor().unwrap());
        assert!(handshake(connector.clone(), acceptor.clone()).await, "the new files do not work together");
        assert!(!handshake(connector.clone(), old_acceptor.clone()).await, "the old CA is still trusted");
        assert!(!handshake(old_connector.clone(), acceptor.clone()).await, "the serving side kept the old CA");
        assert!(handshake(old_connector, old_acceptor.clone()).await, "what was made before the reload changed");

        // Half a rotation (a new certificate, the key still the old one's) is refused too.
        let second_key = std::fs::read_to_string(&key).unwrap();
        install(&ClusterCa::generate_named("third").unwrap());
        std::fs::write(&key, second_key).unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains(cert.as_str()) && err.contains(key.as_str()), "{err}");
        assert!(handshake(tls.connector(), tls.serving_acceptor().unwrap()).await);
        assert!(handshake(tls.connector(), acceptor.clone()).await, "the half rotation was put in use");
        for (file, bad) in [(&key, "not a key\n"), (&ca, "not a certificate\n")] {
            std::fs::write(file, bad).unwrap();
            let err = tls.reload().unwrap_err().to_string();
            assert!(err.contains(file.as_str()), "{err}");
            assert!(handshake(tls.connector(), tls.serving_acceptor().unwrap()).await, "a bad {file} was put in use");
            assert!(!handshake(tls.connector(), old_acceptor.clone()).await, "the first CA came back");
        }
    }
}
