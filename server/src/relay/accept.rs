//! The accept loop: every new connection gets a task of its own, if a
//! handshake place is free, or waits in line for one a moment (a reconnect
//! storm queues rather than being refused into backoff), or is refused
//! (a flood cannot hold more than the cap). Unproven addresses are asked
//! to prove themselves first (a stateless Retry) when their source has no
//! tokens left or under load. The connection tasks are this loop's: at a
//! stop they get a moment to drain and the rest are aborted.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{sync::Semaphore, task::JoinSet};
use tracing::{info, warn};

use crate::{conn, metrics::RefusedReason, state::Shared};
use latchkey_protocol::close;

/// Connections refused since the last summary. Under a flood (or a
/// reconnect storm) one log line per refusal would itself be the attack,
/// so refusals are counted and summed up at most once a second.
#[derive(Default)]
struct Refused {
    rate_limited: AtomicU64,
    /// Also counted by connections that waited in line in vain.
    over_cap: AtomicU64,
    /// Asked to prove their address first (under load).
    retried: AtomicU64,
}

impl Refused {
    fn flush(&self) {
        let rate_limited = self.rate_limited.swap(0, Ordering::Relaxed);
        let over_cap = self.over_cap.swap(0, Ordering::Relaxed);
        let retried = self.retried.swap(0, Ordering::Relaxed);
        if rate_limited + over_cap + retried > 0 {
            warn!(
                rate_limited,
                too_many_handshakes = over_cap,
                asked_to_prove_their_address = retried,
                "connections refused or retried in the last second"
            );
        }
    }
}

/// How long a new connection may wait for a handshake place when all are
/// taken. A burst (hosts reconnecting after a restart) then queues instead
/// of being refused into backoff, and a user arriving in the middle of it
/// waits in line rather than failing; a flood still cannot hold more than
/// the cap in handshakes, plus [`QUEUE_PER_PLACE`] times as many waiting
/// this long (a queued connection is one buffered datagram or two).
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Connections that may wait in line per handshake place.
const QUEUE_PER_PLACE: usize = 8;

/// Serves `incoming` if a handshake place is free, or lets it wait in line
/// for one (or refuses it when the line is full too).
fn serve_or_queue(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    unauthenticated: &Arc<Semaphore>,
    queue: &Arc<Semaphore>,
    refused: &Arc<Refused>,
    incoming: quinn::Incoming,
) {
    if let Ok(permit) = unauthenticated.clone().try_acquire_owned() {
        tasks.spawn(conn::serve(shared.clone(), incoming, permit));
        return;
    }
    let Ok(place_in_line) = queue.clone().try_acquire_owned() else {
        refused.over_cap.fetch_add(1, Ordering::Relaxed);
        shared.metrics.refused(RefusedReason::TooManyHandshakes);
        incoming.refuse();
        return;
    };
    let (shared, unauthenticated, refused) =
        (shared.clone(), unauthenticated.clone(), refused.clone());
    tasks.spawn(async move {
        let permit = tokio::time::timeout(QUEUE_WAIT, unauthenticated.acquire_owned()).await;
        drop(place_in_line);
        match permit {
            Ok(Ok(permit)) => conn::serve(shared, incoming, permit).await,
            _ => {
                refused.over_cap.fetch_add(1, Ordering::Relaxed);
                shared.metrics.refused(RefusedReason::TooManyHandshakes);
                incoming.refuse();
            }
        }
    });
}

/// Serves `endpoint` until the relay stops, then closes it and drains the
/// connection tasks.
pub(super) async fn accept_loop(shared: &Arc<Shared>, endpoint: &quinn::Endpoint) {
    let cap = shared.config.max_unauthenticated.max(1);
    let unauthenticated = Arc::new(Semaphore::new(cap));
    let queue = Arc::new(Semaphore::new(cap * QUEUE_PER_PLACE));
    let mut tasks = JoinSet::new();
    let refused = Arc::new(Refused::default());
    let mut summary = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = summary.tick() => refused.flush(),
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let source = incoming.remote_address().ip().to_canonical();
                // A connection is charged to its source's bucket only once
                // its address is proven (here, after a Retry; otherwise
                // when its QUIC handshake completes, in `conn::serve`), so
                // spoofed Initials cannot drain someone else's bucket (a
                // shared NAT's). An unproven one whose bucket is empty, or
                // any unproven one under load (half the handshake places
                // taken), first gets a stateless Retry, like WireGuard's
                // cookies: spoofed Initials then take no place at all.
                let validated = incoming.remote_address_validated();
                let now = std::time::Instant::now();
                if !validated
                    && (unauthenticated.available_permits() <= cap / 2
                        || !shared.admission.would_allow(source, now))
                {
                    match incoming.retry() {
                        Ok(()) => {
                            refused.retried.fetch_add(1, Ordering::Relaxed);
                            shared.metrics.retried();
                            continue;
                        }
                        // Already retried once: go on as a validated one would.
                        Err(e) => {
                            let incoming = e.into_incoming();
                            serve_or_queue(shared, &mut tasks, &unauthenticated, &queue, &refused, incoming);
                            continue;
                        }
                    }
                }
                if validated && !shared.admission.charge(source, now) {
                    refused.rate_limited.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.refused(RefusedReason::RateLimited);
                    incoming.refuse();
                    continue;
                }
                serve_or_queue(shared, &mut tasks, &unauthenticated, &queue, &refused, incoming);
            }
        }
    }
    refused.flush();
    info!("relay shutting down");
    endpoint.close(close::SHUTDOWN, b"relay shutting down");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}
