//! TLS to the relay, pinned: TLS 1.3 only, and the relay's certificate
//! must be the one whose SHA-256 the device enrolled with (no certificate
//! authority is asked), its key proven by the relay's signature.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use latchkey_protocol::ids::RelayPin;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::NetError;

/// ALPN of Latchkey 1 (the relay's must match).
const ALPN: &[u8] = b"latchkey/1";

/// The QUIC client's TLS settings for the relay pinned by `pin`, and a flag
/// that is set when a handshake fails because the relay's certificate is
/// not the pinned one.
pub(super) fn tls_config(pin: &RelayPin) -> Result<(QuicClientConfig, Arc<AtomicBool>), NetError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mismatch = Arc::new(AtomicBool::new(false));
    let verifier = PinnedCert {
        sha256: pin.cert_sha256,
        provider: provider.clone(),
        mismatch: mismatch.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Local(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::Local(e.to_string()))?;
    Ok((crypto, mismatch))
}

/// Checks that the relay's certificate is the pinned one, and that the
/// relay proves it holds the certificate's key.
#[derive(Debug)]
struct PinnedCert {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
    mismatch: Arc<AtomicBool>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if bool::from(got.ct_eq(&self.sha256)) {
            Ok(ServerCertVerified::assertion())
        } else {
            self.mismatch.store(true, Ordering::Relaxed);
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is not offered.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
