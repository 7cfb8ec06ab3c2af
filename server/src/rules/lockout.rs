//! The lockout rule of SPEC S6, S7 and S7a as pure functions over what a
//! store loads inside the transaction that decides. A store backend loads a
//! [`Tally`], asks these functions, and writes what they answer; it never
//! re-derives the rule (a second backend calls the same functions).
//!
//! ```text
//!               admit: count < threshold                 settle
//!   [open] ───────────────────────────────► pending ──────────────────────┐
//!     ▲   count >= threshold: Busy              │ right code, grant      │
//!     │   (nothing evaluated)                   │ current, not locked:   │
//!     │                                         │ Success (clears only   │
//!     │                                         │ that user's failures)  │
//!     │                                         │ right code, but grant  │
//!     │                                         │ gone or host locked:   │
//!     │                                         │ Void (counts nothing)  │
//!     │                                         │ anything else:         │
//!     │                                         ▼ Failure (+1 for user)  │
//!   unlock ◄────────── [locked] ◄── decided failures reach threshold ◄───┘
//!   (clears every user's failures; a locked host evaluates no code)
//! ```
//!
//! - The host's *count* is the sum over users of each user's decided
//!   failures since that user's last success or the last unlock, plus the
//!   attempts still pending: an attempt counts as a failure from the moment
//!   its KE2 is issued (SPEC A3), so no more than the threshold is ever
//!   evaluated, whatever the concurrency.
//! - A success clears only the succeeding user's own failures, so nobody
//!   can reset another's guesses by logging in with their own code.
//! - A user has at most [`MAX_PENDING_PER_USER`] attempt being decided on a
//!   host at a time (more wait their turn): pending attempts use the budget
//!   whatever their outcome, so one grant holder who keeps attempts in
//!   flight must not hold all of it and keep everyone else "busy".

/// The default threshold (GoToMyPC's "three attempts").
pub const DEFAULT_THRESHOLD: u32 = 3;

/// The thresholds a host may have: a lockout that never comes is none.
pub const THRESHOLDS: std::ops::RangeInclusive<u32> = 1..=1000;

/// `threshold` if it is one a host may have, else why not (for the admin
/// who asked, or the relay's config).
pub fn checked_threshold(threshold: u32) -> Result<u32, String> {
    if THRESHOLDS.contains(&threshold) {
        Ok(threshold)
    } else {
        Err(format!(
            "the lockout threshold must be {} to {}",
            THRESHOLDS.start(),
            THRESHOLDS.end()
        ))
    }
}

/// Attempts one user may have pending on one host at once.
pub const MAX_PENDING_PER_USER: u32 = 1;

/// A host's lockout state as the deciding transaction sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Failures that lock the host (0 is treated as 1).
    pub threshold: u32,
    /// Whether the host is locked.
    pub locked: bool,
    /// Sum over users of their decided failures since their last success
    /// or the last unlock.
    pub decided: u32,
    /// Attempts reserved and not yet settled.
    pub pending: u32,
}

impl Tally {
    /// What the admin sees as the host's failure count.
    pub fn count(&self) -> u32 {
        self.decided.saturating_add(self.pending)
    }

    fn threshold(&self) -> u32 {
        self.threshold.max(1)
    }
}

/// Whether a new attempt may be evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Reserve it (it counts as a failure until settled).
    Reserve,
    /// Attempts in flight use up what is left before the lock.
    Busy,
    /// The host is locked: no code is evaluated.
    Locked,
}

/// Decides whether one more attempt, by a user who has `user_pending`
/// attempts pending on the host already, is evaluated.
pub fn admit(tally: &Tally, user_pending: u32) -> Admission {
    if tally.locked {
        Admission::Locked
    } else if tally.count() >= tally.threshold() || user_pending >= MAX_PENDING_PER_USER {
        Admission::Busy
    } else {
        Admission::Reserve
    }
}

/// What an unlock leaves (SPEC S6): the host open and every user's decided
/// failures cleared; attempts still pending stay counted until they settle.
pub fn unlocked(tally: &Tally) -> Tally {
    Tally {
        locked: false,
        decided: 0,
        ..*tally
    }
}

/// Whether a host must lock now without an attempt settling (its threshold
/// was lowered to or below its decided failures).
pub fn locks_now(tally: &Tally) -> bool {
    !tally.locked && tally.decided >= tally.threshold()
}

/// What the attempt proved before it was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// A valid KE3 for the record the attempt was reserved with.
    RightCode,
    /// Anything else: a wrong code, an abort, a malformed or missing KE3, a
    /// deadline, a peer gone, a write or store error, a cancelled task.
    NotProven,
}

/// Why a proven attempt is refused without counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoidReason {
    /// The grant was revoked (or its code record replaced) meanwhile.
    GrantGone,
    /// A concurrent attempt locked the host meanwhile.
    Locked,
    /// The user holds as many sessions as they may ([`super::session_cap`]).
    SessionsFull(super::session_cap::Full),
}

/// How a pending attempt ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The user is in: their failures are cleared.
    Success,
    /// Counted against the host.
    Failure,
    /// The code was right but no session may start; nothing is counted.
    Void(VoidReason),
}

/// Settles an attempt from what it proved and what the store sees now:
/// whether the user's grant still points at the record the attempt used,
/// whether the host is locked, and whether the user has room for one more
/// session. A right code never counts as a failure, whatever stops it.
pub fn settle(
    proof: Proof,
    grant_current: bool,
    tally: &Tally,
    room: Result<(), super::session_cap::Full>,
) -> Settlement {
    match proof {
        Proof::NotProven => Settlement::Failure,
        Proof::RightCode if !grant_current => Settlement::Void(VoidReason::GrantGone),
        Proof::RightCode if tally.locked => Settlement::Void(VoidReason::Locked),
        Proof::RightCode => match room {
            Ok(()) => Settlement::Success,
            Err(full) => Settlement::Void(VoidReason::SessionsFull(full)),
        },
    }
}

/// The settling user's failures after `settlement`.
pub fn user_failures_after(settlement: Settlement, before: u32) -> u32 {
    match settlement {
        Settlement::Success => 0,
        Settlement::Failure => before.saturating_add(1),
        Settlement::Void(_) => before,
    }
}

/// The tally after settling one of its pending attempts as `settlement` by
/// a user who had `user_before` failures, and whether this settlement is
/// the one that locks the host.
pub fn after_settling(tally: &Tally, settlement: Settlement, user_before: u32) -> (Tally, bool) {
    let user_after = user_failures_after(settlement, user_before);
    let decided = tally
        .decided
        .saturating_sub(user_before)
        .saturating_add(user_after);
    let locks = locks_now(&Tally { decided, ..*tally });
    let after = Tally {
        decided,
        pending: tally.pending.saturating_sub(1),
        locked: tally.locked || locks,
        ..*tally
    };
    (after, locks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(decided: u32, pending: u32) -> Tally {
        Tally {
            threshold: DEFAULT_THRESHOLD,
            locked: false,
            decided,
            pending,
        }
    }

    #[test]
    fn pending_attempts_fill_the_budget_before_the_lock() {
        assert_eq!(admit(&tally(2, 0), 0), Admission::Reserve);
        assert_eq!(admit(&tally(2, 1), 0), Admission::Busy);
        assert_eq!(admit(&tally(0, 3), 0), Admission::Busy);
        let locked = Tally {
            locked: true,
            ..tally(0, 0)
        };
        assert_eq!(admit(&locked, 0), Admission::Locked);
    }

    #[test]
    fn one_user_cannot_hold_the_whole_budget() {
        assert_eq!(admit(&tally(0, 1), 1), Admission::Busy);
        assert_eq!(admit(&tally(0, 1), 0), Admission::Reserve);
    }

    #[test]
    fn the_third_decided_failure_locks_and_a_zero_threshold_is_one() {
        let (t, locks) = after_settling(&tally(2, 1), Settlement::Failure, 0);
        assert!(locks && t.locked && t.decided == 3 && t.pending == 0);
        let zero = Tally {
            threshold: 0,
            ..tally(0, 1)
        };
        assert!(after_settling(&zero, Settlement::Failure, 0).1);
    }

    #[test]
    fn a_success_clears_only_the_succeeding_users_failures() {
        // Two failures by one user, a success by another: still two.
        let (t, locks) = after_settling(&tally(2, 1), Settlement::Success, 0);
        assert_eq!((t.decided, locks), (2, false));
        // The same user's success clears their own two.
        let (t, _) = after_settling(&tally(2, 1), Settlement::Success, 2);
        assert_eq!(t.decided, 0);
    }

    #[test]
    fn an_unlock_clears_every_users_failures_but_not_pending_attempts() {
        let locked = Tally {
            locked: true,
            ..tally(3, 1)
        };
        let after = unlocked(&locked);
        assert_eq!((after.locked, after.decided, after.count()), (false, 0, 1));
    }

    #[test]
    fn thresholds_outside_the_range_are_refused() {
        assert_eq!(checked_threshold(3), Ok(3));
        assert!(checked_threshold(0).is_err());
        assert!(checked_threshold(1001).is_err());
    }

    #[test]
    fn a_right_code_without_room_for_a_session_counts_nothing() {
        use super::super::session_cap::Full;
        let settled = settle(Proof::RightCode, true, &tally(1, 1), Err(Full::OnHost));
        assert_eq!(
            settled,
            Settlement::Void(VoidReason::SessionsFull(Full::OnHost))
        );
        let (t, locks) = after_settling(&tally(1, 1), settled, 1);
        assert_eq!((t.decided, t.pending, locks), (1, 0, false));
        // A wrong code is a failure whether there is room or not.
        assert_eq!(
            settle(Proof::NotProven, true, &tally(0, 1), Err(Full::InAll)),
            Settlement::Failure
        );
    }

    #[test]
    fn a_right_code_after_a_revoke_or_a_lock_counts_nothing() {
        let locked = Tally {
            locked: true,
            ..tally(3, 1)
        };
        assert_eq!(
            settle(Proof::RightCode, true, &locked, Ok(())),
            Settlement::Void(VoidReason::Locked)
        );
        assert_eq!(
            settle(Proof::RightCode, false, &tally(0, 1), Ok(())),
            Settlement::Void(VoidReason::GrantGone)
        );
        assert_eq!(
            settle(Proof::NotProven, false, &locked, Ok(())),
            Settlement::Failure
        );
        let (t, locks) = after_settling(&tally(1, 1), Settlement::Void(VoidReason::GrantGone), 1);
        assert_eq!((t.decided, t.pending, locks), (1, 0, false));
    }
}
