//! QUIC application close codes the relay uses. They are part of the
//! protocol: clients read them to say why the relay closed a connection.

use quinn::VarInt;

/// Normal end.
pub const DONE: VarInt = VarInt::from_u32(0);
/// The handshake deadline passed.
pub const TIMEOUT: VarInt = VarInt::from_u32(1);
/// The peer broke the protocol.
pub const PROTOCOL: VarInt = VarInt::from_u32(2);
/// A newer connection of the same host replaced this one.
pub const REPLACED: VarInt = VarInt::from_u32(3);
/// The relay is shutting down.
pub const SHUTDOWN: VarInt = VarInt::from_u32(4);
/// Internal error (store unavailable).
pub const INTERNAL: VarInt = VarInt::from_u32(5);
/// Too many connections from the peer's address (its rate limit).
pub const RATE_LIMITED: VarInt = VarInt::from_u32(6);
/// The session's host came back on another relay of the cluster: the
/// client resumes the session there with its ticket.
pub const MOVED: VarInt = VarInt::from_u32(7);
