//! Administration: what an admin can do, once ([`service`]), for the CLI
//! ([`cli`], `latchkey-relay admin ...`) and the web console alike, and how
//! times are shown to the admin ([`human_time`]).

pub mod cli;
pub mod human_time;
pub mod service;

pub use cli::{run, AdminCommand, AdminError};
