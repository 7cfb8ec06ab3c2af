//! The relay's rules as pure functions and small types: no I/O, no tokio,
//! no store. Callers load what a rule reads, pass the time, and write what
//! it answers, so each rule is tested on its own and lives in one place.

pub mod account_lockout;
pub mod admission;
pub mod lease;
pub mod lockout;
pub mod ratelimit;
pub mod session_cap;
