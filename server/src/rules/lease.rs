//! The cluster's lease: how long a relay sharing the store may go without
//! a heartbeat before the others take it for dead (its pending attempts
//! are settled as failures, its sessions ended, its hosts marked offline),
//! and so which relays count as alive at a given time. One rule, read by
//! the heartbeat, the routing of logins, invites and start-up checks.

/// How long a relay may go without a heartbeat (one every few seconds).
pub const RELAY_LEASE_SECS: i64 = 20;

/// Relays whose last heartbeat is at or after this time are alive at
/// `now` (both Unix seconds).
pub fn alive_since(now: i64) -> i64 {
    now - RELAY_LEASE_SECS
}

/// The lease as a duration, for waits measured on a monotonic clock.
pub fn lease() -> std::time::Duration {
    std::time::Duration::from_secs(RELAY_LEASE_SECS.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_heard_from_within_the_lease_is_alive() {
        let now = 1_000;
        assert!(now - 5 >= alive_since(now));
        assert!(now - RELAY_LEASE_SECS >= alive_since(now));
        assert!(now - RELAY_LEASE_SECS - 1 < alive_since(now));
    }
}
