//! The client's TLS: TLS 1.3 only, and a relay's certificate must be the
//! one whose SHA-256 the device enrolled with (no certificate authority is
//! asked), its key proven by the relay's signature. A host's end-to-end
//! connection takes any certificate, its signature checked all the same
//! (`peer.rs`: the Noise handshake on it authenticates).

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
    let mismatch = Arc::new(AtomicBool::new(false));
    let accept = Accept::Pinned {
        sha256: pin.cert_sha256,
        mismatch: mismatch.clone(),
    };
    let mut tls = client_tls(accept)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::Local(e.to_string()))?;
    Ok((crypto, mismatch))
}

/// Which server certificates a client takes.
#[derive(Debug)]
pub(super) enum Accept {
    /// Only the one whose SHA-256 is `sha256` (a relay's); `mismatch` is
    /// set when another one is shown.
    Pinned {
        sha256: [u8; 32],
        mismatch: Arc<AtomicBool>,
    },
    /// Any (a host's end-to-end connection, which the Noise handshake on
    /// it authenticates).
    Any,
}

/// TLS 1.3 client settings that take the certificates `accept` says,
/// always checking that the handshake is signed by the certificate's key.
pub(super) fn client_tls(accept: Accept) -> Result<rustls::ClientConfig, NetError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Verifier {
        accept,
        provider: provider.clone(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Local(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[derive(Debug)]
struct Verifier {
    accept: Accept,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Accept::Pinned { sha256, mismatch } = &self.accept else {
            return Ok(ServerCertVerified::assertion());
        };
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if bool::from(got.ct_eq(sha256)) {
            Ok(ServerCertVerified::assertion())
        } else {
            mismatch.store(true, Ordering::Relaxed);
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
