//! TLS for client connections (`[tls]`, README "Security"): the proxy's certificate, client
//! certificates checked against `client_ca` as `client_auth` asks, and the user a certificate
//! names when `cert_user` is set. The files are reloadable: [`ClientTls::reload`] swaps in what
//! they hold now; connections accepted afterwards use it, open ones keep theirs.

use std::sync::Arc;

use arc_swap::ArcSwap;
use journal_service::sighup::{self, Reloaded};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CertUser, ClientAuth, TlsConfig};

/// Why the `[tls]` files cannot be put in use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientTlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0} holds no certificate")]
    NoCertificate(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// Why a client certificate names no user.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CertUserError {
    #[error("the client certificate's subject has {0} common names (CN); cert_user = \"cn\" needs exactly one")]
    CommonNames(usize),
    #[error("the client certificate has {0} subjectAltName DNS names; cert_user = \"san\" needs exactly one")]
    DnsNames(usize),
    #[error("the client certificate cannot be parsed")]
    Unparsable,
}

pub(crate) struct ClientTls {
    cfg: TlsConfig,
    config: ArcSwap<rustls::ServerConfig>,
}

impl ClientTls {
    pub(crate) fn load(cfg: &TlsConfig) -> Result<ClientTls, ClientTlsError> {
        Ok(ClientTls { cfg: cfg.clone(), config: ArcSwap::from_pointee(build(cfg)?) })
    }

    /// Re-reads the files; on error the ones in use stay.
    pub(crate) fn reload(&self) -> Result<(), ClientTlsError> {
        self.config.store(Arc::new(build(&self.cfg)?));
        Ok(())
    }

    /// An acceptor with the files loaded last.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// The user the client's certificate names: None when no mapping is configured or the
    /// client presented no certificate (`client_auth = "optional"`). The chain was checked
    /// during the handshake.
    pub(crate) fn certificate_user(
        &self,
        peer: Option<&[CertificateDer<'_>]>,
    ) -> Result<Option<String>, CertUserError> {
        match (self.cfg.cert_user, peer.and_then(|chain| chain.first())) {
            (Some(mapping), Some(leaf)) => named_user(mapping, leaf).map(Some),
            _ => Ok(None),
        }
    }
}

/// The user `leaf` names under `mapping`: exactly one name, or a refusal.
fn named_user(mapping: CertUser, leaf: &CertificateDer<'_>) -> Result<String, CertUserError> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|_| CertUserError::Unparsable)?;
    let mut names: Vec<String> = match mapping {
        CertUser::Cn => common_names(cert.subject()).ok_or(CertUserError::Unparsable)?,
        CertUser::San => cert.valid_dns_names().map(str::to_string).collect(),
    };
    match (names.len(), mapping) {
        (1, _) => Ok(names.remove(0)),
        (n, CertUser::Cn) => Err(CertUserError::CommonNames(n)),
        (n, CertUser::San) => Err(CertUserError::DnsNames(n)),
    }
}

/// Calls [`ClientTls::reload`] on every SIGHUP and logs the outcome, so certificates are
/// rotated without a restart and without dropping a connection.
pub(crate) fn reload_on_sighup(tls: Arc<ClientTls>) -> std::io::Result<()> {
    sighup::reload_on_sighup("client TLS certificates", move || tls.reload().map(|()| Reloaded::Certificates))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(cfg: &TlsConfig) -> Result<rustls::ServerConfig, ClientTlsError> {
    let read_err = |path: &str| {
        let path = path.to_string();
        move |e: rustls_pki_types::pem::Error| ClientTlsError::Read { path, reason: e.to_string() }
    };
    let chain = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(read_err(&cfg.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(&cfg.cert))?;
    if chain.is_empty() {
        return Err(ClientTlsError::NoCertificate(cfg.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(read_err(&cfg.key))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match (cfg.client_auth, &cfg.client_ca) {
        (ClientAuth::Optional | ClientAuth::Required, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(read_err(ca))? {
                roots.add(cert.map_err(read_err(ca))?)?;
            }
            if roots.is_empty() {
                return Err(ClientTlsError::NoCertificate(ca.clone()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match cfg.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| ClientTlsError::Verifier(e.to_string()))?)
        }
        // `TlsConfig::validate` refuses a client_auth without a client_ca.
        _ => builder.with_no_client_auth(),
    };
    Ok(builder.with_single_cert(chain, key)?)
}

/// The common names (OID 2.5.4.3) of an X.509 `Name` (`subject`: the DER content of its
/// SEQUENCE, as webpki gives it), when they are UTF-8, printable or IA5 strings; None when the
/// DER is malformed.
fn common_names(subject: &[u8]) -> Option<Vec<String>> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let mut names = Vec::new();
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (set, rest) = der(rdns, SET)?;
        rdns = rest;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (attribute, rest) = der(attributes, SEQUENCE)?;
            attributes = rest;
            let (oid, value) = der(attribute, OID)?;
            if oid != COMMON_NAME {
                continue;
            }
            let (&tag, _) = value.split_first()?;
            // UTF8String, PrintableString, IA5String: all read as UTF-8.
            if !matches!(tag, 0x0c | 0x13 | 0x16) {
                return None;
            }
            let (text, _) = der(value, tag)?;
            names.push(String::from_utf8(text.to_vec()).ok()?);
        }
    }
    Some(names)
}

/// One DER element of type `tag` at the start of `input`: its content and what follows it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let octets = (first & 0x7f) as usize;
        if octets == 0 || octets > 4 || rest.len() < octets {
            return None;
        }
        let (len, after) = rest.split_at(octets);
        rest = after;
        len.iter().fold(0usize, |n, &b| (n << 8) | b as usize)
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        webpki::EndEntityCert::try_from(&der).unwrap().subject().to_vec()
    }

    #[test]
    fn common_names_are_read_from_the_subject() {
        let mut params = rcgen::CertificateParams::new(vec!["svc.example".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "memlog tests");
        params.distinguished_name.push(rcgen::DnType::CommonName, "billing");
        assert_eq!(common_names(&subject(params.clone())), Some(vec!["billing".to_string()]));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "no cn");
        assert_eq!(common_names(&subject(params.clone())), Some(vec![]));
    }

    fn leaf(cns: &[&str], sans: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for cn in cns {
            params.distinguished_name.push(rcgen::DnType::CommonName, *cn);
        }
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().clone()
    }

    #[test]
    fn a_certificate_names_one_user_or_none() {
        let svc = leaf(&["billing"], &["billing.svc.example"]);
        assert_eq!(named_user(CertUser::Cn, &svc), Ok("billing".to_string()));
        assert_eq!(named_user(CertUser::San, &svc), Ok("billing.svc.example".to_string()));
        assert_eq!(
            named_user(CertUser::San, &leaf(&["a"], &["a.example", "b.example"])),
            Err(CertUserError::DnsNames(2))
        );
        assert_eq!(named_user(CertUser::San, &leaf(&["a"], &[])), Err(CertUserError::DnsNames(0)));
        assert_eq!(named_user(CertUser::Cn, &leaf(&[], &["a.example"])), Err(CertUserError::CommonNames(0)));
    }

    #[test]
    fn malformed_names_are_refused_not_read_past() {
        // A SET claiming more bytes than there are, a long form with no length octets, a
        // truncated long form.
        for bad in [&[0x31, 0x05, 0x30, 0x00][..], &[0x31, 0x80], &[0x31, 0x82, 0x01]] {
            assert_eq!(common_names(bad), None, "{bad:?}");
        }
        assert_eq!(common_names(&[]), Some(vec![]));
    }
}
