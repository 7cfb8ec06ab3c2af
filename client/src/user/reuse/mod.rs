//! Session reuse, as OpenSSH's ControlMaster and ControlPersist: the first
//! command to a host starts a process of the user's own (one per home and
//! host, [`hold`], started by [`start`]) that logs in and keeps the
//! verified session; later commands reach it over a Unix socket
//! (`user::remote::kept`, where the socket's place and wire live) and ask
//! no code. Each
//! of their channels is a connection to that socket, which the holder
//! copies to and from a stream of the session's end-to-end connection
//! ([`latchkey_protocol::channel`]). A reused session is no login, so it
//! counts nothing towards a lockout; whatever ends the session (a revoke, a
//! lock, the relay) ends the holder, and the next command logs
//! in again.
//!
//! The socket is the session: whoever can connect to it can use the
//! session without the code. So it lives in a directory only the user can
//! enter (0700, checked, never followed through a link), is itself 0600,
//! and the holder serves only peers of its own uid.

#[cfg(unix)]
mod hold;
#[cfg(unix)]
mod start;

use std::time::Duration;

#[cfg(unix)]
pub use self::{
    hold::{close_inherited_fds, hold, holder_runs},
    start::{start, Started},
};
#[cfg(unix)]
pub use crate::user::remote::kept::{disconnect, reach, Place, ReuseError};

/// How long a held session stays after its last command, unless said
/// otherwise (`--persist`).
pub const PERSIST: Duration = Duration::from_secs(600);

/// Reads `--persist`: seconds, or a span such as `30s`, `10m`, `2h`.
pub fn parse_persist(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let span: jiff::SignedDuration = text
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: give seconds, or e.g. 30s, 10m, 2h"))?;
    Duration::try_from(span).map_err(|_| format!("'{text}' is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_is_read_as_seconds_or_a_span() {
        assert_eq!(parse_persist("0"), Ok(Duration::ZERO));
        assert_eq!(parse_persist("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_persist("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_persist("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_persist("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_persist("soon").is_err());
        assert!(parse_persist("-5m").is_err());
    }
}
