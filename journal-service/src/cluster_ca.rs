//! A cluster CA and the role certificates it issues (docs/cluster-tls.md), with rcgen: what
//! `memlog up` generates into its `--dir`, and what tests use. Deployments may bring their own
//! CA instead; only the role names of `cluster_tls` matter.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

use crate::cluster_tls::{Role, TlsFiles};
use crate::private_fs;

/// A CA that signs cluster certificates; its key lives only in memory.
pub struct ClusterCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, PEM.
pub struct IssuedPem {
    pub cert: String,
    pub key: String,
}

/// The identity files of each role, sharing one CA file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFiles {
    pub journal: TlsFiles,
    pub proxy: TlsFiles,
}

impl ClusterFiles {
    /// Where `write` puts them in `dir`.
    pub fn in_dir(dir: &Path) -> ClusterFiles {
        let files = |role: &str| TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{role}.pem")),
            key: dir.join(format!("{role}.key")),
        };
        ClusterFiles { journal: files("journal"), proxy: files("proxy") }
    }

    fn paths(&self) -> [&PathBuf; 5] {
        [&self.journal.ca, &self.journal.cert, &self.journal.key, &self.proxy.cert, &self.proxy.key]
    }

    /// True when every file exists.
    pub fn complete(&self) -> bool {
        self.paths().iter().all(|p| p.exists())
    }
}

impl ClusterCa {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<ClusterCa, rcgen::Error> {
        ClusterCa::generate_named("memlog cluster CA")
    }

    /// A new CA with a fresh key and `common_name` as its subject (another CA than the cluster's,
    /// e.g. the Redis nodes' of `memlog up --redis-tls`).
    pub fn generate_named(common_name: &str) -> Result<ClusterCa, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa { cert, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate of `role`, usable as a TLS client and server.
    pub fn issue(&self, role: Role) -> Result<IssuedPem, rcgen::Error> {
        self.issue_for_names(vec![role.dns_name().to_string()])
    }

    /// A certificate for arbitrary subjectAltName DNS names (a role's, or none of them).
    pub fn issue_for_names(&self, names: Vec<String>) -> Result<IssuedPem, rcgen::Error> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, "memlog cluster member");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(IssuedPem { cert: cert.pem(), key: key.serialize_pem() })
    }

    /// Writes the CA certificate and a journal and a proxy identity into `dir` (0700; files
    /// 0600), and returns where.
    pub fn write(&self, dir: &Path) -> Result<ClusterFiles, WriteError> {
        private_fs::create_dir_all(dir).map_err(|e| WriteError::Io(dir.to_path_buf(), e))?;
        let files = ClusterFiles::in_dir(dir);
        let write = |path: &Path, text: &str| private_fs::write(path, text).map_err(|e| WriteError::Io(path.into(), e));
        write(&files.journal.ca, &self.cert_pem())?;
        for (role, identity) in [(Role::Journal, &files.journal), (Role::Proxy, &files.proxy)] {
            let issued = self.issue(role)?;
            write(&identity.cert, &issued.cert)?;
            write(&identity.key, &issued.key)?;
        }
        Ok(files)
    }
}

/// Why a cluster identity could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::cluster_tls::{ClientTls, ServerTls};

    #[test]
    fn written_identities_load_with_their_roles_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let files = ClusterCa::generate().unwrap().write(&dir.path().join("tls")).unwrap();
        assert!(files.complete());
        for path in files.paths() {
            assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600, "{}", path.display());
        }
        ServerTls::load(files.journal.clone()).unwrap();
        ClientTls::load(files.proxy.clone(), Role::Proxy).unwrap();
        // A proxy certificate cannot serve as a journal node's, nor the other way round.
        assert!(ServerTls::load(files.proxy.clone()).is_err());
        assert!(ClientTls::load(files.journal.clone(), Role::Proxy).is_err());
    }
}
