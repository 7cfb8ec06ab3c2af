//! One task per connection: the handshake under a deadline, then the
//! authenticated role (host agent, user, or user session).

use std::{net::IpAddr, sync::Arc};

use latchkey_protocol::{
    frame::{
        ClientToRelay, HelloReply, HostToRelay, Intent, LoginOutcome, Refusal, RelayToClient,
        RelayToHost,
    },
    handshake::{
        registration_response, validate_upload, AttemptDecision, CodeRecord, LoginAuthority,
        LoginReply, Msg1, Reservation, Responder,
    },
    ids::{HostName, PublicKey, RecordId, SessionId, UserName},
    HandshakeError,
};
use quinn::{RecvStream, SendStream};
use rand::{rngs::OsRng, RngCore};
use thiserror::Error;
use tokio::{
    sync::{mpsc, OwnedSemaphorePermit},
    time::{timeout_at, Instant},
};
use tracing::{debug, info, warn};

use crate::{
    now_unix,
    store::{AttemptId, Event, Store, StoreError},
    wire::{self, WireError},
    Shared,
};

/// QUIC application close codes the relay uses.
pub mod close {
    use quinn::VarInt;
    /// Normal end.
    pub const DONE: VarInt = VarInt::from_u32(0);
    /// The handshake deadline passed.
    pub const TIMEOUT: VarInt = VarInt::from_u32(1);
    /// The peer broke the protocol.
    pub const PROTOCOL: VarInt = VarInt::from_u32(2);
    /// A newer connection of the same host replaced this one.
    pub const REPLACED: VarInt = VarInt::from_u32(3);
    /// The relay is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(4);
    /// Internal error (store unavailable).
    pub const INTERNAL: VarInt = VarInt::from_u32(5);
}

/// Errors of one connection (logged, never sent to the peer in detail).
#[derive(Debug, Error)]
pub(crate) enum ConnError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot export TLS keying material")]
    Exporter,
    #[error("worker task failed")]
    Join,
    #[error("handshake deadline passed")]
    Timeout,
}

/// Runs `f` on the blocking pool (crypto and SQLite).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ConnError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ConnError::Join)
}

/// The connection's TLS exporter value: the Noise prologue binding.
fn channel_binding(conn: &quinn::Connection) -> Result<[u8; 32], ConnError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, b"EXPORTER-latchkey/1 channel binding", b"")
        .map_err(|_| ConnError::Exporter)?;
    Ok(out)
}

/// What a connection turned out to be after its handshake.
enum Role {
    Host(HostName),
    HostAdmin(HostName),
    User(UserName),
    Session {
        user: UserName,
        host: HostName,
        session: SessionId,
    },
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
    let source = incoming.remote_address().ip();
    let started = Instant::now();
    let deadline = started + shared.config.handshake_timeout();
    let first_message = started + shared.config.first_message_timeout();
    let conn = match timeout_at(first_message, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            debug!(%source, "QUIC handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%source, "QUIC handshake timed out");
            return;
        }
    };
    let streams = timeout_at(first_message, conn.accept_bi()).await;
    let (mut send, mut recv) = match streams {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%source, "no handshake stream: {e}");
            return;
        }
        Err(_) => {
            debug!(%source, "handshake timed out before the first stream");
            conn.close(close::TIMEOUT, b"handshake timeout");
            return;
        }
    };
    // Each phase is boxed: a connection's task then holds only the phase it
    // is in (an idle host's task is a few hundred bytes, not the size of
    // the largest phase).
    let role = Box::pin(handshake(
        &shared,
        &conn,
        source,
        first_message,
        deadline,
        &mut send,
        &mut recv,
    ))
    .await;
    drop(permit);
    let result = match role {
        Ok(Role::Done) => {
            // Let the reply reach the peer, then close.
            let _ = send.finish();
            let _ = timeout_at(
                Instant::now() + std::time::Duration::from_secs(2),
                conn.closed(),
            )
            .await;
            Ok(())
        }
        Ok(Role::Host(host)) => {
            Box::pin(crate::host::serve(&shared, &conn, host, send, recv)).await
        }
        Ok(Role::HostAdmin(host)) => {
            Box::pin(crate::host::serve_admin(&shared, host, send, recv)).await
        }
        Ok(Role::User(user)) => Box::pin(serve_user(&shared, &user, send, recv)).await,
        Ok(Role::Session {
            user,
            host,
            session,
        }) => {
            // Only a session opens channels (one stream each).
            conn.set_max_concurrent_bi_streams(MAX_SESSION_STREAMS.into());
            Box::pin(crate::session::serve(
                &shared, &conn, user, host, session, send, recv,
            ))
            .await
        }
        Err(ConnError::Timeout) => {
            debug!(%source, "handshake deadline passed");
            conn.close(close::TIMEOUT, b"handshake timeout");
            return;
        }
        Err(e) => {
            debug!(%source, "handshake failed: {e}");
            conn.close(close::PROTOCOL, b"handshake failed");
            return;
        }
    };
    if let Err(e) = result {
        debug!(%source, "connection ended: {e}");
    }
    conn.close(close::DONE, b"");
}

async fn within<T>(
    deadline: Instant,
    f: impl std::future::Future<Output = Result<T, ConnError>>,
) -> Result<T, ConnError> {
    timeout_at(deadline, f)
        .await
        .map_err(|_| ConnError::Timeout)?
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
        Msg1::Login(req) => login(shared, source, deadline, send, recv, *req).await,
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
        Intent::Host { host } | Intent::HostAdmin { host } => {
            let h = host.clone();
            let key = blocking(move || store.host_key(&h)).await??;
            if key == Some(device) {
                let role = if matches!(intent, Intent::Host { .. }) {
                    Role::Host(host)
                } else {
                    Role::HostAdmin(host)
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
                Ok((HelloReply::Welcome, Role::User(user)))
            } else {
                info!(%user, %source, "user connection refused: unknown device key");
                refuse(Refusal::UnknownDevice)
            }
        }
        // Logins arrive as `Msg1::Login`; anything else is refused.
        _ => refuse(Refusal::NotAllowed("unsupported request".into())),
    }
}

/// The store seen through the protocol's [`LoginAuthority`]; runs on the
/// blocking pool. Store errors are kept, and the caller sends nothing if
/// one happened (a failed reservation must never turn into a KE2).
struct StoreAuthority<'a> {
    store: &'a dyn Store,
    source: IpAddr,
    now: i64,
    error: Option<StoreError>,
    /// Why a login was treated as an outsider's (for the log).
    outsider_reason: &'static str,
}

impl StoreAuthority<'_> {
    fn keep<T>(&mut self, r: Result<Option<T>, StoreError>) -> Option<T> {
        r.unwrap_or_else(|e| {
            self.error.get_or_insert(e);
            None
        })
    }
}

impl LoginAuthority for StoreAuthority<'_> {
    type Attempt = AttemptId;

    fn device_key(&mut self, user: &UserName) -> Option<PublicKey> {
        let key = self.store.user_key(user);
        let key = self.keep(key);
        self.outsider_reason = if key.is_some() {
            "device key is not the user's"
        } else {
            "unknown user"
        };
        key
    }

    fn code_record(&mut self, user: &UserName, host: &HostName) -> Option<CodeRecord> {
        self.outsider_reason = "no grant (or no code set) on the host";
        let record = self.store.code_record(user, host);
        self.keep(record)
    }

    fn reserve_attempt(
        &mut self,
        user: &UserName,
        host: &HostName,
        _: &CodeRecord,
    ) -> Reservation<AttemptId> {
        match self
            .store
            .reserve_attempt(user, host, self.source, self.now)
        {
            Ok(reservation) => reservation,
            Err(e) => {
                // Nothing is sent when a store error was kept.
                self.error.get_or_insert(e);
                Reservation::Locked
            }
        }
    }
}

async fn login(
    shared: &Arc<Shared>,
    source: IpAddr,
    deadline: Instant,
    send: &mut SendStream,
    recv: &mut RecvStream,
    req: latchkey_protocol::handshake::LoginRequest,
) -> Result<Role, ConnError> {
    let (user, host) = (req.user().clone(), req.host().clone());
    // Every answer to a login's message 1 leaves no earlier than this, so
    // the store work that differs between a grant holder's attempt and an
    // outsider's does not show in the timing (SPEC A4).
    let reply_not_before = Instant::now() + shared.config.login_reply_floor();
    let s = shared.clone();
    let (reply, error, outsider_reason) = blocking(move || {
        let mut authority = StoreAuthority {
            store: &*s.store,
            source,
            now: now_unix(),
            error: None,
            outsider_reason: "",
        };
        let reply = req.respond(&s.identity, &mut authority, &mut OsRng);
        (reply, authority.error, authority.outsider_reason)
    })
    .await?;
    if let Some(e) = error {
        warn!(%user, %host, "store failed during login: {e}");
        return Err(e.into());
    }
    let LoginReply {
        msg2,
        decision,
        awaiting,
    } = reply?;
    if decision == AttemptDecision::Outsider {
        // Refused, rate-limited and logged (SPEC S8); never counted.
        info!(%user, %host, %source, reason = outsider_reason, "login by an outsider");
        shared.penalize(source);
        let store = shared.store.clone();
        let (u, h) = (user.clone(), host.clone());
        let now = now_unix();
        blocking(move || {
            store.audit(
                Event {
                    event: "login-refused",
                    host: Some(h.as_str()),
                    user: Some(u.as_str()),
                    source: Some(source),
                    detail: Some(outsider_reason.into()),
                },
                now,
            )
        })
        .await??;
    }
    tokio::time::sleep_until(reply_not_before).await;
    within(deadline, async {
        Ok(wire::write_message(send, &msg2).await?)
    })
    .await?;
    let Some(awaiting) = awaiting else {
        let why = if decision == AttemptDecision::Busy {
            "other attempts on the host are in flight"
        } else {
            "host is locked"
        };
        info!(%user, %host, %source, "login refused: {why}");
        return Ok(Role::Done);
    };
    let attempt = awaiting.attempt().copied();
    let msg3 = within(deadline, async { Ok(wire::read_message(recv).await?) }).await;
    let finish = |success: bool| {
        let store = shared.store.clone();
        let now = now_unix();
        async move {
            match attempt {
                Some(a) => blocking(move || store.finish_attempt(a, success, now))
                    .await?
                    .map_err(ConnError::from),
                None => Ok(()),
            }
        }
    };
    let msg3 = match msg3 {
        Ok(m) => m,
        Err(e) => {
            // Abandoned, timed out or malformed: a failure (SPEC A3), and
            // the connection is closed at once.
            finish(false).await?;
            if attempt.is_some() {
                info!(%user, %host, %source, "login failed: no KE3 ({e})");
            }
            return Err(e);
        }
    };
    // KE3 and the verdict's commit in one trip to the blocking pool: the
    // verdict is committed before the client hears it (SPEC B2), and a
    // KE3 that does not even parse is a failure like a wrong one.
    let store = shared.store.clone();
    let now = now_unix();
    let (result, committed) = blocking(move || {
        let result = awaiting.read_msg3(&msg3);
        let verified = matches!(&result, Ok(r) if r.verified);
        let committed = match attempt {
            Some(a) => store.finish_attempt(a, verified, now),
            None => Ok(()),
        };
        (result, committed)
    })
    .await?;
    committed?;
    let mut result = result.map_err(|(e, _)| e)?;
    let outcome = if result.verified {
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        LoginOutcome::Accepted {
            session: SessionId(id),
        }
    } else {
        LoginOutcome::Rejected
    };
    let msg4 = result.reply(&outcome)?;
    within(deadline, async {
        Ok(wire::write_message(send, &msg4).await?)
    })
    .await?;
    match outcome {
        LoginOutcome::Accepted { session } => {
            info!(%user, %host, %source, %session, "login ok");
            Ok(Role::Session {
                user,
                host,
                session,
            })
        }
        _ => {
            info!(%user, %host, %source, "login failed: invalid KE3");
            Ok(Role::Done)
        }
    }
}

/// The answer to [`ClientToRelay::ListHosts`], from a user's connection
/// or from inside a session.
pub(crate) async fn host_list(
    shared: &Arc<Shared>,
    user: &UserName,
) -> Result<RelayToClient, ConnError> {
    let store = shared.store.clone();
    let u = user.clone();
    Ok(RelayToClient::Hosts(
        blocking(move || store.hosts_for_user(&u)).await??,
    ))
}

/// A proven user's control stream: requests that need no access code.
async fn serve_user(
    shared: &Arc<Shared>,
    user: &UserName,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), ConnError> {
    let shutdown = shared.shutdown.clone();
    loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            f = wire::read_frame::<ClientToRelay>(&mut recv) => f?,
        };
        let Some(frame) = frame else { return Ok(()) };
        let reply = match frame {
            ClientToRelay::ListHosts => host_list(shared, user).await?,
            _ => RelayToClient::Refused(Refusal::NotAllowed("unsupported request".into())),
        };
        wire::write_frame(&mut send, &reply).await?;
    }
}

/// Handles one code registration on a host's control stream; returns the
/// reply to send. `pending` carries the record between the two steps.
pub(crate) async fn register_code(
    shared: &Arc<Shared>,
    host: &HostName,
    frame: HostToRelay,
    pending: &mut Option<(
        latchkey_protocol::frame::CodeTarget,
        latchkey_protocol::ksf::KsfProfile,
        RecordId,
    )>,
) -> Result<RelayToHost, ConnError> {
    match frame {
        HostToRelay::RegisterCode {
            target,
            ksf,
            request,
        } => {
            if ksf.is_insecure() && !shared.config.allow_insecure_ksf {
                return Ok(RelayToHost::Refused(Refusal::NotAllowed(format!(
                    "this relay does not accept the key-stretching profile {}",
                    ksf.as_str()
                ))));
            }
            let mut id = [0u8; 16];
            OsRng.fill_bytes(&mut id);
            let id = RecordId(id);
            let s = shared.clone();
            let response =
                blocking(move || registration_response(&s.identity, &request, id)).await??;
            *pending = Some((target, ksf, id));
            Ok(RelayToHost::CodeChallenge { response })
        }
        HostToRelay::UploadCode { upload } => {
            let Some((target, ksf, id)) = pending.take() else {
                return Ok(RelayToHost::Refused(Refusal::NotAllowed(
                    "no code registration in progress".into(),
                )));
            };
            let record = CodeRecord {
                id,
                ksf,
                record: validate_upload(&upload)?,
            };
            let store = shared.store.clone();
            let (h, t) = (host.clone(), target.clone());
            let now = now_unix();
            match blocking(move || store.set_code(&h, &t, &record, now)).await? {
                Ok(()) => {
                    info!(%host, ?target, "access code set");
                    Ok(RelayToHost::CodeSet { target })
                }
                Err(StoreError::Refused(why)) => Ok(RelayToHost::Refused(Refusal::NotAllowed(why))),
                Err(e) => Err(e.into()),
            }
        }
        _ => Ok(RelayToHost::Refused(Refusal::NotAllowed(
            "unexpected frame".into(),
        ))),
    }
}

/// Sender half used by other tasks to reach a host's control stream.
pub(crate) type HostTx = mpsc::Sender<RelayToHost>;
