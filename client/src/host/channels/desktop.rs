//! The desktop question of `latchkey desktop`: which remote desktop this
//! host declares (`desktop` in its config), answered from the config alone.
//! The client then reaches it through ordinary forward channels, which
//! `forward_allow` governs as any other (the config is refused at load
//! when it does not permit the desktop).

use latchkey_protocol::session::DesktopService;

use super::reply::{accept, refuse, ChannelError};
use crate::{channel::ChannelSend, config::HostConfig};

/// Answers with the declared desktop, or refuses saying how to declare one.
pub(super) async fn desktop(
    cfg: &HostConfig,
    mut send: ChannelSend,
    recorded: bool,
) -> Result<(), ChannelError> {
    let Some(desktop) = cfg.desktop else {
        let why = format!(
            "{} declares no desktop (set desktop in its host.toml)",
            cfg.host
        );
        return refuse(send, why).await;
    };
    accept(&mut send, None, recorded).await?;
    // Padded like the reply before it, so its size tells nothing either.
    send.write_frame_padded(&DesktopService {
        protocol: desktop.protocol,
        target: desktop.target.to_string(),
    })
    .await?;
    send.finish().await?;
    Ok(())
}
