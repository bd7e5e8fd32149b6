//! Which cluster an operator command (`memlog status`, `memlog failover`) talks to, and how:
//! a local one that `memlog up --dir DIR` runs (its `cluster.json` and generated `proxy.toml`),
//! a deployed one described by the proxy's TOML (`--config`), or just a proxy's address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use memlog_proxy::config::ProxyConfig;
use memlog_proxy::NodeAccess;

use crate::admin_tls::{AdminTls, AdminTlsError, TlsArgs};
use crate::cluster_file::ClusterFile;
use crate::probe::{self, ProbeError, Reply, Session};

/// The credentials flags of the operator commands. The password comes from a file or the
/// environment: a command line is visible to every user of the machine.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// User to AUTH as with the proxy; default: the user `memlog up --user` created (with
    /// --dir), else the first user of the proxy's config with a `password` (none without).
    #[arg(long, env = "MEMLOG_USER")]
    pub user: Option<String>,
    /// A file whose first line is --user's password.
    #[arg(long, value_name = "FILE", conflicts_with = "password")]
    pub password_file: Option<PathBuf>,
    /// --user's password, best given in the environment (MEMLOG_PASSWORD) or --password-file.
    #[arg(long, env = "MEMLOG_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

impl AuthArgs {
    /// The credentials the flags and the environment give, if any.
    pub fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        let password = match (&self.password_file, &self.password) {
            (Some(file), _) => Some(read_password_file(file)?),
            (None, password) => password.clone(),
        };
        match (&self.user, password) {
            (Some(user), Some(password)) => Ok(Some(Credentials { user: user.clone(), password })),
            (None, None) => Ok(None),
            (Some(user), None) => {
                anyhow::bail!("--user {user} needs a password: --password-file FILE or MEMLOG_PASSWORD")
            }
            (None, Some(_)) => anyhow::bail!("a password is given (--password-file, MEMLOG_PASSWORD) but no --user"),
        }
    }
}

/// The first line of `path`, which must not be empty.
pub fn read_password_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or_default();
    anyhow::ensure!(!password.is_empty(), "{} holds no password on its first line", path.display());
    Ok(password.to_string())
}

/// A user and password to `AUTH` with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// Why an admin session with the proxy could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "TLS handshake with the proxy at {addr} failed: {source} (its certificate was checked against the CA in \
         {ca}; another CA: --tls-ca FILE or MEMLOG_TLS_CA)"
    )]
    TlsHandshake { addr: String, ca: String, source: std::io::Error },
    #[error("cannot reach the proxy at {addr}: {source}")]
    Unreachable { addr: String, source: ProbeError },
    #[error("the proxy at {addr} refused AUTH as {user}: {message}")]
    AuthRefused { addr: String, user: String, message: String },
}

/// What is known about the cluster an operator command is pointed at.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The proxy's client endpoint, `host:port`.
    pub proxy: String,
    /// Set for a cluster that `memlog up` runs: what it started, with pids.
    pub cluster: Option<ClusterFile>,
    /// The proxy's configuration (shards, journal, metadata store), when known.
    pub config: Option<ProxyConfig>,
    /// What to `AUTH` with before admin commands.
    pub credentials: Option<Credentials>,
    /// How the proxy reaches the Redis nodes (`[backend]`: TLS, credentials), for probing them.
    pub backend: NodeAccess,
    /// TLS with the proxy, when it serves TLS.
    pub tls: Option<AdminTls>,
}

impl Deployment {
    /// The cluster `memlog up --dir DIR` runs: `DIR/cluster.json` and `DIR/proxy.toml`; admin
    /// commands authenticate as the user of `memlog up --user`, if it made one.
    pub fn from_dir(dir: &Path, tls: &TlsArgs) -> anyhow::Result<Deployment> {
        let cluster = ClusterFile::read(dir)?;
        let mut deployment = Deployment::from_config(&dir.join("proxy.toml"), tls)?;
        if let Some(admin) = &cluster.admin {
            let password = read_password_file(&admin.password_file)
                .map_err(|e| anyhow::anyhow!("the password of {} (memlog up --user): {e:#}", admin.user))?;
            deployment.credentials = Some(Credentials { user: admin.user.clone(), password });
        }
        deployment.cluster = Some(cluster);
        Ok(deployment)
    }

    /// A deployed cluster, from its proxy's TOML (with `MEMLOG_…` overrides, as the proxy reads it).
    /// Admin commands authenticate as the first configured user with a `password`, if there is one,
    /// over TLS when the config has `[tls]`.
    pub fn from_config(path: &Path, tls: &TlsArgs) -> anyhow::Result<Deployment> {
        let config = ProxyConfig::load(Some(path))
            .map_err(|e| anyhow::anyhow!("cannot read the proxy config {}: {e:#}", path.display()))?;
        let credentials =
            config.users.iter().find_map(|u| Some(Credentials { user: u.name.clone(), password: u.password.clone()? }));
        let backend = NodeAccess::from_config(&config.backend)?;
        let deployment = Deployment {
            proxy: client_endpoint(&config),
            cluster: None,
            config: Some(config),
            credentials,
            backend,
            tls: None,
        };
        Ok(deployment.with_tls(tls)?)
    }

    /// Only a proxy's address: what it reports is all there is to know.
    pub fn from_proxy(addr: &str) -> Deployment {
        Deployment {
            proxy: addr.to_string(),
            cluster: None,
            config: None,
            credentials: None,
            backend: NodeAccess::default(),
            tls: None,
        }
    }

    /// Sets TLS with the proxy as its config says (`[tls]`), else as the flags say.
    pub fn with_tls(mut self, args: &TlsArgs) -> Result<Deployment, AdminTlsError> {
        self.tls = AdminTls::resolve(args, self.config.as_ref(), &self.proxy)?;
        Ok(self)
    }

    /// Replaces the credentials (`--user`/`--password` on the command line win over the config).
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Deployment {
        if credentials.is_some() {
            self.credentials = credentials;
        }
        self
    }

    /// The pid `memlog up` recorded for the process listening on `addr`, if it started one there.
    pub fn pid_of(&self, addr: &str) -> Option<u32> {
        let cluster = self.cluster.as_ref()?;
        let addr: SocketAddr = addr.parse().ok()?;
        if !addr.ip().is_loopback() {
            return None;
        }
        cluster.processes.iter().find(|p| p.port == addr.port()).map(|p| p.pid)
    }

    /// A connection to the proxy, authenticated if there are credentials; each call on it may
    /// take up to `timeout`.
    pub async fn admin_session(&self, timeout: Duration) -> Result<Session, SessionError> {
        let unreachable = |source| SessionError::Unreachable { addr: self.proxy.clone(), source };
        let mut session = match &self.tls {
            None => Session::connect(self.proxy.as_str(), timeout).await.map_err(unreachable)?,
            Some(tls) => {
                let tcp = probe::tcp_connect(self.proxy.as_str(), timeout).await.map_err(unreachable)?;
                let stream = tokio::time::timeout(timeout, tls.handshake(tcp))
                    .await
                    .map_err(|_| unreachable(ProbeError::Timeout(timeout)))?
                    .map_err(|source| SessionError::TlsHandshake {
                        addr: self.proxy.clone(),
                        ca: tls.ca().display().to_string(),
                        source,
                    })?;
                Session::over(self.proxy.as_str(), Box::new(stream), timeout)
            }
        };
        if let Some(credentials) = &self.credentials {
            match session.call(&["AUTH", &credentials.user, &credentials.password]).await.map_err(unreachable)? {
                Reply::Simple(_) => {}
                other => {
                    return Err(SessionError::AuthRefused {
                        addr: self.proxy.clone(),
                        user: credentials.user.clone(),
                        message: reply_text(&other),
                    })
                }
            }
        }
        Ok(session)
    }
}

/// A reply as text for messages.
pub fn reply_text(reply: &Reply) -> String {
    match reply {
        Reply::Simple(s) | Reply::Error(s) => s.clone(),
        Reply::Integer(i) => i.to_string(),
        Reply::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Reply::Bulk(None) => "(nil)".into(),
    }
}

/// Where a client on this machine reaches the proxy: its announced address, else its listen
/// address with a wildcard IP (`0.0.0.0`, `::`) replaced by loopback.
fn client_endpoint(config: &ProxyConfig) -> String {
    if let Some(announce) = &config.announce {
        return announce.clone();
    }
    match config.listen.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            let ip = match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(ip, addr.port()).to_string()
        }
        _ => config.listen.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memlog_proxy::config::UserConfig;

    #[test]
    fn the_endpoint_is_the_announced_or_a_reachable_listen_address() {
        let mut config = ProxyConfig { listen: "0.0.0.0:6390".into(), ..ProxyConfig::default() };
        assert_eq!(client_endpoint(&config), "127.0.0.1:6390");
        config.listen = "[::]:6390".into();
        assert_eq!(client_endpoint(&config), "[::1]:6390");
        config.listen = "10.0.0.5:6390".into();
        assert_eq!(client_endpoint(&config), "10.0.0.5:6390");
        config.announce = Some("proxy.example:6390".into());
        assert_eq!(client_endpoint(&config), "proxy.example:6390");
    }

    #[test]
    fn credentials_come_from_a_file_or_the_password_and_need_both_halves() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\nsecond line\n").unwrap();
        let args = |user: Option<&str>, password_file: Option<&Path>, password: Option<&str>| AuthArgs {
            user: user.map(str::to_string),
            password_file: password_file.map(Path::to_path_buf),
            password: password.map(str::to_string),
        };
        let credentials =
            |user: &str, password: &str| Some(Credentials { user: user.into(), password: password.into() });
        assert_eq!(args(Some("ops"), Some(&file), None).credentials().unwrap(), credentials("ops", "from-file"));
        assert_eq!(args(Some("ops"), None, Some("env")).credentials().unwrap(), credentials("ops", "env"));
        assert_eq!(args(None, None, None).credentials().unwrap(), None);
        let refused = |a: AuthArgs| a.credentials().unwrap_err().to_string();
        assert!(refused(args(Some("ops"), None, None)).contains("needs a password"));
        assert!(refused(args(None, None, Some("env"))).contains("no --user"));
        assert!(refused(args(Some("ops"), Some(&dir.path().join("missing")), None)).contains("cannot read"));
        std::fs::write(&file, "").unwrap();
        assert!(refused(args(Some("ops"), Some(&file), None)).contains("holds no password"));
    }

    #[test]
    fn a_config_with_users_authenticates_as_the_first_unless_told_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let config = ProxyConfig {
            users: vec![
                UserConfig { name: "reader".into(), password: None, rules: Some("on >p +@read".into()) },
                UserConfig::with_password("ops", "s3cret"),
                UserConfig::with_password("app", "x"),
            ],
            shards: vec![memlog_proxy::config::ShardConfig {
                slots: "0-16383".into(),
                primary: "127.0.0.1:7000".into(),
                replicas: vec![],
            }],
            ..ProxyConfig::default()
        };
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let deployment = Deployment::from_config(&path, &TlsArgs::default()).unwrap();
        assert_eq!(deployment.proxy, "127.0.0.1:6380");
        assert_eq!(deployment.credentials, Some(Credentials { user: "ops".into(), password: "s3cret".into() }));
        let other = Some(Credentials { user: "app".into(), password: "x".into() });
        assert_eq!(deployment.clone().with_credentials(other.clone()).credentials, other);
        assert_eq!(deployment.with_credentials(None).credentials.unwrap().user, "ops");
    }
}
