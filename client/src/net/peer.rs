//! The end-to-end QUIC connection of a session, client to host, which the
//! relay forwards ([`super::socket`]). Its TLS is transport only: the host
//! shows a certificate it made at start and the client takes any, because
//! what authenticates both ends is the Noise handshake that runs first on
//! the connection (`latchkey_protocol::e2e`), bound to this TLS session by
//! its keying-material exporter ([`binding`]). A relay that terminated the
//! connection would hold two TLS sessions, one with each end, and fail that
//! handshake. Resumption and 0-RTT are off: every connection runs a full
//! TLS handshake, so nothing can be replayed into it.

use std::{sync::Arc, time::Duration};

use latchkey_protocol::{
    e2e::{ConnectionBinding, EXPORTER_LABEL},
    quic as wire, route,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::PrivatePkcs8KeyDer;

use super::{
    error::NetError,
    pin::{client_tls, Accept},
};

/// The name the client asks for and the host's certificate carries (it is
/// not checked: the Noise handshake authenticates).
pub const PEER_NAME: &str = "latchkey-host";

/// The protocol of an end-to-end connection.
const ALPN: &[u8] = b"latchkey-e2e/3";

/// Channels one session's connection may hold at once, the handshake's
/// stream included: the host's QUIC stream limit, so a user who opens more
/// waits for one to end rather than taking the host's memory.
pub const MAX_STREAMS: u32 = latchkey_protocol::limits::MAX_CHANNELS_PER_SESSION as u32 + 1;

/// What one session's connection may make the other end buffer: with every
/// channel stalled (a command that never reads its input), a user's 16
/// sessions on a host pin at most 16 times this of the host's memory.
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Transport settings of end-to-end connections: the windows above, a
/// short first retransmission, and a keep-alive so a session idle for
/// minutes stays open (the relay's own connections keep the devices' NAT
/// bindings).
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = wire::transport_config(Duration::from_secs(30), Duration::from_secs(5));
    // As on the relay connection: a first packet that arrives before the
    // host has heard of its route is sent again after about 300 ms, not 1 s.
    t.initial_rtt(Duration::from_millis(100));
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.receive_window(CONNECTION_WINDOW.into());
    t.send_window(u64::from(CONNECTION_WINDOW));
    t.stream_receive_window(wire::STREAM_RECEIVE_WINDOW.min(CONNECTION_WINDOW).into());
    // Every datagram crosses the relay with a route header: the largest
    // QUIC packet leaves room for it within Ethernet's 1500 bytes (IPv6).
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(ETHERNET_UDP_PAYLOAD - route::HEADER_LEN as u16);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// The largest UDP payload that fits Ethernet's MTU over IPv6.
const ETHERNET_UDP_PAYLOAD: u16 = 1452;

/// The client's settings for connecting to a host: any certificate (the
/// Noise handshake authenticates), its signature checked.
pub fn client_config() -> Result<quinn::ClientConfig, NetError> {
    let mut tls = client_tls(Accept::Any)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::Local(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// The host's settings for accepting its sessions' connections, with a
/// certificate made now.
pub fn server_config() -> Result<quinn::ServerConfig, NetError> {
    let certified = rcgen::generate_simple_self_signed(vec![PEER_NAME.to_string()])
        .map_err(|e| NetError::Local(format!("end-to-end certificate: {e}")))?;
    let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Local(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key.into())
        .map_err(|e| NetError::Local(format!("end-to-end certificate: {e}")))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| NetError::Local(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    // A session's connection has one peer address, the virtual one of its
    // route, for its whole life (a new route keeps it). A packet of the
    // connection from anywhere else is a client going around the relay
    // (its route, its budget, its end on a revoke): dropped.
    config.migration(false);
    Ok(config)
}

/// What binds the Noise handshake to `conn`: its TLS session's exported
/// keying material.
pub fn binding(conn: &quinn::Connection) -> Result<ConnectionBinding, NetError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| NetError::Local("the connection exported no keying material".into()))?;
    Ok(ConnectionBinding(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_protocol::{
        e2e::{respond, Binding, E2eInitiator, ExportKey, SessionPsk},
        handshake::Keypair,
        ids::{RecordId, SessionId},
    };
    use rand::rngs::OsRng;

    /// A client and a server endpoint on loopback with the end-to-end
    /// settings, and one connection between them (client end, server end).
    pub(super) async fn connected_pair(
    ) -> (quinn::Connection, quinn::Connection, Vec<quinn::Endpoint>) {
        connected().await
    }

    async fn connected() -> (quinn::Connection, quinn::Connection, Vec<quinn::Endpoint>) {
        let server = quinn::Endpoint::server(
            server_config().unwrap(),
            (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        )
        .unwrap();
        let client = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let connecting = client
            .connect_with(
                client_config().unwrap(),
                server.local_addr().unwrap(),
                PEER_NAME,
            )
            .unwrap();
        let accepting = async { server.accept().await.unwrap().await.unwrap() };
        let (at_client, at_server) = tokio::join!(connecting, accepting);
        (at_client.unwrap(), at_server, vec![client, server])
    }

    fn bound(conn: &quinn::Connection) -> Binding {
        Binding {
            session: SessionId([1; 16]),
            record: RecordId([2; 16]),
            connection: binding(conn).unwrap(),
        }
    }

    /// Runs the handshake with the client's binding from `client` and the
    /// host's from `host`; whether it succeeded.
    fn handshake(client: &quinn::Connection, host: &quinn::Connection) -> bool {
        let user = Keypair::generate(&mut OsRng);
        let host_key = Keypair::generate(&mut OsRng);
        let record = RecordId([2; 16]);
        let psk = SessionPsk::derive(&ExportKey::from_bytes(vec![5; 64]), &record);
        let (init, msg1) =
            E2eInitiator::start(&mut OsRng, &user, &host_key.public, &psk, &bound(client)).unwrap();
        match respond(
            &mut OsRng,
            &host_key,
            &user.public,
            &psk,
            &bound(host),
            &msg1,
        ) {
            Ok(msg2) => init.finish(&msg2).is_ok(),
            Err(_) => false,
        }
    }

    /// Echoes one stream's bytes, within `limit`; whether they came back.
    async fn echoes(client: &quinn::Connection, host: &quinn::Connection, limit: u64) -> bool {
        let limit = std::time::Duration::from_millis(limit);
        let host = host.clone();
        let served = tokio::spawn(async move {
            let (mut send, mut recv) = host.accept_bi().await.ok()?;
            let got = recv.read_to_end(1024).await.ok()?;
            send.write_all(&got).await.ok()?;
            send.finish().ok()
        });
        let asked = async {
            let (mut send, mut recv) = client.open_bi().await.ok()?;
            send.write_all(b"ping").await.ok()?;
            send.finish().ok()?;
            recv.read_to_end(1024).await.ok()
        };
        let back = tokio::time::timeout(limit, asked).await.ok().flatten();
        served.abort();
        back.as_deref() == Some(&b"ping"[..])
    }

    /// The host takes a session's packets from its route's address only: a
    /// client that moves its connection to another address (around the
    /// relay, in the product) is not followed.
    #[tokio::test]
    async fn a_connection_that_moves_to_another_address_is_not_followed() {
        let (client, host, endpoints) = connected().await;
        assert!(echoes(&client, &host, 5_000).await);
        let moved = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        endpoints[0].rebind(moved).unwrap();
        assert!(
            !echoes(&client, &host, 1_500).await,
            "the host followed a migration"
        );
    }

    #[tokio::test]
    async fn the_handshake_holds_on_one_connection_and_fails_across_a_relay_that_terminates_it() {
        // Client and host on one connection: both export the same bytes.
        let (client, host, _kept) = connected().await;
        assert_eq!(binding(&client).unwrap(), binding(&host).unwrap());
        assert!(handshake(&client, &host));
        // A relay that terminates the client's connection and makes its own
        // to the host, passing the handshake's messages along: each end
        // holds a TLS session with the relay, not with each other.
        let (client, at_relay, _kept1) = connected().await;
        let (from_relay, host, _kept2) = connected().await;
        assert_eq!(binding(&client).unwrap(), binding(&at_relay).unwrap());
        assert_eq!(binding(&from_relay).unwrap(), binding(&host).unwrap());
        assert_ne!(binding(&client).unwrap(), binding(&host).unwrap());
        assert!(!handshake(&client, &host));
    }
}

#[cfg(test)]
mod channel_tests {
    use latchkey_protocol::channel::{ChannelRecv, ChannelSend};

    #[tokio::test]
    async fn data_of_known_length_then_a_checksum_arrive_whole() {
        let (client, host, _kept) = super::tests::connected_pair().await;
        let data = vec![7u8; 3 << 20];
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let (send, _recv) = client.open_bi().await.unwrap();
            let mut send = ChannelSend::new(send);
            send.write_frame_padded(&"request".to_string())
                .await
                .unwrap();
            send.write_all(&sent).await.unwrap();
            send.write_all(&[9u8; 32]).await.unwrap();
            send.finish().await.unwrap();
            (client, send)
        });
        let (_send, recv) = host.accept_bi().await.unwrap();
        let mut recv = ChannelRecv::new(recv);
        let request: String = recv.read_frame_padded().await.unwrap().unwrap();
        assert_eq!(request, "request");
        let mut left = data.len();
        while left > 0 {
            let got = recv.recv_at_most(left).await.unwrap().unwrap();
            left -= got.len();
        }
        let mut sum = [0u8; 32];
        recv.read_exact(&mut sum).await.unwrap();
        assert_eq!(sum, [9u8; 32]);
        let _kept = writer.await.unwrap();
    }

    /// A read takes all that has arrived (up to 64 KiB and a packet), not
    /// one packet's worth: a forward then writes it on in one call.
    #[tokio::test]
    async fn a_read_takes_many_packets_that_have_arrived() {
        let (client, host, _kept) = super::tests::connected_pair().await;
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let (send, _recv) = client.open_bi().await.unwrap();
            let mut send = ChannelSend::new(send);
            send.write_all(&sent).await.unwrap();
            send.finish().await.unwrap();
            (client, send)
        });
        let (_send, recv) = host.accept_bi().await.unwrap();
        let mut recv = ChannelRecv::new(recv);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while host.stats().udp_rx.bytes < data.len() as u64 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the data never arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let one = recv.recv_at_most(1).await.unwrap().unwrap();
        assert_eq!(&one[..], &data[..1]);
        let mut got = one.to_vec();
        let mut largest = 0;
        while let Some(piece) = recv.recv().await.unwrap() {
            largest = largest.max(piece.len());
            got.extend_from_slice(&piece);
        }
        assert_eq!(got, data);
        assert!(largest >= 32 * 1024, "reads took {largest} bytes at most");
        let _kept = writer.await.unwrap();
    }
}
