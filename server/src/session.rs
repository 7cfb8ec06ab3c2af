//! A user's session with a host (SPEC X1-X3): the relay pairs the logged-in
//! client with the host's live connection, then for every stream the client
//! opens it opens one to the host, introduces it (session, user, kind) and
//! splices the two. Each channel is its own task on its own streams, so a
//! slow channel only ever waits on its own flow control.

use std::{sync::Arc, time::Duration};

use latchkey_protocol::{
    control::{EndReason, RelaySession, Request},
    frame::{ClientToRelay, Refusal, RelayToClient},
    ids::{SessionId, UserName},
    session::{ChannelKind, ChannelOpen, ChannelReply, ChannelRequest, MAX_ARGS, MAX_PATH_LEN},
};
use quinn::{RecvStream, SendStream};
use tokio::{sync::broadcast, task::JoinSet, time::timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    error::ConnError,
    registry::SessionEntry,
    wire::{self, frame_reader},
    Shared,
};

/// How long a client has to say what a new channel is for.
const CHANNEL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves a logged-in client until it leaves, the host goes, the relay
/// ends the session (a revoke) or the relay stops. The session's end is
/// recorded when `entry` drops.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    mut entry: SessionEntry,
    mut send: SendStream,
    recv: RecvStream,
) -> Result<(), ConnError> {
    let (user, host, session) = (entry.user.clone(), entry.host.clone(), entry.id);
    let host_conn = shared.hosts().get(&host).map(|l| l.conn.clone());
    let Some(host_conn) = host_conn else {
        info!(%user, %host, "session refused: host offline");
        entry.ending_because("host offline");
        wire::write_frame(&mut send, &RelayToClient::Refused(Refusal::HostOffline)).await?;
        let _ = send.finish();
        let _ = timeout(Duration::from_secs(2), conn.closed()).await;
        return Ok(());
    };
    wire::write_frame(&mut send, &RelayToClient::SessionReady).await?;
    let mut control = frame_reader::<ClientToRelay>(recv);
    let mut channels = JoinSet::new();
    let channel_end = CancellationToken::new();
    let shutdown = shared.shutdown.clone();
    let mut back = shared.host_back.subscribe();
    let mut reboot_failed = shared.reboot_failed.subscribe();
    let reboot_wait = Duration::from_secs(shared.config.reboot_deadline_secs);
    let grace = Duration::from_secs(shared.config.host_grace_secs);
    let mut machine = RelaySession::new(host.clone(), reboot_wait, grace);
    // `None` while the host reboots: the session is parked until it is back
    // with its ticket, or until the deadline (SPEC R2-R4).
    let mut host_conn = Some(host_conn);
    while !machine.is_over() {
        let host_gone = async {
            match &host_conn {
                Some(c) => {
                    c.closed().await;
                }
                None => std::future::pending().await,
            }
        };
        let deadline = machine.deadline();
        let give_up = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let to_client = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                entry.ending_because("relay shutting down");
                machine.end(EndReason::RelayShutdown)
            }
            _ = entry.ended.changed() => {
                let why = entry.ended.borrow().clone().unwrap_or_default();
                entry.ending_because(why.clone());
                machine.end(EndReason::Ended(why))
            }
            _ = host_gone => {
                let old = host_conn.take().map(|c| c.stable_id());
                let deadline = shared.reboot_deadline(&host).map(|d| d.into_std());
                let frame = machine.host_lost(std::time::Instant::now(), deadline);
                if machine.waits_for_reboot() {
                    info!(%user, %host, %session, "session parked: host rebooting");
                    frame
                } else if machine.deadline().is_some() {
                    info!(%user, %host, %session, "session parked: host went offline");
                    // The agent may be back already (it reconnected before its
                    // old connection was seen closing): carry on at once.
                    let newer = shared
                        .hosts()
                        .get(&host)
                        .map(|l| l.conn.clone())
                        .filter(|c| Some(c.stable_id()) != old);
                    if let (Some(c), Some(frame)) = (newer, &frame) {
                        wire::write_frame(&mut send, frame).await?;
                        host_conn = Some(c);
                        info!(%user, %host, %session, "session resumed: host back");
                        machine.host_back(false)
                    } else {
                        frame
                    }
                } else {
                    entry.ending_because("host went offline");
                    frame
                }
            }
            _ = give_up => {
                entry.ending_because("host did not come back in time");
                machine.tick(std::time::Instant::now())
            }
            came_back = back.recv() => {
                let (ours, with_ticket) = match &came_back {
                    Ok((h, with_ticket)) => (*h == host, *with_ticket),
                    // Missed some: look whether ours is back (and its reboot
                    // ticket spent).
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        (true, shared.reboot_deadline(&host).is_none())
                    }
                    Err(broadcast::error::RecvError::Closed) => (false, false),
                };
                let link = if ours && machine.deadline().is_some() {
                    shared.hosts().get(&host).map(|l| l.conn.clone())
                } else {
                    None
                };
                match link.map(|c| (c, machine.host_back(with_ticket))) {
                    Some((c, Some(frame))) => {
                        host_conn = Some(c);
                        info!(%user, %host, %session, "session resumed");
                        Some(frame)
                    }
                    _ => None,
                }
            }
            failure = reboot_failed.recv() => match failure {
                // The reboot this session asked for failed: the host is
                // still up and the session stays ready (SPEC R2).
                Ok((asked, reason)) if asked == session => Some(RelayToClient::Refused(
                    Refusal::NotAllowed(format!("host '{host}' did not reboot: {reason}")),
                )),
                _ => None,
            },
            stream = conn.accept_bi() => match stream {
                Ok((s, r)) => {
                    // While the host runs its reboot command it is still
                    // connected, but about to go: refuse at once rather than
                    // start a channel that would hang, then break.
                    let allowed = machine.channel_allowed().and_then(|()| {
                        match shared.reboot_deadline(&host) {
                            Some(_) => Err(format!("host '{host}' is rebooting")),
                            None => Ok(()),
                        }
                    });
                    let allowed = allowed.and_then(|()| {
                        shared.channel_budgets.take(&host, &user).ok_or_else(|| {
                            format!(
                                "you have {} channels open on '{host}' already",
                                crate::budget::MAX_CHANNELS_PER_USER
                            )
                        })
                    });
                    match (allowed, &host_conn) {
                        (Ok(place), Some(c)) => {
                            channels.spawn(channel(
                                place,
                                channel_end.clone(),
                                c.clone(),
                                session,
                                user.clone(),
                                s,
                                r,
                            ));
                        }
                        (refused, _) => {
                            let why = refused.err().unwrap_or_else(|| "host went offline".into());
                            refuse_channel(s, why).await;
                        }
                    }
                    None
                }
                Err(_) => machine.end(EndReason::ClientLeft),
            },
            frame = control.recv() => match frame {
                Some(Ok(Some(frame))) => match machine.request(&frame) {
                    Request::ListHosts => Some(crate::user::host_list(shared, &user).await?),
                    Request::Reboot => crate::reboot::request(shared, &user, &host, session)
                        .await
                        .err()
                        .map(|why| RelayToClient::Refused(Refusal::NotAllowed(why))),
                    Request::Refuse(r) => Some(RelayToClient::Refused(r)),
                    Request::Ignore => None,
                },
                _ => machine.end(EndReason::ClientLeft),
            },
            Some(_) = channels.join_next(), if !channels.is_empty() => None,
        };
        if let Some(frame) = to_client {
            if let RelayToClient::SessionEnded(why) = &frame {
                debug!(%user, %host, %session, reason = %why, "session ending");
            }
            let sent = wire::write_frame(&mut send, &frame).await;
            if machine.is_over() {
                let _ = send.finish();
            } else {
                sent?;
            }
        }
    }
    // Channels reset their streams and end; any that hangs is dropped.
    channel_end.cancel();
    let _ = timeout(Duration::from_secs(1), async {
        while channels.join_next().await.is_some() {}
    })
    .await;
    channels.abort_all();
    // The last frame says why the session ended: the client closes once it
    // has read it (a close from here could discard it unread).
    let _ = timeout(Duration::from_secs(2), conn.closed()).await;
    debug!(%user, %host, %session, "session over");
    Ok(())
}

/// Whether a request is within the protocol's limits (the host checks
/// what it allows; the relay only refuses what no host should parse).
fn within_limits(kind: &ChannelKind) -> bool {
    match kind {
        ChannelKind::Shell { term, .. } => term.len() <= 64,
        ChannelKind::Exec { argv } => {
            !argv.is_empty()
                && argv.len() <= MAX_ARGS
                && argv.iter().all(|a| a.len() <= MAX_PATH_LEN)
        }
        ChannelKind::Forward { target } | ChannelKind::ForwardCheck { target } => {
            target.len() <= MAX_PATH_LEN
        }
        ChannelKind::Upload { path, name, .. } => {
            path.len() <= MAX_PATH_LEN && name.len() <= MAX_PATH_LEN
        }
        ChannelKind::Download { path } => path.len() <= MAX_PATH_LEN,
        _ => false,
    }
}

/// Answers a channel request with a refusal and ends the stream.
async fn refuse_channel(mut send: SendStream, why: String) {
    let _ = wire::write_frame(&mut send, &ChannelReply::Refused(why)).await;
    let _ = send.finish();
}

/// The stream error code of a channel whose session ended under it.
const CHANNEL_ABORTED: u32 = 2;

/// One channel: read the request, open the host's stream, splice, until
/// both sides are done or `ended` fires.
async fn channel(
    _place: tokio::sync::OwnedSemaphorePermit,
    ended: CancellationToken,
    host_conn: quinn::Connection,
    session: SessionId,
    user: UserName,
    mut c_send: SendStream,
    mut c_recv: RecvStream,
) {
    let request = timeout(
        CHANNEL_REQUEST_TIMEOUT,
        wire::read_frame::<ChannelRequest>(&mut c_recv),
    )
    .await;
    let Ok(Ok(Some(request))) = request else {
        let _ = c_send.reset(quinn::VarInt::from_u32(1));
        return;
    };
    if !within_limits(&request.kind) {
        refuse_channel(c_send, "request outside protocol limits".into()).await;
        return;
    }
    // Keystrokes before bulk: a copy's packets never queue ahead of a
    // shell's or a command's (quinn sends higher priorities first).
    let priority = match request.kind {
        ChannelKind::Upload { .. } | ChannelKind::Download { .. } => 0,
        _ => 1,
    };
    let _ = c_send.set_priority(priority);
    // Bounded: a host link whose streams are all taken answers "busy"
    // rather than holding the client's request for ever.
    let Ok(Ok((mut h_send, mut h_recv))) =
        timeout(CHANNEL_REQUEST_TIMEOUT, host_conn.open_bi()).await
    else {
        refuse_channel(
            c_send,
            "the host did not take the channel (offline or busy)".into(),
        )
        .await;
        return;
    };
    let _ = h_send.set_priority(priority);
    let open = ChannelOpen {
        session,
        user,
        kind: request.kind,
    };
    if wire::write_frame(&mut h_send, &open).await.is_err() {
        let _ = c_send.reset(quinn::VarInt::from_u32(1));
        return;
    }
    tokio::select! {
        _ = async {
            tokio::join!(
                wire::splice(&mut c_recv, &mut h_send),
                wire::splice(&mut h_recv, &mut c_send)
            )
        } => {}
        _ = ended.cancelled() => {
            // The session is over (a revoke, the client gone, the relay
            // stopping): reset both ways, so the host ends what the channel
            // started instead of seeing a clean end of input.
            let code = quinn::VarInt::from_u32(CHANNEL_ABORTED);
            let _ = h_send.reset(code);
            let _ = h_recv.stop(code);
            let _ = c_send.reset(code);
            let _ = c_recv.stop(code);
        }
    }
}
