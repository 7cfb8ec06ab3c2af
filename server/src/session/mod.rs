//! A user's session with a host (SPEC X1-X3): the relay pairs the logged-in
//! client with the host's live connection, introduces the two device keys
//! for their end-to-end handshake (SPEC X4, `latchkey_protocol::e2e`), then
//! for every stream the client opens it opens one to the host, says which
//! session, user and channel number it is, and splices the two. What a
//! channel carries is sealed between client and host: the relay counts its
//! bytes and nothing more. Each channel is its own task on its own streams,
//! so a slow channel only ever waits on its own flow control.
//!
//! The live sessions ([`registry`]) and in-session reboots ([`reboot`],
//! [`reboots`]) are this folder's other files.

pub(crate) mod reboot;
pub(crate) mod reboots;
pub(crate) mod registry;

use std::{sync::Arc, time::Duration};

use latchkey_protocol::{
    control::{EndReason, RelaySession, Request},
    e2e::Binding,
    frame::{ClientToRelay, Refusal, RelayToClient, RelayToHost},
    ids::{HostName, ResumeTicket, SessionId, UserName},
    limits::MAX_NOISE_MESSAGE,
    session::{ChannelOpen, ChannelRequest, HostStream, Relayed},
};
use quinn::{RecvStream, SendStream};
use tokio::{sync::broadcast, task::JoinSet, time::timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    error::ConnError,
    metrics::{ChannelKind, RebootResult},
    session::registry::{Intro, SessionEntry, Traffic},
    state::Shared,
    testing::fault,
};
use latchkey_protocol::quic::{self as wire, frame_reader};

/// How long a client has to say what a new channel is for.
const CHANNEL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a resume ticket stays valid, and how often a session gets a
/// new one: a relay that dies leaves its clients a ticket with at least
/// 10 minutes to run, and a ticket that leaks is worth little for long.
const TICKET_VALID_SECS: u64 = 15 * 60;
const TICKET_EVERY: Duration = Duration::from_secs(5 * 60);
/// How often a session whose host is away looks for it on the other relays.
const MOVED_CHECK: Duration = Duration::from_secs(2);

/// A new resume ticket for the session, stored by digest (replacing the
/// one before), as the frame that hands it over; `None` if the store
/// refused (the grant changed: the session is about to end anyway) or
/// failed (the client keeps the ticket it has).
/// Runs on a task of its own, so a slow store never holds up the session's
/// channels.
fn new_ticket(
    shared: &Arc<Shared>,
    entry: &SessionEntry,
) -> impl std::future::Future<Output = Option<RelayToClient>> + Send + 'static {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let ticket = ResumeTicket(secret);
    let digest = ticket.digest();
    let (session, host, user, record) = (
        entry.id,
        entry.host.clone(),
        entry.user.clone(),
        entry.intro.record,
    );
    let store = shared.store.clone();
    async move {
        let now = crate::clock::now_unix();
        let expires_at = now + i64::try_from(TICKET_VALID_SECS).unwrap_or(i64::MAX / 4);
        let issued = crate::error::logged_store_call(&store, move |s| {
            s.issue_session_ticket(&session, digest, &host, &user, &record, expires_at, now)
        })
        .await;
        issued
            .filter(|issued| *issued)
            .map(|_| RelayToClient::Resumable {
                ticket,
                valid_secs: TICKET_VALID_SECS,
            })
    }
}

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
    let host_link = shared.hosts.conn_and_key(&host);
    let Some((host_conn, host_key)) = host_link else {
        info!(%user, %host, "session refused: host offline");
        entry.ending_because("host offline");
        wire::write_frame(&mut send, &RelayToClient::Refused(Refusal::HostOffline)).await?;
        let _ = send.finish();
        let _ = timeout(Duration::from_secs(2), conn.closed()).await;
        return Ok(());
    };
    let ready = RelayToClient::SessionReady {
        host_key: fault::introduced_host_key(host_key),
        record: entry.intro.record,
    };
    wire::write_frame(&mut send, &ready).await?;
    // Whether the client holds a ticket: then a stopping relay lets the
    // connection close without ending the session, which the client
    // resumes on another relay (or on this one, restarted).
    // The first ticket at once, then one every TICKET_EVERY, each issued on
    // a task of its own and sent when it is stored.
    let mut resumable = false;
    let mut tickets = tokio::time::interval(TICKET_EVERY);
    let mut issuing = JoinSet::new();
    // While the host is away, whether it came back on another relay of the
    // cluster: then the session follows it there (the client resumes).
    let mut elsewhere = tokio::time::interval(MOVED_CHECK);
    let mut moved = false;
    let mut control = frame_reader::<ClientToRelay>(recv);
    let mut channels = JoinSet::new();
    let channel_end = CancellationToken::new();
    let shutdown = shared.shutdown.clone();
    let mut back = shared.hosts.comebacks();
    let mut reboot_failed = shared.reboots.failures();
    let reboot_wait = Duration::from_secs(shared.config.reboot_deadline_secs);
    let grace = Duration::from_secs(shared.config.host_grace_secs);
    let mut machine = RelaySession::new(host.clone(), reboot_wait, grace);
    let handshakes = Arc::new(HandshakeGate::default());
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
                let frame = machine.end(EndReason::RelayShutdown);
                if resumable {
                    // The client resumes the session elsewhere.
                    entry.handing_over("relay shutting down");
                    None
                } else {
                    entry.ending_because("relay shutting down");
                    frame
                }
            }
            _ = tickets.tick() => {
                if issuing.is_empty() {
                    issuing.spawn(new_ticket(shared, &entry));
                }
                None
            }
            Some(issued) = issuing.join_next(), if !issuing.is_empty() => {
                let frame = issued.ok().flatten();
                resumable |= frame.is_some();
                frame
            }
            _ = elsewhere.tick(), if host_conn.is_none() && resumable => {
                let (s, h) = (shared.clone(), host.clone());
                let found = crate::error::blocking(move || s.host_elsewhere(&h)).await;
                match found {
                    Ok(Ok(Some(relay))) => {
                        info!(%user, %host, %session, %relay, "session follows its host to another relay");
                        entry.handing_over("the host came back on another relay");
                        moved = true;
                        // No frame: the client resumes with its ticket.
                        let _ = machine.end(EndReason::Ended("the host moved".into()));
                        None
                    }
                    // Not found, or the store failed: looked at again next tick.
                    _ => None,
                }
            }
            _ = entry.ended.changed() => {
                let why = entry.ended.borrow().clone().unwrap_or_default();
                entry.ending_because(why.clone());
                machine.end(EndReason::Ended(why))
            }
            _ = host_gone => {
                let old = host_conn.take().map(|c| c.stable_id());
                let deadline = shared.reboots.deadline(&host).map(|d| d.into_std());
                let frame = machine.host_lost(std::time::Instant::now(), deadline);
                if machine.waits_for_reboot() {
                    info!(%user, %host, %session, "session parked: host rebooting");
                    frame
                } else if machine.deadline().is_some() {
                    info!(%user, %host, %session, "session parked: host went offline");
                    // The agent may be back already (it reconnected before its
                    // old connection was seen closing): carry on at once.
                    let newer = shared
                        .hosts
                        .conn(&host)
                        .filter(|c| Some(c.stable_id()) != old);
                    if let (Some(c), Some(frame)) = (newer, &frame) {
                        wire::write_frame(&mut send, frame).await?;
                        host_conn = Some(c);
                        shared.metrics.session_resumed();
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
                        (true, shared.reboots.deadline(&host).is_none())
                    }
                    Err(broadcast::error::RecvError::Closed) => (false, false),
                };
                let link = if ours && machine.deadline().is_some() {
                    shared.hosts.conn(&host)
                } else {
                    None
                };
                match link.map(|c| (c, machine.host_back(with_ticket))) {
                    Some((c, Some(frame))) => {
                        host_conn = Some(c);
                        shared.metrics.session_resumed();
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
                        match shared.reboots.deadline(&host) {
                            Some(_) => Err(format!("host '{host}' is rebooting")),
                            None => Ok(()),
                        }
                    });
                    match (allowed, &host_conn) {
                        (Ok(()), Some(c)) => {
                            channels.spawn(channel(
                                channel_end.clone(),
                                c.clone(),
                                Pairing {
                                    shared: shared.clone(),
                                    session,
                                    host: host.clone(),
                                    user: user.clone(),
                                    intro: entry.intro,
                                    traffic: entry.traffic.clone(),
                                    handshakes: handshakes.clone(),
                                },
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
                    Request::ListHosts => Some(crate::conn::user::host_list(shared, &user).await?),
                    Request::Reboot => {
                        let asked = crate::session::reboot::request(shared, &user, &host, session).await;
                        shared.metrics.reboot(match asked {
                            Ok(()) => RebootResult::Asked,
                            Err(_) => RebootResult::Refused,
                        });
                        asked
                            .err()
                            .map(|why| RelayToClient::Refused(Refusal::NotAllowed(why)))
                    }
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
    // The host forgets the session's end-to-end keys.
    shared
        .hosts
        .try_send(&host, RelayToHost::SessionEnded { session });
    if moved {
        conn.close(
            latchkey_protocol::close::MOVED,
            b"the host is on another relay",
        );
        return Ok(());
    }
    // The last frame says why the session ended: the client closes once it
    // has read it (a close from here could discard it unread).
    let _ = timeout(Duration::from_secs(2), conn.closed()).await;
    debug!(%user, %host, %session, "session over");
    Ok(())
}

/// Answers a stream with the relay's refusal and ends it.
async fn refuse_channel(mut send: SendStream, why: String) {
    let _ = wire::write_frame(&mut send, &Relayed::Refused(why)).await;
    let _ = send.finish();
}

/// The stream error code of a channel whose session ended under it.
const CHANNEL_ABORTED: u32 = 2;

/// The places a stream holds until it ends: one of the user's share of the
/// host's streams, and for a handshake the session's one handshake place.
struct Held {
    _stream: crate::rules::budget::Place,
    _handshake: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// How long a handshake stream may stay open: two messages each way, well
/// within this; a client that sends message 1 and stops must not hold a
/// stream of the host's link for longer.
const HANDSHAKE_STREAM_DEADLINE: Duration = Duration::from_secs(15);

/// What a channel's task knows of its session.
struct Pairing {
    shared: Arc<Shared>,
    session: SessionId,
    host: HostName,
    user: UserName,
    intro: Intro,
    traffic: Arc<Traffic>,
    handshakes: Arc<HandshakeGate>,
}

/// Handshakes a session may start in [`HANDSHAKE_WINDOW`]: one at start and
/// one each time the host comes back, with retries, need far fewer; a
/// client that loops would otherwise keep the host busy with key exchanges.
const HANDSHAKES_PER_WINDOW: usize = 30;
const HANDSHAKE_WINDOW: Duration = Duration::from_secs(60);

/// A session's end-to-end handshakes: one at a time (each holds a stream
/// of the host's link), and at most [`HANDSHAKES_PER_WINDOW`] a minute.
struct HandshakeGate {
    one: Arc<tokio::sync::Semaphore>,
    recent: std::sync::Mutex<std::collections::VecDeque<tokio::time::Instant>>,
}

impl Default for HandshakeGate {
    fn default() -> Self {
        Self {
            one: Arc::new(tokio::sync::Semaphore::new(1)),
            recent: std::sync::Mutex::default(),
        }
    }
}

impl HandshakeGate {
    fn enter(&self) -> Result<tokio::sync::OwnedSemaphorePermit, &'static str> {
        let now = tokio::time::Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > HANDSHAKE_WINDOW)
        {
            recent.pop_front();
        }
        if recent.len() >= HANDSHAKES_PER_WINDOW {
            return Err("too many end-to-end handshakes in this session; wait a minute");
        }
        let place = self
            .one
            .clone()
            .try_acquire_owned()
            .map_err(|_| "an end-to-end handshake is under way already")?;
        recent.push_back(now);
        Ok(place)
    }
}

/// One stream: read the client's cleartext request (a handshake or a
/// channel number), open the host's stream, introduce it, splice, until
/// both sides are done or `ended` fires.
async fn channel(
    ended: CancellationToken,
    host_conn: quinn::Connection,
    pairing: Pairing,
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
    // Every stream takes one of the user's share of the host link's
    // streams (`budget`), a handshake also the session's one handshake
    // place; both are held until the stream ends.
    let Some(place) = pairing
        .shared
        .channel_budgets
        .take(&pairing.host, &pairing.user)
    else {
        let why = format!(
            "you have {} channels open on '{}' already",
            crate::rules::budget::MAX_CHANNELS_PER_USER,
            pairing.host
        );
        refuse_channel(c_send, why).await;
        return;
    };
    let (stream, bulk, _place) = match request {
        ChannelRequest::Handshake { msg1 } if msg1.len() <= MAX_NOISE_MESSAGE => {
            let handshake = match pairing.handshakes.enter() {
                Ok(handshake) => handshake,
                Err(why) => {
                    refuse_channel(c_send, why.into()).await;
                    return;
                }
            };
            if fault::impersonating_host() {
                let binding = Binding {
                    session: pairing.session,
                    record: pairing.intro.record,
                };
                fault::answer_as_host(&mut c_send, pairing.intro.user_key, binding, &msg1).await;
                return;
            }
            let stream = HostStream::Handshake {
                user_key: pairing.intro.user_key,
                record: pairing.intro.record,
                msg1,
            };
            let open = pairing.shared.metrics.channel(ChannelKind::Handshake);
            let held = Held {
                _stream: place,
                _handshake: Some(handshake),
            };
            (stream, false, (held, open))
        }
        ChannelRequest::Channel { number, bulk } => {
            pairing.traffic.channel();
            let kind = if bulk {
                ChannelKind::Bulk
            } else {
                ChannelKind::Interactive
            };
            let open = pairing.shared.metrics.channel(kind);
            (
                HostStream::Channel { number },
                bulk,
                (
                    Held {
                        _stream: place,
                        _handshake: None,
                    },
                    open,
                ),
            )
        }
        _ => {
            refuse_channel(c_send, "request outside protocol limits".into()).await;
            return;
        }
    };
    // Keystrokes before bulk: a copy's packets never queue ahead of a
    // shell's or a command's (quinn sends higher priorities first).
    let priority = if bulk { 0 } else { 1 };
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
        session: pairing.session,
        user: pairing.user,
        stream,
    };
    if wire::write_frame(&mut h_send, &open).await.is_err()
        || wire::write_frame(&mut c_send, &Relayed::Spliced)
            .await
            .is_err()
    {
        let _ = c_send.reset(quinn::VarInt::from_u32(1));
        let _ = h_send.reset(quinn::VarInt::from_u32(1));
        return;
    }
    let traffic = &pairing.traffic;
    let (to_host, to_client) = pairing.shared.metrics.relayed();
    let is_handshake = matches!(open.stream, HostStream::Handshake { .. });
    let cut_off = async {
        if is_handshake {
            tokio::time::sleep(HANDSHAKE_STREAM_DEADLINE).await
        } else {
            std::future::pending().await
        }
    };
    // Cut short when the session ends (a revoke, the client gone, the
    // relay stopping) or a handshake outlives its deadline: reset both
    // ways, so the host ends what the channel started instead of seeing a
    // clean end of input.
    let cut = tokio::select! {
        _ = async {
            tokio::join!(
                wire::splice(&mut c_recv, &mut h_send, |chunk| {
                    traffic.moved(chunk.len() as u64, 0);
                    to_host.inc_by(chunk.len() as u64);
                    fault::spliced(chunk);
                }),
                wire::splice(&mut h_recv, &mut c_send, |chunk| {
                    traffic.moved(0, chunk.len() as u64);
                    to_client.inc_by(chunk.len() as u64);
                    fault::spliced(chunk);
                })
            )
        } => false,
        _ = cut_off => true,
        _ = ended.cancelled() => true,
    };
    if cut {
        let code = quinn::VarInt::from_u32(CHANNEL_ABORTED);
        let _ = h_send.reset(code);
        let _ = h_recv.stop(code);
        let _ = c_send.reset(code);
        let _ = c_recv.stop(code);
    }
}
