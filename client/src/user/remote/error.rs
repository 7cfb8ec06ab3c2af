//! Why a channel did not open: the host refused it, or the relay or the
//! connection failed.

use latchkey_protocol::{text::shown, HandshakeError};

use crate::{error::CommandError, net::NetError, user::e2e::E2eError, wire};

/// Errors opening a channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The host or the relay refused (their words already made safe to
    /// show: see [`ChannelError::said_by_peer`]).
    #[error("{0}")]
    Refused(String),
    /// The relay or connection failed.
    #[error(transparent)]
    Net(#[from] NetError),
}

impl ChannelError {
    /// A refusal in a peer's words (the host's or the relay's), shown with
    /// every control and format character escaped.
    pub fn said_by_peer(why: &str) -> Self {
        Self::Refused(shown(why).into_owned())
    }
}

impl From<E2eError> for ChannelError {
    fn from(e: E2eError) -> Self {
        match e {
            E2eError::Net(n) => Self::Net(n),
            other => Self::Refused(other.to_string()),
        }
    }
}

impl From<quinn::ConnectionError> for ChannelError {
    fn from(e: quinn::ConnectionError) -> Self {
        Self::Net(e.into())
    }
}

impl From<wire::WireError> for ChannelError {
    fn from(e: wire::WireError) -> Self {
        Self::Net(e.into())
    }
}

/// A command that failed on a channel: the host's refusal is shown as it
/// is.
impl From<ChannelError> for CommandError {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Net(n) => Self::Net(n),
            ChannelError::Refused(why) => Self::Net(NetError::Local(why)),
        }
    }
}

/// The channel ended before the host's first answer.
pub(super) fn closed_early() -> ChannelError {
    ChannelError::Net(NetError::Handshake(HandshakeError::PeerMisbehaved(
        "channel closed before the host answered",
    )))
}
