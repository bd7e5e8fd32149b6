//! `memlog up --redis-tls`: TLS between the proxy and the Redis nodes, and between the nodes
//! (replication). A CA of its own — not the cluster CA of the journal nodes, so a journal
//! certificate opens no Redis node and a node certificate no journal node — signs one
//! certificate every Redis node serves and replicates with, and the proxy's (`[backend] cert`,
//! also served on its snapshot-serving port). Generated anew on every start, like the password,
//! into `DIR/redis-tls/` (0700, files 0600); the CA's key lives only in memory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use journal_service::cluster_ca::{ClusterCa, WriteError};
use journal_service::private_fs;
use memlog_proxy::config::BackendConfig;

/// Where the generated files are.
#[derive(Debug, Clone)]
pub struct RedisTlsFiles {
    pub ca: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
}

/// The names every certificate carries: the nodes and the proxy listen on loopback.
const NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// Generates the CA and both certificates into `dir/redis-tls/`, replacing earlier ones.
pub fn generate(dir: &Path) -> Result<RedisTlsFiles, WriteError> {
    let tls_dir = dir.join("redis-tls");
    private_fs::create_dir_all(&tls_dir).map_err(|e| WriteError::Io(tls_dir.clone(), e))?;
    let files = RedisTlsFiles {
        ca: tls_dir.join("ca.pem"),
        node_cert: tls_dir.join("node.pem"),
        node_key: tls_dir.join("node.key"),
        proxy_cert: tls_dir.join("proxy.pem"),
        proxy_key: tls_dir.join("proxy.key"),
    };
    let ca = ClusterCa::generate_named("memlog Redis nodes CA")?;
    let names = || NAMES.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let (node, proxy) = (ca.issue_for_names(names())?, ca.issue_for_names(names())?);
    for (path, text) in [
        (&files.ca, ca.cert_pem()),
        (&files.node_cert, node.cert),
        (&files.node_key, node.key),
        (&files.proxy_cert, proxy.cert),
        (&files.proxy_key, proxy.key),
    ] {
        private_fs::write(path, text).map_err(|e| WriteError::Io(path.clone(), e))?;
    }
    Ok(files)
}

impl RedisTlsFiles {
    /// `redis-server` flags for a node that accepts only TLS on `port` (`--port 0`), wants a
    /// client certificate of the CA (`tls-auth-clients` defaults to yes), and replicates over TLS.
    pub fn node_args(&self, port: u16) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--port".into(), "0".into(), "--tls-port".into(), port.to_string().into()];
        for (flag, path) in
            [("--tls-cert-file", &self.node_cert), ("--tls-key-file", &self.node_key), ("--tls-ca-cert-file", &self.ca)]
        {
            args.extend([flag.into(), path.into()]);
        }
        args.extend(["--tls-replication".into(), "yes".into()]);
        args
    }

    /// Sets `[backend]`'s TLS keys to these files.
    pub fn configure(&self, backend: &mut BackendConfig) {
        let show = |p: &PathBuf| Some(p.display().to_string());
        backend.tls = true;
        backend.ca = show(&self.ca);
        backend.cert = show(&self.proxy_cert);
        backend.key = show(&self.proxy_key);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use memlog_proxy::NodeAccess;

    use super::*;

    #[test]
    fn files_are_private_and_the_proxy_loads_them_as_its_backend_tls() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("redis-tls")), 0o700);
        for path in [&files.ca, &files.node_cert, &files.node_key, &files.proxy_cert, &files.proxy_key] {
            assert_eq!(mode(path), 0o600, "{}", path.display());
        }
        let mut backend = BackendConfig::default();
        files.configure(&mut backend);
        let access = NodeAccess::from_config(&backend).unwrap();
        assert!(access.tls.is_some());
        let args: Vec<String> = files.node_args(7000).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args[..4], ["--port", "0", "--tls-port", "7000"]);
        assert_eq!(args[args.len() - 2..], ["--tls-replication", "yes"]);
    }
}
