//! What a command and the holder of a session say over the holder's Unix
//! socket: one [`Request`] per connection, then [`Reply`]s, each a
//! length-prefixed frame read exactly (nothing past it), so that a
//! channel's [`latchkey_protocol::channel::Piece`]s can follow on the same
//! connection.

use std::time::{Duration, Instant};

use latchkey_protocol::{
    codec::{self, LEN_PREFIX},
    control::{Phase, Waiting},
    limits::MAX_FRAME_LEN,
    session::ChannelKind,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ReuseError;
use crate::user::remote::Opened;

/// What a connection to the holder is for.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Follow the session: [`Reply::Status`] now and at each change.
    Follow,
    /// Open a channel; once [`Reply::Accepted`], the connection carries it.
    Channel(ChannelKind),
    /// Reboot the host.
    Reboot,
    /// Keep the session this long after its last command.
    Persist(Duration),
    /// End the session now.
    Stop,
}

/// The holder's answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// Where the session stands.
    Status(Status),
    /// The host opened the channel (with the size it announced, and
    /// whether it records it).
    Accepted(Opened),
    /// Refused, or failed, with why.
    Refused(String),
    /// Done as asked.
    Done,
}

/// Where a held session stands, for a command's status lines.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) phase: PhaseSaid,
    /// How long the relay has been silent, once that is worth telling.
    pub(crate) quiet: Option<Duration>,
    /// The relay, as the user knows it.
    pub(crate) relay: String,
}

/// [`Phase`], with its instants as times elapsed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum PhaseSaid {
    Pairing,
    Ready,
    Rebooting {
        waited: Duration,
        deadline_secs: u64,
        waiting: Waiting,
    },
    Ended(String),
}

impl PhaseSaid {
    pub(crate) fn of(phase: &Phase) -> Self {
        match phase {
            Phase::Pairing => Self::Pairing,
            Phase::Ready => Self::Ready,
            Phase::Rebooting {
                since,
                deadline_secs,
                waiting,
            } => Self::Rebooting {
                waited: since.elapsed(),
                deadline_secs: *deadline_secs,
                waiting: *waiting,
            },
            Phase::Ended(why) => Self::Ended(why.clone()),
        }
    }

    pub(crate) fn phase(&self, now: Instant) -> Phase {
        match self {
            Self::Pairing => Phase::Pairing,
            Self::Ready => Phase::Ready,
            Self::Rebooting {
                waited,
                deadline_secs,
                waiting,
            } => Phase::Rebooting {
                since: now.checked_sub(*waited).unwrap_or(now),
                deadline_secs: *deadline_secs,
                waiting: *waiting,
            },
            Self::Ended(why) => Phase::Ended(why.clone()),
        }
    }
}

/// Sends one message.
pub(crate) async fn send<T: Serialize>(
    to: &mut (impl AsyncWrite + Unpin),
    message: &T,
) -> Result<(), ReuseError> {
    to.write_all(&codec::frame_bytes(message)?).await?;
    to.flush().await?;
    Ok(())
}

/// Reads one message, exactly (nothing past it is taken); `Ok(None)` when
/// the connection ends before one.
pub(crate) async fn read<T: DeserializeOwned + Serialize>(
    from: &mut (impl AsyncRead + Unpin),
) -> Result<Option<T>, ReuseError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match from.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = codec::body_len(prefix, MAX_FRAME_LEN)?;
    let mut body = vec![0u8; len];
    from.read_exact(&mut body).await?;
    Ok(Some(codec::decode_body(&body)?))
}
