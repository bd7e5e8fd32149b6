//! How `memlog status` and `memlog failover` reach a proxy that serves TLS (`[tls]` in its
//! configuration): the proxy's certificate is checked against a CA — `--tls-ca` /
//! `MEMLOG_TLS_CA`, else the `[tls] client_ca` the configuration names — and a client
//! certificate is presented when the proxy asks for one (`client_auth`, README "Security").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memlog_proxy::config::{ClientAuth, ProxyConfig};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls_client::{client_config, Identity, TlsFileError};

/// The TLS flags of the operator commands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM file of the CA that signed the proxy's certificate; default: the `[tls] client_ca`
    /// of the proxy's config. With --proxy (no config at hand), giving it turns TLS on.
    #[arg(long = "tls-ca", env = "MEMLOG_TLS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, presented when the proxy asks for one (`[tls] client_auth`);
    /// with `cert_user` it logs the connection in as the user it names.
    #[arg(long = "tls-cert", env = "MEMLOG_TLS_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key", env = "MEMLOG_TLS_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The name the proxy's certificate must carry; default: the host of the proxy's address.
    #[arg(long = "tls-server-name", env = "MEMLOG_TLS_SERVER_NAME", value_name = "NAME")]
    pub server_name: Option<String>,
}

/// Why the TLS settings for a proxy are incomplete.
#[derive(Debug, thiserror::Error)]
pub enum AdminTlsError {
    #[error(
        "the proxy serves TLS ([tls] in its config) and the config names no CA: give the CA that signed the \
         proxy's certificate with --tls-ca FILE or MEMLOG_TLS_CA"
    )]
    NoCa,
    #[error(
        "the proxy requires a client certificate ([tls] client_auth = \"required\"): give --tls-cert FILE and \
         --tls-key FILE (or MEMLOG_TLS_CERT and MEMLOG_TLS_KEY)"
    )]
    NoClientCertificate,
    #[error("{0:?} is not a name a certificate can carry: give the proxy's with --tls-server-name")]
    ServerName(String),
    #[error(transparent)]
    File(#[from] TlsFileError),
}

/// TLS towards one proxy.
#[derive(Debug, Clone)]
pub struct AdminTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    /// The CA file the proxy's certificate is checked against, named in errors.
    ca: PathBuf,
}

impl AdminTls {
    /// The TLS to use with the proxy at `proxy_addr`: none when its `config` has no `[tls]`;
    /// without a config, TLS only when `--tls-ca` is given.
    pub fn resolve(
        args: &TlsArgs,
        config: Option<&ProxyConfig>,
        proxy_addr: &str,
    ) -> Result<Option<AdminTls>, AdminTlsError> {
        let ca = match config {
            Some(config) => {
                let Some(tls) = &config.tls else { return Ok(None) };
                if tls.client_auth == ClientAuth::Required && args.cert.is_none() {
                    return Err(AdminTlsError::NoClientCertificate);
                }
                args.ca.clone().or_else(|| tls.client_ca.as_ref().map(PathBuf::from)).ok_or(AdminTlsError::NoCa)?
            }
            None => match &args.ca {
                Some(ca) => ca.clone(),
                None => return Ok(None),
            },
        };
        let identity = args.cert.as_deref().zip(args.key.as_deref()).map(|(cert, key)| Identity { cert, key });
        let host = args.server_name.clone().unwrap_or_else(|| host_of(proxy_addr));
        let server_name = ServerName::try_from(host.clone()).map_err(|_| AdminTlsError::ServerName(host))?;
        Ok(Some(AdminTls { config: client_config(&ca, identity)?, server_name, ca }))
    }

    /// The TLS handshake over `tcp`, the proxy's certificate checked.
    pub async fn handshake(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        tokio_rustls::TlsConnector::from(self.config.clone()).connect(self.server_name.clone(), tcp).await
    }

    /// The CA file the proxy's certificate is checked against.
    pub fn ca(&self) -> &Path {
        &self.ca
    }
}

/// The host of `host:port` (`[v6]:port` included), or the whole address without a port.
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use memlog_proxy::config::TlsConfig;

    #[test]
    fn the_host_of_an_address_is_its_tls_name() {
        assert_eq!(host_of("127.0.0.1:6380"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6380"), "::1");
        assert_eq!(host_of("proxy.example:6390"), "proxy.example");
    }

    #[test]
    fn tls_follows_the_config_and_needs_a_ca_and_a_required_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).unwrap();
        let ca_text = ca_path.display().to_string();
        let none = TlsArgs::default();
        let with_ca = TlsArgs { ca: Some(ca_path.clone()), ..TlsArgs::default() };
        let resolve = |args: &TlsArgs, config: Option<&ProxyConfig>| AdminTls::resolve(args, config, "127.0.0.1:1");

        // No config: TLS exactly when a CA is given.
        assert!(resolve(&none, None).unwrap().is_none());
        assert_eq!(resolve(&with_ca, None).unwrap().unwrap().ca(), ca_path);
        // A config without [tls]: plain, whatever the flags say.
        let mut config = ProxyConfig::default();
        assert!(resolve(&with_ca, Some(&config)).unwrap().is_none());
        // [tls] without a client CA: the CA must be given.
        let tls = TlsConfig {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            client_ca: None,
            client_auth: ClientAuth::None,
            cert_user: None,
        };
        config.tls = Some(tls.clone());
        assert!(matches!(resolve(&none, Some(&config)), Err(AdminTlsError::NoCa)));
        assert!(resolve(&with_ca, Some(&config)).unwrap().is_some());
        // [tls] with a client CA: that CA by default; a required certificate must be given.
        config.tls = Some(TlsConfig { client_ca: Some(ca_text), client_auth: ClientAuth::Optional, ..tls.clone() });
        assert_eq!(resolve(&none, Some(&config)).unwrap().unwrap().ca(), ca_path);
        config.tls = Some(TlsConfig { client_auth: ClientAuth::Required, ..config.tls.clone().unwrap() });
        let err = resolve(&none, Some(&config)).unwrap_err().to_string();
        assert!(err.contains("--tls-cert"), "{err}");
        let bad_name = TlsArgs { server_name: Some("not a name!".into()), ..with_ca };
        assert!(matches!(resolve(&bad_name, None), Err(AdminTlsError::ServerName(_))));
    }
}
