//! Test-only helpers, never part of a release relay's behaviour: fault
//! injection on the login path (cargo feature `fault-injection`, a no-op
//! without it) and a private PostgreSQL server for tests (feature
//! `test-postgres`).

pub mod fault;
#[cfg(any(test, feature = "test-postgres"))]
pub mod postgres;
