//! A host agent's connection: registered as the host's live link (the
//! newest connection wins, unless the older one still answers: see
//! [`links`]), marked online in the store, and served on its control
//! stream until it goes away. Also the host's administrative connection
//! (`latchkey host set-code`), which registers access codes.

pub(crate) mod code_registration;
pub(crate) mod links;

use std::sync::Arc;

use latchkey_protocol::{
    frame::{HostToRelay, Refusal, RelayToHost},
    ids::{HostName, PublicKey},
    session::DesktopProtocol,
};
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tracing::info;

use self::{code_registration::register_code, links::record_silent_replacement};
use crate::{
    error::{blocking, ConnError},
    state::Shared,
    store::HostPresence,
};
use latchkey_protocol::close;
use latchkey_protocol::quic as wire;

/// A host agent as its handshake introduced it.
pub(crate) struct Agent {
    /// The host it serves.
    pub(crate) host: HostName,
    /// Its device key.
    pub(crate) key: PublicKey,
    /// The desktop it declares.
    pub(crate) desktop: Option<DesktopProtocol>,
}

/// Serves a host agent's connection until it goes away.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    agent: Agent,
    mut send: SendStream,
    recv: RecvStream,
) -> Result<(), ConnError> {
    let Agent { host, key, desktop } = agent;
    let (tx, mut rx) = mpsc::channel::<Box<RelayToHost>>(64);
    let (pong_tx, pongs) = tokio::sync::watch::channel(0u64);
    let mut frames = wire::frame_reader::<HostToRelay>(recv);
    let link = shared.hosts.new_link(conn.clone(), tx, key, pongs);
    let id = link.id;
    // The host's key still connected elsewhere, and answering: a copy of
    // the key. The older connection keeps the host (see `links`).
    let older = match shared.hosts.take_place(&host, link).await {
        Ok(older) => older,
        Err(older_addr) => {
            shared
                .hosts
                .report_twice(&shared.store, &host, older_addr, conn.remote_address())
                .await;
            let refusal = RelayToHost::Refused(Refusal::NotAllowed(format!(
                "host '{host}' is connected already, from another agent with this host's key; \
                 its owner and the admin were told"
            )));
            let _ = wire::write_frame(&mut send, &refusal).await;
            wire::finish_and_let_close(conn, &mut send).await;
            return Ok(());
        }
    };
    if let Some(old) = older {
        if old.conn.close_reason().is_none() {
            record_silent_replacement(
                &shared.store,
                &host,
                old.conn.remote_address(),
                conn.remote_address(),
            )
            .await;
        }
        old.conn
            .close(close::REPLACED, b"replaced by a newer connection");
    }
    shared
        .cluster
        .set_presence(&host, HostPresence::Online { desktop });
    info!(%host, remote = %conn.remote_address(), "host online");
    // Sessions waiting for an agent that dropped carry on (SPEC R5).
    shared.hosts.announce_back(&host, false);
    let shutdown = shared.shutdown.clone();
    let mut pending = None;
    let result = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            Some(frame) = rx.recv() => {
                if let Err(e) = wire::write_frame(&mut send, &*frame).await {
                    break Err(e.into());
                }
            }
            frame = frames.recv() => {
                let frame = match frame {
                    Some(Ok(Some(f))) => f,
                    Some(Ok(None)) | None => break Ok(()),
                    Some(Err(e)) => break Err(e.into()),
                };
                let reply = match frame {
                    HostToRelay::Pong => {
                        pong_tx.send_modify(|n| *n += 1);
                        continue;
                    }
                    HostToRelay::Routed { session, kept } => {
                        shared.hosts.routed(&host, session, kept);
                        continue;
                    }
                    HostToRelay::RebootAck => {
                        info!(%host, "host acknowledged the reboot");
                        continue;
                    }
                    HostToRelay::SessionIdle { session, idle_secs } => {
                        let idle = jiff::SignedDuration::from_secs(i64::from(idle_secs));
                        let why = format!(
                            "your session on '{host}' had no traffic for {idle:#}, your grant's idle limit"
                        );
                        if shared.sessions.end_one(&host, session, &why) {
                            info!(%host, %session, idle_secs, "session ended: idle");
                        }
                        continue;
                    }
                    HostToRelay::RebootFailed { session, reason } => {
                        crate::session::reboot::failed(shared, &host, session, reason).await;
                        continue;
                    }
                    HostToRelay::Resume(ticket) => resume(shared, &host, &ticket, conn).await,
                    frame => register_code(shared, &host, &key, frame, &mut pending).await,
                };
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) => break Err(e),
                };
                if let Err(e) = wire::write_frame(&mut send, &reply).await {
                    break Err(e.into());
                }
                if code_registration::is_final(&reply) {
                    wire::finish_and_let_close(conn, &mut send).await;
                    break Ok(());
                }
            }
        }
    };
    if shared.hosts.leave(&host, id) {
        shared.cluster.set_presence(&host, HostPresence::Offline);
    }
    info!(%host, "host offline");
    result
}

/// A rebooted host presents its ticket. It is spent whatever happens
/// (single use); the sessions that waited resume only if it is the ticket
/// of the reboot the relay waits for (after a relay restart none waits, and
/// nothing is resumed or audited as resumed).
async fn resume(
    shared: &Arc<Shared>,
    host: &HostName,
    ticket: &latchkey_protocol::ids::ResumeTicket,
    conn: &quinn::Connection,
) -> Result<RelayToHost, ConnError> {
    // The ticket must be the one of the reboot the relay waits for, whoever
    // asked for it (the requester may have left; others still wait).
    let waiting = shared
        .reboots
        .awaited_ticket(host)
        .map(|session| session.to_string());
    let store = shared.store.clone();
    let (digest, h, source, now) = (
        ticket.digest(),
        host.clone(),
        conn.remote_address().ip().to_canonical(),
        crate::clock::now_unix(),
    );
    let verdict =
        blocking(move || store.redeem_ticket(digest, &h, waiting.as_deref(), source, now))
            .await??;
    shared.metrics.resume(verdict.is_ok());
    match verdict {
        Ok(session) => {
            shared.reboots.came_back(host);
            shared.hosts.announce_back(host, true);
            info!(%host, %session, "host back from reboot: waiting sessions resume");
            Ok(RelayToHost::Resumed)
        }
        Err(why) => {
            tracing::warn!(%host, reason = why, "resume ticket refused");
            Ok(RelayToHost::Refused(
                latchkey_protocol::frame::Refusal::NotAllowed(why.into()),
            ))
        }
    }
}

/// A host's administrative connection (`latchkey host set-code`): code
/// registrations only, without touching the agent's live link.
pub(crate) async fn serve_admin(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    host: HostName,
    key: PublicKey,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), ConnError> {
    let mut pending = None;
    let shutdown = shared.shutdown.clone();
    loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            f = wire::read_frame::<HostToRelay>(&mut recv) => f?,
        };
        let Some(frame) = frame else { return Ok(()) };
        let reply = register_code(shared, &host, &key, frame, &mut pending).await?;
        wire::write_frame(&mut send, &reply).await?;
        if code_registration::is_final(&reply) {
            wire::finish_and_let_close(conn, &mut send).await;
            return Ok(());
        }
    }
}
