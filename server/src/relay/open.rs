//! Opening the store for a serving relay: on a shared store (PostgreSQL),
//! the cluster's identity is checked (every relay of a cluster is one relay
//! to devices: they pin one key and one certificate) and what other relays
//! left is the heartbeat's to settle; alone on the embedded store, whatever
//! the last run left pending was cut off by its end and is settled now.

use std::sync::Arc;

use tracing::warn;

use super::RelayError;
use crate::{
    clock::now_unix,
    config::Config,
    datadir::DataDir,
    metrics::Metrics,
    store::{Location, Store, TxTimer},
};

/// The store key of the pin every relay on a shared store must present.
const CLUSTER_PIN_META: &str = "cluster_pin";

/// The store a relay serves, and whether other relays may share it.
pub(super) struct Opened {
    pub(super) store: Arc<dyn Store>,
    pub(super) shared: bool,
}

/// Opens the configured store for serving, timed by `metrics`.
pub(super) async fn store(
    config: &Config,
    data: &DataDir,
    metrics: &Arc<Metrics>,
) -> Result<Opened, RelayError> {
    let location = Location::parse(config.store.as_deref())?;
    let shared = location.is_shared();
    let db_path = data.db_path();
    let latency: Arc<dyn TxTimer> = Arc::new(metrics.store_latency());
    let cluster_pin = data.pin().fingerprint();
    let metrics = metrics.clone();
    // The store's calls block (PostgreSQL's client runs a runtime of its
    // own), so they run off the async threads, here as everywhere.
    let store = tokio::task::spawn_blocking(move || {
        let store = location.open_for_serving(&db_path, Some(latency))?;
        if shared {
            let pin = store.claim_meta(CLUSTER_PIN_META, &cluster_pin)?;
            if pin != cluster_pin {
                return Err(RelayError::Config(format!(
                    "this relay's identity ({cluster_pin}) is not the one the other relays on \
                     this store share ({pin}): stop it, copy relay.key, tls.crt and tls.key \
                     from one of them into its data directory, and start it again"
                )));
            }
            // Other relays may be serving: what a relay that stopped
            // answering left (the last run of this one among them) is
            // settled by the heartbeat's sweep, once this relay has
            // heartbeats of its own to judge by.
            return Ok(store);
        }
        let now = now_unix();
        let failed =
            store.fail_pending_attempts(i64::MAX, "unfinished when the relay stopped", now)?;
        store.sweep_lapsed_relays(i64::MAX, now)?;
        // Its last run's row and hosts: nothing else serves here.
        store.end_open_sessions(now)?;
        store.clear_online(now)?;
        if failed > 0 {
            metrics.abandoned(u64::try_from(failed).unwrap_or(u64::MAX));
            warn!(
                failed,
                "attempts left unfinished by a relay that stopped were counted as failures"
            );
        }
        Ok::<_, RelayError>(store)
    })
    .await
    .map_err(|e| RelayError::Config(format!("opening the store: {e}")))??;
    Ok(Opened {
        store: Arc::from(store),
        shared,
    })
}
