//! Values that settle themselves in the store when dropped (SPEC S7a).
//!
//! [`PendingAttempt`] is the only handle to an attempt the store reserved.
//! It ends in a recorded verdict on every path: [`PendingAttempt::settle`]
//! with what KE3 proved, or, dropped unsettled (a wrong code's abort, a
//! peer gone or not reading, a deadline, a write or store error, a
//! cancelled task), it hands itself to the [`Settler`] task, which records a
//! failure. The settler also sweeps, at start and every few seconds, any
//! attempt still pending past the handshake deadline plus a grace, so not
//! even a path missed here can leave a host "busy" for ever.
//!
//! The settler records the end of sessions the same way
//! ([`crate::session::registry::SessionEntry`] hands itself over when dropped).

use std::{sync::Arc, time::Duration};

use latchkey_protocol::ids::{HostName, RecordId, SessionId};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::{
    clock::now_unix,
    error::logged_store_call,
    login::waiting::WaitingRooms,
    metrics::{Metrics, Pending},
    rules::lockout::{Proof, Settlement},
    store::{AttemptId, SessionEnd, Store, StoreError},
};

/// How often the sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long past the handshake deadline an attempt may stay pending before
/// the sweep settles it (a verdict's store write may still be under way).
const SWEEP_GRACE: Duration = Duration::from_secs(5);

enum Job {
    /// An attempt dropped without a verdict, with why (for the audit); it
    /// counts as pending until the job is done.
    Fail(AttemptId, HostName, &'static str, Pending),
    /// A session that ended.
    SessionEnded {
        session: SessionId,
        reason: String,
        how: SessionEnd,
    },
    /// Answers once every job sent before it is done.
    Flush(oneshot::Sender<()>),
}

/// The handle that reservations and sessions settle through.
#[derive(Clone)]
pub(crate) struct Settler {
    tx: mpsc::UnboundedSender<Job>,
    /// Logins waiting for a settlement on their host.
    pub(crate) waiting: Arc<WaitingRooms>,
    metrics: Arc<Metrics>,
}

impl Settler {
    /// Starts the settling task; it sweeps attempts pending for longer than
    /// `handshake_timeout` plus a grace, and ends when every handle is gone
    /// (the returned task, for its owner to join).
    pub(crate) fn spawn(
        store: Arc<dyn Store>,
        handshake_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(WaitingRooms::default());
        let task = tokio::spawn(run(
            store,
            rx,
            handshake_timeout + SWEEP_GRACE,
            waiting.clone(),
            metrics.clone(),
        ));
        (
            Self {
                tx,
                waiting,
                metrics,
            },
            task,
        )
    }

    /// Takes ownership of a freshly reserved attempt on `host`.
    pub(crate) fn adopt(&self, id: AttemptId, host: HostName, record: RecordId) -> PendingAttempt {
        PendingAttempt {
            id: Some(id),
            pending: Some(self.metrics.pending_attempt()),
            host,
            record,
            why: "abandoned before KE3",
            tx: self.tx.clone(),
            waiting: self.waiting.clone(),
        }
    }

    /// Records the end of a session (soon, off the caller's path).
    pub(crate) fn session_ended(&self, session: SessionId, reason: String, how: SessionEnd) {
        let _ = self.tx.send(Job::SessionEnded {
            session,
            reason,
            how,
        });
    }

    /// Waits until everything handed over so far is written.
    pub(crate) async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.tx.send(Job::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }
}

/// A reserved attempt that settles itself: see the module doc.
pub(crate) struct PendingAttempt {
    /// `None` once settled.
    id: Option<AttemptId>,
    /// Counts the attempt in `latchkey_attempts_pending` until it is
    /// settled, here or by the settler.
    pending: Option<Pending>,
    host: HostName,
    /// The code record the attempt tries (a session's end-to-end psk comes
    /// from its export key).
    record: RecordId,
    /// What the audit says if it is dropped unsettled.
    why: &'static str,
    tx: mpsc::UnboundedSender<Job>,
    waiting: Arc<WaitingRooms>,
}

impl std::fmt::Debug for PendingAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingAttempt({:?})", self.id)
    }
}

impl PendingAttempt {
    /// The code record the attempt tries.
    pub(crate) fn record(&self) -> RecordId {
        self.record
    }

    /// Says what the attempt is waiting for, for the audit row written if
    /// it is dropped unsettled.
    pub(crate) fn waiting_for(&mut self, why: &'static str) {
        self.why = why;
    }

    /// Settles the attempt now (on a blocking thread): the verdict and
    /// everything that depends on it commit together
    /// ([`Store::settle_attempt`]). On a store error the attempt is still
    /// unsettled, and dropping it hands it to the settler as a failure.
    pub(crate) fn settle(
        mut self,
        store: &dyn Store,
        proof: Proof,
        session: &SessionId,
    ) -> Result<Option<Settlement>, StoreError> {
        let Some(id) = self.id else {
            return Ok(None);
        };
        let detail = match proof {
            Proof::RightCode => "",
            Proof::NotProven => "wrong code",
        };
        // If the commit fails, the settler records this (even for a right
        // code: the relay cannot tell a verdict it failed to record from an
        // abandoned attempt, so it fails closed).
        self.why = "the verdict could not be written to the store";
        let settled = store.settle_attempt(id, proof, detail, session, now_unix())?;
        self.id = None;
        self.pending = None;
        self.waiting.settled(&self.host);
        Ok(settled)
    }
}

impl Drop for PendingAttempt {
    fn drop(&mut self) {
        if let (Some(id), Some(pending)) = (self.id.take(), self.pending.take()) {
            // If the settler is gone (the relay is stopping), the next
            // start settles it: one relay owns a data directory.
            let _ = self
                .tx
                .send(Job::Fail(id, self.host.clone(), self.why, pending));
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    stale_after: Duration,
    waiting: Arc<WaitingRooms>,
    metrics: Arc<Metrics>,
) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stale_secs = i64::try_from(stale_after.as_secs()).unwrap_or(i64::MAX / 4) + 1;
    loop {
        let job = tokio::select! {
            job = rx.recv() => match job {
                Some(job) => job,
                None => return,
            },
            _ = sweep.tick() => {
                let now = now_unix();
                let swept = logged_store_call(&store, move |s| {
                    s.fail_pending_attempts(now - stale_secs, "abandoned: settled by the sweeper", now)
                })
                .await;
                if let Some(n @ 1..) = swept {
                    metrics.abandoned(u64::try_from(n).unwrap_or(u64::MAX));
                    warn!(attempts = n, "pending attempts past the deadline settled as failures");
                    waiting.settled_anywhere();
                }
                continue;
            }
        };
        match job {
            Job::Fail(id, host, why, pending) => {
                let session = SessionId([0; 16]);
                let settled = logged_store_call(&store, move |s| {
                    s.settle_attempt(id, Proof::NotProven, why, &session, now_unix())
                })
                .await;
                if let Some(Some(_)) = settled {
                    metrics.abandoned(1);
                    info!(attempt = id.0, %host, reason = why, "attempt settled as a failure");
                }
                // Settled, or left to the sweeper (a store error) or to the
                // next start: no longer this task's to count.
                drop(pending);
                waiting.settled(&host);
            }
            Job::SessionEnded {
                session,
                reason,
                how,
            } => {
                logged_store_call(&store, move |s| {
                    s.session_ended(&session, &reason, how, now_unix())
                })
                .await;
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}
