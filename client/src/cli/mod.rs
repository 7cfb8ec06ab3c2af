//! What each `latchkey` command does once clap has read it (`main.rs` holds
//! the definitions and the dispatch): `user.rs` for the commands a remote
//! user runs, `host.rs` for `latchkey host ...`, and `signal.rs` for the
//! signals that end them. Each command prints its own result and returns
//! the process's exit code.

pub(crate) mod host;
mod signal;
pub(crate) mod user;
