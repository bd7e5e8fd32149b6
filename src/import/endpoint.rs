//! Where `memlog import` connects: a `redis://` or `rediss://` URL with an optional user, the
//! password from a file or an environment variable (never the command line, where `ps` shows
//! it), and for TLS the CA to trust and the client certificate, for a server that asks for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::ServerName;

use crate::tls_client::{client_config, Identity, TlsFileError};

/// A parsed endpoint, ready to connect to (itself, or to other nodes of its cluster).
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{url}: not a redis:// or rediss:// URL with host:port")]
    Syntax { url: String },
    #[error(
        "{url}: a password in the URL would show in the process list; give it with {file_flag} or the {env} \
         environment variable"
    )]
    PasswordInUrl { url: String, file_flag: &'static str, env: &'static str },
    #[error("{url}: only database 0 can be imported (memlog serves database 0, as Redis Cluster does)")]
    Database { url: String },
    #[error("{url} is TLS (rediss://): give the CA that signed its certificate with {flag}")]
    NoCa { url: String, flag: &'static str },
    #[error("{flag} is a TLS client certificate, and {url} is not TLS: use rediss://")]
    CertWithoutTls { url: String, flag: &'static str },
    #[error("cannot read {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsFileError),
}

/// The command-line names of one endpoint's password and CA options, for the messages.
pub struct Flags {
    pub password_file: &'static str,
    pub password_env: &'static str,
    pub ca: &'static str,
    pub cert: &'static str,
}

impl Endpoint {
    pub fn parse(
        url: &str,
        password_file: Option<&Path>,
        password_env: Option<String>,
        ca: Option<&Path>,
        identity: Option<Identity<'_>>,
        flags: &Flags,
    ) -> Result<Endpoint, EndpointError> {
        let syntax = || EndpointError::Syntax { url: url.to_string() };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rediss://") {
            (true, rest)
        } else {
            (false, url.strip_prefix("redis://").ok_or_else(syntax)?)
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !matches!(path, "" | "0") {
            return Err(EndpointError::Database { url: url.to_string() });
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if userinfo.is_some_and(|u| u.contains(':')) {
            return Err(EndpointError::PasswordInUrl {
                url: url.to_string(),
                file_flag: flags.password_file,
                env: flags.password_env,
            });
        }
        let (host, port) = hostport.rsplit_once(':').ok_or_else(syntax)?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = port.parse().map_err(|_| syntax())?;
        if host.is_empty() {
            return Err(syntax());
        }
        let password = match password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| EndpointError::File { path: path.to_path_buf(), source })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => password_env.filter(|p| !p.is_empty()),
        };
        let tls = match (tls, ca) {
            (false, _) if identity.is_some() => {
                return Err(EndpointError::CertWithoutTls { url: url.to_string(), flag: flags.cert })
            }
            (false, _) => None,
            (true, None) => return Err(EndpointError::NoCa { url: url.to_string(), flag: flags.ca }),
            (true, Some(ca)) => Some(client_config(ca, identity)?),
        };
        Ok(Endpoint { host, port, user: userinfo.filter(|u| !u.is_empty()).map(str::to_string), password, tls })
    }

    /// The same credentials and TLS, at another node (`host:port`) of the same cluster.
    pub fn at(&self, host: &str, port: u16) -> Endpoint {
        Endpoint { host: host.to_string(), port, ..self.clone() }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn server_name(&self) -> Option<ServerName<'static>> {
        ServerName::try_from(self.host.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: Flags = Flags { password_file: "--password-file", password_env: "PW", ca: "--ca", cert: "--cert" };

    #[test]
    fn parses_user_host_port_and_refuses_passwords_in_the_url() {
        let ep = Endpoint::parse("redis://alice@10.0.0.1:6379", None, Some("pw".into()), None, None, &FLAGS).unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.user.as_deref(), ep.password.as_deref()),
            ("10.0.0.1", 6379, Some("alice"), Some("pw"))
        );
        let err = Endpoint::parse("redis://alice:secret@h:1", None, None, None, None, &FLAGS).err().unwrap();
        assert!(err.to_string().contains("--password-file"), "{err}");
        assert!(Endpoint::parse("http://h:1", None, None, None, None, &FLAGS).is_err());
        assert!(Endpoint::parse("redis://h", None, None, None, None, &FLAGS).is_err());
        assert!(Endpoint::parse("redis://h:1/2", None, None, None, None, &FLAGS).is_err());
        let err = Endpoint::parse("rediss://h:1", None, None, None, None, &FLAGS).err().unwrap();
        assert!(err.to_string().contains("--ca"), "{err}");
        let identity = Some(Identity { cert: Path::new("c.pem"), key: Path::new("k.pem") });
        let err = Endpoint::parse("redis://h:1", None, None, None, identity, &FLAGS).err().unwrap();
        assert!(err.to_string().contains("--cert") && err.to_string().contains("rediss://"), "{err}");
    }
}
