//! A channel's first answer to the user, sealed: accepted (with a
//! download's size) or refused with a reason the user sees; and why a
//! channel ended early, for the host's log.

use latchkey_protocol::{session::ChannelReply, text::Shown};
use thiserror::Error;
use tracing::info;

use crate::{channel::ChannelSend, host::recording::Tape, wire::WireError};

/// Why a channel ended early (logged on the host).
#[derive(Debug, Error)]
pub(super) enum ChannelError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("pty: {0}")]
    Pty(String),
    /// Refused, with what the user was told.
    #[error("refused: {0}")]
    Refused(String),
    /// Cut by the host (the user's right was taken away), with why.
    #[error("cut: {0}")]
    Cut(String),
}

/// Refuses the channel with `why`, which the user sees, and ends it; the
/// error says so to the channel's recording.
pub(super) async fn refuse(mut send: ChannelSend, why: String) -> Result<(), ChannelError> {
    info!(reason = %Shown(&why), "channel refused");
    send.write_frame_padded(&ChannelReply::Refused(why.clone()))
        .await?;
    send.finish().await?;
    Err(ChannelError::Refused(why))
}

/// Refuses a channel whose recording had started, and ends the recording
/// with why.
pub(super) async fn refuse_recorded(
    send: ChannelSend,
    tape: &Tape,
    why: String,
) -> Result<(), ChannelError> {
    tape.end(&format!("refused: {why}"));
    refuse(send, why).await
}

/// Accepts the channel (`size`: a download's size; `recorded`: the host
/// records it, which the user is told).
pub(super) async fn accept(
    send: &mut ChannelSend,
    size: Option<u64>,
    recorded: bool,
) -> Result<(), ChannelError> {
    send.write_frame_padded(&ChannelReply::Accepted { size, recorded })
        .await?;
    Ok(())
}
