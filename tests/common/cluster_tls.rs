//! The cluster identity of the tests: one CA with a journal and a proxy certificate, generated
//! once per test binary (journal nodes refuse to start without one).

use std::path::PathBuf;
use std::sync::OnceLock;

use journal_service::cluster_ca::{ClusterCa, ClusterFiles};
use journal_service::cluster_tls::{Role, TlsFiles, Transport};

/// The files, in a directory under cargo's target tmp dir that lives as long as the process.
pub fn files() -> &'static ClusterFiles {
    static FILES: OnceLock<ClusterFiles> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir: PathBuf = tempfile::Builder::new()
            .prefix("cluster-tls-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("a temp dir for the cluster certificates")
            .keep();
        ClusterCa::generate().expect("a cluster CA").write(&dir).expect("the cluster certificates written")
    })
}

/// `memlog journal` flags for a node with the journal certificate.
pub fn journal_args() -> Vec<String> {
    tls_args(&files().journal)
}

/// `--cluster-ca/--cluster-cert/--cluster-key` for `files`.
pub fn tls_args(files: &TlsFiles) -> Vec<String> {
    let path = |p: &PathBuf| p.display().to_string();
    vec![
        "--cluster-ca".into(),
        path(&files.ca),
        "--cluster-cert".into(),
        path(&files.cert),
        "--cluster-key".into(),
        path(&files.key),
    ]
}

/// How a test acting as a proxy reaches the nodes.
pub fn proxy_transport() -> Transport {
    Transport::from_files(Some(&files().proxy), Role::Proxy).expect("the proxy identity loads")
}

/// The `[cluster_tls]` table of a proxy configuration.
pub fn proxy_toml() -> String {
    let proxy = &files().proxy;
    format!(
        "[cluster_tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        proxy.ca.display(),
        proxy.cert.display(),
        proxy.key.display()
    )
}

/// A blocking TLS connection to a journal node presenting `files`' certificate (checked by
/// nothing on this side but the node's), for tests that send raw frames.
pub fn raw_connect(
    addr: std::net::SocketAddr,
    files: &TlsFiles,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&files.ca).map_err(std::io::Error::other)?)
        .map_err(std::io::Error::other)?;
    let chain = vec![CertificateDer::from_pem_file(&files.cert).map_err(std::io::Error::other)?];
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(std::io::Error::other)?;
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(std::io::Error::other)?;
    let name = ServerName::try_from(Role::Journal.dns_name()).expect("a DNS name");
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(std::io::Error::other)?;
    let socket = std::net::TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    Ok(rustls::StreamOwned::new(connection, socket))
}
