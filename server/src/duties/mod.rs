//! The relay's background duties, each a task that never waits on another:
//! applying admin actions made anywhere to live sessions
//! ([`admin_actions`]), ending grants whose time is up
//! ([`grant_expiry`]), delivering the durable outbox ([`outbox`]),
//! keeping the audit log within its retention ([`audit_upkeep`]), and the
//! heartbeat that keeps this relay alive in its cluster ([`heartbeat`]).

pub(crate) mod admin_actions;
pub(crate) mod audit_upkeep;
pub(crate) mod grant_expiry;
pub(crate) mod heartbeat;
pub(crate) mod outbox;
