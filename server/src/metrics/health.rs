//! `/healthz` and `/readyz`, for a service manager's or an orchestrator's
//! probes, without a login: alive is the process answering; ready is the
//! relay serving (not stopping) with its store answering a read within
//! [`STORE_DEADLINE`]. The answers say no more than that (a store error's
//! detail goes to the log, not to the prober).

use std::{sync::Arc, time::Duration};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::store::Store;

/// How long `/readyz` waits for the store.
pub const STORE_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Probe {
    store: Arc<dyn Store>,
    /// Cancelled when the relay starts to stop.
    stopping: CancellationToken,
}

/// The probes' routes, to merge into a listener's router.
pub fn router(store: Arc<dyn Store>, stopping: CancellationToken) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Probe { store, stopping })
}

async fn ready(State(p): State<Probe>) -> (StatusCode, &'static str) {
    if p.stopping.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: stopping\n");
    }
    // The store's calls block: off the async threads.
    let store = p.store.clone();
    let read = tokio::task::spawn_blocking(move || store.meta("listen_addr"));
    match tokio::time::timeout(STORE_DEADLINE, read).await {
        Ok(Ok(Ok(_))) => (StatusCode::OK, "ready\n"),
        Ok(Ok(Err(e))) => {
            warn!("readiness probe: the store failed: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: store unreachable\n",
            )
        }
        Ok(Err(_)) | Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: store unreachable\n",
        ),
    }
}
