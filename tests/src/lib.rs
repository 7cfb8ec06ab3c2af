//! Test harness for the end-to-end tests and `latchkey-bench`: it starts the
//! built `latchkey-relay` and `latchkey` binaries on loopback with temporary
//! directories, and cleans them up on drop. Every wait has a deadline.
//!
//! - [`process`]: finding, spawning and killing the binaries, reading their
//!   output, waits with deadlines, log files;
//! - [`relay`]: a relay process, its data directory and its admin CLI;
//! - [`device`]: a user's or host's home, and `latchkey` run as it;
//! - [`in_process`]: logins and channels through the client library, step
//!   by step when a test needs to act in between;
//! - [`world`]: the ready-made relay, users and host most tests start from;
//! - [`tcp`], [`quic`], [`smtp`]: services on the test's side (a forward's
//!   target, plain QUIC endpoints, a mail sink);
//! - [`vnc`]: a real VNC desktop (Xvfb and x11vnc) and an RFB client.

pub mod device;
pub mod in_process;
pub mod process;
pub mod quic;
pub mod relay;
pub mod smtp;
pub mod sshd;
pub mod tcp;
pub mod vnc;
pub mod wine;
pub mod world;

pub use device::Device;
pub use in_process::{open_channel, RawLogin};
pub use process::{bin, cpu_secs, current_account, rss_kib, wait_until, Proc, LOG_DIR_VAR, WAIT};
pub use quic::{client_trusting, self_signed_server};
pub use relay::{count, unlimited, Relay};
pub use tcp::{fetch, hello_target, wait_until_forwarding};
pub use tempfile::TempDir;
pub use world::{World, OWNER_CODE};
