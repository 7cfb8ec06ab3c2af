//! This relay's place among the relays that share its store (SPEC M2, M3,
//! M5): where devices reach it, which host agents it holds (written in
//! batches, [`presence`]), and where a host held elsewhere is. Its
//! heartbeat is a duty (`duties::heartbeat`). On the embedded store a
//! relay is alone, and the same code simply finds no other relay.

pub(crate) mod presence;

use std::sync::Arc;

use latchkey_protocol::ids::HostName;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::presence::Presence;
use crate::{
    clock::now_unix,
    rules::lease,
    store::{HostPresence, Store, StoreError},
};

/// This relay in its cluster.
pub(crate) struct Cluster {
    /// Where devices reach this relay (`public_addr`, else the bound one):
    /// what invites list and where other relays send its hosts' logins.
    pub(crate) public_addr: String,
    presence: Presence,
    /// Told when this relay's heartbeat found it forgotten (another relay
    /// took it for dead after a stall, and marked its hosts offline).
    pub(crate) forgotten: Arc<Notify>,
    shutdown: CancellationToken,
}

impl Cluster {
    pub(crate) fn new(
        public_addr: String,
        presence: Presence,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            public_addr,
            presence,
            forgotten: Arc::new(Notify::new()),
            shutdown,
        }
    }

    /// The address of another relay of the cluster that holds `host`'s
    /// agent now, if the store says one does. Reads the store: call it off
    /// the async threads.
    pub(crate) fn holder(
        &self,
        store: &dyn Store,
        host: &HostName,
    ) -> Result<Option<String>, StoreError> {
        // A restarted relay may find its last run on record at its address.
        Ok(store
            .host_elsewhere(host, lease::alive_since(now_unix()))?
            .filter(|relay| *relay != self.public_addr))
    }

    /// Records a host agent arriving or leaving (written in batches).
    pub(crate) fn set_presence(&self, host: &HostName, presence: HostPresence) {
        if presence == HostPresence::Offline && self.shutdown.is_cancelled() {
            // Stopping: every host goes offline in one write at the end.
            return;
        }
        self.presence.set(host, presence);
    }

    /// Records `hosts` online here again, unless another relay holds them
    /// by then (after this relay was taken for dead).
    pub(crate) fn reclaim(&self, hosts: Vec<HostName>) {
        self.presence.reclaim(hosts);
    }

    /// Marks every host offline after the changes already reported (the
    /// relay is stopping), and waits until that is written.
    pub(crate) async fn all_offline(&self) {
        self.presence.all_offline().await;
    }
}
