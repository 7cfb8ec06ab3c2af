//! Host presence in the store (`hosts.online`, for the admin CLI and host
//! lists), written in batches by one task. One durable commit per host
//! connection serialised thousands of hosts reconnecting after a restart
//! behind the store's lock, until their handshakes (which read the store
//! too) ran past the deadline; a batch is one commit whatever its size.

use std::{collections::HashMap, sync::Arc};

use latchkey_protocol::ids::HostName;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::{
    clock::now_unix,
    store::{HostPresence, Store},
};

enum Change {
    Set(HostName, HostPresence),
    /// Online again unless another relay holds them now.
    Reclaim(Vec<HostName>),
    /// Every host offline (the relay is stopping); answers when written.
    AllOffline(oneshot::Sender<()>),
}

/// The handle connections report presence through.
pub(crate) struct Presence {
    tx: mpsc::UnboundedSender<Change>,
}

impl Presence {
    /// Starts the writer; it ends when the handle is dropped (the returned
    /// task, for its owner to join).
    pub(crate) fn spawn(store: Arc<dyn Store>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(write(store, rx)))
    }

    /// Records that `host` came online or went offline (soon, in order).
    pub(crate) fn set(&self, host: &HostName, presence: HostPresence) {
        let _ = self.tx.send(Change::Set(host.clone(), presence));
    }

    /// Records `hosts` online here again, unless another relay holds them
    /// by then (after this relay was taken for dead).
    pub(crate) fn reclaim(&self, hosts: Vec<HostName>) {
        let _ = self.tx.send(Change::Reclaim(hosts));
    }

    /// Marks every host offline after the changes already reported, and
    /// waits until that is written.
    pub(crate) async fn all_offline(&self) {
        let (done, written) = oneshot::channel();
        if self.tx.send(Change::AllOffline(done)).is_ok() {
            let _ = written.await;
        }
    }
}

async fn write(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Change>) {
    let mut pending = Vec::new();
    while rx.recv_many(&mut pending, 4096).await > 0 {
        let mut batch: HashMap<HostName, HostPresence> = HashMap::new();
        for change in pending.drain(..) {
            match change {
                // The last word on a host wins.
                Change::Set(host, presence) => {
                    batch.insert(host, presence);
                }
                Change::Reclaim(hosts) => {
                    flush(&store, std::mem::take(&mut batch)).await;
                    let s = store.clone();
                    if !matches!(
                        tokio::task::spawn_blocking(move || s.reclaim_hosts(&hosts, now_unix()))
                            .await,
                        Ok(Ok(()))
                    ) {
                        warn!("could not record this relay's hosts online again");
                    }
                }
                Change::AllOffline(done) => {
                    flush(&store, std::mem::take(&mut batch)).await;
                    let s = store.clone();
                    if !matches!(
                        tokio::task::spawn_blocking(move || s.clear_online(now_unix())).await,
                        Ok(Ok(()))
                    ) {
                        warn!("could not mark the hosts offline (the next start does)");
                    }
                    let _ = done.send(());
                }
            }
        }
        flush(&store, batch).await;
    }
}

async fn flush(store: &Arc<dyn Store>, batch: HashMap<HostName, HostPresence>) {
    if batch.is_empty() {
        return;
    }
    let changes: Vec<(HostName, HostPresence)> = batch.into_iter().collect();
    let n = changes.len();
    let s = store.clone();
    if !matches!(
        tokio::task::spawn_blocking(move || s.set_presence(&changes, now_unix())).await,
        Ok(Ok(()))
    ) {
        warn!(hosts = n, "could not record host presence");
    }
}
