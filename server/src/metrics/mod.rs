//! The relay's Prometheus metrics (SPEC O2): one typed struct that owns
//! its own [`Registry`] (several relays run in one test process, so there
//! is no global one), handed to the parts that count as `Arc<Metrics>`, and
//! the `/metrics` endpoint that renders it.
//!
//! Gauges of live things (connections, sessions, channels, pending
//! attempts) are moved only by guards ([`Open`], [`Pending`]) that count
//! themselves down when dropped, so no path can leave them drifting; the
//! ones that are "open" also keep an opened/closed counter pair, whose
//! difference is the gauge. What only the store knows (hosts locked,
//! notices by state) is read from it at scrape time ([`Store::gauges`]).
//!
//! Labels are small fixed sets: never a user or host name or an address
//! (their number is unbounded, and they are not the scraper's business).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{Store, StoreGauges, TxTimer};

/// Errors setting the metrics up.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// A metric could not be registered (two with one name: a bug).
    #[error("metrics: {0}")]
    Register(#[from] prometheus::Error),
    /// The `metrics_listen` address could not be bound.
    #[error("metrics_listen: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What an authenticated connection turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnRole {
    /// A host agent's live link.
    Host,
    /// A host's administrative connection (`latchkey host set-code`).
    HostAdmin,
    /// A proven user without a session (the host list).
    User,
    /// A user's logged-in session with a host.
    Session,
}

impl ConnRole {
    const ALL: [Self; 4] = [Self::Host, Self::HostAdmin, Self::User, Self::Session];

    fn label(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::HostAdmin => "host_admin",
            Self::User => "user",
            Self::Session => "session",
        }
    }
}

/// How a connection's handshake ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeResult {
    /// The peer was proven and took a role ([`ConnRole`]).
    Authenticated,
    /// Answered and done: an enrolment, a refusal, or a login that did not
    /// start a session.
    Answered,
    /// The QUIC or Latchkey handshake failed (bad input, peer gone).
    Failed,
    /// A handshake deadline passed.
    Timeout,
    /// Its source had no connection tokens left.
    RateLimited,
}

impl HandshakeResult {
    const ALL: [Self; 5] = [
        Self::Authenticated,
        Self::Answered,
        Self::Failed,
        Self::Timeout,
        Self::RateLimited,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Authenticated => "authenticated",
            Self::Answered => "answered",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// A login's verdict, as the relay decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginResult {
    /// The right code: a session started.
    Ok,
    /// A wrong access code: counted against the host.
    Wrong,
    /// The host is locked (or was locked while the login ran).
    Locked,
    /// Attempts in flight used up the host's budget: nothing was tried.
    Busy,
    /// An unknown user, a device key that is not the user's, or no grant on
    /// the host (also a right code whose grant was revoked meanwhile).
    Outsider,
    /// The host is on another relay of the cluster: sent there, nothing
    /// was tried here.
    Redirected,
}

impl LoginResult {
    const ALL: [Self; 6] = [
        Self::Ok,
        Self::Wrong,
        Self::Locked,
        Self::Busy,
        Self::Outsider,
        Self::Redirected,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Wrong => "wrong",
            Self::Locked => "locked",
            Self::Busy => "busy",
            Self::Outsider => "outsider",
            Self::Redirected => "redirected",
        }
    }
}

/// What a stream of a session carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// The end-to-end key exchange between client and host.
    Handshake,
    /// A shell, a command, a forwarded connection.
    Interactive,
    /// A copy (sent after interactive traffic).
    Bulk,
}

impl ChannelKind {
    const ALL: [Self; 3] = [Self::Handshake, Self::Interactive, Self::Bulk];

    fn label(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Interactive => "interactive",
            Self::Bulk => "bulk",
        }
    }
}

/// Why a connection was refused before its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedReason {
    /// Its source address had no connection tokens left.
    RateLimited,
    /// Every handshake place and place in line was taken.
    TooManyHandshakes,
}

impl RefusedReason {
    const ALL: [Self; 2] = [Self::RateLimited, Self::TooManyHandshakes];

    fn label(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::TooManyHandshakes => "too_many_handshakes",
        }
    }
}

/// How a reboot request ended, as far as the relay sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebootResult {
    /// The ticket was issued and the host asked to reboot.
    Asked,
    /// Refused by the relay (rate limit, policy, host offline).
    Refused,
    /// The host's reboot command failed; the host stayed up.
    Failed,
}

impl RebootResult {
    const ALL: [Self; 3] = [Self::Asked, Self::Refused, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Asked => "asked",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// A live thing counted by an opened/closed pair and a gauge.
#[derive(Clone)]
struct Tracked {
    opened: IntCounterVec,
    closed: IntCounterVec,
    open: IntGaugeVec,
}

impl Tracked {
    /// `what` is the metric's stem (`connections`), `label` its one label
    /// (if any) and `values` that label's values.
    fn new(
        registry: &Registry,
        what: &str,
        help: &str,
        label: Option<&str>,
        values: &[&str],
    ) -> Result<Self, prometheus::Error> {
        let labels: Vec<&str> = label.into_iter().collect();
        let opened = counter_vec(
            registry,
            &format!("latchkey_{what}_opened_total"),
            &format!("{help}: opened."),
            &labels,
        )?;
        let closed = counter_vec(
            registry,
            &format!("latchkey_{what}_closed_total"),
            &format!("{help}: closed."),
            &labels,
        )?;
        let open = IntGaugeVec::new(
            Opts::new(format!("latchkey_{what}"), format!("{help}: open now.")),
            &labels,
        )?;
        registry.register(Box::new(open.clone()))?;
        let series: Vec<Vec<&str>> = match label {
            Some(_) => values.iter().map(|v| vec![*v]).collect(),
            None => vec![Vec::new()],
        };
        for s in &series {
            opened.with_label_values(s);
            closed.with_label_values(s);
            open.with_label_values(s);
        }
        Ok(Self {
            opened,
            closed,
            open,
        })
    }

    /// One more open, with `values` for the label (none if it has none).
    fn open(&self, values: &[&str]) -> Open {
        let open = Open {
            closed: self.closed.with_label_values(values),
            open: self.open.with_label_values(values),
        };
        self.opened.with_label_values(values).inc();
        open.open.inc();
        open
    }
}

/// One open connection, session or channel: counted closed when dropped.
#[must_use = "the thing counts as closed when this is dropped"]
pub(crate) struct Open {
    closed: IntCounter,
    open: IntGauge,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.open.dec();
        self.closed.inc();
    }
}

/// One attempt reserved in the store and not yet settled there: carried by
/// the value that settles it, so the gauge follows it on every path.
#[must_use = "the attempt counts as settled when this is dropped"]
pub(crate) struct Pending(IntGauge);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A handshake in progress: recorded once, as `Failed` if dropped before
/// [`Handshake::finish`] (a cancelled task).
pub(crate) struct Handshake {
    counter: IntCounterVec,
    done: bool,
}

impl Handshake {
    /// Records how the handshake ended.
    pub(crate) fn finish(mut self, result: HandshakeResult) {
        self.counter.with_label_values(&[result.label()]).inc();
        self.done = true;
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if !self.done {
            self.counter
                .with_label_values(&[HandshakeResult::Failed.label()])
                .inc();
        }
    }
}

/// Times store transactions; given to the store when a serving relay
/// opens it ([`crate::store::SqlStore::with_latency`]).
#[derive(Clone)]
pub struct StoreLatency {
    read: Histogram,
    write: Histogram,
}

impl TxTimer for StoreLatency {
    fn read(&self, took: Duration) {
        self.read.observe(took.as_secs_f64());
    }

    fn write(&self, took: Duration) {
        self.write.observe(took.as_secs_f64());
    }
}

/// Buckets of store transaction latency, in seconds: a SQLite commit with
/// `synchronous = FULL` takes a millisecond or a few, a PostgreSQL round
/// trip about as much, and anything near a second is a problem (logins
/// wait on these under a 10 s deadline).
const STORE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// Every metric of one relay. The help text of each (its doc comment here,
/// shortened) is what a scraper shows; docs/relay.md lists them all.
pub struct Metrics {
    registry: Registry,
    /// Authenticated connections by role (`latchkey_connections_opened_total`,
    /// `_closed_total`, and `latchkey_connections`): how many hosts, users
    /// and sessions the relay carries.
    connections: Tracked,
    /// Connections refused before their handshake, by reason: a flood or a
    /// reconnect storm shows here first.
    connections_refused: IntCounterVec,
    /// Connections asked to prove their address with a QUIC Retry (under
    /// load, or from a source with no tokens left).
    connections_retried: IntCounter,
    /// Handshakes by result: failures and timeouts are broken or hostile
    /// peers, or a relay too slow to answer.
    handshakes: IntCounterVec,
    /// Logins by result (ok, wrong, locked, busy, outsider): the relay's
    /// authentication story; a rise in `wrong` or `outsider` is guessing.
    logins: IntCounterVec,
    /// Attempts this relay reserved that are not settled yet: each one
    /// counts against its host until then, so a stuck one shows here.
    attempts_pending: IntGauge,
    /// Attempts settled as failures without a verdict (abandoned before
    /// KE3, timed out, swept, or left by a previous run): counted against
    /// their host like a wrong code, but no code was judged.
    attempts_abandoned: IntCounter,
    /// Hosts locked now (read from the store at scrape time): each needs an
    /// admin's unlock.
    hosts_locked: IntGauge,
    /// Logged-in sessions (`latchkey_sessions_opened_total`, `_closed_total`,
    /// `latchkey_sessions`), labelled by nothing: one per verdict that
    /// started one.
    sessions: Tracked,
    /// Parked sessions (host rebooting or reconnecting) that carried on
    /// with their host back.
    sessions_resumed: IntCounter,
    /// Channels of sessions by kind (`latchkey_channels_opened_total`,
    /// `_closed_total`, `latchkey_channels`).
    channels: Tracked,
    /// Bytes spliced between clients and hosts, by direction: the relay's
    /// bandwidth bill.
    relayed_bytes: IntCounterVec,
    /// Store transactions' latency, by kind (read or write), including the
    /// wait for a connection: every login waits on a few of these.
    store_latency: HistogramVec,
    /// Notices by delivery state (read from the store at scrape time):
    /// `pending` that only grows means mail is not going out.
    notices: IntGaugeVec,
    /// Reboot requests by result.
    reboots: IntCounterVec,
    /// Resume tickets presented by rebooted hosts, by result (`ok` resumes
    /// the parked sessions; `refused` is a used, expired or foreign ticket).
    resumes: IntCounterVec,
    /// Scrapes whose store gauges could not be read (they then keep the
    /// values of the last scrape that could).
    store_gauge_errors: IntCounter,
}

impl Metrics {
    /// Creates every metric, at zero, in a registry of its own.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let r = &registry;
        let roles: Vec<_> = ConnRole::ALL.iter().map(|v| v.label()).collect();
        let kinds: Vec<_> = ChannelKind::ALL.iter().map(|v| v.label()).collect();
        let m = Self {
            connections: Tracked::new(
                r,
                "connections",
                "Authenticated connections",
                Some("role"),
                &roles,
            )?,
            connections_refused: counter_vec(
                r,
                "latchkey_connections_refused_total",
                "Connections refused before their handshake.",
                &["reason"],
            )?,
            connections_retried: counter(
                r,
                "latchkey_connections_retried_total",
                "Connections asked to prove their address (QUIC Retry).",
            )?,
            handshakes: counter_vec(
                r,
                "latchkey_handshakes_total",
                "Handshakes by result.",
                &["result"],
            )?,
            logins: counter_vec(r, "latchkey_logins_total", "Logins by result.", &["result"])?,
            attempts_pending: gauge(
                r,
                "latchkey_attempts_pending",
                "Login attempts reserved by this relay and not settled yet.",
            )?,
            attempts_abandoned: counter(
                r,
                "latchkey_attempts_abandoned_total",
                "Attempts settled as failures without a verdict.",
            )?,
            hosts_locked: gauge(r, "latchkey_hosts_locked", "Hosts locked now.")?,
            sessions: Tracked::new(r, "sessions", "Logged-in sessions", None, &[])?,
            sessions_resumed: counter(
                r,
                "latchkey_sessions_resumed_total",
                "Parked sessions that carried on with their host back.",
            )?,
            channels: Tracked::new(r, "channels", "Session channels", Some("kind"), &kinds)?,
            relayed_bytes: counter_vec(
                r,
                "latchkey_relayed_bytes_total",
                "Bytes spliced between clients and hosts.",
                &["direction"],
            )?,
            store_latency: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "latchkey_store_transaction_seconds",
                        "Store transaction latency.",
                    )
                    .buckets(STORE_BUCKETS.to_vec()),
                    &["kind"],
                )?;
                r.register(Box::new(h.clone()))?;
                h
            },
            notices: {
                let g = IntGaugeVec::new(
                    Opts::new("latchkey_notices", "Notices by delivery state."),
                    &["state"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            reboots: counter_vec(
                r,
                "latchkey_reboots_total",
                "Reboot requests by result.",
                &["result"],
            )?,
            resumes: counter_vec(
                r,
                "latchkey_resumes_total",
                "Resume tickets presented by rebooted hosts, by result.",
                &["result"],
            )?,
            store_gauge_errors: counter(
                r,
                "latchkey_store_gauge_errors_total",
                "Scrapes whose store gauges could not be read.",
            )?,
            registry,
        };
        // Every label value at zero from the start: a scraper (and a test)
        // sees "none yet" rather than nothing.
        for v in RefusedReason::ALL {
            m.connections_refused.with_label_values(&[v.label()]);
        }
        for v in HandshakeResult::ALL {
            m.handshakes.with_label_values(&[v.label()]);
        }
        for v in LoginResult::ALL {
            m.logins.with_label_values(&[v.label()]);
        }
        for v in ["to_host", "to_client"] {
            m.relayed_bytes.with_label_values(&[v]);
        }
        for v in ["read", "write"] {
            m.store_latency.with_label_values(&[v]);
        }
        for v in RebootResult::ALL {
            m.reboots.with_label_values(&[v.label()]);
        }
        for v in ["ok", "refused"] {
            m.resumes.with_label_values(&[v]);
        }
        Ok(m)
    }

    /// An authenticated connection in `role`, until the guard drops.
    pub(crate) fn connection(&self, role: ConnRole) -> Open {
        self.connections.open(&[role.label()])
    }

    /// A connection refused before its handshake.
    pub(crate) fn refused(&self, reason: RefusedReason) {
        self.connections_refused
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// A connection asked to prove its address.
    pub(crate) fn retried(&self) {
        self.connections_retried.inc();
    }

    /// A handshake that starts now.
    pub(crate) fn handshake(&self) -> Handshake {
        Handshake {
            counter: self.handshakes.clone(),
            done: false,
        }
    }

    /// A login's verdict.
    pub(crate) fn login(&self, result: LoginResult) {
        self.logins.with_label_values(&[result.label()]).inc();
    }

    /// An attempt just reserved, until the guard drops.
    pub(crate) fn pending_attempt(&self) -> Pending {
        self.attempts_pending.inc();
        Pending(self.attempts_pending.clone())
    }

    /// `n` attempts settled as failures without a verdict.
    pub(crate) fn abandoned(&self, n: u64) {
        self.attempts_abandoned.inc_by(n);
    }

    /// A session the verdict started, until the guard drops.
    pub(crate) fn session(&self) -> Open {
        self.sessions.open(&[])
    }

    /// A parked session carried on.
    pub(crate) fn session_resumed(&self) {
        self.sessions_resumed.inc();
    }

    /// A channel of `kind`, until the guard drops.
    pub(crate) fn channel(&self, kind: ChannelKind) -> Open {
        self.channels.open(&[kind.label()])
    }

    /// The counters of bytes moved (to the host, to the client), for a
    /// channel's splice loops to add to.
    pub(crate) fn relayed(&self) -> (IntCounter, IntCounter) {
        (
            self.relayed_bytes.with_label_values(&["to_host"]),
            self.relayed_bytes.with_label_values(&["to_client"]),
        )
    }

    /// A reboot request's result.
    pub(crate) fn reboot(&self, result: RebootResult) {
        self.reboots.with_label_values(&[result.label()]).inc();
    }

    /// A resume ticket presented: accepted or not.
    pub(crate) fn resume(&self, accepted: bool) {
        let label = if accepted { "ok" } else { "refused" };
        self.resumes.with_label_values(&[label]).inc();
    }

    /// The histograms the store times its transactions with.
    pub fn store_latency(&self) -> StoreLatency {
        StoreLatency {
            read: self.store_latency.with_label_values(&["read"]),
            write: self.store_latency.with_label_values(&["write"]),
        }
    }

    /// Sets the gauges only the store knows.
    fn set_store_gauges(&self, g: &StoreGauges) {
        let set = |gauge: &IntGauge, n: u64| gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        set(&self.hosts_locked, g.hosts_locked);
        set(
            &self.notices.with_label_values(&["pending"]),
            g.notices_pending,
        );
        set(&self.notices.with_label_values(&["sent"]), g.notices_sent);
        set(
            &self.notices.with_label_values(&["stored"]),
            g.notices_stored,
        );
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        // The text encoder writes UTF-8 only (names and help are ASCII).
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

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

/// Serves [`router`] on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics listening");
    }
    let served = axum::serve(listener, router(metrics, store))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        warn!("metrics listener stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_label_value_is_rendered_at_zero_before_anything_happens() {
        let m = Metrics::new().unwrap();
        let text = m.render().unwrap();
        for result in ["ok", "wrong", "locked", "busy", "outsider"] {
            let series = format!("latchkey_logins_total{{result=\"{result}\"}}");
            assert_eq!(value(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        assert_eq!(value(&text, "latchkey_attempts_pending"), Some(0.0));
        assert_eq!(
            value(&text, "latchkey_connections{role=\"host_admin\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn an_open_gauge_is_its_opened_minus_closed_counters() {
        let m = Metrics::new().unwrap();
        let a = m.channel(ChannelKind::Bulk);
        let b = m.channel(ChannelKind::Bulk);
        let c = m.channel(ChannelKind::Interactive);
        drop(a);
        let text = m.render().unwrap();
        let get = |name: &str, kind: &str| {
            value(&text, &format!("{name}{{kind=\"{kind}\"}}")).unwrap_or(f64::NAN)
        };
        for kind in ["bulk", "interactive", "handshake"] {
            assert_eq!(
                get("latchkey_channels", kind),
                get("latchkey_channels_opened_total", kind)
                    - get("latchkey_channels_closed_total", kind),
                "{kind}"
            );
        }
        assert_eq!(get("latchkey_channels", "bulk"), 1.0);
        assert_eq!(get("latchkey_channels_closed_total", "bulk"), 1.0);
        assert_eq!(get("latchkey_channels", "interactive"), 1.0);
        drop((b, c));
    }

    #[test]
    fn a_handshake_dropped_unfinished_counts_as_failed_once() {
        let m = Metrics::new().unwrap();
        m.handshake().finish(HandshakeResult::Timeout);
        drop(m.handshake());
        let text = m.render().unwrap();
        assert_eq!(
            value(&text, "latchkey_handshakes_total{result=\"timeout\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "latchkey_handshakes_total{result=\"failed\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn a_pending_attempt_counts_until_its_guard_drops() {
        let m = Metrics::new().unwrap();
        let a = m.pending_attempt();
        let b = m.pending_attempt();
        assert_eq!(m.attempts_pending.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(m.attempts_pending.get(), 0);
    }

    #[test]
    fn two_relays_in_one_process_count_apart() {
        let (one, two) = (Metrics::new().unwrap(), Metrics::new().unwrap());
        one.login(LoginResult::Wrong);
        let series = "latchkey_logins_total{result=\"wrong\"}";
        assert_eq!(value(&one.render().unwrap(), series), Some(1.0));
        assert_eq!(value(&two.render().unwrap(), series), Some(0.0));
    }

    #[test]
    fn the_store_latency_histogram_counts_each_kind() {
        let m = Metrics::new().unwrap();
        let latency = m.store_latency();
        latency.write(Duration::ZERO);
        latency.write(Duration::ZERO);
        latency.read(Duration::ZERO);
        let text = m.render().unwrap();
        assert_eq!(
            value(
                &text,
                "latchkey_store_transaction_seconds_count{kind=\"write\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                "latchkey_store_transaction_seconds_count{kind=\"read\"}"
            ),
            Some(1.0)
        );
    }
}
