//! The Latchkey relay: a QUIC endpoint that authenticates users and hosts
//! (Noise IK + OPAQUE, from `latchkey-protocol`), enforces the lockout rule
//! in its store, and pairs users with hosts.
//!
//! [`Relay::spawn`] binds the endpoint and returns a handle with the bound
//! address and a shutdown switch, so tests can run relays on port 0.
#![forbid(unsafe_code)]

//! One connection's life, top-down: `conn` (accept, handshake, role) →
//! `login` (an attempt that settles itself, `settle`) → `session` (pairing
//! and channels; live sessions in `registry`), or `host` / `user`. The
//! pieces they share (`error`, and `close` from the protocol crate) depend
//! on none of them.

pub mod admin;
mod audit_upkeep;
mod budget;
pub use latchkey_protocol::close;
mod code_registration;
pub mod config;
mod conn;
pub mod console;
pub mod datadir;
pub mod endpoint;
mod error;
pub mod fault;
mod host;
pub mod human_time;
mod key_twice;
pub mod lockout;
mod login;
pub mod metrics;
mod notify;
mod presence;
pub mod ratelimit;
mod reboot;
mod registry;
pub mod service;
mod session;
mod settle;
pub mod store;
#[cfg(any(test, feature = "test-postgres"))]
pub mod test_postgres;
mod user;
mod waiting;
pub use latchkey_protocol::quic as wire;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use latchkey_protocol::{handshake::RelayIdentity, ids::HostName, ksf::KsfProfile};
use thiserror::Error;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{Config, MetricsListen},
    datadir::{DataDir, DataDirError},
    endpoint::EndpointError,
    host::HostLink,
    metrics::{Metrics, MetricsError, RefusedReason},
    ratelimit::RateLimiter,
    registry::Sessions,
    settle::Settler,
    store::{Location, Store, StoreError},
};

/// The store key of the pin every relay on a shared store must present.
const CLUSTER_PIN_META: &str = "cluster_pin";

/// Seconds since the Unix epoch (the relay's one clock for the store).
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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

/// State shared by every connection task.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Where devices reach this relay (`public_addr`, else the bound one).
    pub(crate) public_addr: String,
    pub(crate) identity: RelayIdentity,
    pub(crate) store: Arc<dyn Store>,
    limiter: Mutex<RateLimiter>,
    hosts: Mutex<HashMap<HostName, HostLink>>,
    pub(crate) shutdown: CancellationToken,
    next_id: AtomicU64,
    /// The live sessions, so admin actions reach them.
    pub(crate) sessions: Arc<Sessions>,
    /// Each user's share of their hosts' streams.
    pub(crate) channel_budgets: budget::ChannelBudgets,
    /// Where reserved attempts and ended sessions settle.
    pub(crate) settler: Settler,
    reboots: Mutex<HashMap<HostName, Reboot>>,
    /// Hosts that came back: `true` with a valid reboot ticket, `false` when
    /// the agent reconnected (sessions parked for a reboot wait for the former).
    pub(crate) host_back: tokio::sync::broadcast::Sender<(HostName, bool)>,
    /// Reboots whose command failed on the host: the session that asked
    /// and the host's reason.
    pub(crate) reboot_failed:
        tokio::sync::broadcast::Sender<(latchkey_protocol::ids::SessionId, String)>,
    presence: presence::Presence,
    /// When each host's key was last seen connected twice.
    pub(crate) key_twice: key_twice::Reports,
    /// What `/metrics` shows.
    pub(crate) metrics: Arc<Metrics>,
}

/// A reboot in progress (or the last one, for the rate limit).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reboot {
    /// When it was asked for.
    pub(crate) at: tokio::time::Instant,
    /// When waiting sessions give up.
    pub(crate) deadline: tokio::time::Instant,
    /// Whether the host has not come back yet.
    pub(crate) pending: bool,
    /// The session that asked (its ticket is the one that resumes).
    pub(crate) session: latchkey_protocol::ids::SessionId,
}

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn hosts(&self) -> MutexGuard<'_, HashMap<HostName, HostLink>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn reboots(&self) -> MutexGuard<'_, HashMap<HostName, Reboot>> {
        self.reboots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deadline of a reboot of `host` still in progress.
    pub(crate) fn reboot_deadline(&self, host: &HostName) -> Option<tokio::time::Instant> {
        self.reboots()
            .get(host)
            .filter(|r| r.pending && r.deadline > tokio::time::Instant::now())
            .map(|r| r.deadline)
    }

    fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges a connection whose address its QUIC handshake just proved;
    /// `false` if its source has no tokens left.
    pub(crate) fn charge(&self, source: IpAddr) -> bool {
        self.limiter().allow(source, 1.0, Instant::now())
    }

    /// Charges an outsider's source extra tokens (SPEC S8).
    pub(crate) fn penalize(&self, source: IpAddr) {
        let cost = f64::from(self.config.outsider_penalty);
        let mut limiter = self.limiter();
        // Take what is there if the full penalty is not: the next
        // connection from this source is refused either way.
        if !limiter.allow(source, cost, Instant::now()) {
            limiter.allow(source, 1.0, Instant::now());
        }
    }

    /// The address of the relay of the cluster that holds `host`'s agent
    /// now, if that is not this one. Reads the store: call it off the
    /// async threads.
    pub(crate) fn host_elsewhere(&self, host: &HostName) -> Result<Option<String>, StoreError> {
        if self.hosts().contains_key(host) {
            return Ok(None);
        }
        let lease_from = now_unix() - settle::RELAY_LEASE_SECS;
        // A restarted relay may find its last run on record at its address.
        Ok(self
            .store
            .host_elsewhere(host, lease_from)?
            .filter(|relay| *relay != self.public_addr))
    }

    /// Records a host agent arriving or leaving (written in batches).
    pub(crate) fn set_online(&self, host: &HostName, online: bool) {
        if !online && self.shutdown.is_cancelled() {
            // Stopping: every host goes offline in one write at the end
            // (`accept_loop`).
            return;
        }
        self.presence.set(host, online);
    }
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

/// Records this relay's hosts online again whenever its heartbeat finds it
/// forgotten (see [`Settler::forgotten`]), until shutdown.
async fn relist_hosts(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.settler.forgotten.notified() => {}
        }
        // Only links still open, and only hosts no other relay claimed
        // meanwhile (a host whose agent moved stays where it is).
        let hosts: Vec<HostName> = shared
            .hosts()
            .iter()
            .filter(|(_, link)| link.conn.close_reason().is_none())
            .map(|(host, _)| host.clone())
            .collect();
        shared.presence.reclaim(hosts);
    }
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
        let location = Location::parse(config.store.as_deref())?;
        let shared_store = location.is_shared();
        let db_path = data.db_path();
        let metrics = Arc::new(Metrics::new()?);
        let latency = metrics.store_latency();
        let m = metrics.clone();
        let pin = data.pin();
        let fingerprint = pin.fingerprint();
        let cluster_pin = fingerprint.clone();
        // The store's calls block (PostgreSQL's client runs a runtime of its
        // own), so they run off the async threads, here as everywhere.
        let store = tokio::task::spawn_blocking(move || {
            let store = location.open_for_serving(&db_path, Some(latency))?;
            let now = now_unix();
            let failed = if shared_store {
                // Every relay of a cluster is one relay to devices: they
                // pin one key and one certificate.
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
                // settled by the settler's sweep, once this relay has
                // heartbeats of its own to judge by.
                0
            } else {
                // Alone on the embedded store (the data directory's lock):
                // whatever the last run left pending was cut off by its end.
                let failed = store.fail_pending_attempts(
                    i64::MAX,
                    "unfinished when the relay stopped",
                    now,
                )?;
                store.sweep_lapsed_relays(i64::MAX, now)?;
                // (Its last run's row and hosts: nothing else serves here.)
                store.end_open_sessions(now)?;
                store.clear_online()?;
                failed
            };
            if failed > 0 {
                m.abandoned(u64::try_from(failed).unwrap_or(u64::MAX));
                warn!(
                    failed,
                    "attempts left unfinished by a relay that stopped were counted as failures"
                );
            }
            Ok::<_, RelayError>(store)
        })
        .await
        .map_err(|e| RelayError::Config(format!("opening the store: {e}")))??;
        let store: Arc<dyn Store> = Arc::from(store);
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
        let endpoint = endpoint::server_endpoint(&config, &data)?;
        let addr = endpoint
            .local_addr()
            .map_err(|e| RelayError::Config(format!("no local address: {e}")))?;
        let (s, listen_addr) = (store.clone(), addr.to_string());
        tokio::task::spawn_blocking(move || s.set_meta("listen_addr", &listen_addr))
            .await
            .map_err(|e| RelayError::Config(format!("writing to the store: {e}")))??;
        // Where devices reach this relay: what invites list and what
        // another relay of the cluster redirects logins to.
        let public_addr = config
            .public_addr
            .clone()
            .unwrap_or_else(|| service::reachable(addr).to_string());
        if shared_store {
            // Logins for the hosts of a relay on record at this same address
            // are never sent there: say so while it can still be fixed.
            let (s, mine) = (store.clone(), public_addr.clone());
            let live_after = now_unix() - settle::RELAY_LEASE_SECS;
            let taken = tokio::task::spawn_blocking(move || s.relay_addrs(live_after))
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|addrs| addrs.contains(&mine));
            if taken {
                warn!(
                    "another relay on this store was heard from at {public_addr} in the last 20 s: \
                     this relay's last run (then ignore this), or a relay with the same \
                     public_addr (give each relay its own)"
                );
            }
        }
        if shared_store && config.public_addr.is_none() && addr.ip().is_unspecified() {
            warn!(
                "public_addr is not set: the other relays on this store send logins for this \
                 relay's hosts to {public_addr}; set public_addr to where devices reach it"
            );
        }
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
        let console = match console_addr {
            Some(at) => {
                let metrics_here = (config.metrics_listen == MetricsListen::Console)
                    .then(|| metrics::router(metrics.clone(), store.clone()));
                let console = console::start(
                    at,
                    store.clone(),
                    Arc::new(config.clone()),
                    pin,
                    metrics_here,
                    shutdown.clone(),
                )
                .await?;
                let (s, url) = (store.clone(), console.url.clone());
                tokio::task::spawn_blocking(move || s.set_meta(service::CONSOLE_URL_META, &url))
                    .await
                    .map_err(|e| RelayError::Config(format!("writing to the store: {e}")))??;
                Some(console)
            }
            None => None,
        };
        let console_url = console.as_ref().map(|c| c.url.clone());
        let settler = Settler::spawn(
            store.clone(),
            config.handshake_timeout(),
            metrics.clone(),
            public_addr.clone(),
        );
        let shared = Arc::new(Shared {
            limiter: Mutex::new(RateLimiter::new(
                config.per_source_burst,
                config.per_source_per_sec,
                65_536,
            )),
            config,
            public_addr,
            identity,
            hosts: Mutex::new(HashMap::new()),
            shutdown: shutdown.clone(),
            next_id: AtomicU64::new(1),
            sessions: Arc::new(Sessions::default()),
            channel_budgets: budget::ChannelBudgets::default(),
            settler,
            reboots: Mutex::new(HashMap::new()),
            host_back: tokio::sync::broadcast::channel(64).0,
            reboot_failed: tokio::sync::broadcast::channel(64).0,
            presence: presence::Presence::spawn(store.clone()),
            key_twice: key_twice::Reports::default(),
            metrics,
            store,
        });
        info!(%addr, %fingerprint, "relay listening");
        let admin_actions = tokio::spawn(notify::admin_actions(shared.clone()));
        tokio::spawn(relist_hosts(shared.clone()));
        let outbox = tokio::spawn(notify::outbox(shared.clone()));
        let audit = tokio::spawn(audit_upkeep::run(shared.clone()));
        let metrics_server = metrics_listener.map(|listener| {
            tokio::spawn(metrics::serve(
                listener,
                shared.metrics.clone(),
                shared.store.clone(),
                shared.shutdown.clone(),
            ))
        });
        let task = tokio::spawn(async move {
            accept_loop(shared, endpoint).await;
            if let Some(mut server) = metrics_server {
                // A scraper holding its connection open does not hold the
                // relay's stop up for long.
                if tokio::time::timeout(Duration::from_secs(2), &mut server)
                    .await
                    .is_err()
                {
                    server.abort();
                }
            }
            let _ = admin_actions.await;
            let _ = outbox.await;
            let _ = audit.await;
            if let Some(mut console) = console {
                // The console's own stop gives requests in flight a moment;
                // a client that never finishes one does not hold the relay.
                let deadline = console::STOP_DEADLINE;
                if tokio::time::timeout(deadline, &mut console.task)
                    .await
                    .is_err()
                {
                    console.task.abort();
                }
            }
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

/// Connections refused since the last summary. Under a flood (or a
/// reconnect storm) one log line per refusal would itself be the attack,
/// so refusals are counted and summed up at most once a second.
#[derive(Default)]
struct Refused {
    rate_limited: AtomicU64,
    /// Also counted by connections that waited in line in vain.
    over_cap: AtomicU64,
    /// Asked to prove their address first (under load).
    retried: AtomicU64,
}

impl Refused {
    fn flush(&self) {
        let rate_limited = self.rate_limited.swap(0, Ordering::Relaxed);
        let over_cap = self.over_cap.swap(0, Ordering::Relaxed);
        let retried = self.retried.swap(0, Ordering::Relaxed);
        if rate_limited + over_cap + retried > 0 {
            warn!(
                rate_limited,
                too_many_handshakes = over_cap,
                asked_to_prove_their_address = retried,
                "connections refused or retried in the last second"
            );
        }
    }
}

/// How long a new connection may wait for a handshake place when all are
/// taken. A burst (hosts reconnecting after a restart) then queues instead
/// of being refused into backoff, and a user arriving in the middle of it
/// waits in line rather than failing; a flood still cannot hold more than
/// the cap in handshakes, plus [`QUEUE_PER_PLACE`] times as many waiting
/// this long (a queued connection is one buffered datagram or two).
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Connections that may wait in line per handshake place.
const QUEUE_PER_PLACE: usize = 8;

/// Serves `incoming` if a handshake place is free, or lets it wait in line
/// for one (or refuses it when the line is full too).
fn serve_or_queue(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    unauthenticated: &Arc<Semaphore>,
    queue: &Arc<Semaphore>,
    refused: &Arc<Refused>,
    incoming: quinn::Incoming,
) {
    if let Ok(permit) = unauthenticated.clone().try_acquire_owned() {
        tasks.spawn(conn::serve(shared.clone(), incoming, permit));
        return;
    }
    let Ok(place_in_line) = queue.clone().try_acquire_owned() else {
        refused.over_cap.fetch_add(1, Ordering::Relaxed);
        shared.metrics.refused(RefusedReason::TooManyHandshakes);
        incoming.refuse();
        return;
    };
    let (shared, unauthenticated, refused) =
        (shared.clone(), unauthenticated.clone(), refused.clone());
    tasks.spawn(async move {
        let permit = tokio::time::timeout(QUEUE_WAIT, unauthenticated.acquire_owned()).await;
        drop(place_in_line);
        match permit {
            Ok(Ok(permit)) => conn::serve(shared, incoming, permit).await,
            _ => {
                refused.over_cap.fetch_add(1, Ordering::Relaxed);
                shared.metrics.refused(RefusedReason::TooManyHandshakes);
                incoming.refuse();
            }
        }
    });
}

async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let cap = shared.config.max_unauthenticated.max(1);
    let unauthenticated = Arc::new(Semaphore::new(cap));
    let queue = Arc::new(Semaphore::new(cap * QUEUE_PER_PLACE));
    let mut tasks = JoinSet::new();
    let refused = Arc::new(Refused::default());
    let mut summary = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = summary.tick() => refused.flush(),
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let source = incoming.remote_address().ip().to_canonical();
                // A connection is charged to its source's bucket only once
                // its address is proven (here, after a Retry; otherwise
                // when its QUIC handshake completes, in `conn::serve`), so
                // spoofed Initials cannot drain someone else's bucket (a
                // shared NAT's). An unproven one whose bucket is empty, or
                // any unproven one under load (half the handshake places
                // taken), first gets a stateless Retry, like WireGuard's
                // cookies: spoofed Initials then take no place at all.
                let validated = incoming.remote_address_validated();
                let now = Instant::now();
                if !validated
                    && (unauthenticated.available_permits() <= cap / 2
                        || !shared.limiter().would_allow(source, 1.0, now))
                {
                    match incoming.retry() {
                        Ok(()) => {
                            refused.retried.fetch_add(1, Ordering::Relaxed);
                            shared.metrics.retried();
                            continue;
                        }
                        // Already retried once: go on as a validated one would.
                        Err(e) => {
                            let incoming = e.into_incoming();
                            serve_or_queue(&shared, &mut tasks, &unauthenticated, &queue, &refused, incoming);
                            continue;
                        }
                    }
                }
                if validated && !shared.limiter().allow(source, 1.0, now) {
                    refused.rate_limited.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.refused(RefusedReason::RateLimited);
                    incoming.refuse();
                    continue;
                }
                serve_or_queue(&shared, &mut tasks, &unauthenticated, &queue, &refused, incoming);
            }
        }
    }
    refused.flush();
    info!("relay shutting down");
    endpoint.close(close::SHUTDOWN, b"relay shutting down");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    shared.presence.all_offline().await;
    // Attempts and sessions dropped by the drain are settled before we go.
    shared.settler.flush().await;
    // No longer listed in invites nor sent logins.
    let _ = error::logged_store_call(&shared.store, |s| s.relay_stopped()).await;
    // Long enough for the close frames to leave; peers that miss them learn
    // of the restart from a stateless reset at their next packet.
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
    info!("relay stopped");
}
