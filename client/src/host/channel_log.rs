//! The host's own record of what each channel did. The relay forwards
//! datagrams it cannot read and sees no channel, let alone its command,
//! path or target (SPEC X4), so the host that runs them keeps the log: one JSON line
//! per channel in `channels.log` in the agent's home (owner-only, like
//! `host.key`), and the same line in the agent's log.

use std::io::Write;

use latchkey_protocol::{
    ids::{PublicKey, SessionId, UserName},
    session::ChannelKind,
};
use tracing::warn;

use crate::config::Home;

/// The log's file name in the agent's home.
pub const CHANNEL_LOG: &str = "channels.log";

/// Appends one channel to the log, with its recording's id if it has one. A log that cannot be written is
/// warned about, and the channel still runs (as sshd does with syslog).
pub(crate) fn record(
    home: &Home,
    session: SessionId,
    user: &UserName,
    user_key: &PublicKey,
    kind: &ChannelKind,
    recording: Option<&str>,
) {
    let mut line = line(session, user, user_key, kind);
    if let Some(id) = recording {
        line["recording"] = id.into();
    }
    append(home, line);
}

/// Appends a channel refused before it ran (outside the user's rights,
/// or unrecordable when it must be recorded), with why.
pub(crate) fn refused(
    home: &Home,
    session: SessionId,
    user: &UserName,
    user_key: &PublicKey,
    kind: &ChannelKind,
    why: &str,
) {
    let mut line = line(session, user, user_key, kind);
    line["refused"] = why.into();
    append(home, line);
}

fn line(
    session: SessionId,
    user: &UserName,
    user_key: &PublicKey,
    kind: &ChannelKind,
) -> serde_json::Value {
    serde_json::json!({
        "at": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "session": format!("{session:?}"),
        "user": user.as_str(),
        "user_key": user_key.fingerprint(),
        "kind": kind.name(),
        "detail": kind.detail(),
    })
}

fn append(home: &Home, line: serde_json::Value) {
    let path = home.path.join(CHANNEL_LOG);
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options
        .open(&path)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(e) = written {
        warn!(path = %path.display(), "cannot write the channel log: {e}");
    }
}
