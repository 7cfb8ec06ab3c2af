//! A device's one UDP socket, shared by its QUIC connection to the relay
//! and its end-to-end QUIC connections to peers, which the relay carries
//! as routed datagrams ([`latchkey_protocol::route`]).
//!
//! quinn sees each peer at a stable *virtual address* of its own, so the
//! physical path (which relay, which leg id) can change under a live
//! connection without quinn noticing: a QUIC client never migrates its
//! remote address, and a server would take a new one for a migration.
//! [`DeviceSocket`] translates on the way out (a virtual destination
//! becomes the relay's address with the leg's route header before each
//! datagram) and on the way in (a routed datagram from the right relay with
//! a known leg loses its header and comes from the virtual address);
//! [`Peers`] is the table the rest of the client edits.
//!
//! Virtual addresses are `[fdXX:XXXX:XXXX:0000::n]:1`: a unique local IPv6
//! prefix (RFC 4193, random global id, chosen once per process, so it will
//! not shadow a real network the device talks to) and a counter that never
//! repeats within the process, so a closed peer's late packets never reach
//! a new one. They never appear on the wire.

use std::{
    cell::RefCell,
    fmt,
    io::{self, IoSliceMut},
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard,
    },
    task::{ready, Context, Poll},
};

use latchkey_protocol::{
    route::{self, Kind, LegId, HEADER_LEN},
    udp,
};
use quinn::{
    udp::{RecvMeta, Transmit},
    AsyncUdpSocket, UdpPoller,
};
use rand::{rngs::OsRng, RngCore};

use crate::wire;

/// The port of every virtual address (quinn refuses port 0).
const VIRTUAL_PORT: u16 = 1;

/// The virtual addresses' /64 prefix: `fd`, a random 40-bit global id, and
/// subnet 0.
fn prefix() -> [u8; 8] {
    static PREFIX: OnceLock<[u8; 8]> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        // Should the system's randomness fail, a fixed prefix still works;
        // only the chance of shadowing a real ULA network grows.
        let mut prefix = [0xfd, 0x4c, 0x6b, 0x00, 0x00, 0x00, 0x00, 0x00];
        let mut global = [0u8; 5];
        if OsRng.try_fill_bytes(&mut global).is_ok() {
            prefix[1..6].copy_from_slice(&global);
        }
        prefix
    })
}

/// The virtual address `addr` names (flow info and scope dropped), if it
/// is one.
fn virtual_key(addr: SocketAddr) -> Option<SocketAddrV6> {
    match addr {
        SocketAddr::V6(a) if a.ip().octets()[..8] == prefix() => {
            Some(SocketAddrV6::new(*a.ip(), a.port(), 0, 0))
        }
        _ => None,
    }
}

/// `addr` as the peer table keys relays: IPv4-mapped IPv6 as plain IPv4,
/// no flow info. A dual-stack socket reports IPv4 sources mapped, and a
/// caller may name the relay either way.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, a.scope_id())),
        },
        v4 => v4,
    }
}

/// `ip` as an IPv6 address (IPv4 mapped).
fn mapped_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}

/// `addr` as an IPv6 address (IPv4 mapped).
fn mapped(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(mapped_ip(addr.ip()), addr.port())
}

/// `addr` in the form the inner socket sends to: IPv4 on an IPv4 socket
/// (`None` for an IPv6 address it cannot reach), mapped on an IPv6 one.
fn native(addr: SocketAddr, v4_socket: bool) -> Option<SocketAddr> {
    let canonical = canonical(addr);
    match (v4_socket, canonical) {
        (true, SocketAddr::V4(_)) => Some(canonical),
        (true, SocketAddr::V6(_)) => None,
        (false, SocketAddr::V4(_)) => Some(mapped(canonical)),
        (false, SocketAddr::V6(_)) => Some(addr),
    }
}

/// Why a virtual peer's path was not set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The address is not one of [`Peers::allocate`]'s.
    #[error("{0} is not a virtual peer address")]
    NotVirtual(SocketAddr),
    /// An IPv6 relay, and the device's socket is IPv4 only.
    #[error("relay {0} is not reachable from this device's IPv4 socket")]
    Unreachable(SocketAddr),
}

/// Datagrams a [`DeviceSocket`] dropped, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Sent by quinn to a virtual peer with no path (not set yet, or
    /// removed), or to an IPv6 address from an IPv4 socket.
    pub unsent: u64,
    /// Received and refused: a leg this device does not hold, a leg from
    /// another address than its relay's, a malformed route header, or
    /// neither QUIC nor routed.
    pub refused: u64,
}

/// How one virtual peer is reached.
#[derive(Clone, Copy, Debug)]
struct Path {
    /// The relay, in the inner socket's form (sent to).
    to: SocketAddr,
    /// The relay, canonical (what sources are compared with).
    relay: SocketAddr,
    leg: LegId,
    header: [u8; HEADER_LEN],
}

#[derive(Debug, Default)]
struct Table {
    paths: std::collections::HashMap<SocketAddrV6, Path>,
    /// (canonical relay, own leg) → virtual peer: a routed datagram is
    /// taken only from the relay that handed out its leg.
    legs: std::collections::HashMap<(SocketAddr, LegId), SocketAddrV6>,
}

#[derive(Debug)]
struct Shared {
    table: RwLock<Table>,
    /// The inner socket is IPv4 (and quinn is shown IPv4-mapped IPv6).
    v4_socket: bool,
    unsent: AtomicU64,
    refused: AtomicU64,
}

/// The virtual peers of one [`DeviceSocket`]: cheap to clone, shared with
/// the socket, edited while connections run.
#[derive(Clone, Debug)]
pub struct Peers(Arc<Shared>);

impl Peers {
    fn new(v4_socket: bool) -> Self {
        Self(Arc::new(Shared {
            table: RwLock::new(Table::default()),
            v4_socket,
            unsent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }))
    }

    fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.0.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh virtual address, never handed out before in this process.
    /// Nothing is routed to it until [`Peers::set`].
    pub fn allocate(&self) -> SocketAddr {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut octets = [0u8; 16];
        octets[..8].copy_from_slice(&prefix());
        octets[8..].copy_from_slice(&n.to_be_bytes());
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(octets),
            VIRTUAL_PORT,
            0,
            0,
        ))
    }

    /// Routes `peer` through `relay` with this device's own leg id `leg`,
    /// replacing its earlier path (whose leg no longer leads to it). A leg
    /// of `relay` that led to another peer leads to `peer` now, and that
    /// peer has no path.
    pub fn set(&self, peer: SocketAddr, relay: SocketAddr, leg: LegId) -> Result<(), PeerError> {
        let key = virtual_key(peer).ok_or(PeerError::NotVirtual(peer))?;
        let to = native(relay, self.0.v4_socket).ok_or(PeerError::Unreachable(relay))?;
        let relay = canonical(relay);
        let mut table = self.0.table.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = table.paths.remove(&key) {
            table.legs.remove(&(old.relay, old.leg));
        }
        if let Some(other) = table.legs.insert((relay, leg), key) {
            if other != key {
                table.paths.remove(&other);
            }
        }
        table.paths.insert(
            key,
            Path {
                to,
                relay,
                leg,
                header: route::header(leg),
            },
        );
        Ok(())
    }

    /// Forgets `peer`'s path: its datagrams are dropped both ways from now
    /// on. Says whether it had one.
    pub fn remove(&self, peer: SocketAddr) -> bool {
        let Some(key) = virtual_key(peer) else {
            return false;
        };
        let mut table = self.0.table.write().unwrap_or_else(PoisonError::into_inner);
        match table.paths.remove(&key) {
            Some(old) => {
                table.legs.remove(&(old.relay, old.leg));
                true
            }
            None => false,
        }
    }

    /// The relay (IPv4-mapped addresses shown as IPv4) and leg `peer` is
    /// routed through.
    pub fn path(&self, peer: SocketAddr) -> Option<(SocketAddr, LegId)> {
        let key = virtual_key(peer)?;
        self.read().paths.get(&key).map(|p| (p.relay, p.leg))
    }

    /// Whether `other` is this socket's table too.
    pub fn same_socket(&self, other: &Peers) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// What the socket has dropped so far.
    pub fn dropped(&self) -> DropCounts {
        DropCounts {
            unsent: self.0.unsent.load(Ordering::Relaxed),
            refused: self.0.refused.load(Ordering::Relaxed),
        }
    }

    fn route_of(&self, peer: &SocketAddrV6) -> Option<Path> {
        self.read().paths.get(peer).copied()
    }

    fn count_unsent(&self) {
        self.0.unsent.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// Where routed datagrams get their headers: one buffer per thread,
    /// reused, so a send allocates nothing once it has grown.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `send` with this thread's scratch buffer, or a new one where that
/// is unavailable (the thread is exiting).
fn with_scratch(send: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
    let mut send = Some(send);
    let sent = SCRATCH.try_with(|cell| {
        let mut scratch = cell.try_borrow_mut().ok()?;
        send.take().map(|send| send(&mut scratch))
    });
    match (sent, send) {
        (Ok(Some(result)), _) => result,
        (_, Some(send)) => send(&mut Vec::new()),
        // `send` ran and returned above.
        (_, None) => Ok(()),
    }
}

/// What becomes of one received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// QUIC for the device's own endpoint: passed on as it is.
    Quic,
    /// Routed from this virtual peer: passed on without its header.
    Routed(SocketAddrV6),
    /// Dropped.
    Refused,
}

impl Verdict {
    fn header_len(self) -> usize {
        match self {
            Verdict::Routed(_) => HEADER_LEN,
            _ => 0,
        }
    }
}

fn classify(table: &Table, source: SocketAddr, datagram: &[u8]) -> Verdict {
    match route::kind(datagram) {
        Kind::Quic => Verdict::Quic,
        Kind::Routed => match route::parse(datagram) {
            Ok((leg, _)) => table
                .legs
                .get(&(source, leg))
                .map_or(Verdict::Refused, |peer| Verdict::Routed(*peer)),
            Err(_) => Verdict::Refused,
        },
        Kind::Other => Verdict::Refused,
    }
}

/// Rewrites one received entry in place for quinn; returns how many of its
/// datagrams were kept and refused. An entry holds one datagram, or
/// several (`stride` apart) where the system coalesces receives (GRO):
/// there, the datagrams that do not match the first kept one (QUIC, or
/// routed from the same peer) are dropped, as one entry has one source.
/// The relay sends a route's datagrams in batches of their own, so a
/// coalesced batch is nearly always of one kind; a network that merges a
/// relay's own packet into one loses that packet, which QUIC recovers as
/// any loss. Coalescing stays on because it is the relay's saving:
/// without it the relay's kernel delivers every datagram on its own
/// (measured on loopback, 2.3 instead of 1.4-1.6 s of relay CPU per GiB).
fn inbound(table: &Table, v4_socket: bool, buf: &mut [u8], meta: &mut RecvMeta) -> (u64, u64) {
    let len = meta.len.min(buf.len());
    let stride = if meta.stride == 0 || meta.stride > len {
        len
    } else {
        meta.stride
    };
    let source = canonical(meta.addr);
    let mut kind = None;
    let (mut read, mut write, mut kept, mut refused) = (0, 0, 0, 0);
    while read < len {
        let end = (read + stride).min(len);
        let verdict = classify(table, source, &buf[read..end]);
        let keep = match (verdict, kind) {
            (Verdict::Refused, _) => false,
            (v, None) => {
                kind = Some(v);
                true
            }
            (v, Some(k)) => v == k,
        };
        if keep {
            let skip = verdict.header_len();
            buf.copy_within(read + skip..end, write);
            write += end - read - skip;
            kept += 1;
        } else {
            refused += 1;
        }
        read = end;
    }
    match kind {
        None => meta.len = 0,
        Some(v) => {
            meta.len = write;
            meta.stride = (stride - v.header_len()).min(write);
            match v {
                Verdict::Routed(peer) => {
                    meta.addr = SocketAddr::V6(peer);
                    meta.dst_ip = None;
                }
                _ if v4_socket => {
                    meta.addr = mapped(meta.addr);
                    meta.dst_ip = meta.dst_ip.map(mapped_ip);
                }
                _ => {}
            }
        }
    }
    (kept, refused)
}

/// The device's socket as quinn sees it: virtual peers routed through
/// relays, everything else passed through. See the module's doc.
pub struct DeviceSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    peers: Peers,
}

impl fmt::Debug for DeviceSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSocket")
            .field("inner", &self.inner)
            .field("v4_socket", &self.peers.0.v4_socket)
            .finish_non_exhaustive()
    }
}

impl DeviceSocket {
    /// Wraps `socket` (quinn's own socket layer where the system allows it,
    /// see [`udp::async_socket`]). Must run inside a tokio runtime.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<(Arc<Self>, Peers)> {
        let inner = udp::async_socket(socket)?;
        let peers = Peers::new(inner.local_addr()?.is_ipv4());
        let socket = Arc::new(Self {
            inner,
            peers: peers.clone(),
        });
        Ok((socket, peers))
    }

    /// A socket bound to `addr`: with `buffer` bytes of UDP buffers as
    /// [`wire::udp_socket`] makes them (many peers, bulk), or the system's
    /// default buffers when `None` (a single peer: large buffers queue
    /// milliseconds of packets in front of interactive ones, see
    /// [`super::udp_endpoint`]). `[::]` is dual stack wherever the system
    /// allows it, Windows included, whose default is IPv6 alone.
    pub fn bind(addr: SocketAddr, buffer: Option<usize>) -> io::Result<(Arc<Self>, Peers)> {
        Self::new(wire::udp_socket(addr, buffer)?.0)
    }

    /// The socket's virtual peers.
    pub fn peers(&self) -> Peers {
        self.peers.clone()
    }

    fn send_routed(&self, transmit: &Transmit, path: &Path) -> io::Result<()> {
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len());
        if segment == 0 || transmit.contents.is_empty() {
            return Ok(());
        }
        with_scratch(|scratch| {
            scratch.clear();
            for datagram in transmit.contents.chunks(segment) {
                scratch.extend_from_slice(&path.header);
                scratch.extend_from_slice(datagram);
            }
            self.inner.try_send(&Transmit {
                destination: path.to,
                ecn: transmit.ecn,
                contents: scratch,
                segment_size: transmit.segment_size.map(|s| s + HEADER_LEN),
                src_ip: None,
            })
        })
    }
}

impl AsyncUdpSocket for DeviceSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if let Some(peer) = virtual_key(transmit.destination) {
            return match self.peers.route_of(&peer) {
                Some(path) => self.send_routed(transmit, &path),
                None => {
                    // An error would end the connection; a lost datagram
                    // is what QUIC expects of a path that is not there.
                    self.peers.count_unsent();
                    Ok(())
                }
            };
        }
        let v4_socket = self.peers.0.v4_socket;
        let Some(destination) = native(transmit.destination, v4_socket) else {
            self.peers.count_unsent();
            return Ok(());
        };
        let src_ip = match transmit.src_ip {
            Some(ip) if v4_socket => native(SocketAddr::new(ip, 0), true).map(|a| a.ip()),
            other => other,
        };
        if destination == transmit.destination && src_ip == transmit.src_ip {
            return self.inner.try_send(transmit);
        }
        self.inner.try_send(&Transmit {
            destination,
            ecn: transmit.ecn,
            contents: transmit.contents,
            segment_size: transmit.segment_size,
            src_ip,
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // quinn skips entries of length 0, and ends the endpoint on any
        // error: refused datagrams become empty entries, never errors. It
        // counts the batch as work all the same, so a flood of junk yields
        // the endpoint's lock as often as real packets would.
        let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
        let mut refused = 0;
        {
            let table = self.peers.read();
            for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
                refused += inbound(&table, self.peers.0.v4_socket, buf, meta).1;
            }
        }
        if refused > 0 {
            self.peers.0.refused.fetch_add(refused, Ordering::Relaxed);
        }
        Poll::Ready(Ok(n))
    }

    /// Always IPv6 (an IPv4 socket's address mapped): quinn refuses IPv6
    /// remotes, virtual ones included, on an IPv4 socket.
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(mapped(self.inner.local_addr()?))
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

/// The endpoint settings of a device socket. The QUIC fixed bit is never
/// greased: the relay and this socket tell QUIC from routed datagrams by
/// it. (quinn greases toward any peer that says it may, whatever its own
/// setting, so every Latchkey endpoint, the relay's too, must turn it off.)
///
/// Routed datagrams are 8 bytes longer than the packets quinn sizes. Path
/// MTU discovery sees the real sizes' losses and settles 8 bytes lower by
/// itself, but quinn sizes its receive buffers by `max_udp_payload_size`
/// (1472 by default), so MTU discovery's upper bound (1452 by default) must
/// stay at least 8 bytes below that, or routed datagrams arrive truncated.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    config
}

/// A QUIC endpoint on `socket` (a server too with `server`).
pub fn endpoint(
    socket: Arc<DeviceSocket>,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A device's endpoint on a new socket bound to `bind` (system default
/// buffers), and its virtual peers. A host passes its server settings:
/// it accepts its sessions' end-to-end connections.
pub fn device_endpoint(
    bind: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<(quinn::Endpoint, Peers)> {
    let (socket, peers) = DeviceSocket::bind(bind, None)?;
    Ok((endpoint(socket, server)?, peers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_protocol::route::{Budget, Route, Routes};
    use std::{
        sync::Mutex,
        time::{Duration, Instant},
    };
    use tokio::{net::UdpSocket, task::JoinHandle, time::timeout};

    const NAME: &str = "latchkey-test";
    const LIMIT: Duration = Duration::from_secs(60);

    fn tls() -> (quinn::ServerConfig, quinn::ClientConfig) {
        let certified = rcgen::generate_simple_self_signed(vec![NAME.to_string()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
        let server = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key.into()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
        (server, client)
    }

    /// A relay's routing and nothing else: [`Routes`] on a plain socket.
    struct Forwarder {
        addr: SocketAddr,
        socket: Arc<UdpSocket>,
        routes: Arc<Mutex<Routes>>,
        task: JoinHandle<()>,
    }

    impl Forwarder {
        async fn start(ip: IpAddr) -> Self {
            let socket = Arc::new(UdpSocket::bind((ip, 0)).await.unwrap());
            let routes = Arc::new(Mutex::new(Routes::new(Budget::UNLIMITED)));
            let (s, r) = (socket.clone(), routes.clone());
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let Ok((n, from)) = s.recv_from(&mut buf).await else {
                        continue;
                    };
                    let datagram = &mut buf[..n];
                    if route::kind(datagram) != Kind::Routed {
                        continue;
                    }
                    let to = r.lock().unwrap().forward(Instant::now(), from, datagram);
                    if let Ok(to) = to {
                        let _ = s.send_to(datagram, to).await;
                    }
                }
            });
            Self {
                addr: socket.local_addr().unwrap(),
                socket,
                routes,
                task,
            }
        }

        fn open(&self, client: SocketAddr, host: SocketAddr) -> Route {
            self.routes
                .lock()
                .unwrap()
                .open(&mut OsRng, Instant::now(), client, host)
        }

        fn bytes(&self, route: Route) -> u64 {
            let counts = self.routes.lock().unwrap().counts(route).unwrap();
            counts.from_client.bytes + counts.from_host.bytes
        }
    }

    impl Drop for Forwarder {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A client and a host device, each on its own device socket, and the
    /// virtual address each gives the other.
    struct Pair {
        client: quinn::Endpoint,
        client_peers: Peers,
        host: quinn::Endpoint,
        host_peers: Peers,
        /// The host, as the client's quinn sees it.
        host_at_client: SocketAddr,
        /// The client, as the host's quinn sees it.
        client_at_host: SocketAddr,
        client_config: quinn::ClientConfig,
        server_config: quinn::ServerConfig,
    }

    impl Pair {
        fn new(ip: IpAddr) -> Self {
            let (server_config, client_config) = tls();
            let (client, client_peers) = device_endpoint((ip, 0).into(), None).unwrap();
            let (host, host_peers) =
                device_endpoint((ip, 0).into(), Some(server_config.clone())).unwrap();
            Self {
                host_at_client: client_peers.allocate(),
                client_at_host: host_peers.allocate(),
                client,
                client_peers,
                host,
                host_peers,
                client_config,
                server_config,
            }
        }

        /// Opens a route through `relay` and points both sides at it.
        fn route_through(&self, relay: &Forwarder) -> Route {
            let client = canonical(self.client.local_addr().unwrap());
            let host = canonical(self.host.local_addr().unwrap());
            let route = relay.open(client, host);
            self.client_peers
                .set(self.host_at_client, relay.addr, route.client)
                .unwrap();
            self.host_peers
                .set(self.client_at_host, relay.addr, route.host)
                .unwrap();
            route
        }

        /// The client's end-to-end connection to the host (which echoes
        /// every stream), and the host's end of it.
        async fn connect(&self) -> (quinn::Connection, quinn::Connection) {
            let connecting = self
                .client
                .connect_with(self.client_config.clone(), self.host_at_client, NAME)
                .unwrap();
            let (conn, at_host) = tokio::join!(connecting, serve_one(&self.host));
            (conn.unwrap(), at_host)
        }
    }

    /// The next connection to `endpoint`, echoing every stream.
    async fn serve_one(endpoint: &quinn::Endpoint) -> quinn::Connection {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        tokio::spawn(echo(conn.clone()));
        conn
    }

    /// Sends every stream back as it comes.
    async fn echo(conn: quinn::Connection) {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(Some(n)) = recv.read(&mut buf).await {
                    if send.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = send.finish();
            });
        }
    }

    /// `len` random bytes through an echoing peer and back, byte-exact.
    async fn round_trip(conn: &quinn::Connection, len: usize) {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut data = vec![0u8; len];
        OsRng.fill_bytes(&mut data);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            send.write_all(&sent).await.unwrap();
            send.finish().unwrap();
            // Kept until everything came back: a dropped stream may be
            // reset before its data is acknowledged.
            send
        });
        let got = recv.read_to_end(len + 1).await.unwrap();
        drop(writer.await.unwrap());
        assert!(got == data, "{len} bytes came back different");
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn localhost() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_routed_connection_carries_8_mib_both_ways_at_virtual_addresses() {
        timeout(LIMIT, async {
            let pair = Pair::new(localhost());
            let relay = Forwarder::start(localhost()).await;
            let route = pair.route_through(&relay);
            let (conn, at_host) = pair.connect().await;
            assert_eq!(conn.remote_address(), pair.host_at_client);
            assert_eq!(at_host.remote_address(), pair.client_at_host);
            round_trip(&conn, 8 << 20).await;
            assert!(relay.bytes(route) > 16 << 20);
            assert_eq!(pair.client_peers.dropped(), DropCounts::default());
            assert_eq!(pair.host_peers.dropped(), DropCounts::default());
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_connection_moves_to_another_relay_without_a_new_handshake() {
        timeout(LIMIT, async {
            let pair = Pair::new(localhost());
            let first = Forwarder::start(localhost()).await;
            let old = pair.route_through(&first);
            let (conn, _at_host) = pair.connect().await;
            round_trip(&conn, 1 << 20).await;
            let id = conn.stable_id();

            let second = Forwarder::start(localhost()).await;
            let new = pair.route_through(&second);
            first.task.abort();
            assert_eq!(
                pair.client_peers.path(pair.host_at_client),
                Some((second.addr, new.client))
            );
            round_trip(&conn, 4 << 20).await;
            assert_eq!(conn.stable_id(), id);
            assert!(conn.close_reason().is_none());
            assert_eq!(pair.host.open_connections(), 1);
            assert!(second.bytes(new) > 8 << 20);

            // The old leg leads nowhere now, even from the old relay.
            let refused = pair.client_peers.dropped().refused;
            let mut stale = route::header(old.client).to_vec();
            stale.extend_from_slice(&[0x40; 40]);
            let client = canonical(pair.client.local_addr().unwrap());
            first.socket.send_to(&stale, client).await.unwrap();
            until("the stale datagram's refusal", || {
                pair.client_peers.dropped().refused > refused
            })
            .await;
            round_trip(&conn, 64 << 10).await;
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn foreign_datagrams_are_counted_and_dropped_and_the_connection_goes_on() {
        timeout(LIMIT, async {
            let pair = Pair::new(localhost());
            let relay = Forwarder::start(localhost()).await;
            let route = pair.route_through(&relay);
            let (conn, _at_host) = pair.connect().await;
            round_trip(&conn, 256 << 10).await;
            let before = pair.client_peers.dropped();
            let client = canonical(pair.client.local_addr().unwrap());
            let payload = [0x40u8; 64];
            let routed = |leg: LegId| {
                let mut d = route::header(leg).to_vec();
                d.extend_from_slice(&payload);
                d
            };
            // The client's own leg, from another address than its relay's.
            let stranger = UdpSocket::bind((localhost(), 0)).await.unwrap();
            stranger
                .send_to(&routed(route.client), client)
                .await
                .unwrap();
            // From the relay's address: a leg the client does not hold (the
            // host's), another header version, a bare header, and noise.
            let mut version = routed(route.client);
            version[0] = 0x22;
            for junk in [
                routed(route.host),
                routed(LegId::random(&mut OsRng)),
                version,
                route::header(route.client).to_vec(),
                vec![0x00, 0x01, 0x02],
            ] {
                relay.socket.send_to(&junk, client).await.unwrap();
            }
            until("six refusals", || {
                pair.client_peers.dropped().refused >= before.refused + 6
            })
            .await;
            round_trip(&conn, 1 << 20).await;

            // A virtual peer with no path: its datagrams go nowhere.
            let nowhere = pair.client_peers.allocate();
            let connecting = pair
                .client
                .connect_with(pair.client_config.clone(), nowhere, NAME)
                .unwrap();
            until("an unsent datagram", || {
                pair.client_peers.dropped().unsent > before.unsent
            })
            .await;
            drop(connecting);
            assert!(pair.client_peers.remove(pair.host_at_client));
            assert!(!pair.client_peers.remove(pair.host_at_client));
            assert_eq!(pair.client_peers.path(pair.host_at_client), None);
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_devices_own_quic_runs_beside_routed_quic_on_the_same_endpoint() {
        timeout(LIMIT, async {
            let pair = Pair::new(localhost());
            let relay = Forwarder::start(localhost()).await;
            pair.route_through(&relay);
            // A plain quinn server with quinn's defaults (which grease the
            // fixed bit toward peers that allow it): the relay's stand-in.
            let plain =
                quinn::Endpoint::server(pair.server_config.clone(), (localhost(), 0).into())
                    .unwrap();
            let plain_addr = plain.local_addr().unwrap();
            let accepting = tokio::spawn({
                let plain = plain.clone();
                async move { serve_one(&plain).await }
            });
            let (routed, _at_host) = pair.connect().await;
            let direct = pair
                .client
                .connect_with(pair.client_config.clone(), plain_addr, NAME)
                .unwrap()
                .await
                .unwrap();
            let at_plain = accepting.await.unwrap();
            assert_eq!(direct.remote_address(), mapped(plain_addr));
            assert_eq!(
                at_plain.remote_address(),
                canonical(pair.client.local_addr().unwrap())
            );
            tokio::join!(round_trip(&routed, 4 << 20), round_trip(&direct, 4 << 20));
            // Nothing refused: in particular the plain server never
            // greased the fixed bit toward us (we do not allow it).
            assert_eq!(pair.client_peers.dropped(), DropCounts::default());
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ipv4_socket_shows_quinn_ipv6_and_reaches_ipv4_addresses() {
        timeout(LIMIT, async {
            let (socket, peers) = DeviceSocket::bind((localhost(), 0).into(), None).unwrap();
            let local = socket.local_addr().unwrap();
            assert_eq!(
                local.ip(),
                IpAddr::V6(Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]))
            );
            assert_eq!(
                peers.set(
                    peers.allocate(),
                    "[::1]:9".parse().unwrap(),
                    LegId::random(&mut OsRng)
                ),
                Err(PeerError::Unreachable("[::1]:9".parse().unwrap()))
            );
            assert_eq!(
                peers.set(local, local, LegId::random(&mut OsRng)),
                Err(PeerError::NotVirtual(local))
            );
            let (server_config, client_config) = tls();
            let plain = quinn::Endpoint::server(server_config, (localhost(), 0).into()).unwrap();
            let plain_addr = plain.local_addr().unwrap();
            let client = endpoint(socket, None).unwrap();
            let (conn, at_plain) = tokio::join!(
                client
                    .connect_with(client_config, plain_addr, NAME)
                    .unwrap(),
                serve_one(&plain)
            );
            let conn = conn.unwrap();
            assert_eq!(at_plain.remote_address(), canonical(local));
            round_trip(&conn, 256 << 10).await;
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routes_work_over_ipv6_and_a_dual_stack_socket_reaches_ipv4() {
        timeout(LIMIT, async {
            let ip6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
            if std::net::UdpSocket::bind((ip6, 0)).is_err() {
                return; // no IPv6 here
            }
            let pair = Pair::new(ip6);
            let relay = Forwarder::start(ip6).await;
            pair.route_through(&relay);
            let (conn, _at_host) = pair.connect().await;
            round_trip(&conn, 1 << 20).await;

            let (dual, _) = device_endpoint((Ipv6Addr::UNSPECIFIED, 0).into(), None).unwrap();
            let plain =
                quinn::Endpoint::server(pair.server_config.clone(), (localhost(), 0).into())
                    .unwrap();
            let plain_addr = plain.local_addr().unwrap();
            let (conn, _at_plain) = tokio::join!(
                dual.connect_with(pair.client_config.clone(), plain_addr, NAME)
                    .unwrap(),
                serve_one(&plain)
            );
            let conn = conn.unwrap();
            round_trip(&conn, 64 << 10).await;
        })
        .await
        .unwrap();
    }

    /// A GSO transmit to a virtual peer leaves as the same datagrams, each
    /// behind the route header.
    #[tokio::test]
    async fn each_segment_of_a_routed_transmit_gets_its_own_header() {
        timeout(LIMIT, async {
            let (socket, peers) = DeviceSocket::bind((localhost(), 0).into(), None).unwrap();
            let relay = UdpSocket::bind((localhost(), 0)).await.unwrap();
            let peer = peers.allocate();
            let leg = LegId::random(&mut OsRng);
            peers.set(peer, relay.local_addr().unwrap(), leg).unwrap();
            let segments = socket.max_transmit_segments().min(4);
            let size = 1000;
            let contents: Vec<u8> = (0..segments * size - 300).map(|i| (i / 7) as u8).collect();
            let transmit = Transmit {
                destination: peer,
                ecn: None,
                contents: &contents,
                segment_size: (segments > 1).then_some(size),
                src_ip: None,
            };
            let mut poller = socket.clone().create_io_poller();
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                .await
                .unwrap();
            socket.try_send(&transmit).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            for expected in contents.chunks(if segments > 1 { size } else { contents.len() }) {
                let (n, from) = relay.recv_from(&mut buf).await.unwrap();
                assert_eq!(from, canonical(socket.local_addr().unwrap()));
                assert_eq!(route::parse(&buf[..n]), Ok((leg, expected)));
            }
        })
        .await
        .unwrap();
    }

    /// Received entries, coalesced or not, lose their headers, take their
    /// peer's virtual address, and keep only what is theirs.
    #[test]
    fn received_entries_are_rewritten_or_emptied() {
        let peers = Peers::new(true);
        let relay: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let peer = peers.allocate();
        let leg = LegId::random(&mut OsRng);
        peers.set(peer, relay, leg).unwrap();
        let table = peers.read();
        let routed = |fill: u8, len: usize| {
            let mut d = route::header(leg).to_vec();
            d.extend(std::iter::repeat_n(fill, len));
            d
        };
        let meta = |addr, len, stride| RecvMeta {
            addr,
            len,
            stride,
            ecn: None,
            dst_ip: Some(IpAddr::from([127, 0, 0, 1])),
        };

        // One routed datagram.
        let mut buf = routed(0x41, 100);
        buf.resize(2000, 0);
        let mut m = meta(relay, 108, 108);
        assert_eq!(inbound(&table, true, &mut buf, &mut m), (1, 0));
        assert_eq!((m.len, m.stride, m.addr, m.dst_ip), (100, 100, peer, None));
        assert!(buf[..100].iter().all(|&b| b == 0x41));

        // A coalesced batch: three routed datagrams (the last shorter) with
        // a QUIC one among them, which cannot share the entry.
        let mut buf = [
            routed(1, 100),
            vec![0x40; 108],
            routed(2, 100),
            routed(3, 50),
        ]
        .concat();
        let mut m = meta(mapped(relay), buf.len(), 108);
        assert_eq!(inbound(&table, true, &mut buf, &mut m), (3, 1));
        assert_eq!((m.len, m.stride, m.addr), (250, 100, peer));
        let want = [vec![1; 100], vec![2; 100], vec![3; 50]].concat();
        assert_eq!(&buf[..250], &want[..]);

        // QUIC passes, its IPv4 source mapped.
        let mut buf = vec![0xc0; 50];
        let mut m = meta(relay, 50, 50);
        assert_eq!(inbound(&table, true, &mut buf, &mut m), (1, 0));
        assert_eq!((m.len, m.addr), (50, mapped(relay)));
        assert_eq!(m.dst_ip, Some(mapped_ip(IpAddr::from([127, 0, 0, 1]))));

        // The right leg from another address, and noise: emptied.
        let mut buf = routed(1, 100);
        let mut m = meta("127.0.0.1:7001".parse().unwrap(), 108, 108);
        assert_eq!(inbound(&table, true, &mut buf, &mut m), (0, 1));
        assert_eq!(m.len, 0);
        let mut buf = vec![0x00; 20];
        let mut m = meta(relay, 20, 20);
        assert_eq!(inbound(&table, true, &mut buf, &mut m), (0, 1));
        assert_eq!(m.len, 0);
        drop(table);

        // A new path replaces the old leg; a removed peer takes nothing.
        let new_leg = LegId::random(&mut OsRng);
        peers.set(peer, relay, new_leg).unwrap();
        let mut buf = routed(1, 100);
        let mut m = meta(relay, 108, 108);
        assert_eq!(inbound(&peers.read(), true, &mut buf, &mut m), (0, 1));
        let mut buf = [route::header(new_leg).to_vec(), vec![1; 100]].concat();
        let mut m = meta(relay, 108, 108);
        assert_eq!(inbound(&peers.read(), true, &mut buf, &mut m), (1, 0));
        assert!(peers.remove(peer));
        let mut buf = [route::header(new_leg).to_vec(), vec![1; 100]].concat();
        let mut m = meta(relay, 108, 108);
        assert_eq!(inbound(&peers.read(), true, &mut buf, &mut m), (0, 1));
        assert!(virtual_key(peer).is_some() && virtual_key(relay).is_none());
        assert_ne!(peers.allocate(), peers.allocate());
    }
}
