//! Mutual TLS between the members of a cluster (docs/cluster-tls.md): every journal-node
//! connection is TLS 1.2+ with a certificate on both sides, signed by the cluster CA.
//!
//! A certificate says what its holder is by a DNS name in its subjectAltName under
//! [`ROLE_DOMAIN`]: `proxy.role.memlog` for a proxy, `journal.role.memlog` for a journal node.
//! A DNS name (not a URI) because rustls' own verifier (webpki) checks DNS names with its
//! tested matching and name-constraint code; the names are not resolvable and never need to be.
//! A client checks that the node it reached holds the journal role; a node checks the client's
//! chain during the handshake and refuses any certificate that carries no role, so a peer
//! without one never gets a request read. What each role may do is decided per request
//! (see `node.rs`).
//!
//! The certificates are reloadable: [`ServerTls::reload`] and [`ClientTls::reload`] swap in
//! what the files hold now; connections made afterwards use it, open ones keep theirs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

pub use crate::sighup::Reloaded;

/// The buffer under a member connection's TLS: an append or two, or a page of entries read
/// back, as they arrive.
const READ_BUFFER: usize = 64 * 1024;

/// `socket` read through a buffer, to put under TLS. rustls reads the socket 4 KiB at a time
/// (rustls 0.23, `msgs/deframer/buffers.rs`, `READ_SIZE`): an entry of a few KiB would take a
/// syscall per 4 KiB, where the buffer takes what arrived in one. It is taken before the
/// handshake, so a node's connections (`max_connections`, 1024 by default) hold 64 MiB at most.
pub(crate) fn buffered(socket: tokio::net::TcpStream) -> tokio::io::BufReader<tokio::net::TcpStream> {
    tokio::io::BufReader::with_capacity(READ_BUFFER, socket)
}

/// The DNS suffix under which certificates carry their role.
pub const ROLE_DOMAIN: &str = "role.memlog";

/// What the holder of a cluster certificate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A proxy: owns shard streams (append, fence, truncate) and reads them.
    Proxy,
    /// A journal node: serves streams; as a client it may only read.
    Journal,
}

impl Role {
    /// The subjectAltName DNS name a certificate of this role carries.
    pub fn dns_name(self) -> &'static str {
        match self {
            Role::Proxy => "proxy.role.memlog",
            Role::Journal => "journal.role.memlog",
        }
    }

    /// The role `cert` carries, if it names exactly one (the chain is checked elsewhere).
    pub fn of(cert: &CertificateDer<'_>) -> Option<Role> {
        let cert = webpki::EndEntityCert::try_from(cert).ok()?;
        let holds = |role: Role| {
            let name = ServerName::try_from(role.dns_name()).expect("a valid DNS name");
            cert.verify_is_valid_for_subject_name(&name).is_ok()
        };
        match (holds(Role::Proxy), holds(Role::Journal)) {
            (true, false) => Some(Role::Proxy),
            (false, true) => Some(Role::Journal),
            _ => None,
        }
    }
}

/// The PEM files of a member's cluster identity: `[cluster_tls]` in a configuration,
/// `--cluster-ca/--cluster-cert/--cluster-key` on the command line.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate that every member's certificate must be signed by.
    pub ca: PathBuf,
    /// This member's certificate chain (leaf first).
    pub cert: PathBuf,
    /// This member's private key.
    pub key: PathBuf,
}

/// Why a cluster identity cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("{path} carries no memlog role (a subjectAltName DNS name *.{ROLE_DOMAIN}), or more than one")]
    NoRole { path: PathBuf },
    #[error("{path} is a {found:?} certificate; this process needs a {wanted:?} one")]
    WrongRole { path: PathBuf, found: Role, wanted: Role },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// What the files of a `TlsFiles` hold, checked: roots, chain and key, of the wanted role.
struct Identity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    fn load(files: &TlsFiles, wanted: Role) -> Result<Identity, TlsError> {
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: rustls_pki_types::pem::Error| TlsError::Read { path, reason: e.to_string() }
        };
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&files.ca).map_err(read_err(&files.ca))? {
            roots.add(ca.map_err(read_err(&files.ca))?)?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCertificate(files.ca.clone()));
        }
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .map_err(read_err(&files.cert))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_err(&files.cert))?;
        let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate(files.cert.clone()))?;
        match Role::of(leaf) {
            None => return Err(TlsError::NoRole { path: files.cert.clone() }),
            Some(found) if found != wanted => {
                return Err(TlsError::WrongRole { path: files.cert.clone(), found, wanted })
            }
            Some(_) => {}
        }
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(read_err(&files.key))?;
        Ok(Identity { roots: Arc::new(roots), chain, key })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A journal node's side: its journal certificate, and clients checked against the cluster CA.
pub struct ServerTls {
    files: TlsFiles,
    config: ArcSwap<rustls::ServerConfig>,
}

impl ServerTls {
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let config = ArcSwap::from_pointee(Self::build(&files)?);
        Ok(ServerTls { files, config })
    }

    fn build(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
        let identity = Identity::load(files, Role::Journal)?;
        let webpki = WebPkiClientVerifier::builder_with_provider(identity.roots, provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let verifier = Arc::new(RoleVerifier { inner: webpki });
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain, identity.key)?)
    }

    /// Re-reads the files; on error the certificates in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.config.store(Arc::new(Self::build(&self.files)?));
        Ok(())
    }

    /// An acceptor with the certificates loaded last.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}

/// A client's side (a proxy, or any tool acting as one): its certificate, and the node's
/// checked against the cluster CA and the journal role.
pub struct ClientTls {
    files: TlsFiles,
    role: Role,
    config: ArcSwap<rustls::ClientConfig>,
}

impl ClientTls {
    /// Loads the files, which must hold a certificate of `role`.
    pub fn load(files: TlsFiles, role: Role) -> Result<ClientTls, TlsError> {
        let config = ArcSwap::from_pointee(Self::build(&files, role)?);
        Ok(ClientTls { files, role, config })
    }

    fn build(files: &TlsFiles, role: Role) -> Result<rustls::ClientConfig, TlsError> {
        let identity = Identity::load(files, role)?;
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(identity.roots)
            .with_client_auth_cert(identity.chain, identity.key)?)
    }

    /// Re-reads the files; on error the certificates in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.config.store(Arc::new(Self::build(&self.files, self.role)?));
        Ok(())
    }

    /// A connector with the certificates loaded last.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.load_full())
    }

    /// The name every journal node's certificate must carry.
    pub fn node_name() -> ServerName<'static> {
        ServerName::try_from(Role::Journal.dns_name()).expect("a valid DNS name")
    }
}

/// How a client reaches journal nodes: mutual TLS, or plain TCP to a node started with
/// `--insecure-no-tls`.
#[derive(Clone, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls(Arc<ClientTls>),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Plain => f.write_str("Plain"),
            Transport::Tls(tls) => write!(f, "Tls({})", tls.files.cert.display()),
        }
    }
}

impl Transport {
    /// TLS with the files given, plain TCP without (the node must then run `--insecure-no-tls`).
    pub fn from_files(files: Option<&TlsFiles>, role: Role) -> Result<Transport, TlsError> {
        match files {
            Some(files) => Ok(Transport::Tls(Arc::new(ClientTls::load(files.clone(), role)?))),
            None => Ok(Transport::Plain),
        }
    }

    /// Re-reads the certificate files, if any.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        match self {
            Transport::Plain => Ok(Reloaded::NothingConfigured),
            Transport::Tls(tls) => tls.reload().map(|()| Reloaded::Certificates),
        }
    }
}

/// The cluster certificates' SIGHUP hook ([`crate::sighup::reload_on_sighup`]); installed
/// whether or not the process has certificates, so a rotation's SIGHUP stops no member.
pub fn reload_on_sighup(reload: impl Fn() -> Result<Reloaded, TlsError> + Send + 'static) -> std::io::Result<()> {
    crate::sighup::reload_on_sighup("cluster certificates", reload)
}

/// The cluster CA's chain check, plus: the client certificate carries a role. A certificate
/// of the right CA without a role (e.g. one issued for something else) fails the handshake.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for RoleVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match Role::of(end_entity) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(rustls::Error::General(format!("the client certificate carries no *.{ROLE_DOMAIN} role"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
