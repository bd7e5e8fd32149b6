//! TLS to the Postgres metadata store with rustls, honouring libpq's `sslmode`
//! (docs/cluster-tls.md, "The metadata store").
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, and leaves the checking
//! of the server's certificate to the TLS connector. So memlog reads `sslmode` and
//! `sslrootcert` out of the URL, hands tokio-postgres the rest with the matching
//! negotiation mode, and builds the rustls verifier the mode asks for:
//!
//! | `sslmode` | encrypted | chain checked against `sslrootcert` | host name checked |
//! | --- | --- | --- | --- |
//! | `disable` | no | – | – |
//! | `prefer` (the default, as in libpq) | if the server offers it | no | no |
//! | `require` | yes | no | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The connector is our own small `MakeTlsConnect` over tokio-rustls rather than a crate's:
//! the verifiers are memlog's anyway, and this keeps one rustls version (the cluster's) in the build.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode as Negotiation;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode` values that memlog supports (`allow` is refused: it never protects anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = PostgresTlsError;

    fn from_str(value: &str) -> Result<SslMode, PostgresTlsError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(PostgresTlsError::BadSslMode(other.to_string())),
        })
    }
}

/// Why a Postgres URL's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PostgresTlsError {
    #[error("sslmode={0} is not supported (disable, prefer, require, verify-ca or verify-full)")]
    BadSslMode(String),
    #[error("sslmode={0} checks the server's certificate chain: give sslrootcert=PATH (the CA's PEM file)")]
    NoRootCert(&'static str),
    #[error("sslrootcert {path}: {reason}")]
    RootCert { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the URL's query is not valid percent-encoding: {0}")]
    BadQuery(String),
    #[error("postgres URL: {}", super::with_causes(.0))]
    Url(#[from] tokio_postgres::Error),
}

/// A Postgres URL split into what tokio-postgres takes and the TLS connector memlog builds.
pub struct Connection {
    pub config: tokio_postgres::Config,
    pub tls: RustlsConnector,
    pub mode: SslMode,
}

impl Connection {
    /// Parses `url`, taking `sslmode` and `sslrootcert` out of its query.
    pub fn from_url(url: &str) -> Result<Connection, PostgresTlsError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (mut mode, mut root_cert, mut kept) = (SslMode::Prefer, None, Vec::new());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", value)) => mode = percent_decode(value)?.parse()?,
                Some(("sslrootcert", value)) => root_cert = Some(PathBuf::from(percent_decode(value)?)),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        let mut config = tokio_postgres::Config::from_str(&rest)?;
        config.ssl_mode(match mode {
            SslMode::Disable => Negotiation::Disable,
            SslMode::Prefer => Negotiation::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Negotiation::Require,
        });
        let tls = RustlsConnector { config: Arc::new(client_config(mode, root_cert)?) };
        Ok(Connection { config, tls, mode })
    }
}

/// The rustls configuration `mode` asks for.
fn client_config(mode: SslMode, root_cert: Option<PathBuf>) -> Result<rustls::ClientConfig, PostgresTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(EncryptOnly { provider: Arc::clone(&provider) })
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let name = if mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" };
            let path = root_cert.ok_or(PostgresTlsError::NoRootCert(name))?;
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(&path)?), Arc::clone(&provider))
                .build()
                .map_err(|e| PostgresTlsError::Rustls(rustls::Error::General(e.to_string())))?;
            match mode {
                SslMode::VerifyFull => chain,
                _ => Arc::new(ChainOnly { chain }),
            }
        }
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn roots(path: &PathBuf) -> Result<RootCertStore, PostgresTlsError> {
    let read_err =
        |e: rustls_pki_types::pem::Error| PostgresTlsError::RootCert { path: path.clone(), reason: e.to_string() };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(read_err)? {
        roots.add(cert.map_err(read_err)?)?;
    }
    if roots.is_empty() {
        return Err(PostgresTlsError::RootCert { path: path.clone(), reason: "holds no certificate".into() });
    }
    Ok(roots)
}

/// `%XX` sequences decoded (as tokio-postgres decodes the other query values).
fn percent_decode(value: &str) -> Result<String, PostgresTlsError> {
    let bad = || PostgresTlsError::BadQuery(value.to_string());
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(byte) = bytes.next() {
        if byte == b'%' {
            let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
            let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
        } else {
            out.push(byte);
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// `require` (and `prefer`): the connection is encrypted, but any certificate is taken, as
/// libpq does without a root certificate. The handshake signatures are still checked, so the
/// server must hold the key of the certificate it shows.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly {
    chain: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means the chain is good.
        match self.chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// tokio-postgres' TLS hook, over tokio-rustls.
#[derive(Clone)]
pub struct RustlsConnector {
    config: Arc<rustls::ClientConfig>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for RustlsConnector {
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls_pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, Self::Error> {
        // An IP address becomes an IP name, which webpki matches against the IP SANs.
        let name = ServerName::try_from(host.to_string())?;
        Ok(RustlsConnect { config: Arc::clone(&self.config), name })
    }
}

/// One connection's TLS handshake.
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for RustlsConnect {
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { Ok(RustlsStream(connector.connect(self.name, stream).await?)) })
    }
}

/// A TLS connection to Postgres.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// None: SCRAM then runs without channel binding (tokio-postgres' `prefer`), which the
    /// verifier above makes unnecessary for `verify-*`.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_and_the_rest_kept() {
        let conn = Connection::from_url("postgres://u@db:5433/m?sslmode=require&application_name=memlog").unwrap();
        assert_eq!(conn.mode, SslMode::Require);
        assert_eq!(conn.config.get_ssl_mode(), Negotiation::Require);
        assert_eq!(conn.config.get_application_name(), Some("memlog"));
        assert_eq!(Connection::from_url("postgres://u@db/m").unwrap().mode, SslMode::Prefer);
        assert_eq!(
            Connection::from_url("postgres://u@db/m?sslmode=disable").unwrap().config.get_ssl_mode(),
            Negotiation::Disable
        );
    }

    #[test]
    fn verifying_modes_need_a_root_certificate_and_unknown_modes_are_refused() {
        let err = |url: &str| Connection::from_url(url).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("postgres://u@db/m?sslmode=verify-full").contains("sslrootcert"));
        assert!(err("postgres://u@db/m?sslmode=verify-ca").contains("sslrootcert"));
        assert!(err("postgres://u@db/m?sslmode=allow").contains("not supported"));
        assert!(err("postgres://u@db/m?sslmode=verify-full&sslrootcert=%2Fnone%2Fca.pem").contains("/none/ca.pem"));
    }
}
