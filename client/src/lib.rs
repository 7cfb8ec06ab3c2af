//! The `latchkey` client: what remote users run to reach their hosts, and
//! the agent that runs on hosts. `main.rs` is a thin clap shell over this
//! library, which tests may also drive directly.
#![forbid(unsafe_code)]

pub mod code;
pub mod config;
pub mod enroll;
pub mod error;
pub mod files;
pub mod host;
pub mod net;
pub mod user;
pub use latchkey_protocol::{channel, quic as wire};
