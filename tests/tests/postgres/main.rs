//! Everything that needs PostgreSQL (SPEC M1-M5): one relay and its admin
//! CLI on PostgreSQL, and three relays sharing one. A private server from
//! Debian's packages; each test is skipped with a printed reason where
//! PostgreSQL cannot start, except in CI.

mod cluster;
mod single_relay;
