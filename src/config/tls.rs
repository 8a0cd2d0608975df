//! The PEM files a config names: the listener's certificate chain and key, and the CA
//! bundles trusted for agents. They are read and checked when the config is loaded, so
//! `check` reports a bad file and a reload that meets one keeps the old config; the
//! listener's acceptor is made here too, so whatever OpenSSL refuses is a located error.

use std::path::Path;
use std::sync::Arc;

use pingora::tls::pkey::PKey;
use pingora::tls::ssl::{select_next_proto, AlpnError, SslAcceptor, SslMethod, SslVersion};
use pingora::tls::x509::X509;

use super::model::{TlsAcceptor, TlsVersion};

/// Which of the two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityFile {
    Cert,
    Key,
}

/// ALPN as the listener offers it, in wire format: HTTP/2 first, then HTTP/1.1.
const ALPN_H2_H1: &[u8] = b"\x02h2\x08http/1.1";

/// Reads a PEM chain (leaf first) and its private key, checks that they belong together
/// and makes the listener's acceptor: Mozilla's intermediate profile, `min_version`,
/// ALPN `h2` then `http/1.1`. The error says what is wrong with which file.
pub fn acceptor(
    cert_file: &Path,
    key_file: &Path,
    min_version: TlsVersion,
) -> Result<TlsAcceptor, (IdentityFile, String)> {
    let chain = load_certificates(cert_file).map_err(|e| (IdentityFile::Cert, e))?;
    let key_pem = std::fs::read(key_file).map_err(|e| {
        (
            IdentityFile::Key,
            format!("cannot read key_file {}: {e}", key_file.display()),
        )
    })?;
    let key = PKey::private_key_from_pem(&key_pem).map_err(|_| {
        (
            IdentityFile::Key,
            format!(
                "key_file {} holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\")",
                key_file.display()
            ),
        )
    })?;
    // Compared before OpenSSL sees them, so the mismatch gets its own plain message.
    if !chain[0]
        .public_key()
        .is_ok_and(|public| public.public_eq(&key))
    {
        return Err((
            IdentityFile::Key,
            format!(
                "key_file {} is not the key of the first certificate in cert_file {}: give the key the certificate was issued for",
                key_file.display(),
                cert_file.display()
            ),
        ));
    }
    let cert_problem = |e: pingora::tls::error::ErrorStack| {
        (
            IdentityFile::Cert,
            format!(
                "the certificate chain in {} is refused by OpenSSL: {e}",
                cert_file.display()
            ),
        )
    };
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(cert_problem)?;
    builder.set_certificate(&chain[0]).map_err(cert_problem)?;
    for extra in &chain[1..] {
        builder
            .add_extra_chain_cert(extra.clone())
            .map_err(cert_problem)?;
    }
    builder.set_private_key(&key).map_err(|e| {
        (
            IdentityFile::Key,
            format!("key_file {} is refused by OpenSSL: {e}", key_file.display()),
        )
    })?;
    let version = match min_version {
        TlsVersion::V1_2 => SslVersion::TLS1_2,
        TlsVersion::V1_3 => SslVersion::TLS1_3,
    };
    builder
        .set_min_proto_version(Some(version))
        .map_err(cert_problem)?;
    // A client that offers neither protocol is served HTTP/1.1 without ALPN.
    builder.set_alpn_select_callback(|_, offered| {
        select_next_proto(ALPN_H2_H1, offered).ok_or(AlpnError::NOACK)
    });
    Ok(TlsAcceptor(Arc::new(builder.build())))
}

/// Reads every certificate of a PEM file; at least one must be there.
pub fn load_certificates(path: &Path) -> Result<Vec<X509>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
            path.display()
        ));
    }
    Ok(certs)
}
