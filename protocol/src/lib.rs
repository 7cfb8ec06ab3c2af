//! Latchkey's wire protocol, with no I/O, no clock and no OS randomness:
//! callers pass bytes, `now` and an RNG, and get bytes and decisions back.
//! (The optional `quinn` feature adds [`quic`], the thin async adapter the
//! relay and the client share to move frames on QUIC streams, [`channel`],
//! a session channel's two halves, and [`udp`], the socket under every
//! endpoint.)
//!
//! A connection to the relay goes like this:
//! 1. QUIC + TLS 1.3 to the relay, whose certificate hash is pinned
//!    ([`ids::RelayPin`]).
//! 2. On the first stream, the Noise IK handshake of [`handshake`]:
//!    message 1 proves the device key and says what the connection is for
//!    ([`frame::Intent`]); for a login it carries OPAQUE KE1, message 2 KE2,
//!    message 3 KE3 and message 4 the verdict. The prologue is the QUIC
//!    connection's TLS exporter, so nothing can be replayed elsewhere.
//! 3. The same stream then carries length-prefixed control frames
//!    ([`codec`], one enum per direction in [`frame`]).
//! 4. A session the relay admits gets a route ([`route`]): the client's
//!    one QUIC connection to the host travels through the relay as
//!    datagrams it forwards without reading. Its first stream carries the
//!    end-to-end handshake ([`e2e`]), every later one a channel
//!    ([`session`]).
#![forbid(unsafe_code)]

pub mod bucket;
#[cfg(feature = "quinn")]
pub mod channel;
#[cfg(feature = "quinn")]
pub mod close;
pub mod codec;
pub mod control;
pub mod e2e;
pub mod error;
pub mod frame;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod handshake;
pub mod ids;
pub mod invite;
pub mod ksf;
pub mod limits;
#[cfg(feature = "quinn")]
pub mod quic;
pub mod rights;
pub mod route;
pub mod session;
pub mod text;
#[cfg(feature = "quinn")]
pub mod udp;

pub use error::{CodecError, HandshakeError, ParseError};
