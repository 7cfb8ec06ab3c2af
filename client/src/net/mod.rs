//! Reaching the relay: QUIC with TLS 1.3 pinned to the relay's certificate
//! hash, then the Noise IK handshake (with OPAQUE for logins) on the first
//! stream, bound to this connection by the TLS exporter.
//!
//! `dial.rs` opens the QUIC connection (to the first relay of a cluster that
//! answers) on the device's one socket (`socket.rs`), `pin.rs` checks the
//! relay's certificate against the pin, `peer.rs` sets up a session's
//! end-to-end connection between client and host,
//! `handshake.rs` runs the Noise handshake for every purpose but a login,
//! `login.rs` the login with an access code, and `error.rs` names what
//! went wrong.

mod dial;
mod error;
mod handshake;
mod login;
pub mod peer;
mod pin;
pub mod socket;

pub use dial::{
    check_redirect, connect, connect_any, connect_from, connect_with, relay_text, udp_endpoint,
    DeviceEndpoint, Liveness, Local, RelayConn, WATCHFUL_SILENCE,
};
pub use error::{refusal_text, NetError};
pub use handshake::{
    channel_binding, hello, hello_from, resume, welcome, welcome_from, Control, STEP_TIMEOUT,
};
pub use login::{login, login_from, Session};
