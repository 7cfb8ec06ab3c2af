//! The lockout rule of SPEC S6, as pure functions, so the store, the tests
//! and the property test's reference model share one definition.
//!
//! - Every attempt that gets a real KE2 counts as a failure the moment it
//!   is reserved (SPEC A3), so the count covers decided failures and
//!   attempts still in flight. Once it reaches the threshold no further
//!   code is evaluated: the host is locked, or, while some of the counted
//!   attempts are still pending, new ones are refused as "busy".
//! - The host locks when its *decided* failures reach the threshold (a
//!   wrong code, an abandoned attempt, or one cut off by a crash, which is
//!   decided as failed at the next start).
//! - A success (valid KE3) resets the count to the attempts still pending.
//! - An admin unlock resets the count and lifts the lock.

/// The default threshold (GoToMyPC's "three attempts").
pub const DEFAULT_THRESHOLD: u32 = 3;

/// Whether a host with `failures` counted failures is locked under
/// `threshold` (a threshold of 0 is treated as 1: every host locks
/// eventually).
pub fn locks_at(failures: u32, threshold: u32) -> bool {
    failures >= threshold.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_third_failure_locks_by_default() {
        assert!(!locks_at(2, DEFAULT_THRESHOLD));
        assert!(locks_at(3, DEFAULT_THRESHOLD));
        assert!(locks_at(1, 0));
    }
}
