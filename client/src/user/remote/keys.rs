//! The session's end-to-end keys: the handshake with the host
//! ([`crate::user::e2e`]), run until it settles, and where its keys stand
//! for the channels that wait for them.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    net::STEP_TIMEOUT,
    user::e2e::{E2eError, Epoch, Handshaker},
};

/// Where the session's end-to-end keys stand.
#[derive(Clone)]
pub(super) enum Keys {
    /// A handshake is under way (at start, or the host just came back).
    Pending,
    /// Channels open with these.
    Ready(Arc<Epoch>),
    /// The last handshake failed: channels fail with this.
    Failed(String),
}

/// Runs the handshake until it settles, and publishes the keys or why
/// there are none. A failure of the path (the host's link just replaced,
/// the host away a moment) is tried again for up to [`STEP_TIMEOUT`]; a
/// failure of the handshake itself is final.
pub(super) async fn settle_keys(
    handshaker: Arc<Handshaker>,
    conn: quinn::Connection,
    keys: Arc<watch::Sender<Keys>>,
) {
    let until = tokio::time::Instant::now() + STEP_TIMEOUT;
    let settled = loop {
        match handshaker.run(&conn).await {
            Ok(epoch) => break Keys::Ready(Arc::new(epoch)),
            Err(E2eError::Net(e))
                if tokio::time::Instant::now() < until && conn.close_reason().is_none() =>
            {
                tracing::debug!("end-to-end handshake: {e}; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            Err(e) => break Keys::Failed(e.to_string()),
        }
    };
    keys.send_replace(settled);
}
