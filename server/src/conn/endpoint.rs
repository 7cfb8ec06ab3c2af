//! The relay's QUIC endpoint: TLS 1.3 only, our ALPN, and transport limits
//! chosen on purpose rather than inherited (SPEC A5).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quinn::TransportConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use crate::{
    config::Config,
    datadir::DataDir,
    routes::{socket::ForwardingSocket, RouteTable},
};

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

/// Bidirectional streams a peer may open before it has a session: the
/// handshake's, which becomes the control stream, and a spare. quinn keeps
/// state for every stream a peer may open, so the full channel budget
/// (`conn::MAX_SESSION_STREAMS`) is opened only to a logged-in session;
/// this keeps an idle host's connection about 20 KiB smaller.
const STREAMS_BEFORE_SESSION: u32 = 2;

/// Bytes a peer may have in flight to the relay, across all its streams,
/// before it is authenticated: a handshake's messages are a few hundred
/// bytes (at most one Noise message, 64 KiB), so this is the most an
/// unauthenticated connection can make the relay buffer. Raised to
/// [`AUTHENTICATED_RECEIVE_WINDOW`] once the peer is known.
pub const UNAUTHENTICATED_RECEIVE_WINDOW: u32 = 72 * 1024;

/// The connection-level receive window of an authenticated peer (the
/// shared transport settings' value).
pub const AUTHENTICATED_RECEIVE_WINDOW: u32 = latchkey_protocol::quic::RECEIVE_WINDOW;

/// The relay's transport settings: the shared ones, with the configured
/// idle timeout, keep-alives at 10 s (peers send theirs every 5 s), and
/// few streams until a session starts.
pub fn transport_config(config: &Config) -> TransportConfig {
    let mut t =
        latchkey_protocol::quic::transport_config(config.idle_timeout(), Duration::from_secs(10));
    t.max_concurrent_bidi_streams(STREAMS_BEFORE_SESSION.into());
    // Credit cannot be taken back once granted, so a connection starts with
    // the small connection-level window (it bounds every stream together)
    // and is given the large one after its handshake.
    t.receive_window(UNAUTHENTICATED_RECEIVE_WINDOW.into());
    t
}

/// A key derived from the relay's long-term secrets for one purpose.
fn derived_key(data: &DataDir, label: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(label);
    h.update(&*data.identity.to_bytes());
    h.finalize().into()
}

/// Endpoint settings that survive a restart: the stateless-reset key and
/// the connection-ID hash key are derived from the relay's secrets, so a
/// restarted relay recognises the connection IDs of its previous process
/// and answers them with a stateless reset. Peers then reconnect at their
/// next packet instead of waiting out the idle timeout.
fn endpoint_config(data: &DataDir) -> quinn::EndpointConfig {
    let reset = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &derived_key(data, b"latchkey/1 stateless reset key"),
    );
    let mut config = quinn::EndpointConfig::new(Arc::new(reset));
    let cid_key = derived_key(data, b"latchkey/1 connection id key");
    let cid_key = u64::from_le_bytes([
        cid_key[0], cid_key[1], cid_key[2], cid_key[3], cid_key[4], cid_key[5], cid_key[6],
        cid_key[7],
    ]);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // Every QUIC packet keeps its fixed bit, so the socket layer can tell
    // routed datagrams (bit clear) from the relay's own packets: quinn
    // would otherwise let peers clear it on about half of theirs.
    config.grease_quic_bit(false);
    config
}

/// Binds the relay's UDP socket with its TLS identity, forwarding routed
/// datagrams by `routes` beneath it.
pub fn server_endpoint(
    config: &Config,
    data: &DataDir,
    routes: Arc<RouteTable>,
) -> Result<quinn::Endpoint, EndpointError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
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
    let bind_err = |source| EndpointError::Bind {
        addr: config.listen,
        source,
    };
    let (socket, granted) = latchkey_protocol::quic::udp_socket(
        config.listen,
        Some(latchkey_protocol::quic::UDP_BUFFER_BYTES),
    )
    .map_err(bind_err)?;
    if granted < latchkey_protocol::quic::UDP_BUFFER_BYTES {
        tracing::warn!(
            granted,
            wanted = latchkey_protocol::quic::UDP_BUFFER_BYTES,
            "small UDP receive buffer: bursts of handshakes (a reconnect storm) may lose packets; \
             raise net.core.rmem_max"
        );
    }
    let socket = ForwardingSocket::new(
        latchkey_protocol::udp::async_socket(socket).map_err(bind_err)?,
        routes,
    );
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(data),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_err)
}
