//! Session channels. A session is one end-to-end QUIC connection from the
//! client to the host ([`crate::e2e`], [`crate::route`]). Its first stream
//! carries the Noise handshake ([`HandshakeRequest`], [`HandshakeReply`]);
//! every later stream is one channel: the client's first frame is the
//! [`ChannelKind`] (padded, [`crate::quic::ChannelSend::write_frame_padded`]),
//! the host's first a [`ChannelReply`], then the channel's own frames (shell,
//! exec, the desktop's [`DesktopService`]) or raw bytes (forward, copy). A clean end is the stream's finish;
//! a cut is its reset. The relay sees none of it: not how many channels
//! there are, nor what they are for, nor their sizes (only datagrams).

use serde::{Deserialize, Serialize};

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
    /// Which remote desktop the host declares (`desktop` in its
    /// `host.toml`), asked once when `latchkey desktop` starts. The host
    /// answers `Accepted` and one [`DesktopService`] frame, or `Refused`
    /// when it declares none; then the stream ends. The client then
    /// forwards to that target with ordinary `Forward` channels, which the
    /// host checks against `forward_allow` like any other.
    ///
    /// Asked on the session's end-to-end connection rather than of the
    /// relay, so the relay learns nothing new: not that a desktop is used,
    /// nor where it listens. Appended last, so the kinds above keep their
    /// numbers and an agent older than it, which cannot decode it, closes
    /// the stream: the client says the agent is too old instead of
    /// misreading another kind's answer.
    Desktop,
}

impl ChannelKind {
    /// The kind's name in logs and in the refusal of a kind a host does not
    /// allow: "shell", "exec", "forward", "forward check", "file copy" or
    /// "desktop".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Shell { .. } => "shell",
            Self::Exec { .. } => "exec",
            Self::Forward { .. } => "forward",
            Self::ForwardCheck { .. } => "forward check",
            Self::Upload { .. } | Self::Download { .. } => "file copy",
            Self::Desktop => "desktop",
        }
    }

    /// What the channel was asked to do, in one line of text (the host's
    /// channel log): the terminal, the command, the target or the file
    /// (nothing for a desktop question, whose answer is the host's own).
    pub fn detail(&self) -> String {
        match self {
            Self::Shell { term, cols, rows } => format!("{term} {cols}x{rows}"),
            Self::Exec { argv } => argv.join(" "),
            Self::Forward { target } | Self::ForwardCheck { target } => target.clone(),
            Self::Upload {
                path, name, size, ..
            } => format!("{name} ({size} bytes) to {path}"),
            Self::Download { path } => path.clone(),
            Self::Desktop => String::new(),
        }
    }

    /// Whether the channel carries bulk data (a copy), which both ends
    /// send behind interactive channels (a lower QUIC stream priority).
    pub fn is_bulk(&self) -> bool {
        matches!(self, Self::Upload { .. } | Self::Download { .. })
    }
}

/// The protocol a host's desktop speaks, which tells the client what to
/// open it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DesktopProtocol {
    /// VNC (RFB), e.g. x11vnc, macOS Screen Sharing, TigerVNC.
    Vnc,
    /// Microsoft's Remote Desktop Protocol, e.g. Windows' own, xrdp.
    Rdp,
}

impl DesktopProtocol {
    /// Every protocol, for messages that list them.
    pub const ALL: [Self; 2] = [Self::Vnc, Self::Rdp];

    /// The URL scheme that names it: `vnc` or `rdp`.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Vnc => "vnc",
            Self::Rdp => "rdp",
        }
    }

    /// The protocol a URL scheme names (lower case, as URL parsers give it).
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.scheme() == scheme)
    }
}

/// The host's answer to [`ChannelKind::Desktop`], after `Accepted`: its
/// desktop's protocol, and where it listens as seen from the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesktopService {
    /// What the desktop speaks.
    pub protocol: DesktopProtocol,
    /// `IP:PORT`, as in [`ChannelKind::Forward`] (at most
    /// [`MAX_PATH_LEN`] bytes).
    pub target: String,
}

/// The client's first frame on the end-to-end connection's first stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    /// Noise KKpsk0 message 1 ([`crate::e2e`]).
    pub msg1: Vec<u8>,
}

/// The host's answer on the handshake stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HandshakeReply {
    /// Noise KKpsk0 message 2.
    Msg2(Vec<u8>),
    /// The host cannot answer (it has no export key for that record...).
    Refused(String),
}

/// The host's first frame on a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ChannelReply {
    /// The channel is open.
    Accepted {
        /// For downloads, the file's size.
        size: Option<u64>,
        /// The host records what this channel shows (its owner's
        /// `record` setting), so the client tells its user.
        recorded: bool,
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
        let desktop = ChannelKind::Desktop;
        let facts: Vec<_> = [
            &shell, &exec, &forward, &check, &upload, &download, &desktop,
        ]
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
                ("desktop", false, String::new()),
            ]
        );
    }

    #[test]
    fn a_desktop_protocol_is_named_by_its_url_scheme() {
        for protocol in DesktopProtocol::ALL {
            assert_eq!(
                DesktopProtocol::from_scheme(protocol.scheme()),
                Some(protocol)
            );
        }
        assert_eq!(DesktopProtocol::from_scheme("http"), None);
    }
}
