//! One task per connection: the handshake under a deadline, then the
//! authenticated role (host agent, user, or user session). The QUIC
//! endpoint itself and a user's connection without a session are this
//! folder's other files.

pub mod endpoint;
pub(crate) mod user;

use std::{net::IpAddr, sync::Arc};

use latchkey_protocol::{
    frame::{HelloReply, Intent, Refusal, RelayToClient},
    handshake::{Msg1, Responder},
    ids::{HostName, PublicKey, UserName},
    session::DesktopProtocol,
};
use quinn::{RecvStream, SendStream};
use rand::rngs::OsRng;
use tokio::{
    sync::OwnedSemaphorePermit,
    time::{timeout_at, Instant},
};
use tracing::{debug, info, warn};

use crate::{
    clock::now_unix,
    error::{blocking, ConnError},
    login::{login, resume::Resumed, within, Login},
    metrics::{ConnRole, HandshakeResult},
    session::registry::SessionEntry,
    state::Shared,
    store::StoreError,
};
use latchkey_protocol::close;
use latchkey_protocol::quic as wire;

/// The connection's TLS exporter value: the Noise prologue binding.
fn channel_binding(conn: &quinn::Connection) -> Result<[u8; 32], ConnError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, b"EXPORTER-latchkey/1 channel binding", b"")
        .map_err(|_| ConnError::Exporter)?;
    Ok(out)
}

/// What a connection turned out to be after its handshake.
enum Role {
    /// A host agent, and its device key.
    Host(HostName, PublicKey, Option<DesktopProtocol>),
    HostAdmin(HostName, PublicKey),
    User(UserName, PublicKey),
    Session(Box<SessionEntry>),
    /// A session resumed with a ticket: told its id, then served as one.
    Resumed(Box<SessionEntry>),
    /// Enrolment or a refusal: nothing more to do.
    Done,
}

/// Streams a session may have open at once: its control stream and one per
/// channel (the peers' own limit in `wire::transport_config`).
const MAX_SESSION_STREAMS: u32 = 256;

/// Serves one incoming connection to the end.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    permit: OwnedSemaphorePermit,
) {
    // An IPv4 client of a dual-stack relay arrives as ::ffff:a.b.c.d.
    let source = incoming.remote_address().ip().to_canonical();
    let started = Instant::now();
    // Charged at accept if its address was proven by a Retry; otherwise
    // now that the QUIC handshake proves it (below).
    let charged = incoming.remote_address_validated();
    let deadline = started + shared.config.handshake_timeout();
    let first_message = started + shared.config.first_message_timeout();
    // Counted once, however the handshake ends (a failure if this task is
    // dropped first).
    let handshake_done = shared.metrics.handshake();
    let conn = match timeout_at(first_message, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            debug!(%source, "QUIC handshake failed: {e}");
            handshake_done.finish(HandshakeResult::Failed);
            return;
        }
        Err(_) => {
            debug!(%source, "QUIC handshake timed out");
            handshake_done.finish(HandshakeResult::Timeout);
            return;
        }
    };
    if !charged && !shared.admission.charge(source, std::time::Instant::now()) {
        conn.close(
            close::RATE_LIMITED,
            b"too many connections from this address",
        );
        handshake_done.finish(HandshakeResult::RateLimited);
        return;
    }
    let streams = timeout_at(first_message, conn.accept_bi()).await;
    let (mut send, mut recv) = match streams {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%source, "no handshake stream: {e}");
            handshake_done.finish(HandshakeResult::Failed);
            return;
        }
        Err(_) => {
            debug!(%source, "handshake timed out before the first stream");
            conn.close(close::TIMEOUT, b"handshake timeout");
            handshake_done.finish(HandshakeResult::Timeout);
            return;
        }
    };
    // Each phase is boxed: a connection's task then holds only the phase it
    // is in (an idle host's task is a few hundred bytes, not the size of
    // the largest phase).
    let role = tokio::select! {
        role = Box::pin(handshake(
            &shared,
            &conn,
            source,
            first_message,
            deadline,
            &mut send,
            &mut recv,
        )) => role,
        // Tests cancel the handshake here (feature `fault-injection`).
        _ = crate::testing::fault::cancelled() => {
            conn.close(close::INTERNAL, b"cancelled");
            return;
        }
    };
    drop(permit);
    handshake_done.finish(match &role {
        Ok(Role::Done) => HandshakeResult::Answered,
        Ok(_) => HandshakeResult::Authenticated,
        Err(ConnError::Timeout) => HandshakeResult::Timeout,
        Err(_) => HandshakeResult::Failed,
    });
    if matches!(
        role,
        Ok(Role::Host(..)
            | Role::HostAdmin(..)
            | Role::User(..)
            | Role::Session(_)
            | Role::Resumed(_))
    ) {
        // Known now: the full window (see `endpoint::UNAUTHENTICATED_RECEIVE_WINDOW`).
        conn.set_receive_window(endpoint::AUTHENTICATED_RECEIVE_WINDOW.into());
    }
    let result = match role {
        Ok(Role::Done) => {
            wire::finish_and_let_close(&conn, &mut send).await;
            Ok(())
        }
        Ok(Role::Host(host, key, desktop)) => {
            let _open = shared.metrics.connection(ConnRole::Host);
            let agent = crate::hosts::Agent { host, key, desktop };
            Box::pin(crate::hosts::serve(&shared, &conn, agent, send, recv)).await
        }
        Ok(Role::HostAdmin(host, key)) => {
            let _open = shared.metrics.connection(ConnRole::HostAdmin);
            Box::pin(crate::hosts::serve_admin(
                &shared, &conn, host, key, send, recv,
            ))
            .await
        }
        Ok(Role::User(user, key)) => {
            let _open = shared.metrics.connection(ConnRole::User);
            Box::pin(crate::conn::user::serve(
                &shared, &conn, &user, key, send, recv,
            ))
            .await
        }
        Ok(Role::Session(entry)) => {
            let _open = shared.metrics.connection(ConnRole::Session);
            // Only a session opens channels (one stream each).
            conn.set_max_concurrent_bi_streams(MAX_SESSION_STREAMS.into());
            Box::pin(crate::session::serve(&shared, &conn, *entry, send, recv)).await
        }
        Ok(Role::Resumed(entry)) => {
            let _open = shared.metrics.connection(ConnRole::Session);
            conn.set_max_concurrent_bi_streams(MAX_SESSION_STREAMS.into());
            let resumed = RelayToClient::Resumed { session: entry.id };
            match wire::write_frame(&mut send, &resumed).await {
                Ok(()) => Box::pin(crate::session::serve(&shared, &conn, *entry, send, recv)).await,
                Err(e) => Err(e.into()),
            }
        }
        Err(ConnError::Timeout) => {
            debug!(%source, "handshake deadline passed");
            conn.close(close::TIMEOUT, b"handshake timeout");
            return;
        }
        Err(e) => {
            // A peer's bad bytes are its own business; the relay's own
            // failure (the store, a worker) is the operator's.
            if matches!(e, ConnError::Store(_) | ConnError::Join) {
                warn!(%source, "handshake failed: {e}");
            } else {
                debug!(%source, "handshake failed: {e}");
            }
            conn.close(close::PROTOCOL, b"handshake failed");
            return;
        }
    };
    if let Err(e) = result {
        debug!(%source, "connection ended: {e}");
    }
    conn.close(close::DONE, b"");
}

/// `first_message` bounds the wait for message 1, `deadline` the whole
/// handshake.
async fn handshake(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    source: IpAddr,
    first_message: Instant,
    deadline: Instant,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<Role, ConnError> {
    let binding = channel_binding(conn)?;
    let msg1 = within(first_message, async { Ok(wire::read_message(recv).await?) }).await?;
    let s = shared.clone();
    let step =
        blocking(move || Responder::read_msg1(&s.identity, &binding, &msg1, &mut OsRng)).await??;
    match step {
        Msg1::Login(req) => match login(shared, source, deadline, send, recv, *req).await? {
            Login::Session(entry) => Ok(Role::Session(entry)),
            Login::Done => Ok(Role::Done),
        },
        Msg1::Device(req) => {
            let device = req.device_key();
            let (reply, role) = match req.intent() {
                Some(intent) => device_reply(shared, intent, device, source).await?,
                None => (HelloReply::Welcome, Role::Done), // replaced by a version refusal
            };
            let (msg2, _) = req.reply(&reply)?;
            within(deadline, async {
                Ok(wire::write_message(send, &msg2).await?)
            })
            .await?;
            Ok(role)
        }
    }
}

/// Decides the reply to a non-login intent.
async fn device_reply(
    shared: &Arc<Shared>,
    intent: &Intent,
    device: PublicKey,
    source: IpAddr,
) -> Result<(HelloReply, Role), ConnError> {
    let store = shared.store.clone();
    let now = now_unix();
    let refuse = |r| Ok((HelloReply::Refused(r), Role::Done));
    match intent.clone() {
        Intent::Enroll { token, platform } => {
            let digest = token.digest();
            match blocking(move || store.redeem_invite(digest, device, platform, source, now))
                .await?
            {
                Ok(enrolled) => {
                    info!(name = %enrolled.name, host = enrolled.is_host, %source, "device enrolled");
                    // A re-enrolled device replaces the old one: what the old
                    // key holds here ends now (on the other relays of a
                    // cluster when they read the audit row).
                    shared.device_replaced(&enrolled.name, enrolled.is_host, Some(&device));
                    Ok((
                        HelloReply::Enrolled {
                            name: enrolled.name,
                            is_host: enrolled.is_host,
                        },
                        Role::Done,
                    ))
                }
                Err(StoreError::InvalidInvite) => {
                    info!(%source, "enrolment refused: invalid invite");
                    refuse(Refusal::InvalidToken)
                }
                Err(e) => Err(e.into()),
            }
        }
        Intent::Host { ref host, .. } | Intent::HostAdmin { ref host } => {
            let h = host.clone();
            let key = blocking(move || store.host_key(&h)).await??;
            if key == Some(device) {
                let role = match intent {
                    Intent::Host { host, desktop } => Role::Host(host.clone(), device, *desktop),
                    _ => Role::HostAdmin(host.clone(), device),
                };
                Ok((HelloReply::Welcome, role))
            } else {
                info!(%host, %source, "host connection refused: unknown device key");
                refuse(Refusal::UnknownDevice)
            }
        }
        Intent::User { user } => {
            let u = user.clone();
            let key = blocking(move || store.user_key(&u)).await??;
            if key == Some(device) {
                Ok((HelloReply::Welcome, Role::User(user, device)))
            } else {
                info!(%user, %source, "user connection refused: unknown device key");
                refuse(Refusal::UnknownDevice)
            }
        }
        Intent::Resume { user, host, ticket } => {
            match crate::login::resume::resume(shared, user, host, ticket, device, source).await? {
                Resumed::Session(entry) => Ok((HelloReply::Welcome, Role::Resumed(entry))),
                Resumed::Redirect(relay) => Ok((HelloReply::Redirect { relay }, Role::Done)),
                Resumed::Refused(r) => refuse(r),
            }
        }
        // Logins arrive as `Msg1::Login`; anything else is refused.
        _ => refuse(Refusal::NotAllowed("unsupported request".into())),
    }
}
