//! The relay's QUIC endpoint: TLS 1.3 only, our ALPN, and transport limits
//! chosen on purpose rather than inherited (SPEC A5).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use crate::{config::Config, datadir::DataDir};

/// The ALPN protocol id of Latchkey 1.
pub const ALPN: &[u8] = b"latchkey/1";

/// Errors setting up the endpoint.
#[derive(Debug, Error)]
pub enum EndpointError {
    /// TLS configuration was refused.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// QUIC rejected the TLS configuration.
    #[error("QUIC TLS: {0}")]
    QuicTls(String),
    /// The socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Transport limits for every connection. Clients open one control stream
/// and one stream per channel, so 256 concurrent bidirectional streams is
/// generous; unidirectional streams are not used. Windows bound what one
/// connection can make the relay buffer.
pub fn transport_config(config: &Config) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(256));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(2 * 1024 * 1024));
    t.receive_window(VarInt::from_u32(16 * 1024 * 1024));
    t.send_window(16 * 1024 * 1024);
    t.max_idle_timeout(IdleTimeout::try_from(config.idle_timeout()).ok());
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    t
}

/// Binds the relay's UDP socket with its TLS identity.
pub fn server_endpoint(config: &Config, data: &DataDir) -> Result<quinn::Endpoint, EndpointError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = CertificateDer::from(data.cert_der.clone());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(data.key_der.clone()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| EndpointError::QuicTls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(config)));
    quinn::Endpoint::server(server, config.listen).map_err(|source| EndpointError::Bind {
        addr: config.listen,
        source,
    })
}
