//! Typed errors of the protocol layer. Like rustls, they are split by who is
//! at fault: the bytes (malformed), the peer (it broke the protocol), or the
//! caller (API misuse), so the relay can log and count each kind apart.

use thiserror::Error;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// A length prefix or value exceeds the limit; nothing was allocated.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length announced or produced.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The body decoded but bytes were left over.
    #[error("{extra} trailing bytes after a frame")]
    TrailingBytes {
        /// How many bytes were left.
        extra: usize,
    },
    /// The body is not a valid encoding of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A value could not be encoded (caller bug).
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

/// Why a handshake step failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The bytes are not a message of this protocol (garbage, truncated,
    /// tampered with, or encrypted for another key or connection).
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    /// The peer sent a well-formed message that breaks the protocol.
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(&'static str),
    /// The peer speaks a protocol version we do not.
    #[error("unsupported protocol version {theirs} (we speak {ours})")]
    UnsupportedVersion {
        /// The peer's version.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// The caller used the API wrongly (wrong key length, bad name...).
    #[error("handshake misuse: {0}")]
    Misuse(&'static str),
    /// A payload failed to decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Why a name, key or code given by a person or a config file was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Names are 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`,
    /// starting with a letter or digit.
    #[error("invalid name {0:?}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")]
    Name(String),
    /// A key or token that is not the expected encoding.
    #[error("invalid {what}: {why}")]
    Encoding {
        /// What was being parsed.
        what: &'static str,
        /// Why it failed.
        why: &'static str,
    },
    /// Access codes have a minimum and maximum length.
    #[error("access code must be {min} to {max} bytes long")]
    AccessCodeLength {
        /// Minimum length.
        min: usize,
        /// Maximum length.
        max: usize,
    },
}
