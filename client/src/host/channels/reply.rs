//! A channel's first answer to the user, sealed: accepted (with a
//! download's size) or refused with a reason the user sees; and why a
//! channel ended early, for the host's log.

use latchkey_protocol::{session::ChannelReply, text::Shown};
use thiserror::Error;
use tracing::info;

use crate::{channel::ChannelSend, wire::WireError};

/// Why a channel ended early (logged on the host).
#[derive(Debug, Error)]
pub(super) enum ChannelError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("pty: {0}")]
    Pty(String),
}

/// Refuses the channel with `why`, which the user sees, and ends it.
pub(super) async fn refuse(mut send: ChannelSend, why: String) -> Result<(), ChannelError> {
    info!(reason = %Shown(&why), "channel refused");
    send.write_frame_padded(&ChannelReply::Refused(why)).await?;
    send.finish().await?;
    Ok(())
}

/// Accepts the channel (`size`: a download's size).
pub(super) async fn accept(send: &mut ChannelSend, size: Option<u64>) -> Result<(), ChannelError> {
    send.write_frame_padded(&ChannelReply::Accepted { size })
        .await?;
    Ok(())
}
