//! Per-source token buckets for new connections and outsider logins
//! (SPEC A5, S8). Pure: callers pass `now`, so tests need no clock.

use std::{collections::HashMap, net::IpAddr, time::Instant};

/// One bucket per source address, with a bounded number of tracked sources
/// (the oldest-touched are forgotten first, which only ever makes the limiter
/// more lenient, never lets it grow without bound).
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_sec: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
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
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_sources {
            self.evict_full(now);
        }
        let (burst, per_sec) = (self.burst, self.per_sec);
        let bucket = self.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(burst);
        bucket.last = now;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose buckets have refilled (they behave like new
    /// ones), or failing that the least recently seen half.
    fn evict_full(&mut self, now: Instant) {
        let (burst, per_sec) = (self.burst, self.per_sec);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_sec < burst
        });
        if self.buckets.len() >= self.max_sources {
            let mut seen: Vec<Instant> = self.buckets.values().map(|b| b.last).collect();
            seen.sort();
            let cut = seen[seen.len() / 2];
            self.buckets.retain(|_, b| b.last > cut);
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
