//! The relay's forwarding decision on fuzzer-chosen routes, addresses and
//! datagrams. Whatever arrives: nothing panics; a datagram is forwarded
//! only to the other leg of a live route, only if it came from the address
//! its own leg is bound to, never back to its sender, always the same
//! size, and carrying the receiving leg's id; and every header this side
//! writes parses back to its leg.
#![no_main]

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use latchkey_protocol::route::{self, Budget, LegId, Route, Routes};
use libfuzzer_sys::fuzz_target;
use rand::{rngs::StdRng, SeedableRng};

fn addr(b: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(b % 8)))
}

fuzz_target!(|data: &[u8]| {
    let _ = route::parse(data);
    let _ = route::kind(data);
    let mut rng = StdRng::seed_from_u64(data.len() as u64);
    let start = Instant::now();
    let mut now = start;
    let budget = Budget {
        rate: 10_000,
        burst: 4_000,
    };
    let mut routes = Routes::new(budget);
    let mut live: Vec<(Route, SocketAddr, SocketAddr)> = Vec::new();
    let mut bound: HashMap<LegId, (SocketAddr, LegId)> = HashMap::new();
    let mut ops = data.chunks(4);
    while let Some(op) = ops.next() {
        let [kind, a, b, c] = [0, 1, 2, 3].map(|i| op.get(i).copied().unwrap_or(0));
        match kind % 6 {
            0 if live.len() < 16 => {
                let (client, host) = (addr(a), addr(b));
                let r = routes.open(&mut rng, now, client, host);
                assert_ne!(r.client, r.host);
                let mut d = route::header(r.client).to_vec();
                d.push(0);
                assert_eq!(route::parse(&d).map(|(leg, _)| leg), Ok(r.client));
                bound.insert(r.client, (client, r.host));
                bound.insert(r.host, (host, r.client));
                live.push((r, client, host));
            }
            1 if !live.is_empty() => {
                let (r, ..) = live.remove(usize::from(a) % live.len());
                assert!(routes.close(r).is_some());
                assert!(routes.close(r).is_none());
                bound.remove(&r.client);
                bound.remove(&r.host);
            }
            2 if !live.is_empty() => {
                let (r, ..) = live[usize::from(a) % live.len()];
                let leg = if b % 2 == 0 { r.client } else { r.host };
                assert!(routes.rebind(leg, addr(c)));
                if let Some(entry) = bound.get_mut(&leg) {
                    entry.0 = addr(c);
                }
            }
            3 => now += Duration::from_millis(u64::from(a) * 10),
            _ => {
                // A datagram: a live leg's header (or a made-up one) with a
                // payload taken from what follows.
                let len = usize::from(b) * 8;
                let payload: Vec<u8> = ops.by_ref().take(len / 4 + 1).flatten().copied().collect();
                let leg = match live.get(usize::from(a) % live.len().max(1)) {
                    Some((r, ..)) if c % 3 != 0 => {
                        if c % 2 == 0 { r.client } else { r.host }
                    }
                    _ => LegId::from_u64(u64::from(c) + 1).unwrap_or(LegId::random(&mut rng)),
                };
                let mut datagram = route::header(leg).to_vec();
                datagram.extend_from_slice(&payload);
                if c % 5 == 0 {
                    // Noise where the header is.
                    let n = datagram.len().min(payload.len());
                    datagram[..n].copy_from_slice(&payload[..n]);
                }
                let before = datagram.clone();
                let from = addr(a.wrapping_add(c));
                match routes.forward(now, from, &mut datagram) {
                    Ok(to) => {
                        let (sender, _) = route::parse(&before).unwrap();
                        let (sender_addr, peer) = bound[&sender];
                        assert_eq!(from, sender_addr);
                        let (peer_addr, back) = bound[&peer];
                        assert_eq!(back, sender);
                        assert_eq!(to, peer_addr);
                        assert_eq!(datagram.len(), before.len());
                        assert_eq!(route::parse(&datagram).unwrap().0, peer);
                        assert_eq!(datagram[8..], before[8..]);
                    }
                    Err(_) => assert_eq!(datagram, before),
                }
            }
        }
    }
    assert_eq!(routes.len(), live.len());
});
