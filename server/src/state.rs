//! What every connection task shares: the relay's settings, identity and
//! store, and the parts that hold live state, each owning its own rules:
//! the host agents connected here ([`HostLinks`]), the live sessions
//! ([`Sessions`]), admission of new connections ([`Admission`]), this
//! relay's place in its cluster ([`Cluster`]), reboots in progress
//! ([`Reboots`]), the routes sessions' datagrams take ([`RouteTable`]),
//! and where attempts and sessions settle ([`Settler`]).

use std::sync::Arc;

use latchkey_protocol::{
    handshake::RelayIdentity,
    ids::{HostName, PublicKey},
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    cluster::Cluster,
    config::Config,
    hosts::links::HostLinks,
    login::settle::Settler,
    metrics::Metrics,
    routes::RouteTable,
    rules::admission::Admission,
    session::{reboots::Reboots, registry::Sessions},
    store::{Store, StoreError},
};
use latchkey_protocol::close;

/// State shared by every connection task.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) identity: RelayIdentity,
    pub(crate) store: Arc<dyn Store>,
    /// Cancelled when the relay starts to stop.
    pub(crate) shutdown: CancellationToken,
    /// What `/metrics` shows.
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) admission: Admission,
    pub(crate) hosts: Arc<HostLinks>,
    pub(crate) cluster: Arc<Cluster>,
    /// The live sessions, so admin actions reach them.
    pub(crate) sessions: Arc<Sessions>,
    /// The routes of sessions' end-to-end connections, which the socket
    /// layer forwards by.
    pub(crate) routes: Arc<RouteTable>,
    /// Where reserved attempts and ended sessions settle.
    pub(crate) settler: Settler,
    pub(crate) reboots: Reboots,
}

impl Shared {
    /// The address of the relay of the cluster that holds `host`'s agent
    /// now, if that is not this one. Reads the store: call it off the
    /// async threads.
    pub(crate) fn host_elsewhere(&self, host: &HostName) -> Result<Option<String>, StoreError> {
        if self.hosts.is_here(host) {
            return Ok(None);
        }
        self.cluster.holder(&*self.store, host)
    }

    /// `name` (a host if `is_host`, else a user) is enrolled with `key` now,
    /// through this relay or another (SPEC I2): its agent's link, or its
    /// sessions, opened with another key end. A device with no key (`None`)
    /// was removed: everything it holds here ends, and so does every
    /// session on a removed host.
    pub(crate) fn device_replaced(&self, name: &str, is_host: bool, key: Option<&PublicKey>) {
        if is_host {
            let old = name
                .parse::<HostName>()
                .ok()
                .and_then(|h| self.hosts.conn_unless_key(&h, key));
            let why = match key {
                Some(_) => "the host was enrolled again",
                None => "the host was removed",
            };
            if let Some(old) = old {
                info!(host = %name, "{why}: its old agent's link ends");
                old.close(close::REPLACED, why.as_bytes());
            }
            if key.is_none() {
                let ended = self
                    .sessions
                    .end_on_host(name, &format!("'{name}' was removed by an admin"));
                if ended > 0 {
                    info!(host = %name, sessions = ended, "the host was removed: its sessions ended");
                }
            }
        } else {
            let why = match key {
                Some(_) => "your device was enrolled again",
                None => "your account was removed by an admin",
            };
            let ended = self.sessions.end_user_except(name, key, why);
            if ended > 0 {
                info!(user = %name, sessions = ended, "{why}: the user's sessions ended");
            }
        }
    }
}
