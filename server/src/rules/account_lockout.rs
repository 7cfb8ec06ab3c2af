//! The console's account lockout: `threshold` failed sign-ins in a row lock
//! an admin account for `lasts_secs`; a lock ends by itself (anyone who
//! reaches the sign-in page can cause one, so it must not last for ever),
//! and the next failure after it starts a new count. The store loads an
//! account's [`AccountState`], asks these functions and saves the answer.
//!
//! ```text
//!   [open, n failures] ── failure, n+1 < threshold ──► [open, n+1]
//!          │ failure, n+1 = threshold
//!          ▼
//!   [locked at t] ── now >= t + lasts: the lock has ended ──► [open, 0]
//!   (a success, or a new setup link, also clears the count)
//! ```

/// The rule's settings (`admin_login_lockout`, `admin_lockout_secs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleLockout {
    /// Failures in a row that lock (0 is treated as 1).
    pub threshold: u32,
    /// How long a lock lasts, in seconds.
    pub lasts_secs: i64,
}

/// One account's lockout state as the store keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountState {
    /// Failed sign-ins in a row.
    pub failures: u32,
    /// When the account was locked (Unix seconds), if it was.
    pub locked_at: Option<i64>,
}

impl ConsoleLockout {
    /// The shortest lock: one of less than a minute would not slow guessing.
    pub const MIN_SECS: i64 = 60;

    /// The rule for the given settings, each brought into its range.
    pub fn new(threshold: u32, lasts_secs: u64) -> Self {
        Self {
            threshold: threshold.max(1),
            lasts_secs: i64::try_from(lasts_secs)
                .unwrap_or(i64::MAX / 2)
                .max(Self::MIN_SECS),
        }
    }

    fn lock_ended(&self, state: &AccountState, now: i64) -> bool {
        matches!(state.locked_at, Some(at) if at.saturating_add(self.lasts_secs) <= now)
    }

    /// Whether the account is locked at `now`.
    pub fn is_locked(&self, state: &AccountState, now: i64) -> bool {
        state.locked_at.is_some() && !self.lock_ended(state, now)
    }

    /// Until when the account is locked, if it is at `now`.
    pub fn locked_until(&self, state: &AccountState, now: i64) -> Option<i64> {
        state
            .locked_at
            .filter(|_| self.is_locked(state, now))
            .map(|at| at.saturating_add(self.lasts_secs))
    }

    /// The state after one more failure at `now`, and whether this failure
    /// is the one that locks the account.
    pub fn after_failure(&self, state: &AccountState, now: i64) -> (AccountState, bool) {
        let state = if self.lock_ended(state, now) {
            AccountState::default()
        } else {
            *state
        };
        let failures = state.failures.saturating_add(1);
        if state.locked_at.is_some() || failures < self.threshold.max(1) {
            return (AccountState { failures, ..state }, false);
        }
        (
            AccountState {
                failures,
                locked_at: Some(now),
            },
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: ConsoleLockout = ConsoleLockout {
        threshold: 3,
        lasts_secs: 900,
    };

    #[test]
    fn the_third_failure_in_a_row_locks_and_further_ones_do_not_relock() {
        let mut state = AccountState::default();
        for expected in [false, false, true] {
            let (next, locks) = RULE.after_failure(&state, 100);
            assert_eq!(locks, expected);
            state = next;
        }
        assert_eq!(state.locked_at, Some(100));
        let (again, locks) = RULE.after_failure(&state, 200);
        assert!(!locks);
        assert_eq!(again.locked_at, Some(100));
        assert!(RULE.is_locked(&again, 999));
        assert_eq!(RULE.locked_until(&again, 999), Some(1000));
    }

    #[test]
    fn a_lock_ends_by_itself_and_the_next_failure_starts_a_new_count() {
        let locked = AccountState {
            failures: 3,
            locked_at: Some(100),
        };
        assert!(!RULE.is_locked(&locked, 1000));
        assert_eq!(RULE.locked_until(&locked, 1000), None);
        let (next, locks) = RULE.after_failure(&locked, 1000);
        assert_eq!(
            (next, locks),
            (
                AccountState {
                    failures: 1,
                    locked_at: None
                },
                false
            )
        );
    }

    #[test]
    fn settings_are_brought_into_range() {
        assert_eq!(
            ConsoleLockout::new(0, 5),
            ConsoleLockout {
                threshold: 1,
                lasts_secs: 60
            }
        );
    }
}
