//! Plain QUIC without the relay, for the framing tests and the bench's
//! direct baseline: a self-signed server configuration, and a client
//! configuration that trusts only that certificate.

use anyhow::Result;

/// A quinn server configuration with a fresh self-signed certificate for
/// `localhost`, and that certificate (DER) for clients to trust: plain
/// QUIC without the relay, for the wire tests and the bench's direct
/// baseline.
pub fn self_signed_server() -> Result<(quinn::ServerConfig, Vec<u8>)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let der = cert.cert.der().to_vec();
    let config = quinn::ServerConfig::with_single_cert(vec![cert.cert.der().clone()], key.into())?;
    Ok((config, der))
}

/// A quinn client configuration that trusts only `cert` (DER), as
/// `localhost`.
pub fn client_trusting(cert: &[u8]) -> Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(cert.to_vec()))?;
    Ok(quinn::ClientConfig::with_root_certificates(
        std::sync::Arc::new(roots),
    )?)
}
