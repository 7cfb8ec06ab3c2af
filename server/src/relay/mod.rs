//! Starting and stopping a relay. [`Relay::spawn`] opens the data
//! directory and the store, binds the endpoint and the console, builds the
//! shared state and starts every task the relay owns; it returns a handle
//! with the bound address and a shutdown switch, so tests can run relays on
//! port 0. At a stop the relay stops accepting, drains its connections,
//! writes what it owes the store, and joins each of its tasks, in order
//! and each within a deadline ([`tasks`]).

mod accept;
mod open;
mod tasks;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use latchkey_protocol::ksf::KsfProfile;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::tasks::Tasks;
use crate::{
    admin::service,
    clock::now_unix,
    cluster::{presence::Presence, Cluster},
    config::{Config, MetricsListen},
    conn::{endpoint, endpoint::EndpointError},
    console,
    datadir::{DataDir, DataDirError},
    duties::{self, heartbeat::Heartbeat},
    error::logged_store_call,
    hosts::links::HostLinks,
    login::settle::Settler,
    metrics::{self, Metrics, MetricsError},
    routes::{RouteTable, LEG_BUDGET},
    rules::{admission::Admission, lease},
    session::{reboots::Reboots, registry::Sessions},
    state::Shared,
    store::{Store, StoreError},
};

/// Errors starting the relay.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The data directory could not be opened.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The endpoint could not be set up.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The admin console could not start.
    #[error(transparent)]
    Console(#[from] console::ConsoleStartError),
    /// The metrics could not be set up (`metrics_listen`).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// The default data directory: the platform's data dir for
/// `latchkey-relay`, or `./latchkey-relay-data` if there is none.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "latchkey-relay")
        .map(|d| d.data_dir().to_owned())
        .unwrap_or_else(|| PathBuf::from("latchkey-relay-data"))
}

/// A running relay.
pub struct RelayHandle {
    /// The address the endpoint is bound to.
    pub addr: SocketAddr,
    /// The admin console's URL, unless it is off.
    pub console_url: Option<String>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Starts a graceful shutdown: stop accepting, tell peers, drain.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until a shutdown starts.
    pub async fn stopping(&self) {
        self.shutdown.cancelled().await;
    }

    /// Waits until the relay has stopped.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Runs a store call on the blocking pool at start-up.
async fn at_start<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, RelayError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| RelayError::Config(format!("writing to the store: {e}")))?
        .map_err(RelayError::from)
}

/// Where devices reach this relay: `public_addr`, else the bound address
/// (what invites list and what another relay redirects logins to). On a
/// shared store, warns while it can still be fixed about an address
/// another live relay has, or one other relays cannot reach.
async fn public_addr(
    config: &Config,
    store: &Arc<dyn Store>,
    shared_store: bool,
    bound: SocketAddr,
) -> String {
    let public_addr = config
        .public_addr
        .clone()
        .unwrap_or_else(|| service::reachable(bound).to_string());
    if !shared_store {
        return public_addr;
    }
    // Logins for the hosts of a relay on record at this same address are
    // never sent there.
    let alive_since = lease::alive_since(now_unix());
    let taken = logged_store_call(store, move |s| s.relay_addrs(alive_since))
        .await
        .is_some_and(|addrs| addrs.contains(&public_addr));
    if taken {
        warn!(
            "another relay on this store was heard from at {public_addr} in the last 20 s: \
             this relay's last run (then ignore this), or a relay with the same \
             public_addr (give each relay its own)"
        );
    }
    if config.public_addr.is_none() && bound.ip().is_unspecified() {
        warn!(
            "public_addr is not set: the other relays on this store send logins for this \
             relay's hosts to {public_addr}; set public_addr to where devices reach it"
        );
    }
    public_addr
}

/// Entry point.
pub struct Relay;

impl Relay {
    /// Opens the data directory and store, binds the endpoint and starts
    /// serving.
    pub async fn spawn(config: Config) -> Result<RelayHandle, RelayError> {
        let dir = config.data_dir.clone().unwrap_or_else(default_data_dir);
        let data = DataDir::open_or_create(&dir)?;
        // Before anything touches the store: a second relay here would
        // settle this one's attempts under its feet (SPEC S7a).
        let serving = data.lock_for_serving()?;
        let metrics = Arc::new(Metrics::new()?);
        let opened = open::store(&config, &data, &metrics).await?;
        let (store, shared_store) = (opened.store, opened.shared);
        let console_addr = config
            .console_listen()
            .map_err(|e| RelayError::Config(e.to_string()))?;
        if console_addr.is_none() && config.metrics_listen == MetricsListen::Console {
            return Err(RelayError::Config(
                "metrics_listen = \"console\" serves /metrics on the admin console, which is off: \
                 set admin_listen, or give metrics_listen an address of its own"
                    .into(),
            ));
        }
        let routes = RouteTable::new(LEG_BUDGET, metrics.forwarding());
        let endpoint = endpoint::server_endpoint(&config, &data, routes.clone())?;
        let addr = endpoint
            .local_addr()
            .map_err(|e| RelayError::Config(format!("no local address: {e}")))?;
        let listen_addr = addr.to_string();
        at_start(&store, move |s| s.set_meta("listen_addr", &listen_addr)).await?;
        let public_addr = public_addr(&config, &store, shared_store, addr).await;
        let pin = data.pin();
        let fingerprint = pin.fingerprint();
        let mut identity = data.identity;
        identity.outsider_ksf = if config.allow_insecure_ksf {
            KsfProfile::InsecureFastForTests
        } else {
            KsfProfile::DEFAULT
        };
        // Bound before the relay says it listens: a taken address fails
        // the start, naming the setting.
        let metrics_listener = match config.metrics_listen {
            MetricsListen::Addr(addr) => Some(metrics::bind(addr).await?),
            // The console mounts `metrics::router` on its own listener.
            MetricsListen::Off | MetricsListen::Console => None,
        };
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::default();
        let console_url = match console_addr {
            Some(at) => {
                let probes = metrics::health::router(store.clone(), shutdown.clone());
                let extra = match config.metrics_listen {
                    MetricsListen::Console => {
                        probes.merge(metrics::router(metrics.clone(), store.clone()))
                    }
                    _ => probes,
                };
                let console = console::start(
                    at,
                    store.clone(),
                    Arc::new(config.clone()),
                    pin,
                    Some(extra),
                    shutdown.clone(),
                )
                .await?;
                let url = console.url.clone();
                at_start(&store, move |s| s.set_meta(service::CONSOLE_URL_META, &url)).await?;
                // The console's own stop gives requests in flight a moment;
                // a client that never finishes one does not hold the relay.
                tasks.own("console", console::STOP_DEADLINE, console.task);
                Some(console.url)
            }
            None => None,
        };
        if let Some(listener) = metrics_listener {
            // A scraper holding its connection open does not hold the
            // relay's stop up for long.
            let app = metrics::router(metrics.clone(), store.clone())
                .merge(metrics::health::router(store.clone(), shutdown.clone()));
            let server = metrics::serve(listener, app, shutdown.clone());
            tasks.spawn("metrics", Duration::from_secs(2), server);
        }
        let (settler, settling) =
            Settler::spawn(store.clone(), config.handshake_timeout(), metrics.clone());
        let (presence, presence_writer) = Presence::spawn(store.clone());
        let cluster = Arc::new(Cluster::new(
            public_addr.clone(),
            presence,
            shutdown.clone(),
        ));
        let hosts = Arc::new(HostLinks::default());
        let shared = Arc::new(Shared {
            admission: Admission::new(
                config.per_source_burst,
                config.per_source_per_sec,
                config.outsider_penalty,
            ),
            config,
            identity,
            store: store.clone(),
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
            hosts: hosts.clone(),
            cluster: cluster.clone(),
            sessions: Arc::new(Sessions::default()),
            routes,
            settler: settler.clone(),
            reboots: Reboots::default(),
        });
        info!(%addr, %fingerprint, "relay listening");
        let beat = Heartbeat {
            store: store.clone(),
            addr: public_addr,
            forgotten: cluster.forgotten.clone(),
            waiting: settler.waiting.clone(),
            metrics,
        };
        let (wait, s) = (Duration::from_secs(5), shutdown.clone());
        tasks.spawn("heartbeat", wait, duties::heartbeat::run(beat, s));
        let s = shared.clone();
        tasks.spawn("relist", wait, duties::heartbeat::relist_hosts(s));
        let s = shared.clone();
        tasks.spawn("admin actions", wait, duties::admin_actions::run(s));
        let s = shared.clone();
        tasks.spawn("grant expiry", wait, duties::grant_expiry::run(s));
        let s = shared.clone();
        tasks.spawn("outbox", wait, duties::outbox::run(s));
        let s = shared.clone();
        tasks.spawn("audit upkeep", wait, duties::audit_upkeep::run(s));
        let task = tokio::spawn(async move {
            accept::accept_loop(&shared, &endpoint).await;
            // Every duty stops at the shutdown (the heartbeat among them,
            // so none beats after the relay leaves the store's list).
            tasks.join().await;
            // What the drain left is written before the relay goes.
            shared.cluster.all_offline().await;
            shared.settler.flush().await;
            // No longer listed in invites nor sent logins.
            let _ = logged_store_call(&shared.store, |s| s.relay_stopped()).await;
            // Long enough for the close frames to leave; peers that miss
            // them learn of the restart from a stateless reset at their
            // next packet.
            let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
            // The settler and the presence writer end with their last
            // handles: the shared state's, then the settler's own clone.
            drop(shared);
            drop(settler);
            Tasks::join_one("presence", wait, presence_writer).await;
            Tasks::join_one("settler", wait, settling).await;
            info!("relay stopped");
            // Released last: the directory is ours until everything is written.
            drop(serving);
        });
        Ok(RelayHandle {
            addr,
            console_url,
            shutdown,
            task,
        })
    }
}
