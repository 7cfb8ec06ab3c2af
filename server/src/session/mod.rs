//! A user's session with a host (SPEC X1-X3): the relay pairs the logged-in
//! client with the host's live connection, introduces the two device keys
//! for their end-to-end handshake (SPEC X4, `latchkey_protocol::e2e`), and
//! opens a route between the two devices' connections
//! ([`crate::routes`]). The client's one QUIC connection to the host, and
//! every channel in it, then travels through the relay as datagrams it
//! forwards without reading: the relay sees their sizes and timing and
//! counts their bytes, nothing more. This file follows the session's
//! control stream: reboots, the host going and coming back (a new route
//! each time), tickets to resume elsewhere, and the session's end, which
//! closes its route at once.
//!
//! The live sessions ([`registry`]) and in-session reboots ([`reboot`],
//! [`reboots`]) are this folder's other files.

pub(crate) mod reboot;
pub(crate) mod reboots;
pub(crate) mod registry;

use std::{sync::Arc, time::Duration};

use latchkey_protocol::{
    control::{EndReason, RelaySession, Request},
    frame::{ClientToRelay, Refusal, RelayToClient, RelayToHost},
    ids::{HostName, ResumeTicket, SessionId},
};
use quinn::{RecvStream, SendStream};
use tokio::{sync::broadcast, task::JoinSet, time::timeout};
use tracing::{debug, info};

use crate::{
    error::ConnError, metrics::RebootResult, session::registry::SessionEntry, state::Shared,
    testing::fault,
};
use latchkey_protocol::quic::{self as wire, frame_reader};

/// How long the relay waits for room in a host's queue of control frames
/// to announce a session's route (a host that takes longer is not served)
/// or its end.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the relay waits for the host to say it is ready for a route
/// before it gives the client the route anyway.
const ROUTED_WAIT: Duration = Duration::from_secs(1);

/// How often a paired session checks whether either device's connection
/// moved to another address (a NAT rebinding, a network change), so its
/// route follows.
const ROUTE_FOLLOW: Duration = Duration::from_secs(1);

/// The stream error code for a stream a client opens on its relay
/// connection: a session's channels go end to end, not to the relay.
const NOT_HERE: u32 = 1;

/// Why a session could not be paired with its host: what the client is
/// told, and the audit's reason.
struct Unpaired {
    why: String,
    reason: &'static str,
}

/// Opens a route between the session's client and the host's connection
/// `host_conn`, tells the host (its own leg, who the session is and what
/// it may do, read from the grant now), and returns the frame that gives
/// the client its leg. The route replaces the session's previous one.
/// An error if the grant is gone or unreadable, or the host could not be
/// told in time: the session then ends.
async fn pair(
    shared: &Arc<Shared>,
    entry: &mut SessionEntry,
    client_conn: &quinn::Connection,
    host_conn: &quinn::Connection,
    back: bool,
) -> Result<RelayToClient, Unpaired> {
    let (h, u) = (entry.host.clone(), entry.user.clone());
    let rights =
        match crate::error::logged_store_call(&shared.store, move |s| s.grant_rights(&h, &u)).await
        {
            Some(Some(rights)) => rights,
            Some(None) => {
                return Err(Unpaired {
                    why: format!("you no longer have access to '{}'", entry.host),
                    reason: "grant gone",
                })
            }
            None => {
                return Err(Unpaired {
                    why: "the relay could not read your grant; try again".into(),
                    reason: "store failed",
                })
            }
        };
    let host = entry.host.clone();
    let not_taken = |again: &str| Unpaired {
        why: format!("host '{host}' did not take the session{again} (busy or going away)"),
        reason: "host not answering",
    };
    let route = shared
        .routes
        .open(client_conn.remote_address(), host_conn.remote_address());
    let legs = route.legs();
    entry.route_through(route, shared.metrics.route());
    let announce = RelayToHost::Session {
        session: entry.id,
        continues: entry.continues,
        user: entry.user.clone(),
        user_key: entry.intro.user_key,
        record: entry.intro.record,
        leg: legs.host,
        rights,
    };
    // The host is ready for the route before the client hears of it, so
    // the client's first datagram finds the host ready for it.
    let again = if back { " back" } else { "" };
    let Some(tx) = shared.hosts.tx(&entry.host) else {
        entry.close_route();
        return Err(not_taken(again));
    };
    let mut routed = shared.hosts.await_routed(&entry.host, entry.id);
    if !matches!(
        timeout(ANNOUNCE_TIMEOUT, tx.send(Box::new(announce))).await,
        Ok(Ok(()))
    ) {
        entry.close_route();
        return Err(not_taken(again));
    }
    // A link that is about to be replaced (its agent died unseen) never
    // answers: then the client is given the route all the same, and its
    // first packets are sent again until the host is ready.
    let kept = timeout(ROUTED_WAIT, routed.kept()).await;
    Ok(RelayToClient::Route {
        leg: legs.client,
        kept: matches!(kept, Ok(Some(true))),
    })
}

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
/// recorded, and its route removed, when `entry` drops; the host hears of
/// the end however the session stopped, a failed write to the client
/// included.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    entry: SessionEntry,
    send: SendStream,
    recv: RecvStream,
) -> Result<(), ConnError> {
    let (host, session) = (entry.host.clone(), entry.id);
    let served = follow(shared, conn, entry, send, recv).await;
    if served.is_err() {
        tell_host_ended(shared, &host, session).await;
    }
    served
}

/// Tells `host` that `session` ended, so it closes the session's
/// connection, which ends its channels (a running command is hung up).
/// Waited for, within a bound: a host that never hears it still sees the
/// connection go silent.
async fn tell_host_ended(shared: &Shared, host: &HostName, session: SessionId) {
    if let Some(tx) = shared.hosts.tx(host) {
        let ended = Box::new(RelayToHost::SessionEnded { session });
        let _ = timeout(ANNOUNCE_TIMEOUT, tx.send(ended)).await;
    }
}

/// [`serve`], until the session stops; an error is a failed write to the
/// client.
async fn follow(
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
    match pair(shared, &mut entry, conn, &host_conn, false).await {
        Ok(route) => wire::write_frame(&mut send, &route).await?,
        Err(Unpaired { why, reason }) => {
            info!(%user, %host, "session refused: {reason}");
            entry.ending_because(reason);
            wire::write_frame(&mut send, &RelayToClient::SessionEnded(why)).await?;
            let _ = send.finish();
            let _ = timeout(Duration::from_secs(2), conn.closed()).await;
            return Ok(());
        }
    }
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
    let mut migrations = tokio::time::interval(ROUTE_FOLLOW);
    let shutdown = shared.shutdown.clone();
    let mut back = shared.hosts.comebacks();
    let mut reboot_failed = shared.reboots.failures();
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
                entry.close_route();
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
                Ok((mut s, mut r)) => {
                    // Channels go end to end; a stream here is a client of
                    // another protocol version, or a probe.
                    let _ = s.reset(quinn::VarInt::from_u32(NOT_HERE));
                    let _ = r.stop(quinn::VarInt::from_u32(NOT_HERE));
                    None
                }
                Err(_) => machine.end(EndReason::ClientLeft),
            },
            _ = migrations.tick(), if machine.is_paired() => {
                // A device whose connection migrated: the route follows its
                // authenticated connection (quinn validated the new path).
                if let (Some(route), Some(h)) = (entry.route(), &host_conn) {
                    route.follow(conn.remote_address(), h.remote_address());
                }
                None
            }
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
        };
        if let Some(frame) = to_client {
            if let RelayToClient::SessionEnded(why) = &frame {
                debug!(%user, %host, %session, reason = %why, "session ending");
            }
            let back = matches!(frame, RelayToClient::HostBack);
            let sent = wire::write_frame(&mut send, &frame).await;
            if machine.is_over() {
                let _ = send.finish();
            } else {
                sent?;
            }
            // The host is back: a new route to its new connection.
            if let (true, Some(h)) = (back, &host_conn) {
                let route = pair(shared, &mut entry, conn, h, true).await;
                wire::write_frame(
                    &mut send,
                    &route.unwrap_or_else(|Unpaired { why, reason }| {
                        let _ = machine.end(EndReason::HostOffline);
                        entry.ending_because(reason);
                        RelayToClient::SessionEnded(why)
                    }),
                )
                .await?;
            }
        }
    }
    // From here on the relay forwards none of the session's datagrams.
    entry.close_route();
    tell_host_ended(shared, &host, session).await;
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
