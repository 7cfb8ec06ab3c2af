//! What each `latchkey` command does once clap has read it (`main.rs` holds
//! the definitions and the dispatch): `user.rs` for the commands a remote
//! user runs, `host.rs` for `latchkey host ...`, `signal.rs` for the
//! signals that end them, and `complete.rs` and `man.rs` for the shell
//! completion and the man pages made from the definitions. Each command
//! prints its own result and returns the process's exit code.

pub(crate) mod complete;
pub(crate) mod host;
pub(crate) mod man;
mod signal;
pub(crate) mod user;

/// The exit status of a command that reaches a host when Latchkey itself
/// failed, as ssh's: the remote command's own statuses keep the rest.
pub(crate) const LATCHKEY_FAILED: u8 = 255;
