//! The audit log's upkeep: the retention of `audit_keep_days`, applied at
//! start and once an hour. (Outsiders' refusals stay one synced row each:
//! coalescing them in memory made an outsider's answer measurably faster
//! to come than a grant holder's, which the timing floor must hide, SPEC A6.)

use std::{sync::Arc, time::Duration};

use crate::{clock::now_unix, error::logged_store_call, state::Shared, store::UnixTime};

/// How often old audit rows are deleted, when `audit_keep_days` is set.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes rows older than `audit_keep_days` at start and every hour,
/// until the relay stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    if shared.config.audit_keep_days == 0 {
        return;
    }
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = prune.tick() => prune_old_rows(&shared).await,
        }
    }
}

/// Deletes audit rows older than `audit_keep_days`.
async fn prune_old_rows(shared: &Arc<Shared>) {
    let days = shared.config.audit_keep_days;
    let before = now_unix().saturating_sub(days.saturating_mul(86_400) as UnixTime);
    if let Some(n) = logged_store_call(&shared.store, move |store| store.prune_audit(before)).await
    {
        if n > 0 {
            tracing::info!(rows = n, days, "old audit rows deleted");
        }
    }
}
