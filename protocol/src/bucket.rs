//! A token bucket, the one every rate and budget of Latchkey is made of:
//! at most `burst` tokens, refilled at `rate` a second, each use taking its
//! cost or nothing. Pure: callers pass `now`.

use std::time::Instant;

/// One bucket's state; its `rate` and `burst` are the owner's, passed in,
/// so a table of many buckets stores them once.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    /// The tokens it holds at `now`.
    pub fn level(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }

    /// Takes `cost` tokens if it holds them at `now`; `false` (and nothing
    /// taken) if not.
    pub fn take(&mut self, now: Instant, rate: f64, burst: f64, cost: f64) -> bool {
        self.tokens = self.level(now, rate, burst);
        self.last = self.last.max(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// When it was last used.
    pub fn last(&self) -> Instant {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate_and_never_more_than_its_burst() {
        let t = Instant::now();
        let mut b = TokenBucket::full(3.0, t);
        assert!((0..3).all(|_| b.take(t, 1.0, 3.0, 1.0)));
        assert!(!b.take(t, 1.0, 3.0, 1.0));
        assert!(b.take(t + Duration::from_secs(1), 1.0, 3.0, 1.0));
        assert_eq!(b.level(t + Duration::from_secs(100), 1.0, 3.0), 3.0);
        // A cost larger than it holds takes nothing.
        assert!(!b.take(t + Duration::from_secs(100), 1.0, 3.0, 4.0));
        assert_eq!(b.level(t + Duration::from_secs(100), 1.0, 3.0), 3.0);
    }
}
