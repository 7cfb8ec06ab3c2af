//! Per-source token buckets for new connections and outsider logins
//! (SPEC A5, S8). Pure: callers pass `now`, so tests need no clock.

use std::{collections::HashMap, net::IpAddr, time::Instant};

use latchkey_protocol::bucket::TokenBucket;

/// The bucket an address is charged to: IPv4 addresses one each, IPv6 by
/// /64 (anyone holding a /64 has 2^64 addresses to rotate through).
fn bucket_of(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// One bucket per source address, with a bounded number of tracked sources
/// (the oldest-touched are forgotten first, which only ever makes the limiter
/// more lenient, never lets it grow without bound).
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_sec: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, TokenBucket>,
}

impl RateLimiter {
    /// `burst` tokens at most, refilled at `per_sec` per second.
    pub fn new(burst: u32, per_sec: f64, max_sources: usize) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_sec: per_sec.max(0.0),
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes `cost` tokens from `source`'s bucket; `false` if there are not
    /// enough (then nothing is taken).
    pub fn allow(&mut self, source: IpAddr, cost: f64, now: Instant) -> bool {
        let source = bucket_of(source);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            self.evict_full(now);
        }
        let (burst, per_sec) = (self.burst, self.per_sec);
        self.buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(now, per_sec, burst, cost)
    }

    /// Whether `source` has `cost` tokens now, without taking them.
    pub fn would_allow(&self, source: IpAddr, cost: f64, now: Instant) -> bool {
        match self.buckets.get(&bucket_of(source)) {
            None => true,
            Some(b) => b.level(now, self.per_sec, self.burst) >= cost,
        }
    }

    /// Forgets sources whose buckets have refilled (they behave like new
    /// ones), or failing that the least recently seen half.
    fn evict_full(&mut self, now: Instant) {
        let (burst, per_sec) = (self.burst, self.per_sec);
        self.buckets
            .retain(|_, b| b.level(now, per_sec, burst) < burst);
        if self.buckets.len() >= self.max_sources {
            let mut seen: Vec<Instant> = self.buckets.values().map(|b| b.last()).collect();
            seen.sort();
            let cut = seen[seen.len() / 2];
            self.buckets.retain(|_, b| b.last() > cut);
        }
    }

    /// How many sources are tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let mut limiter = RateLimiter::new(2, 0.0, 16);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.allow(a, 1.0, now));
        assert!(limiter.allow(b, 1.0, now));
        assert!(!limiter.allow(a, 1.0, now), "same /64, bucket empty");
        assert!(limiter.allow(c, 1.0, now), "another /64");
        // IPv4 (and IPv4-mapped IPv6) one address each.
        assert!(limiter.allow("10.0.0.1".parse().unwrap(), 2.0, now));
        assert!(!limiter.allow("::ffff:10.0.0.1".parse().unwrap(), 1.0, now));
        assert!(limiter.allow("10.0.0.2".parse().unwrap(), 1.0, now));
    }
    use std::time::Duration;

    #[test]
    fn a_burst_is_limited_and_refills_and_other_sources_are_unaffected() {
        let mut rl = RateLimiter::new(3, 1.0, 100);
        let t0 = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| rl.allow(a, 1.0, t0)));
        assert!(!rl.allow(a, 1.0, t0));
        assert!(rl.allow(b, 1.0, t0));
        assert!(rl.allow(a, 1.0, t0 + Duration::from_secs(1)));
        assert!(!rl.allow(a, 1.0, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn tracked_sources_stay_bounded() {
        let mut rl = RateLimiter::new(2, 0.0, 64);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            rl.allow(ip, 1.0, t0 + Duration::from_millis(u64::from(i)));
            assert!(rl.tracked() <= 64);
        }
    }
}
