//! Redis nodes that accept only TLS (`[backend] tls`): a CA of the nodes (not the cluster CA
//! of the journal) with a certificate for the nodes and one for the proxy, generated once per
//! test binary; which nodes were started with TLS, so [`super::cluster::redis_conn`] reaches
//! each as it must (ports are never handed out twice in a process).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use journal_service::cluster_ca::ClusterCa;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::resp::Conn;

/// The PEM files.
pub struct Files {
    pub ca: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
}

/// The files, in a directory under cargo's target tmp dir that lives as long as the process.
pub fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("redis-tls-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("a temp dir for the Redis certificates")
            .keep();
        let files = Files {
            ca: dir.join("ca.pem"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node.key"),
            proxy_cert: dir.join("proxy.pem"),
            proxy_key: dir.join("proxy.key"),
        };
        let ca = ClusterCa::generate_named("test Redis nodes CA").expect("a CA");
        let names = || vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (node, proxy) = (ca.issue_for_names(names()).unwrap(), ca.issue_for_names(names()).unwrap());
        std::fs::write(&files.ca, ca.cert_pem()).unwrap();
        std::fs::write(&files.node_cert, node.cert).unwrap();
        std::fs::write(&files.node_key, node.key).unwrap();
        std::fs::write(&files.proxy_cert, proxy.cert).unwrap();
        std::fs::write(&files.proxy_key, proxy.key).unwrap();
        files
    })
}

fn tls_ports() -> &'static Mutex<BTreeSet<u16>> {
    static PORTS: OnceLock<Mutex<BTreeSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(Mutex::default)
}

/// `redis-server` flags for a node on `port` that accepts only TLS, wants a client certificate
/// of the CA and replicates over TLS; remembers the port as a TLS node's.
pub fn node_args(cmd: &mut Command, port: u16) {
    let f = files();
    cmd.args(["--port", "0", "--tls-port", &port.to_string(), "--tls-replication", "yes"]);
    cmd.arg("--tls-cert-file").arg(&f.node_cert).arg("--tls-key-file").arg(&f.node_key);
    cmd.arg("--tls-ca-cert-file").arg(&f.ca);
    tls_ports().lock().unwrap().insert(port);
}

/// Whether the node on `addr` was started with [`node_args`].
pub fn is_tls_node(addr: SocketAddr) -> bool {
    tls_ports().lock().unwrap().contains(&addr.port())
}

/// The TLS keys of the proxy's `[backend]` table.
pub fn backend_toml() -> String {
    let f = files();
    format!(
        "tls = true\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        f.ca.display(),
        f.proxy_cert.display(),
        f.proxy_key.display()
    )
}

/// A client configuration trusting `ca`, presenting `identity` (certificate and key PEM files).
pub fn client_config(ca: &PathBuf, identity: Option<(&PathBuf, &PathBuf)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    })
}

/// A client configuration of the proxy's identity, as the nodes want it.
pub fn proxy_client_config() -> Arc<rustls::ClientConfig> {
    let f = files();
    client_config(&f.ca, Some((&f.proxy_cert, &f.proxy_key)))
}

/// A connection to `addr` with TLS checked by `config` (the node's certificate against
/// [`node_name`]); the handshake is done here, so a refused one is this call's error.
pub fn connect(addr: SocketAddr, timeout: Duration, config: Arc<rustls::ClientConfig>) -> std::io::Result<Conn> {
    let tls = rustls::ClientConnection::new(config, node_name()).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(tls, super::resp::tcp(addr, timeout)?);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(Conn::over(stream))
}

/// The name a node's certificate carries.
pub fn node_name() -> ServerName<'static> {
    ServerName::try_from("127.0.0.1").unwrap()
}

/// Peers without a certificate of the nodes' CA try `SET intruder` on the node at `addr`: in
/// plain TCP, over TLS without a client certificate, and over TLS with a certificate of another
/// CA. Each must get no reply at all (the caller checks the node is unchanged).
pub fn assert_refuses_peers_without_the_ca(addr: SocketAddr) {
    let timeout = Duration::from_secs(5);
    let set = ["SET", "intruder", "x"];
    let plain = Conn::connect(addr, timeout).and_then(|mut c| c.cmd(&set));
    assert!(plain.is_err(), "a plain TCP peer got {plain:?}");

    let f = files();
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = ClusterCa::generate_named("another CA").unwrap();
    let issued = other_ca.issue_for_names(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (other_dir.path().join("other.pem"), other_dir.path().join("other.key"));
    std::fs::write(&cert, issued.cert).unwrap();
    std::fs::write(&key, issued.key).unwrap();
    for (what, config) in [
        ("a TLS peer without a certificate", client_config(&f.ca, None)),
        ("a TLS peer with a certificate of another CA", client_config(&f.ca, Some((&cert, &key)))),
    ] {
        let reply = connect(addr, timeout, config).and_then(|mut c| c.cmd(&set));
        assert!(reply.is_err(), "{what} got {reply:?}");
    }
}
