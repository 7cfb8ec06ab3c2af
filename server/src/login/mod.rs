//! A login after message 1 (SPEC A2-A4, S4, S6, S7a): the store answers
//! through the protocol's [`LoginAuthority`], a grant holder's attempt is
//! reserved before KE2 leaves, and the attempt then ends in a verdict on
//! every path (it is a [`PendingAttempt`], which settles itself as a
//! failure when dropped). A success commits with a fresh check of the grant
//! and the lock and with the session's registration, before the client
//! hears it.

pub(crate) mod resume;
pub(crate) mod settle;
pub(crate) mod waiting;

use std::{net::IpAddr, sync::Arc, time::Duration};

use latchkey_protocol::{
    frame::{LoginOutcome, Refusal},
    handshake::{
        AttemptDecision, AwaitingKe3, CodeRecord, Ke3Result, LoginAuthority, LoginReply,
        LoginRequest, Reservation,
    },
    ids::{HostName, PublicKey, RecordId, SessionId, UserName},
};
use quinn::{RecvStream, SendStream};
use rand::rngs::OsRng;
use tokio::time::{timeout_at, Instant};
use tracing::{info, warn};

use crate::{
    clock::now_unix,
    error::{blocking, ConnError},
    login::settle::{PendingAttempt, Settler},
    metrics::LoginResult,
    rules::lockout::{Admission, Proof, Settlement, VoidReason},
    session::registry::{Intro, SessionEntry, Sessions},
    state::Shared,
    store::{AuditEvent, Event, Store, StoreError},
    testing::fault::{self, Step},
};
use latchkey_protocol::quic as wire;

/// Runs `f` under the handshake deadline.
pub(crate) async fn within<T>(
    deadline: Instant,
    f: impl std::future::Future<Output = Result<T, ConnError>>,
) -> Result<T, ConnError> {
    timeout_at(deadline, f)
        .await
        .map_err(|_| ConnError::Timeout)?
}

/// A test's fault at `step`, if one is armed (see [`fault`]), under the
/// handshake deadline.
async fn fault_point(deadline: Instant, step: Step) -> Result<(), ConnError> {
    within(deadline, async { Ok(fault::at(step).await?) }).await
}

/// The store seen through the protocol's [`LoginAuthority`]; runs on the
/// blocking pool. Store errors are kept, and the caller sends nothing if
/// one happened (a failed reservation must never turn into a KE2).
struct StoreAuthority<'a> {
    shared: &'a Shared,
    store: &'a dyn Store,
    settler: &'a Settler,
    source: IpAddr,
    now: i64,
    error: Option<StoreError>,
    /// Why a login was treated as an outsider's (for the log).
    outsider_reason: &'static str,
}

impl<'a> StoreAuthority<'a> {
    fn new(shared: &'a Shared, source: IpAddr) -> Self {
        Self {
            shared,
            store: &*shared.store,
            settler: &shared.settler,
            source,
            now: now_unix(),
            error: None,
            outsider_reason: "",
        }
    }

    /// Where a proven grant holder's login for `host` goes instead: the
    /// relay of the cluster that holds its agent, if not this one.
    fn elsewhere(&mut self, host: &HostName) -> Option<String> {
        let relay = self.shared.host_elsewhere(host);
        self.keep(relay)
    }

    fn keep<T>(&mut self, r: Result<Option<T>, StoreError>) -> Option<T> {
        r.unwrap_or_else(|e| {
            self.error.get_or_insert(e);
            None
        })
    }
}

impl LoginAuthority for StoreAuthority<'_> {
    type Attempt = PendingAttempt;

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
        record: &CodeRecord,
    ) -> Reservation<PendingAttempt> {
        match self
            .store
            .reserve_attempt(user, host, &record.id, self.source, self.now)
        {
            // From here on the attempt settles itself, whatever happens.
            Ok(Reservation::Reserved(id)) => {
                Reservation::Reserved(self.settler.adopt(id, host.clone(), record.id))
            }
            Ok(Reservation::Busy) => Reservation::Busy,
            Ok(Reservation::Locked) => Reservation::Locked,
            Err(e) => {
                // Nothing is sent when a store error was kept.
                self.error.get_or_insert(e);
                Reservation::Locked
            }
        }
    }
}

/// The longest a login waits for its turn on a busy host.
const MAX_TURN_WAIT: Duration = Duration::from_secs(5);
/// What a waiting login leaves of the handshake deadline for the client's
/// key stretching and KE3.
const KE3_MARGIN: Duration = Duration::from_secs(3);

/// What the first trip to the blocking pool decided.
enum First {
    /// Message 2 (or why there is none).
    Reply(Box<Result<LoginReply<PendingAttempt>, latchkey_protocol::HandshakeError>>),
    /// A grant holder whose attempt does not fit the budget yet.
    Wait(Box<LoginRequest>, CodeRecord),
}

/// Waits in the host's line until an attempt fits (or `until`), then
/// reserves it, holding the turn so the next in line does not race, and
/// writes message 2. A login still waiting at `until` is answered "busy",
/// which spends nothing.
async fn wait_turn(
    shared: &Arc<Shared>,
    source: IpAddr,
    req: Box<LoginRequest>,
    record: CodeRecord,
    until: Instant,
) -> Result<Result<LoginReply<PendingAttempt>, latchkey_protocol::HandshakeError>, ConnError> {
    let (host, user) = (req.host().clone(), req.user().clone());
    let fits = || {
        let (store, host, user) = (shared.store.clone(), host.clone(), user.clone());
        async move {
            !matches!(
                blocking(move || store.admission(&host, &user)).await,
                Ok(Ok(Admission::Busy))
            )
        }
    };
    let turn = shared
        .settler
        .waiting
        .wait_turn(&host, &user, until, fits)
        .await;
    let s = shared.clone();
    let (reply, error) = blocking(move || {
        let mut authority = StoreAuthority::new(&s, source);
        let reservation = authority.reserve_attempt(req.user(), req.host(), &record);
        let reply = req.answer(&s.identity, Some((record, reservation)), &mut OsRng);
        (reply, authority.error)
    })
    .await?;
    drop(turn);
    match error {
        Some(e) => Err(e.into()),
        None => Ok(reply),
    }
}

/// The login's end, as the relay decided it.
pub(crate) enum Login {
    /// A session started (boxed: the entry is large, `Done` is nothing).
    Session(Box<SessionEntry>),
    /// Refused, failed or abandoned: nothing more to do.
    Done,
}

/// Who is asking and, for a grant holder, the reservation; then message 2,
/// in the same trip to the blocking pool unless the attempt has to wait
/// its turn. A store error means nothing is sent (a failed reservation
/// must never turn into a KE2).
async fn first_trip(
    shared: &Arc<Shared>,
    source: IpAddr,
    req: LoginRequest,
) -> Result<(First, &'static str), ConnError> {
    let (user, host) = (req.user().clone(), req.host().clone());
    let s = shared.clone();
    let (first, error, outsider_reason) = blocking(move || {
        let mut authority = StoreAuthority::new(&s, source);
        let record = req.claim(&mut authority);
        // A host whose agent is on another relay of the cluster is reached
        // there: the login goes there before anything is reserved.
        if record.is_some() {
            if let Some(relay) = authority.elsewhere(req.host()) {
                let reply = req.redirect(relay);
                return (First::Reply(Box::new(reply)), authority.error, "");
            }
        }
        let claim = record.map(|record| {
            let reservation = authority.reserve_attempt(req.user(), req.host(), &record);
            (record, reservation)
        });
        let first = match claim {
            Some((record, Reservation::Busy)) if authority.error.is_none() => {
                First::Wait(Box::new(req), record)
            }
            claim => First::Reply(Box::new(req.answer(&s.identity, claim, &mut OsRng))),
        };
        (first, authority.error, authority.outsider_reason)
    })
    .await?;
    if let Some(e) = error {
        warn!(%user, %host, "store failed during login: {e}");
        return Err(e.into());
    }
    Ok((first, outsider_reason))
}

/// How a decision at message 2 counts in the metrics (a grant holder's
/// attempt counts when its verdict is taken).
fn counted_at_message_2(decision: AttemptDecision) -> Option<LoginResult> {
    match decision {
        AttemptDecision::Outsider => Some(LoginResult::Outsider),
        AttemptDecision::Locked => Some(LoginResult::Locked),
        AttemptDecision::Busy => Some(LoginResult::Busy),
        AttemptDecision::Redirected => Some(LoginResult::Redirected),
        AttemptDecision::Evaluated => None,
    }
}

/// An outsider's login: refused, rate-limited and logged (SPEC S8), never
/// counted against the host.
async fn refuse_outsider(
    shared: &Arc<Shared>,
    user: &UserName,
    host: &HostName,
    source: IpAddr,
    reason: &'static str,
) -> Result<(), ConnError> {
    info!(%user, %host, %source, reason, "login by an outsider");
    shared.admission.penalize(source, std::time::Instant::now());
    let store = shared.store.clone();
    let (u, h) = (user.clone(), host.clone());
    let now = now_unix();
    blocking(move || {
        store.audit(
            Event {
                event: AuditEvent::LoginRefused,
                host: Some(h.as_str()),
                user: Some(u.as_str()),
                source: Some(source),
                detail: Some(reason.into()),
            },
            now,
        )
    })
    .await??;
    Ok(())
}

/// KE3 and the verdict's commit, in one trip to the blocking pool: the
/// verdict is committed before the client hears it (SPEC B2), and a KE3 that
/// does not even parse is a failure like a wrong one. The session's entry
/// travels with the verdict: if the login's task is cancelled while the
/// verdict commits, the commit still finishes and the entry, dropped there,
/// records the session's end. The settlement is `None` for an outsider,
/// `Some(None)` for an attempt the sweeper settled first.
async fn commit_verdict(
    store: Arc<dyn Store>,
    awaiting: AwaitingKe3<PendingAttempt>,
    msg3: Vec<u8>,
    session: SessionId,
    mut entry: SessionEntry,
) -> Result<
    (
        Ke3Result<PendingAttempt>,
        Option<Option<Settlement>>,
        SessionEntry,
    ),
    ConnError,
> {
    blocking(move || {
        let mut result = awaiting.read_msg3(&msg3).map_err(|(e, _attempt)| e)?;
        let settled = match result.attempt.take() {
            Some(attempt) => {
                let proof = if result.verified {
                    Proof::RightCode
                } else {
                    Proof::NotProven
                };
                match attempt.settle(&*store, proof, &session) {
                    Ok(settled) => Some(settled),
                    Err(e) => {
                        // The commit's outcome is unknown (PostgreSQL lost
                        // the connection during COMMIT): the session may be
                        // registered, so its end is recorded, which does
                        // nothing if it was not.
                        entry.started();
                        entry.ending_because("the verdict's commit failed");
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        if settled == Some(Some(Settlement::Success)) {
            entry.started();
        }
        Ok::<_, ConnError>((result, settled, entry))
    })
    .await?
}

/// What a verdict counts as in the metrics, and what the client is told.
fn outcome(
    settled: Option<Option<Settlement>>,
    session: SessionId,
    host: &HostName,
) -> (Option<LoginResult>, LoginOutcome) {
    match settled {
        Some(Some(Settlement::Success)) => {
            (Some(LoginResult::Ok), LoginOutcome::Accepted { session })
        }
        // No grant any more when the verdict was taken.
        Some(Some(Settlement::Void(VoidReason::GrantGone))) => (
            Some(LoginResult::Outsider),
            LoginOutcome::Refused(Refusal::NotAllowed(format!(
                "your access to '{host}' was revoked or its access code replaced; ask your admin"
            ))),
        ),
        Some(Some(Settlement::Void(VoidReason::Locked))) => {
            (Some(LoginResult::Locked), LoginOutcome::Locked)
        }
        Some(Some(Settlement::Void(VoidReason::SessionsFull(full)))) => (
            Some(LoginResult::TooManySessions),
            LoginOutcome::Refused(Refusal::NotAllowed(full.explain(host.as_str()))),
        ),
        Some(Some(Settlement::Failure)) => (Some(LoginResult::Wrong), LoginOutcome::Rejected),
        // Settled by the sweeper first (counted as abandoned): the login
        // took too long.
        Some(None) => (
            None,
            LoginOutcome::Refused(Refusal::NotAllowed(
                "the login took too long; try again".into(),
            )),
        ),
        // An outsider (counted at message 2).
        None => (None, LoginOutcome::Rejected),
    }
}

/// Answers a login's message 1 and sees it through to its verdict.
pub(crate) async fn login(
    shared: &Arc<Shared>,
    source: IpAddr,
    deadline: Instant,
    send: &mut SendStream,
    recv: &mut RecvStream,
    req: LoginRequest,
) -> Result<Login, ConnError> {
    let (user, host) = (req.user().clone(), req.host().clone());
    let user_key = req.device_key();
    // Every answer to a login's message 1 leaves no earlier than this, so
    // the store work that differs between a grant holder's attempt and an
    // outsider's does not show in the timing (SPEC A4, A6).
    let reply_not_before = Instant::now() + shared.config.login_reply_floor();
    let (first, outsider_reason) = first_trip(shared, source, req).await?;
    let reply = match first {
        First::Reply(reply) => *reply,
        First::Wait(req, record) => {
            let wait_until = (Instant::now() + MAX_TURN_WAIT).min(deadline - KE3_MARGIN);
            wait_turn(shared, source, req, record, wait_until).await?
        }
    };
    let LoginReply {
        msg2,
        decision,
        mut awaiting,
    } = reply?;
    if let Some(result) = counted_at_message_2(decision) {
        shared.metrics.login(result);
    }
    if decision == AttemptDecision::Outsider {
        refuse_outsider(shared, &user, &host, source, outsider_reason).await?;
    }
    if let Some(attempt) = awaiting.as_mut().and_then(|a| a.attempt_mut()) {
        attempt.waiting_for("KE2 not delivered");
    }
    fault_point(deadline, Step::Ke2Write).await?;
    tokio::time::sleep_until(reply_not_before).await;
    within(deadline, async {
        Ok(wire::write_message(send, &msg2).await?)
    })
    .await?;
    let Some(mut awaiting) = awaiting else {
        let why = match decision {
            AttemptDecision::Busy => "other attempts on the host are in flight",
            AttemptDecision::Redirected => "sent to the relay that holds the host",
            _ => "host is locked",
        };
        info!(%user, %host, %source, "login refused: {why}");
        return Ok(Login::Done);
    };
    // An outsider has no attempt (and will never have a session): its
    // login goes on to an indistinguishable "rejected" all the same.
    let record = awaiting.attempt_mut().map(|attempt| {
        attempt.waiting_for("no KE3 (abandoned, timed out or unreadable)");
        attempt.record()
    });
    fault_point(deadline, Step::AwaitKe3).await?;
    // Abandoned, timed out or malformed: the attempt is dropped with
    // `awaiting` and settles as a failure (SPEC A3), and the connection is
    // closed at once.
    let msg3 = within(deadline, async { Ok(wire::read_message(recv).await?) }).await?;
    fault_point(deadline, Step::Ke3Check).await?;
    // Registered before the verdict commits, so a revoke that commits after
    // it finds the session (see `registry`).
    let session = Sessions::new_id();
    let entry = shared.sessions.register(
        &shared.settler,
        session,
        user.clone(),
        host.clone(),
        Intro {
            user_key,
            // Only an attempt's verdict starts a session.
            record: record.unwrap_or(RecordId([0; 16])),
        },
    );
    fault_point(deadline, Step::VerdictCommit).await?;
    let (mut result, settled, mut entry) =
        commit_verdict(shared.store.clone(), awaiting, msg3, session, entry).await?;
    let (counted, outcome) = outcome(settled, session, &host);
    if let Some(result) = counted {
        shared.metrics.login(result);
    }
    if counted == Some(LoginResult::Ok) {
        entry.count_in(shared.metrics.session());
    }
    fault_point(deadline, Step::VerdictWrite).await?;
    let msg4 = result.reply(&outcome)?;
    if !matches!(outcome, LoginOutcome::Accepted { .. }) {
        info!(%user, %host, %source, ?outcome, "login failed");
        within(deadline, async {
            Ok(wire::write_message(send, &msg4).await?)
        })
        .await?;
        return Ok(Login::Done);
    }
    entry.ending_because("the verdict did not reach the client");
    within(deadline, async {
        Ok(wire::write_message(send, &msg4).await?)
    })
    .await?;
    fault_point(deadline, Step::SessionRegistration).await?;
    entry.ending_because("client left");
    info!(%user, %host, %source, %session, "login ok");
    Ok(Login::Session(Box::new(entry)))
}
