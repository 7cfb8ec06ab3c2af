//! Session channels. After a login the client opens one QUIC stream per
//! channel; its first frame, the only one the relay reads, is a
//! [`ChannelRequest`]: the end-to-end handshake, or a channel number. The
//! relay opens a matching stream to the host, sends a [`ChannelOpen`]
//! (which session, which user, and for a handshake the keys it introduces),
//! answers the client with [`Relayed`] and from then on splices the two
//! streams. Everything after that is sealed records ([`crate::record`])
//! under the channel's keys ([`crate::e2e`]): the client's first record is
//! the [`ChannelKind`], the host's first is a [`ChannelReply`], then the
//! channel's own frames (shell, exec) or raw bytes (forward, copy), each
//! frame one record.

use serde::{Deserialize, Serialize};

use crate::ids::{PublicKey, RecordId, SessionId, UserName};

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
        /// Its permission bits (the host drops group and other write).
        mode: u32,
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

impl ChannelKind {
    /// The kind's name in logs and in the refusal of a kind a host does not
    /// allow: "shell", "exec", "forward", "forward check" or "file copy".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Shell { .. } => "shell",
            Self::Exec { .. } => "exec",
            Self::Forward { .. } => "forward",
            Self::ForwardCheck { .. } => "forward check",
            Self::Upload { .. } | Self::Download { .. } => "file copy",
        }
    }

    /// What the channel was asked to do, in one line of text (the host's
    /// channel log): the terminal, the command, the target or the file.
    pub fn detail(&self) -> String {
        match self {
            Self::Shell { term, cols, rows } => format!("{term} {cols}x{rows}"),
            Self::Exec { argv } => argv.join(" "),
            Self::Forward { target } | Self::ForwardCheck { target } => target.clone(),
            Self::Upload {
                path, name, size, ..
            } => format!("{name} ({size} bytes) to {path}"),
            Self::Download { path } => path.clone(),
        }
    }

    /// Whether the channel carries bulk data (a copy), which the relay
    /// queues behind interactive channels ([`ChannelRequest::Channel`]'s
    /// `bulk`).
    pub fn is_bulk(&self) -> bool {
        matches!(self, Self::Upload { .. } | Self::Download { .. })
    }
}

/// First frame of a stream the client opens in a session (client to
/// relay, in the clear).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ChannelRequest {
    /// The end-to-end handshake's message 1: at session start, and again
    /// whenever the host comes back.
    Handshake {
        /// Noise KKpsk0 message 1.
        msg1: Vec<u8>,
    },
    /// A channel sealed with the keys of `number` (never reused within a
    /// handshake's keys).
    Channel {
        /// The channel's number.
        number: u64,
        /// Bulk data (a copy): the relay queues it behind interactive
        /// channels. The one thing about a channel's purpose the relay learns.
        bulk: bool,
    },
}

/// The relay's first frame back on every stream the client opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Relayed {
    /// The host's stream is open; what follows comes from the host.
    Spliced,
    /// The relay did not pass the stream on (budget, host away, limits).
    Refused(String),
}

/// First frame of a stream the relay opens to the host (in the clear).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelOpen {
    /// The session the stream belongs to.
    pub session: SessionId,
    /// The authenticated user (the relay's word; the handshake proves the
    /// user's key and the code record's export key).
    pub user: UserName,
    /// What the stream is for.
    pub stream: HostStream,
}

/// What a stream the relay opens to the host is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HostStream {
    /// The client's end-to-end handshake.
    Handshake {
        /// The user's device key, as the relay knows it.
        user_key: PublicKey,
        /// The code record the login used.
        record: RecordId,
        /// Noise KKpsk0 message 1.
        msg1: Vec<u8>,
    },
    /// A channel sealed with the keys of `number`.
    Channel {
        /// The channel's number.
        number: u64,
    },
}

/// The host's answer on a handshake stream (in the clear: message 2 is
/// Noise's own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HandshakeReply {
    /// Noise KKpsk0 message 2.
    Msg2(Vec<u8>),
    /// The host cannot answer (it has no export key for that record...).
    Refused(String),
}

/// The host's first record on a channel.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_copies_are_bulk_and_each_kind_says_what_it_was_asked() {
        let upload = ChannelKind::Upload {
            path: "/tmp/".into(),
            name: "a.txt".into(),
            size: 3,
            mode: 0o644,
        };
        let download = ChannelKind::Download {
            path: "notes.txt".into(),
        };
        let shell = ChannelKind::Shell {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
        };
        let exec = ChannelKind::Exec {
            argv: vec!["ls".into(), "-l".into()],
        };
        let forward = ChannelKind::Forward {
            target: "127.0.0.1:22".into(),
        };
        let check = ChannelKind::ForwardCheck {
            target: "127.0.0.1:5900".into(),
        };
        let facts: Vec<_> = [&shell, &exec, &forward, &check, &upload, &download]
            .into_iter()
            .map(|k| (k.name(), k.is_bulk(), k.detail()))
            .collect();
        assert_eq!(
            facts,
            [
                ("shell", false, "xterm 80x24".to_string()),
                ("exec", false, "ls -l".into()),
                ("forward", false, "127.0.0.1:22".into()),
                ("forward check", false, "127.0.0.1:5900".into()),
                ("file copy", true, "a.txt (3 bytes) to /tmp/".into()),
                ("file copy", true, "notes.txt".into()),
            ]
        );
    }
}
