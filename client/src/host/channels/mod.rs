//! The host's side of session channels: a shell on a PTY, one command,
//! a TCP forward to an allowed target, a file in or out. Every channel is
//! end-to-end encrypted ([`super::e2e`]): the relay only says which session
//! and channel number a stream is, so what it is for, and everything on it,
//! is read here first, and logged here ([`super::channel_log`]). What is
//! allowed comes from the host's config; everything else is refused with a
//! reason the user sees.
//!
//! This file reads a stream's opening and sends it to its kind's file:
//! `shell.rs`, `exec.rs`, `forward.rs` (forwards and forward checks) and
//! `copy.rs` (uploads and downloads). `reply.rs` holds the channel's first
//! answer (accepted or refused) and `hang_up.rs` how a command whose client
//! went away is ended.

mod copy;
mod exec;
mod forward;
mod hang_up;
mod reply;
mod shell;

use std::{sync::Arc, time::Duration};

use latchkey_protocol::session::{ChannelKind, ChannelOpen, HandshakeReply, HostStream};
use quinn::{RecvStream, SendStream};
use tokio::time::timeout;
use tracing::{debug, info};

use self::reply::refuse;
use super::{account::SessionAccount, channel_log, e2e::Sessions};
use crate::{
    config::{Home, HostConfig},
    wire::{self, OpenedRecv, SealedSend},
};

/// What every channel task shares: the config, and the sessions' keys.
pub(crate) struct HostSide {
    pub(crate) cfg: Arc<HostConfig>,
    /// Who sessions run as.
    pub(crate) account: SessionAccount,
    pub(crate) home: Home,
    pub(crate) sessions: Sessions,
}

/// The stream error code for a channel this host has no keys for (it
/// restarted since the handshake, or the number was used): the client
/// re-handshakes and tries again.
pub const NO_CHANNEL_KEYS: u32 = 3;

/// Serves one stream opened by the relay: a session's end-to-end
/// handshake, or one of its channels.
pub(crate) async fn serve(side: Arc<HostSide>, mut send: SendStream, mut recv: RecvStream) {
    let open = match timeout(
        Duration::from_secs(10),
        wire::read_frame::<ChannelOpen>(&mut recv),
    )
    .await
    {
        Ok(Ok(Some(open))) => open,
        _ => return,
    };
    let ChannelOpen {
        session,
        user,
        stream,
    } = open;
    let number = match stream {
        HostStream::Handshake {
            user_key,
            record,
            msg1,
        } => {
            let reply = match side.sessions.handshake(
                session,
                user.clone(),
                user_key,
                record,
                &msg1,
            ) {
                Ok(msg2) => {
                    info!(%user, %session, key = %user_key.fingerprint(), "end-to-end handshake");
                    HandshakeReply::Msg2(msg2)
                }
                Err(why) => {
                    info!(%user, %session, "end-to-end handshake refused: {why}");
                    HandshakeReply::Refused(why)
                }
            };
            let _ = wire::write_frame(&mut send, &reply).await;
            let _ = send.finish();
            return;
        }
        HostStream::Channel { number } => number,
        _ => return,
    };
    let keys = match side.sessions.channel(session, number) {
        Ok(keys) => keys,
        Err(why) => {
            info!(%user, %session, "channel refused: {why}");
            let _ = send.reset(quinn::VarInt::from_u32(NO_CHANNEL_KEYS));
            return;
        }
    };
    let send = SealedSend::new(send, keys.sealer);
    let mut recv = OpenedRecv::new(recv, keys.opener);
    let kind = match timeout(Duration::from_secs(10), recv.read_frame::<ChannelKind>()).await {
        Ok(Ok(Some(kind))) => kind,
        _ => return,
    };
    info!(user = %keys.user, %session, kind = kind.name(), "channel");
    channel_log::record(&side.home, session, &keys.user, &keys.user_key, &kind);
    let cfg = &side.cfg;
    let result = match kind {
        ChannelKind::Shell { term, cols, rows } if cfg.allow_shell => {
            shell::shell(&side.account, send, recv, term, cols, rows).await
        }
        ChannelKind::Exec { argv } if cfg.allow_exec => {
            exec::exec(&side.account, send, recv, argv).await
        }
        ChannelKind::Forward { target } => forward::forward(cfg, send, recv, target).await,
        ChannelKind::ForwardCheck { target } => forward::forward_check(cfg, send, target).await,
        ChannelKind::Upload {
            path,
            name,
            size,
            mode,
        } if cfg.allow_copy => {
            copy::upload(&side.account, send, recv, &path, &name, size, mode).await
        }
        ChannelKind::Download { path } if cfg.allow_copy => {
            copy::download(&side.account, send, &path).await
        }
        other => {
            refuse(
                send,
                format!("{} is not allowed on this host", other.name()),
            )
            .await
        }
    };
    if let Err(e) = result {
        debug!("channel ended: {e}");
    }
}
