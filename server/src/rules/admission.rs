//! Who may start a handshake (SPEC A5, S8): each source address has a
//! token bucket ([`super::ratelimit`]); a connection is charged once its
//! address is proven, and an outsider's login costs its source extra
//! tokens, so guessing names or keys from one place slows to a crawl.
//! Callers pass `now`.

use std::{
    net::IpAddr,
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use super::ratelimit::RateLimiter;

/// Sources tracked at most (the oldest-touched are forgotten first).
const MAX_SOURCES: usize = 65_536;

/// The per-source limits of new connections.
pub struct Admission {
    limiter: Mutex<RateLimiter>,
    /// Tokens an outsider's login costs on top of its connection's one.
    outsider_penalty: f64,
}

impl Admission {
    /// `burst` connections per source at once, `per_sec` earned back each
    /// second; an outsider's login costs `outsider_penalty` more.
    pub fn new(burst: u32, per_sec: f64, outsider_penalty: u32) -> Self {
        Self {
            limiter: Mutex::new(RateLimiter::new(burst, per_sec, MAX_SOURCES)),
            outsider_penalty: f64::from(outsider_penalty),
        }
    }

    fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges a connection whose address is proven; `false` if its source
    /// has no tokens left.
    pub fn charge(&self, source: IpAddr, now: Instant) -> bool {
        self.limiter().allow(source, 1.0, now)
    }

    /// Whether a connection from `source` would be allowed now, without
    /// charging it (an unproven address is asked to prove it first).
    pub fn would_allow(&self, source: IpAddr, now: Instant) -> bool {
        self.limiter().would_allow(source, 1.0, now)
    }

    /// Charges an outsider's source extra tokens (SPEC S8).
    pub fn penalize(&self, source: IpAddr, now: Instant) {
        let mut limiter = self.limiter();
        // Take what is there if the full penalty is not: the next
        // connection from this source is refused either way.
        if !limiter.allow(source, self.outsider_penalty, now) {
            limiter.allow(source, 1.0, now);
        }
    }
}
