//! The heartbeat: every few seconds this relay tells the store it is alive
//! and where devices reach it, and, once its own heartbeats have gone
//! through for a whole lease, takes relays silent for longer than the lease
//! for dead: their pending attempts are settled as failures, their sessions
//! ended and their hosts marked offline (SPEC M2), in one transaction. A
//! relay that could not reach the store itself (an outage every relay saw)
//! so does not take the others for dead before they could write theirs.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    clock::now_unix, error::logged_store_call, login::waiting::WaitingRooms, metrics::Metrics,
    rules::lease, state::Shared, store::Store,
};

/// How often the relay beats (well within the lease).
const EVERY: Duration = Duration::from_secs(5);

/// What the heartbeat needs.
pub(crate) struct Heartbeat {
    pub(crate) store: Arc<dyn Store>,
    /// Where devices reach this relay.
    pub(crate) addr: String,
    /// Told when the store had forgotten this relay (see
    /// `Cluster::forgotten`).
    pub(crate) forgotten: Arc<Notify>,
    /// Logins waiting for a settlement: a sweep may settle attempts.
    pub(crate) waiting: Arc<WaitingRooms>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Beats until `shutdown`.
pub(crate) async fn run(beat: Heartbeat, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    // Since when this relay's heartbeats have gone through.
    let mut healthy_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_unix();
        let addr = beat.addr.clone();
        match logged_store_call(&beat.store, move |s| s.heartbeat(&addr, now)).await {
            Some(forgotten) => {
                if forgotten {
                    if !first {
                        warn!("this relay's heartbeat had lapsed and another relay took it for dead: its hosts are recorded online again");
                    }
                    beat.forgotten.notify_one();
                }
                first = false;
                healthy_since.get_or_insert_with(tokio::time::Instant::now);
            }
            None => healthy_since = None,
        }
        if healthy_since.is_none_or(|t| t.elapsed() < lease::lease()) {
            continue;
        }
        let swept = logged_store_call(&beat.store, move |s| {
            s.sweep_lapsed_relays(lease::alive_since(now), now)
        })
        .await;
        if let Some(swept) = swept.filter(|s| s.relays > 0) {
            warn!(
                relays = swept.relays,
                attempts = swept.attempts,
                "relays sharing the store stopped answering: their pending attempts were settled as failures and their sessions ended"
            );
            if swept.attempts > 0 {
                beat.metrics
                    .abandoned(u64::try_from(swept.attempts).unwrap_or(u64::MAX));
                beat.waiting.settled_anywhere();
            }
        }
    }
}

/// Records this relay's hosts online again whenever its heartbeat finds it
/// forgotten, until shutdown: only links still open, and only hosts no
/// other relay claimed meanwhile (a host whose agent moved stays where it is).
pub(crate) async fn relist_hosts(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.cluster.forgotten.notified() => {}
        }
        shared.cluster.reclaim(shared.hosts.open_hosts());
    }
}
