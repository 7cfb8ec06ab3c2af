//! Every size and count limit of the wire protocol, in one place, so that
//! decoders, tests and fuzz targets agree on what "too big" means.

/// Largest encoded frame body (after the 4-byte length prefix). Control
/// frames are small; 64 KiB leaves room for host lists and registration
/// messages while keeping a hostile length prefix from costing memory.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Largest Noise message (the Noise specification's own limit).
pub const MAX_NOISE_MESSAGE: usize = 65_535;

/// Largest plaintext that fits in one Noise message (65,535 minus the
/// 16-byte AEAD tag).
pub const MAX_NOISE_PAYLOAD: usize = MAX_NOISE_MESSAGE - 16;

/// Longest user or host name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Shortest access code accepted when a code is set. GoToMyPC asks for at
/// least 7 characters; we ask for 8 since the relay never rate-limits an
/// offline guess it cannot see, and OPAQUE leaves no offline guesses anyway.
pub const MIN_ACCESS_CODE_LEN: usize = 8;

/// Longest access code, in bytes: a passphrase, not a document.
pub const MAX_ACCESS_CODE_LEN: usize = 256;

/// Most hosts returned in one host list.
pub const MAX_HOSTS_LISTED: usize = 1024;

/// Longest free-form text (notices, refusal details) in a frame, in bytes.
pub const MAX_TEXT_LEN: usize = 4096;

/// Channels one session's end-to-end connection may hold open at once (the
/// host's QUIC stream limit, with one more stream for the handshake): with
/// the cap of sessions per user, what one user can hold on a host.
pub const MAX_CHANNELS_PER_SESSION: usize = 32;
