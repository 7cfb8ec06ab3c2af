//! Why a channel did not open: the host refused it, or the relay or the
//! connection failed; and, within one try, the host's word that it has no
//! keys for this session (so new ones are agreed).

use latchkey_protocol::{text::shown, HandshakeError};

use crate::{error::CommandError, host::NO_CHANNEL_KEYS, net::NetError, user::e2e::E2eError, wire};

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

/// One try at opening a channel.
pub(super) enum Attempt {
    /// The host reset the stream: it has no keys for this session.
    NoKeys,
    /// Anything else.
    Failed(ChannelError),
}

impl From<ChannelError> for Attempt {
    fn from(e: ChannelError) -> Self {
        Self::Failed(e)
    }
}

impl Attempt {
    /// A stream that failed: a reset with [`NO_CHANNEL_KEYS`] is the host
    /// saying it has no keys for this session.
    pub(super) fn from_wire(e: wire::WireError) -> Self {
        match e {
            wire::WireError::Read(quinn::ReadError::Reset(code))
                if code == quinn::VarInt::from_u32(NO_CHANNEL_KEYS) =>
            {
                Self::NoKeys
            }
            e => Self::Failed(e.into()),
        }
    }
}

/// The channel ended before the host's first answer.
pub(super) fn closed_early() -> ChannelError {
    ChannelError::Net(NetError::Handshake(HandshakeError::PeerMisbehaved(
        "channel closed before the host answered",
    )))
}
