//! Session channels. After a login the client opens one QUIC stream per
//! channel; its first frame is a [`ChannelRequest`]. The relay opens a
//! matching stream to the host, sends a [`ChannelOpen`] (who, which
//! session, what), and from then on splices the two streams without looking
//! at them. The host's first frame back is a [`ChannelReply`]; after it the
//! stream carries the channel's own frames (shell, exec) or raw bytes
//! (forward, copy).

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, UserName};

/// Largest data chunk in a shell or exec frame (frames stay far below the
/// 64 KiB frame limit).
pub const MAX_CHUNK: usize = 32 * 1024;

/// Longest path or forward target, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Most arguments of an exec.
pub const MAX_ARGS: usize = 1024;

/// What a channel is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ChannelKind {
    /// An interactive shell on a PTY.
    Shell {
        /// `TERM` for the shell.
        term: String,
        /// Terminal width.
        cols: u16,
        /// Terminal height.
        rows: u16,
    },
    /// One command with its exit status.
    Exec {
        /// Program and arguments (run directly, no shell).
        argv: Vec<String>,
    },
    /// A TCP connection to `target` (`IP:PORT`) from the host.
    Forward {
        /// Where to connect.
        target: String,
    },
    /// A file to the host: `size` raw bytes, then their SHA-256.
    Upload {
        /// Where to write it on the host: a file, or a directory to write
        /// `name` into (as `cp` does).
        path: String,
        /// The source's file name (no directories).
        name: String,
        /// Its size.
        size: u64,
    },
    /// A file from the host: after the reply, `size` raw bytes, then their
    /// SHA-256.
    Download {
        /// Which file.
        path: String,
    },
    /// Whether the host would forward to `target` (`IP:PORT`), asked once
    /// when `latchkey forward` starts so a refused target fails at once
    /// instead of at every connection. The host answers from its config
    /// without connecting: `Accepted`, or `Refused` with the targets it
    /// allows; then the stream ends. Appended last so that the numbers of
    /// the kinds above stay the same on the wire.
    ForwardCheck {
        /// The target a forward would connect to.
        target: String,
    },
}

/// First frame of a channel stream, client to relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRequest {
    /// What the channel is for.
    pub kind: ChannelKind,
}

/// First frame of a channel stream, relay to host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelOpen {
    /// The session the channel belongs to.
    pub session: SessionId,
    /// The authenticated user.
    pub user: UserName,
    /// What the channel is for.
    pub kind: ChannelKind,
}

/// First frame back from the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ChannelReply {
    /// The channel is open.
    Accepted {
        /// For downloads, the file's size.
        size: Option<u64>,
    },
    /// The host refused (not allowed by its config, target unreachable...).
    Refused(String),
}

/// Client to host, on a shell channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ShellIn {
    /// Keystrokes.
    Data(Vec<u8>),
    /// The terminal changed size.
    Resize {
        /// Width.
        cols: u16,
        /// Height.
        rows: u16,
    },
}

/// Host to client, on a shell channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ShellOut {
    /// Terminal output.
    Data(Vec<u8>),
    /// The shell exited with this status.
    Exit(i32),
}

/// Client to host, on an exec channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExecIn {
    /// Standard input.
    Stdin(Vec<u8>),
    /// End of standard input.
    Eof,
}

/// Host to client, on an exec channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExecOut {
    /// Standard output.
    Stdout(Vec<u8>),
    /// Standard error.
    Stderr(Vec<u8>),
    /// The command exited with this status (negative: killed by a signal).
    Exit(i32),
}
