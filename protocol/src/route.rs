//! Routes: how the relay carries a session's end-to-end QUIC datagrams
//! between client and host without reading them.
//!
//! Client and host speak QUIC to each other through the relay's UDP port,
//! on the same socket as their own connection to the relay. A datagram of
//! the end-to-end connection starts with an 8-byte route header:
//!
//! ```text
//! 0      1                               8
//! +------+-------------------------------+----------------------------+
//! | 0x2v | leg id (56 bits, big-endian)  | QUIC packet, sealed by the |
//! +------+-------------------------------+ two devices' own keys      |
//! ```
//!
//! The first byte keeps QUIC's fixed bit (0x40) clear, which no Latchkey
//! QUIC packet does (every endpoint turns greasing of that bit off), and
//! its top nibble 0x2 is neither STUN (0x0, 0x1) nor anything else RFC 7983
//! multiplexes. The low nibble is the header's version.
//!
//! A route joins two legs, one per device, each bound to the address of
//! that device's authenticated connection to the relay. A device sends with
//! its own leg id; the relay checks that the datagram came from the
//! address its leg is bound to, writes the other leg's id in its place and
//! sends it, the same size, to the other leg's address. A device thus only
//! ever sees its own leg ids, and the relay nothing but sizes and timing.
//! [`Routes`] is that decision, with no I/O: the relay's socket layer runs
//! it on every datagram.

use std::{collections::HashMap, net::SocketAddr, time::Instant};

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::bucket::TokenBucket;

/// Length of the route header.
pub const HEADER_LEN: usize = 8;

/// The header's version, in the low nibble of its first byte.
pub const VERSION: u8 = 1;

/// The first byte of every route header of this version.
const FIRST_BYTE: u8 = 0x20 | VERSION;

/// QUIC's fixed bit: set in every QUIC packet a Latchkey endpoint sends.
const QUIC_FIXED_BIT: u8 = 0x40;

/// Largest leg id (56 bits).
const MAX_LEG: u64 = (1 << 56) - 1;

/// What a datagram arriving on a Latchkey UDP port is, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A QUIC packet (fixed bit set): the receiver's own QUIC endpoint's.
    Quic,
    /// A routed datagram (a route header of some version).
    Routed,
    /// Anything else (an empty datagram, STUN, noise): dropped.
    Other,
}

/// Classifies a datagram by its first byte.
pub fn kind(datagram: &[u8]) -> Kind {
    match datagram.first() {
        Some(b) if b & QUIC_FIXED_BIT != 0 => Kind::Quic,
        Some(b) if b & 0xF0 == 0x20 => Kind::Routed,
        _ => Kind::Other,
    }
}

/// One device's end of a route, as named in route headers: random, so that
/// nobody can guess another session's, and nonzero. On the wire (the
/// relay hands each device its own) it is checked as it is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct LegId(u64);

impl TryFrom<u64> for LegId {
    type Error = &'static str;

    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::from_u64(value).ok_or("a leg id is nonzero and 56 bits wide")
    }
}

impl From<LegId> for u64 {
    fn from(leg: LegId) -> u64 {
        leg.0
    }
}

impl LegId {
    /// A fresh random leg id.
    pub fn random(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        loop {
            let id = rng.next_u64() & MAX_LEG;
            if id != 0 {
                return Self(id);
            }
        }
    }

    /// The leg id with this value, if it is one (nonzero, 56 bits).
    pub fn from_u64(value: u64) -> Option<Self> {
        (value != 0 && value <= MAX_LEG).then_some(Self(value))
    }

    /// The id's value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Why a datagram is not a routed datagram this side can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Shorter than the header plus one byte of payload.
    #[error("routed datagram too short ({0} bytes)")]
    TooShort(usize),
    /// A header of another version (or not a route header at all).
    #[error("not a route header of version {VERSION} (first byte {0:#04x})")]
    Version(u8),
    /// Leg id zero.
    #[error("route header with leg id zero")]
    ZeroLeg,
}

/// The route header naming `leg`.
pub fn header(leg: LegId) -> [u8; HEADER_LEN] {
    let mut out = leg.0.to_be_bytes();
    out[0] = FIRST_BYTE;
    out
}

/// The leg a routed datagram names, and its payload.
pub fn parse(datagram: &[u8]) -> Result<(LegId, &[u8]), HeaderError> {
    if datagram.len() <= HEADER_LEN {
        return Err(HeaderError::TooShort(datagram.len()));
    }
    let (head, payload) = datagram.split_at(HEADER_LEN);
    if head[0] != FIRST_BYTE {
        return Err(HeaderError::Version(head[0]));
    }
    let mut value = [0u8; 8];
    value[1..].copy_from_slice(&head[1..]);
    let leg = LegId::from_u64(u64::from_be_bytes(value)).ok_or(HeaderError::ZeroLeg)?;
    Ok((leg, payload))
}

/// Writes `leg` into the header of a datagram that [`parse`] accepted.
fn rewrite(datagram: &mut [u8], leg: LegId) {
    datagram[..HEADER_LEN].copy_from_slice(&header(leg));
}

/// How fast one leg may send, in bytes: a token bucket, so that one
/// session cannot take a relay's whole uplink from the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes per second, sustained.
    pub rate: u64,
    /// Bytes at once, after a quiet spell.
    pub burst: u64,
}

impl Budget {
    /// No limit (tests and benchmarks).
    pub const UNLIMITED: Budget = Budget {
        rate: u64::MAX,
        burst: u64::MAX,
    };

    fn new_bucket(self, now: Instant) -> TokenBucket {
        TokenBucket::full(self.burst as f64, now)
    }

    fn take(self, bucket: &mut TokenBucket, now: Instant, bytes: usize) -> bool {
        bucket.take(now, self.rate as f64, self.burst as f64, bytes as f64)
    }
}

/// What one leg has sent through the relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegCounts {
    /// Datagrams forwarded.
    pub datagrams: u64,
    /// Bytes forwarded (headers included).
    pub bytes: u64,
}

impl LegCounts {
    /// Adds what another leg (an earlier route of the same session)
    /// carried.
    pub fn add(&mut self, other: LegCounts) {
        self.datagrams = self.datagrams.saturating_add(other.datagrams);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

#[derive(Debug)]
struct Leg {
    /// The address of this device's authenticated relay connection: the
    /// only source this leg's datagrams are taken from, and where the other
    /// leg's are sent.
    bound: SocketAddr,
    peer: LegId,
    bucket: TokenBucket,
    sent: LegCounts,
}

/// A route as the relay hands it out: one leg id per device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The client's leg.
    pub client: LegId,
    /// The host's leg.
    pub host: LegId,
}

/// What a removed route had carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounts {
    /// From the client to the host.
    pub from_client: LegCounts,
    /// From the host to the client.
    pub from_host: LegCounts,
}

/// Why a datagram was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// Not a route header this relay reads (too short, another version).
    Malformed,
    /// A leg no live route has.
    UnknownLeg,
    /// A live leg, from an address it is not bound to.
    WrongSource,
    /// The leg has used its budget for now.
    OverBudget,
}

/// The relay's live routes.
#[derive(Debug)]
pub struct Routes {
    legs: HashMap<LegId, Leg>,
    budget: Budget,
}

impl Routes {
    /// No routes yet; every leg gets `budget`.
    pub fn new(budget: Budget) -> Self {
        Self {
            legs: HashMap::new(),
            budget,
        }
    }

    /// Opens a route between a client's and a host's relay connections,
    /// with fresh leg ids.
    pub fn open(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        now: Instant,
        client: SocketAddr,
        host: SocketAddr,
    ) -> Route {
        let fresh = |legs: &HashMap<LegId, Leg>, rng: &mut _| loop {
            let id = LegId::random(rng);
            if !legs.contains_key(&id) {
                return id;
            }
        };
        let client_leg = fresh(&self.legs, rng);
        let host_leg = loop {
            let id = fresh(&self.legs, rng);
            if id != client_leg {
                break id;
            }
        };
        for (leg, bound, peer) in [(client_leg, client, host_leg), (host_leg, host, client_leg)] {
            self.legs.insert(
                leg,
                Leg {
                    bound,
                    peer,
                    bucket: self.budget.new_bucket(now),
                    sent: LegCounts::default(),
                },
            );
        }
        Route {
            client: client_leg,
            host: host_leg,
        }
    }

    /// Removes `route` (nothing if it is gone already), saying what it
    /// carried.
    pub fn close(&mut self, route: Route) -> Option<RouteCounts> {
        let client = self.legs.remove(&route.client)?;
        let host = self.legs.remove(&route.host)?;
        Some(RouteCounts {
            from_client: client.sent,
            from_host: host.sent,
        })
    }

    /// What `route` has carried so far.
    pub fn counts(&self, route: Route) -> Option<RouteCounts> {
        Some(RouteCounts {
            from_client: self.legs.get(&route.client)?.sent,
            from_host: self.legs.get(&route.host)?.sent,
        })
    }

    /// Binds `leg` to a new address: its device's relay connection moved
    /// (a NAT rebinding, or the device resumed on this relay).
    pub fn rebind(&mut self, leg: LegId, to: SocketAddr) -> bool {
        match self.legs.get_mut(&leg) {
            Some(l) => {
                l.bound = to;
                true
            }
            None => false,
        }
    }

    /// How many routes are live.
    pub fn len(&self) -> usize {
        self.legs.len() / 2
    }

    /// Whether no route is live.
    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// Decides what to do with a routed datagram that arrived from `from`:
    /// forward it to the returned address, its header already rewritten
    /// for the receiving leg (same length: a relay never amplifies), or
    /// drop it for the reason returned.
    pub fn forward(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
    ) -> Result<SocketAddr, Dropped> {
        let (leg, _) = parse(datagram).map_err(|_| Dropped::Malformed)?;
        let budget = self.budget;
        let sender = self.legs.get_mut(&leg).ok_or(Dropped::UnknownLeg)?;
        if sender.bound != from {
            return Err(Dropped::WrongSource);
        }
        if !budget.take(&mut sender.bucket, now, datagram.len()) {
            return Err(Dropped::OverBudget);
        }
        sender.sent.datagrams += 1;
        sender.sent.bytes += datagram.len() as u64;
        let peer = sender.peer;
        let to = self.legs.get(&peer).ok_or(Dropped::UnknownLeg)?.bound;
        rewrite(datagram, peer);
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route is two entries of the leg map: what a relay keeps per live
    /// route stays small (docs/protocol.md quotes it).
    #[test]
    fn a_route_costs_two_small_map_entries() {
        let entry = std::mem::size_of::<(LegId, Leg)>();
        println!("one leg: {entry} bytes in the map");
        assert!(entry <= 112, "a leg takes {entry} bytes");
    }
    use rand::rngs::OsRng;
    use std::time::Duration;

    /// How long a bucket filling at `rate` takes to earn `bytes`.
    fn refill_time(rate: u64, bytes: u64) -> Duration {
        Duration::from_nanos(bytes * 1_000_000_000 / rate)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn datagram(leg: LegId, payload: &[u8]) -> Vec<u8> {
        let mut d = header(leg).to_vec();
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn headers_round_trip_and_are_never_quic() {
        for _ in 0..1000 {
            let leg = LegId::random(&mut OsRng);
            let d = datagram(leg, b"x");
            assert_eq!(kind(&d), Kind::Routed);
            assert_eq!(parse(&d), Ok((leg, &b"x"[..])));
        }
        assert_eq!(kind(&[0xc3, 0, 0, 0, 1]), Kind::Quic);
        assert_eq!(kind(&[0x41]), Kind::Quic);
        assert_eq!(kind(&[0x00, 0x01]), Kind::Other);
        assert_eq!(kind(&[]), Kind::Other);
        assert_eq!(parse(&[0x21; 8]), Err(HeaderError::TooShort(8)));
        assert_eq!(parse(&[0x22; 9]), Err(HeaderError::Version(0x22)));
        let mut zero = vec![0x21, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(parse(&zero), Err(HeaderError::ZeroLeg));
        zero[7] = 1;
        assert_eq!(parse(&zero).map(|(l, _)| l.get()), Ok(1));
        assert_eq!(LegId::from_u64(1 << 56), None);
    }

    #[test]
    fn a_datagram_crosses_only_from_the_bound_address_and_arrives_with_the_receivers_leg() {
        let now = Instant::now();
        let mut routes = Routes::new(Budget::UNLIMITED);
        let r = routes.open(&mut OsRng, now, addr(1), addr(2));
        let mut d = datagram(r.client, b"hello");
        assert_eq!(routes.forward(now, addr(1), &mut d), Ok(addr(2)));
        assert_eq!(parse(&d), Ok((r.host, &b"hello"[..])));
        let mut back = datagram(r.host, b"hi");
        assert_eq!(routes.forward(now, addr(2), &mut back), Ok(addr(1)));
        assert_eq!(parse(&back), Ok((r.client, &b"hi"[..])));
        // From anywhere else, or naming a leg nobody holds: dropped.
        let mut spoofed = datagram(r.client, b"x");
        assert_eq!(
            routes.forward(now, addr(3), &mut spoofed),
            Err(Dropped::WrongSource)
        );
        let mut guessed = datagram(LegId::random(&mut OsRng), b"x");
        assert_eq!(
            routes.forward(now, addr(1), &mut guessed),
            Err(Dropped::UnknownLeg)
        );
        let mut short = vec![0x21; 4];
        assert_eq!(
            routes.forward(now, addr(1), &mut short),
            Err(Dropped::Malformed)
        );
        let counts = routes.close(r).unwrap();
        assert_eq!(
            counts.from_client,
            LegCounts {
                datagrams: 1,
                bytes: 13
            }
        );
        assert_eq!(
            counts.from_host,
            LegCounts {
                datagrams: 1,
                bytes: 10
            }
        );
        // A closed route forwards nothing.
        let mut late = datagram(r.client, b"x");
        assert_eq!(
            routes.forward(now, addr(1), &mut late),
            Err(Dropped::UnknownLeg)
        );
        assert!(routes.is_empty());
        assert_eq!(routes.close(r), None);
    }

    #[test]
    fn a_rebound_leg_is_taken_from_and_sent_to_its_new_address_only() {
        let now = Instant::now();
        let mut routes = Routes::new(Budget::UNLIMITED);
        let r = routes.open(&mut OsRng, now, addr(1), addr(2));
        assert!(routes.rebind(r.host, addr(4)));
        let mut d = datagram(r.client, b"x");
        assert_eq!(routes.forward(now, addr(1), &mut d), Ok(addr(4)));
        let mut old = datagram(r.host, b"x");
        assert_eq!(
            routes.forward(now, addr(2), &mut old),
            Err(Dropped::WrongSource)
        );
        let mut new = datagram(r.host, b"x");
        assert_eq!(routes.forward(now, addr(4), &mut new), Ok(addr(1)));
    }

    #[test]
    fn a_leg_over_its_budget_is_dropped_until_its_bucket_refills_and_the_other_leg_is_not() {
        let now = Instant::now();
        let budget = Budget {
            rate: 1000,
            burst: 100,
        };
        let mut routes = Routes::new(budget);
        let r = routes.open(&mut OsRng, now, addr(1), addr(2));
        let payload = [0u8; 42]; // 50 bytes with the header
        for _ in 0..2 {
            let mut d = datagram(r.client, &payload);
            assert!(routes.forward(now, addr(1), &mut d).is_ok());
        }
        let mut d = datagram(r.client, &payload);
        assert_eq!(
            routes.forward(now, addr(1), &mut d),
            Err(Dropped::OverBudget)
        );
        let mut other = datagram(r.host, &payload);
        assert!(routes.forward(now, addr(2), &mut other).is_ok());
        let later = now + refill_time(budget.rate, 50);
        let mut d = datagram(r.client, &payload);
        assert!(routes.forward(later, addr(1), &mut d).is_ok());
    }
}
