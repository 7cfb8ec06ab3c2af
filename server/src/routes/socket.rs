//! The relay's socket layer: under its quinn endpoint, it takes routed
//! datagrams out of every batch the socket receives and forwards them by
//! the [`RouteTable`], the same size, without decrypting, reassembling or
//! waking a task; quinn sees only its own QUIC packets. It runs inside
//! quinn's receive call, under the endpoint's lock, so it calls nothing of
//! quinn's, and no datagram it drops is ever an error (an error there would
//! stop the endpoint).
//!
//! A batch from one sender (the kernel's GRO joins equal-sized datagrams of
//! one flow) is forwarded as one batch (GSO) to the other device when its
//! datagrams follow one another in the buffer.

use std::{
    fmt,
    io::{self, IoSliceMut},
    net::SocketAddr,
    ops::Range,
    pin::Pin,
    sync::{Arc, MutexGuard},
    task::{ready, Context, Poll},
    time::Instant,
};

use latchkey_protocol::route::{self, Dropped, Kind, Routes};
use quinn::{
    udp::{EcnCodepoint, RecvMeta, Transmit},
    AsyncUdpSocket, UdpPoller,
};

use super::RouteTable;
use crate::metrics::ForwardDrop;

/// The relay's socket: quinn's below, routes forwarded on the way up.
pub struct ForwardingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    table: Arc<RouteTable>,
}

impl ForwardingSocket {
    /// Forwards by `table` on `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, table: Arc<RouteTable>) -> Arc<Self> {
        Arc::new(Self { inner, table })
    }
}

impl fmt::Debug for ForwardingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardingSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What one receive call's batch did, counted once per batch.
#[derive(Default)]
struct Tally {
    datagrams: u64,
    bytes: u64,
    dropped: [u64; ForwardDrop::ALL.len()],
}

impl Tally {
    fn dropped(&mut self, why: ForwardDrop, n: u64) {
        self.dropped[why.index()] += n;
    }

    fn publish(&self, table: &RouteTable) {
        let c = table.counters();
        if self.datagrams > 0 {
            c.datagrams.inc_by(self.datagrams);
            c.bytes.inc_by(self.bytes);
        }
        for (why, n) in ForwardDrop::ALL.iter().zip(self.dropped) {
            if n > 0 {
                c.dropped(*why, n);
            }
        }
    }
}

/// Routed datagrams that follow one another in a receive buffer, all bound
/// for one address: sent as one batch.
struct Run {
    to: SocketAddr,
    range: Range<usize>,
}

impl ForwardingSocket {
    /// Sends `run` out of `buf`, at most `max_segments` datagrams a call.
    fn send_run(
        &self,
        buf: &[u8],
        run: &Run,
        stride: usize,
        ecn: Option<EcnCodepoint>,
        tally: &mut Tally,
    ) {
        let max = self.inner.max_transmit_segments().max(1);
        let bytes = &buf[run.range.clone()];
        for chunk in bytes.chunks(stride * max) {
            let segments = chunk.len().div_ceil(stride);
            let transmit = Transmit {
                destination: run.to,
                ecn,
                contents: chunk,
                segment_size: (segments > 1).then_some(stride),
                src_ip: None,
            };
            match self.inner.try_send(&transmit) {
                Ok(()) => {
                    tally.datagrams += segments as u64;
                    tally.bytes += chunk.len() as u64;
                }
                Err(_) => tally.dropped(ForwardDrop::SendFailed, segments as u64),
            }
        }
    }

    /// Forwards the routed datagrams of one received entry and moves its
    /// QUIC packets to the front of its buffer, returning their length.
    fn sort_entry(
        &self,
        routes: &mut Routes,
        now: Instant,
        buf: &mut [u8],
        meta: &RecvMeta,
        tally: &mut Tally,
    ) -> usize {
        let len = meta.len.min(buf.len());
        if len == 0 {
            // An empty datagram: nothing to forward, nothing for quinn.
            tally.dropped(ForwardDrop::Malformed, 1);
            return 0;
        }
        let stride = if meta.stride == 0 { len } else { meta.stride };
        let mut kept = 0;
        let mut run: Option<Run> = None;
        let mut at = 0;
        while at < len {
            let end = (at + stride).min(len);
            match route::kind(&buf[at..end]) {
                Kind::Quic => {
                    if let Some(done) = run.take() {
                        self.send_run(buf, &done, stride, meta.ecn, tally);
                    }
                    if kept != at {
                        buf.copy_within(at..end, kept);
                    }
                    kept += end - at;
                }
                Kind::Routed => match routes.forward(now, meta.addr, &mut buf[at..end]) {
                    Ok(to) => {
                        crate::testing::fault::forwarded(&buf[at..end]);
                        match &mut run {
                            Some(r) if r.to == to && r.range.end == at => {
                                r.range.end = end;
                            }
                            _ => {
                                if let Some(done) = run.replace(Run { to, range: at..end }) {
                                    self.send_run(buf, &done, stride, meta.ecn, tally);
                                }
                            }
                        }
                    }
                    Err(why) => tally.dropped(drop_reason(why), 1),
                },
                Kind::Other => tally.dropped(ForwardDrop::Malformed, 1),
            }
            at = end;
        }
        if let Some(done) = run {
            self.send_run(buf, &done, stride, meta.ecn, tally);
        }
        kept
    }
}

fn drop_reason(why: Dropped) -> ForwardDrop {
    match why {
        Dropped::Malformed => ForwardDrop::Malformed,
        Dropped::UnknownLeg => ForwardDrop::UnknownLeg,
        Dropped::WrongSource => ForwardDrop::WrongSource,
        Dropped::OverBudget => ForwardDrop::OverBudget,
    }
}

impl AsyncUdpSocket for ForwardingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let received = ready!(self.inner.poll_recv(cx, bufs, meta))?;
        let mut tally = Tally::default();
        // Taken only for a batch that holds something other than the
        // relay's own packets.
        let mut routes: Option<(MutexGuard<'_, Routes>, Instant)> = None;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()).take(received) {
            // The common case, the relay's own packet, costs one byte's look.
            if meta.stride >= meta.len && route::kind(&buf[..meta.len.min(buf.len())]) == Kind::Quic
            {
                continue;
            }
            let (routes, now) = routes.get_or_insert_with(|| (self.table.lock(), Instant::now()));
            meta.len = self.sort_entry(routes, *now, buf, meta, &mut tally);
        }
        drop(routes);
        tally.publish(&self.table);
        // Entries left empty are skipped by quinn, which counts the batch
        // as work all the same: a flood of routed datagrams yields the
        // endpoint's lock as often as one of QUIC packets would.
        Poll::Ready(Ok(received))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use latchkey_protocol::route::{header, parse, Budget, LegId};
    use rand::rngs::OsRng;
    use tokio::{net::UdpSocket, time::timeout};

    use super::*;
    use crate::metrics::Metrics;

    const SERVER_NAME: &str = "relay.test";

    /// A relay endpoint on a forwarding socket, and the client config that
    /// trusts it.
    fn relay(table: Arc<RouteTable>) -> (quinn::Endpoint, quinn::ClientConfig) {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.into()]).unwrap();
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let server = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
        let mut config = quinn::EndpointConfig::default();
        config.grease_quic_bit(false);
        let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket =
            ForwardingSocket::new(latchkey_protocol::udp::async_socket(std).unwrap(), table);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        (endpoint, client)
    }

    async fn device() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    fn routed(leg: LegId, payload: &[u8]) -> Vec<u8> {
        let mut d = header(leg).to_vec();
        d.extend_from_slice(payload);
        d
    }

    async fn recv(socket: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 65536];
        let (n, from) = timeout(Duration::from_millis(300), socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        buf.truncate(n);
        Some((buf, from))
    }

    /// The relay's own QUIC works on the socket that forwards: a client
    /// connects and echoes a stream.
    async fn quic_still_works(endpoint: &quinn::Endpoint, client: &quinn::ClientConfig) {
        let server = endpoint.clone();
        let echo = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let got = recv.read_to_end(1 << 20).await.unwrap();
            send.write_all(&got).await.unwrap();
            send.finish().unwrap();
            conn.closed().await;
        });
        let peer = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = peer
            .connect_with(client.clone(), endpoint.local_addr().unwrap(), SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let sent = vec![7u8; 300_000];
        send.write_all(&sent).await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(1 << 20).await.unwrap(), sent);
        conn.close(0u32.into(), b"");
        echo.await.unwrap();
    }

    #[tokio::test]
    async fn a_routed_datagram_crosses_unread_the_same_size_and_nothing_else_does() {
        let metrics = Metrics::new().unwrap();
        let table = RouteTable::new(Budget::UNLIMITED, metrics.forwarding());
        let (endpoint, client) = relay(table.clone());
        let at = endpoint.local_addr().unwrap();
        let (a, b, stranger) = (device().await, device().await, device().await);
        let route = table.open(a.local_addr().unwrap(), b.local_addr().unwrap());
        let legs = route.legs();
        // Both ways, each datagram once, with the receiver's own leg id.
        a.send_to(&routed(legs.client, b"to the host"), at)
            .await
            .unwrap();
        let (got, from) = recv(&b).await.unwrap();
        assert_eq!(from, at);
        assert_eq!(got.len(), 8 + 11);
        assert_eq!(parse(&got).unwrap(), (legs.host, &b"to the host"[..]));
        b.send_to(&routed(legs.host, b"back"), at).await.unwrap();
        let (got, _) = recv(&a).await.unwrap();
        assert_eq!(parse(&got).unwrap(), (legs.client, &b"back"[..]));
        assert!(recv(&a).await.is_none() && recv(&b).await.is_none());
        // A stranger using a live leg, a guessed leg, and noise: dropped,
        // each counted.
        stranger
            .send_to(&routed(legs.client, b"spoofed"), at)
            .await
            .unwrap();
        stranger
            .send_to(&routed(LegId::random(&mut OsRng), b"guess"), at)
            .await
            .unwrap();
        stranger.send_to(&[0x01, 0x02, 0x03], at).await.unwrap();
        stranger.send_to(&[], at).await.unwrap();
        a.send_to(&[0x21; 8], at).await.unwrap();
        assert!(recv(&b).await.is_none() && recv(&stranger).await.is_none());
        let c = table.counters();
        assert_eq!(c.dropped_so_far(ForwardDrop::WrongSource), 1);
        assert_eq!(c.dropped_so_far(ForwardDrop::UnknownLeg), 1);
        assert_eq!(c.dropped_so_far(ForwardDrop::Malformed), 3);
        assert_eq!((c.datagrams.get(), c.bytes.get()), (2, 31));
        quic_still_works(&endpoint, &client).await;
        // A closed route forwards nothing more.
        let counts = route.close();
        assert_eq!(counts.from_client.bytes, 19);
        a.send_to(&routed(legs.client, b"late"), at).await.unwrap();
        assert!(recv(&b).await.is_none());
        assert_eq!(c.dropped_so_far(ForwardDrop::UnknownLeg), 2);
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn a_burst_arrives_whole_and_in_order_while_the_relays_own_quic_runs() {
        let metrics = Metrics::new().unwrap();
        let table = RouteTable::new(Budget::UNLIMITED, metrics.forwarding());
        let (endpoint, client) = relay(table.clone());
        let at = endpoint.local_addr().unwrap();
        let (a, b) = (device().await, device().await);
        let route = table.open(a.local_addr().unwrap(), b.local_addr().unwrap());
        let legs = route.legs();
        let quic = quic_still_works(&endpoint, &client);
        let burst = async {
            for i in 0..200u32 {
                let mut payload = vec![0u8; 1200];
                payload[..4].copy_from_slice(&i.to_be_bytes());
                a.send_to(&routed(legs.client, &payload), at).await.unwrap();
                // Room for the receiver to read (a test's socket buffer is
                // the system's default).
                if i % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        let receive = async {
            let mut next = 0u32;
            while let Some((got, _)) = recv(&b).await {
                let (leg, payload) = parse(&got).unwrap();
                assert_eq!((leg, payload.len()), (legs.host, 1200));
                assert_eq!(payload[..4], next.to_be_bytes());
                next += 1;
                if next == 200 {
                    break;
                }
            }
            next
        };
        let ((), received, ()) = tokio::join!(burst, receive, quic);
        let c = table.counters();
        let dropped: Vec<_> = ForwardDrop::ALL.map(|w| c.dropped_so_far(w)).into();
        assert_eq!(received, 200, "dropped: {dropped:?}");
        assert_eq!(table.counters().datagrams.get(), 200);
    }

    #[tokio::test]
    async fn a_leg_over_its_budget_is_dropped_and_counted() {
        let metrics = Metrics::new().unwrap();
        let budget = Budget {
            rate: 1,
            burst: 3000,
        };
        let table = RouteTable::new(budget, metrics.forwarding());
        let (endpoint, _) = relay(table.clone());
        let at = endpoint.local_addr().unwrap();
        let (a, b) = (device().await, device().await);
        let route = table.open(a.local_addr().unwrap(), b.local_addr().unwrap());
        for _ in 0..5 {
            a.send_to(&routed(route.legs().client, &[0u8; 992]), at)
                .await
                .unwrap();
        }
        let mut arrived = 0;
        while recv(&b).await.is_some() {
            arrived += 1;
        }
        assert_eq!(arrived, 3);
        assert_eq!(table.counters().dropped_so_far(ForwardDrop::OverBudget), 2);
    }

    /// The whole path: a client and a host, each on one device socket that
    /// also carries its own connection to the relay, run a QUIC connection
    /// with each other through the relay's forwarding socket; it survives a
    /// move to another relay under the same virtual address, and ends when
    /// its route goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_end_to_end_connection_crosses_the_relay_and_moves_to_another() {
        use latchkey_client::net::socket::device_endpoint;
        let metrics = Metrics::new().unwrap();
        let tables = [
            RouteTable::new(Budget::UNLIMITED, metrics.forwarding()),
            RouteTable::new(Budget::UNLIMITED, metrics.forwarding()),
        ];
        let (relay_one, relay_client) = relay(tables[0].clone());
        let (relay_two, relay_two_client) = relay(tables[1].clone());
        let (host_tls, client_tls) = {
            let certified = rcgen::generate_simple_self_signed(vec!["host".into()]).unwrap();
            let cert = certified.cert.der().clone();
            let key =
                rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
            let mut server =
                quinn::ServerConfig::with_single_cert(vec![cert.clone()], key).unwrap();
            let mut transport = quinn::TransportConfig::default();
            transport.max_idle_timeout(Some(Duration::from_secs(2).try_into().unwrap()));
            let transport = Arc::new(transport);
            server.transport_config(transport.clone());
            let mut roots = rustls::RootCertStore::empty();
            roots.add(cert).unwrap();
            let mut client = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
            client.transport_config(transport);
            (server, client)
        };
        let local = "127.0.0.1:0".parse().unwrap();
        let (host, host_peers) = device_endpoint(local, Some(host_tls)).unwrap();
        let (client, client_peers) = device_endpoint(local, None).unwrap();
        // Each device's own connection to the first relay, on the same
        // socket: the addresses the route is bound to.
        let relay_addr = |e: &quinn::Endpoint| e.local_addr().unwrap();
        let dial = |device: &quinn::Endpoint, to: SocketAddr, trust: &quinn::ClientConfig| {
            device.connect_with(trust.clone(), to, SERVER_NAME).unwrap()
        };
        let accept = |relay: quinn::Endpoint| {
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Some(incoming) = relay.accept().await {
                    if let Ok(conn) = incoming.await {
                        held.push(conn);
                    }
                }
            })
        };
        let (_one, _two) = (accept(relay_one.clone()), accept(relay_two.clone()));
        let one = relay_addr(&relay_one);
        let _host_link = dial(&host, one, &relay_client).await.unwrap();
        let _client_link = dial(&client, one, &relay_client).await.unwrap();
        // Where the relay sees each device (its socket reports the IPv4
        // address mapped to IPv6).
        let seen = |e: &quinn::Endpoint| {
            SocketAddr::new([127, 0, 0, 1].into(), e.local_addr().unwrap().port())
        };
        let route = tables[0].open(seen(&client), seen(&host));
        // Each side sees the other at a virtual address of its own.
        let host_seen = client_peers.allocate();
        let client_seen = host_peers.allocate();
        client_peers
            .set(host_seen, one, route.legs().client)
            .unwrap();
        host_peers.set(client_seen, one, route.legs().host).unwrap();
        let served = tokio::spawn({
            let host = host.clone();
            async move {
                let conn = host.accept().await.unwrap().await.unwrap();
                assert_eq!(conn.remote_address(), client_seen);
                loop {
                    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                        return conn.close_reason();
                    };
                    let got = recv.read_to_end(64 << 20).await.unwrap();
                    send.write_all(&got).await.unwrap();
                    send.finish().unwrap();
                }
            }
        });
        let e2e = client
            .connect_with(client_tls, host_seen, "host")
            .unwrap()
            .await
            .unwrap();
        let echo = |size: usize, fill: u8| {
            let e2e = e2e.clone();
            async move {
                let (mut send, mut recv) = e2e.open_bi().await.unwrap();
                let sent = vec![fill; size];
                send.write_all(&sent).await.unwrap();
                send.finish().unwrap();
                let got = timeout(Duration::from_secs(20), recv.read_to_end(64 << 20))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(got == sent, "{} of {size} bytes came back", got.len());
            }
        };
        echo(8 << 20, 1).await;
        let carried = route.counts();
        assert!(carried.from_client.bytes > 8 << 20, "{carried:?}");
        assert!(carried.from_host.bytes > 8 << 20, "{carried:?}");
        // The devices move to the second relay: a new route, the same
        // virtual addresses; the first route goes. No new handshake.
        let two = relay_addr(&relay_two);
        let _host_link_two = dial(&host, two, &relay_two_client).await.unwrap();
        let _client_link_two = dial(&client, two, &relay_two_client).await.unwrap();
        let moved = tables[1].open(seen(&client), seen(&host));
        client_peers
            .set(host_seen, two, moved.legs().client)
            .unwrap();
        host_peers.set(client_seen, two, moved.legs().host).unwrap();
        drop(route);
        echo(1 << 20, 2).await;
        assert!(moved.counts().from_client.bytes > 1 << 20);
        // With its route gone, the connection hears nothing and ends at its
        // idle timeout.
        drop(moved);
        let ended = timeout(Duration::from_secs(10), e2e.closed())
            .await
            .unwrap();
        assert!(
            matches!(ended, quinn::ConnectionError::TimedOut),
            "{ended:?}"
        );
        served.abort();
    }
}
