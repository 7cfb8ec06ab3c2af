//! The error of one connection's task, and the helper that runs store and
//! crypto work off the async threads. Shared by every phase of a
//! connection (handshake, login, host, user, session).

use latchkey_protocol::HandshakeError;
use thiserror::Error;

use crate::{store::StoreError, wire::WireError};

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
    #[error(transparent)]
    Injected(#[from] crate::testing::fault::Injected),
}

/// Runs `f` on the blocking pool (crypto and the store).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ConnError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ConnError::Join)
}

/// Runs a store call on the blocking pool for a background duty: a failure
/// is logged and comes back as `None` (the duty tries again later).
pub(crate) async fn logged_store_call<T: Send + 'static>(
    store: &std::sync::Arc<dyn crate::store::Store>,
    f: impl FnOnce(&dyn crate::store::Store) -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(&*store)).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!("{e}");
            None
        }
        Err(_) => None,
    }
}
