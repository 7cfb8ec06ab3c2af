//! The Latchkey relay: a QUIC endpoint that authenticates users and hosts
//! (Noise IK + OPAQUE, from `latchkey-protocol`), enforces the lockout rule
//! in its store, and pairs users with hosts. `docs/architecture.md` draws
//! the map; this file only names the parts.
//!
//! From the top down (each part imports only parts below it):
//! - [`relay`]: start-up, the tasks the relay owns, the accept loop;
//! - `conn`: one task per connection, its handshake and its role;
//! - `login` (an attempt that settles itself, logins waiting their turn,
//!   resumes), `session` (a user's session with a host), `hosts` (a host
//!   agent's link);
//! - `state`: what every connection task shares, made of owned parts
//!   (`hosts::links`, `session::registry`, `cluster`, `conn::admission`);
//! - `duties`: background work (admin actions from the store's feed, the
//!   outbox, audit upkeep);
//! - [`admin`] (the service layer and its CLI) and [`console`] (the same
//!   service in the browser);
//! - [`routes`]: the end-to-end datagrams the relay forwards unread, and
//!   the socket layer under its endpoint that forwards them;
//! - [`metrics`], [`store`] and the pure [`rules`] at the bottom.
#![forbid(unsafe_code)]

pub mod admin;
mod clock;
mod cluster;
pub mod config;
mod conn;
pub mod console;
pub mod datadir;
mod duties;
mod error;
mod hosts;
mod login;
pub mod metrics;
pub mod relay;
pub mod routes;
pub mod rules;
mod session;
mod state;
pub mod store;
pub mod testing;

pub use clock::now_unix;
pub use conn::endpoint;
pub use latchkey_protocol::close;
pub use latchkey_protocol::quic as wire;
pub use relay::{default_data_dir, Relay, RelayError, RelayHandle};
