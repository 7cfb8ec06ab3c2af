//! The `/metrics` endpoint: a router to serve on a listener of its own or
//! merge into the admin console's, the handler that reads the store's
//! gauges at scrape time and renders [`Metrics`], and the listener's bind
//! and serve.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Metrics, MetricsError};
use crate::store::Store;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// What the `/metrics` handler needs.
#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
}

/// `GET /metrics`, without a login, for a relay's own listener or for
/// merging into the admin console's router (`Router::merge`). Any other
/// path is axum's 404.
pub fn router(metrics: Arc<Metrics>, store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { metrics, store })
}

async fn scrape(State(s): State<Scrape>) -> Response {
    // The store's calls block: off the async threads.
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || store.gauges()).await {
        Ok(Ok(g)) => s.metrics.set_store_gauges(&g),
        Ok(Err(e)) => {
            warn!("metrics: reading the store's gauges: {e}");
            s.metrics.store_gauge_errors.inc();
        }
        Err(e) => {
            warn!("metrics: reading the store's gauges: {e}");
            s.metrics.store_gauge_errors.inc();
        }
    }
    match s.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            warn!("{e}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Binds `addr` for `/metrics` (before the relay says it listens, so a
/// taken address fails the start).
pub(crate) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `app` ([`router`] and the probes) on `listener` until
/// `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics listening");
    }
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        warn!("metrics listener stopped: {e}");
    }
}
