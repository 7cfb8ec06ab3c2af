//! Grants with an end (`admin grant --for`, `--until`): ended when their
//! time is up, each as a revoke ends one. The store does it in one commit
//! per sweep (grant gone, audited `grant-expired`, owner and user told), so
//! with several relays sweeping each grant still ends once; its sessions
//! end at once on the relay that swept, and on the others through the
//! audit feed ([`super::admin_actions`]).
//! A login or resume past a grant's end is refused even before a sweep
//! (the store's grant check reads the end), so the sweep only tidies and
//! tells.

use std::{sync::Arc, time::Duration};

use tracing::info;

use crate::{clock::now_unix, error::logged_store_call, state::Shared};

/// How often the store is asked: a session on a grant that ends goes
/// within a second of its end.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Ends grants whose time is up, until the relay stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = sweep.tick() => {
                let now = now_unix();
                let ended = logged_store_call(&shared.store, move |s| s.expire_grants(now)).await;
                for (host, user) in ended.unwrap_or_default() {
                    // Here at once; the other relays through the feed.
                    let why = format!("your shared access to '{host}' expired");
                    let sessions = shared.sessions.end(&host, &user, &why);
                    info!(%host, %user, sessions, "shared access expired");
                }
            }
        }
    }
}
