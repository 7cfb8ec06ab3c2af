//! Dialling the relay: a QUIC connection from a chosen local socket, with
//! transport settings that match how long the link lives, to the first relay
//! of a cluster that answers (tried in turn, Happy-Eyeballs style), and the
//! check on an address a relay redirects us to.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use latchkey_protocol::{ids::RelayPin, text, HandshakeError};
use tokio::time::timeout;

use super::{
    error::{relay_gave_up, NetError},
    pin::tls_config,
    socket::{self, DeviceSocket, Peers},
};
use crate::wire;

/// The name in the relay's certificate.
const SERVER_NAME: &str = "latchkey-relay";
/// How long the QUIC handshake may take. The relay lets a connection wait
/// at most 5 s for a handshake place and then 3 s for message 1 (counted
/// from when its packets reach the relay, so the client's 8 s also covers
/// the path's delay and a Retry's round trip). In every 5,000-host storm a
/// few agents got no answer to their handshake at all and, with
/// [`STEP_TIMEOUT`](super::STEP_TIMEOUT), waited 15 s before trying again:
/// they made the slow tail of the storm's connection times. The cause is not
/// known: no datagram was dropped, and it happened with the relay's
/// message-1 deadline raised to 10 s too.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// How soon a connection gives its relay up when nothing arrives from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Liveness {
    /// One-off requests (a host list, an enrolment) ride out 30 s of
    /// silence (a network change).
    #[default]
    Patient,
    /// Long-lived links, a host agent's and a session's, give up after
    /// [`WATCHFUL_SILENCE`], so a host or a session whose relay died moves
    /// to another relay of its cluster within seconds (keep-alives every
    /// second keep a live one open, through the loss of five in a row; a
    /// session resumes without the code, and its connection to the host
    /// goes on).
    Watchful,
}

/// A relay's address as people write it: an IPv4 address seen through a
/// dual-stack socket without its `::ffff:` prefix.
pub fn relay_text(addr: SocketAddr) -> String {
    SocketAddr::new(addr.ip().to_canonical(), addr.port()).to_string()
}

/// How long a [`Liveness::Watchful`] link hears nothing from its relay
/// before it gives the relay up.
pub const WATCHFUL_SILENCE: Duration = Duration::from_secs(6);

impl Liveness {
    fn idle(self) -> Duration {
        match self {
            Self::Patient => Duration::from_secs(30),
            Self::Watchful => WATCHFUL_SILENCE,
        }
    }
}

/// Transport settings of client and host connections: keep-alives well
/// inside the idle timeout.
fn transport_config(liveness: Liveness) -> quinn::TransportConfig {
    let keep_alive = match liveness {
        Liveness::Patient => Duration::from_secs(5),
        Liveness::Watchful => Duration::from_secs(1),
    };
    let idle = liveness.idle();
    let mut t = wire::transport_config(idle, keep_alive);
    // quinn resends an unanswered first packet after about 3 × this
    // estimate, doubling each time: with 100 ms (not RFC 9002's 333 ms) a
    // lossy path gets five tries within [`CONNECT_TIMEOUT`] instead of
    // three. On paths slower than about 300 ms round trip it costs one
    // needless 1,200-byte resend per connection.
    t.initial_rtt(Duration::from_millis(100));
    t
}

/// A QUIC connection to the relay (and the endpoint that drives it).
#[derive(Clone, Debug)]
pub struct RelayConn {
    /// The connection.
    pub conn: quinn::Connection,
    /// Kept alive as long as the connection is used.
    pub endpoint: quinn::Endpoint,
    /// The endpoint's virtual peers: a session's end-to-end connection
    /// goes through this relay on the same socket.
    pub peers: Peers,
}

/// A device's endpoint and its virtual peers, for connections that share
/// one socket: a host agent's relay link and its sessions' connections,
/// or the benchmark's fleets.
#[derive(Clone, Debug)]
pub struct DeviceEndpoint {
    /// The endpoint.
    pub endpoint: quinn::Endpoint,
    /// Its virtual peers.
    pub peers: Peers,
}

impl DeviceEndpoint {
    /// A device endpoint on a new socket bound to `bind`, accepting
    /// end-to-end connections with `server` (a host's).
    pub fn bind(bind: SocketAddr, server: Option<quinn::ServerConfig>) -> Result<Self, NetError> {
        let (endpoint, peers) = socket::device_endpoint(bind, server)
            .map_err(|e| NetError::Local(format!("UDP socket: {e}")))?;
        Ok(Self { endpoint, peers })
    }
}

impl RelayConn {
    /// Closes the connection and waits (at most 1 s) until the close is
    /// sent, so the relay lets go of it now rather than at its idle timeout.
    pub async fn close(&self, reason: &[u8]) {
        self.conn.close(quinn::VarInt::from_u32(0), reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Opens a QUIC connection to `relay`, checking the pinned certificate.
pub async fn connect(relay: &str, pin: &RelayPin) -> Result<RelayConn, NetError> {
    connect_from(&Local::Any, relay, pin).await
}

/// A client endpoint on a socket with the larger UDP buffers of
/// [`wire::udp_socket`], for many connections on one endpoint (the
/// benchmark's fleets). A single peer keeps the kernel's default buffers:
/// measured, 4 MiB ones let a bulk transfer queue milliseconds of packets
/// in front of an interactive session's (p50 round trip under load
/// 0.6 ms with the default, 3.2 ms with 4 MiB).
pub fn udp_endpoint(bind: SocketAddr) -> std::io::Result<DeviceEndpoint> {
    let (socket, peers) = DeviceSocket::bind(bind, Some(wire::UDP_BUFFER_BYTES))?;
    Ok(DeviceEndpoint {
        endpoint: socket::endpoint(socket, None)?,
        peers,
    })
}

/// Where a connection's packets leave from.
#[derive(Clone, Debug, Default)]
pub enum Local {
    /// A new UDP socket on any address (what every command does).
    #[default]
    Any,
    /// A new UDP socket on this address (tests use other loopback
    /// addresses to play other sources).
    Bind(SocketAddr),
    /// A shared endpoint: many connections on one socket (a host agent's
    /// links and its sessions; benchmarks run thousands of lightweight
    /// agents in one process).
    Shared(DeviceEndpoint),
}

/// [`connect`] from a chosen local socket.
pub async fn connect_from(
    local: &Local,
    relay: &str,
    pin: &RelayPin,
) -> Result<RelayConn, NetError> {
    connect_with(local, relay, pin, Liveness::Patient).await
}

/// [`connect_from`] with the given [`Liveness`].
pub async fn connect_with(
    local: &Local,
    relay: &str,
    pin: &RelayPin,
    liveness: Liveness,
) -> Result<RelayConn, NetError> {
    let addr: SocketAddr = tokio::net::lookup_host(relay)
        .await
        .map_err(|_| NetError::Resolve(relay.into()))?
        .next()
        .ok_or_else(|| NetError::Resolve(relay.into()))?;
    let (crypto, mismatch) = tls_config(pin)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config(liveness)));
    let DeviceEndpoint { endpoint, peers } = match local {
        Local::Shared(device) => device.clone(),
        Local::Any | Local::Bind(_) => {
            let bind = match local {
                Local::Bind(addr) => *addr,
                _ if addr.is_ipv4() => ([0, 0, 0, 0], 0).into(),
                _ => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            DeviceEndpoint::bind(bind, None)?
        }
    };
    let connecting = endpoint
        .connect_with(client, addr, SERVER_NAME)
        .map_err(|e| NetError::Local(e.to_string()))?;
    let conn = match timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err(NetError::RelayTimeout(relay.into())),
        Ok(Err(_)) if mismatch.load(Ordering::Relaxed) => {
            return Err(NetError::PinMismatch(relay.into()))
        }
        Ok(Err(e)) if relay_gave_up(&e) => return Err(NetError::RelayGaveUp),
        Ok(Err(e)) => {
            return Err(NetError::Unreachable {
                addr: relay.into(),
                why: e.to_string(),
            })
        }
        Ok(Ok(conn)) => conn,
    };
    Ok(RelayConn {
        conn,
        endpoint,
        peers,
    })
}
/// How long a connection attempt to one relay of a cluster runs alone
/// before the next relay is tried beside it (as Happy Eyeballs does for
/// addresses): a dead relay costs this, not a whole connect timeout.
const NEXT_RELAY_AFTER: Duration = Duration::from_millis(750);

/// The longest relay address a redirect may name (a DNS name and a port).
const MAX_RELAY_ADDR: usize = 260;

/// Checks the address a relay redirected us to before dialling it (the
/// pin decides whether it is trusted; this only keeps nonsense out).
pub fn check_redirect(to: &str) -> Result<(), NetError> {
    if to.is_empty() || to.len() > MAX_RELAY_ADDR || to.chars().any(text::is_hidden) {
        return Err(NetError::Handshake(HandshakeError::PeerMisbehaved(
            "redirected to an invalid relay address",
        )));
    }
    Ok(())
}

/// Opens a QUIC connection to the first of `relays` (the relays of one
/// cluster, which share a pin) that answers, trying them in order, each
/// [`NEXT_RELAY_AFTER`] after the one before while those still try. Returns
/// the connection and the relay's address. A pin mismatch stops the search:
/// it is never a reason to try another relay.
pub async fn connect_any(
    local: &Local,
    relays: &[String],
    pin: &RelayPin,
    liveness: Liveness,
) -> Result<(RelayConn, String), NetError> {
    let Some(first) = relays.first() else {
        return Err(NetError::Local("no relay address is configured".into()));
    };
    if relays.len() == 1 {
        return Ok((
            connect_with(local, first, pin, liveness).await?,
            first.clone(),
        ));
    }
    let mut tries: tokio::task::JoinSet<(usize, Result<RelayConn, NetError>)> =
        tokio::task::JoinSet::new();
    let mut next = relays.iter().enumerate();
    let mut errors: Vec<(usize, NetError)> = Vec::new();
    let mut stagger = Box::pin(tokio::time::sleep(Duration::ZERO));
    loop {
        tokio::select! {
            biased;
            Some(done) = tries.join_next(), if !tries.is_empty() => {
                let Ok((i, result)) = done else { continue };
                match result {
                    Ok(conn) => return Ok((conn, relays[i].clone())),
                    Err(e @ NetError::PinMismatch(_)) => return Err(e),
                    Err(e) => {
                        errors.push((i, e));
                        // Its turn is over: the next one starts now.
                        stagger.as_mut().reset(tokio::time::Instant::now());
                    }
                }
            }
            () = &mut stagger, if next.len() > 0 => {
                if let Some((i, relay)) = next.next() {
                    let (local, relay, pin) = (local.clone(), relay.clone(), *pin);
                    tries.spawn(async move {
                        (i, connect_with(&local, &relay, &pin, liveness).await)
                    });
                }
                stagger.as_mut().reset(tokio::time::Instant::now() + NEXT_RELAY_AFTER);
            }
            else => break,
        }
    }
    Err(every_relay_failed(relays, errors))
}

/// The error when no relay of a cluster could be reached: each relay
/// tried, in the configured order, with why (a lone error names its
/// relay already).
fn every_relay_failed(relays: &[String], mut errors: Vec<(usize, NetError)>) -> NetError {
    errors.sort_by_key(|(i, _)| *i);
    if errors.len() <= 1 {
        return errors
            .pop()
            .map(|(_, e)| e)
            .unwrap_or_else(|| NetError::Local("no relay could be tried".into()));
    }
    NetError::NoRelay(
        errors
            .into_iter()
            .map(|(i, e)| {
                let (relay, why) = (&relays[i], e.to_string());
                if why.contains(relay.as_str()) {
                    why
                } else {
                    format!("{relay}: {why}")
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay that never answers: its socket is bound, and nothing reads.
    fn silent_relay() -> (std::net::UdpSocket, String) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("address").to_string();
        (socket, addr)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_relay_is_named() {
        let (_socket, relay) = silent_relay();
        let pin = RelayPin {
            noise_key: latchkey_protocol::ids::PublicKey([1; 32]),
            cert_sha256: [7; 32],
        };
        let e = connect_any(
            &Local::Any,
            std::slice::from_ref(&relay),
            &pin,
            Liveness::Patient,
        )
        .await
        .expect_err("no relay answers");
        let said = e.to_string();
        assert!(
            said.contains(&relay) && said.contains("did not answer"),
            "{said}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_no_relay_of_a_cluster_answers_each_is_named_in_order() {
        let (_one, first) = silent_relay();
        let (_two, second) = silent_relay();
        let relays = [
            first.clone(),
            "no-such-relay.invalid:4433".to_string(),
            second.clone(),
        ];
        let pin = RelayPin {
            noise_key: latchkey_protocol::ids::PublicKey([1; 32]),
            cert_sha256: [7; 32],
        };
        let e = connect_any(&Local::Any, &relays, &pin, Liveness::Patient)
            .await
            .expect_err("no relay answers");
        let said = e.to_string();
        let at = |needle: &str| {
            said.find(needle)
                .unwrap_or_else(|| panic!("{needle} not in {said}"))
        };
        assert!(
            at(&first) < at("no-such-relay.invalid") && at("no-such-relay.invalid") < at(&second),
            "{said}"
        );
        assert!(said.starts_with("no relay answered"), "{said}");
    }
}
