//! The relay's Prometheus metrics (SPEC O2): one typed struct that owns
//! its own [`Registry`] (several relays run in one test process, so there
//! is no global one), handed to the parts that count as `Arc<Metrics>`, and
//! the `/metrics` endpoint that renders it.
//!
//! Gauges of live things (connections, sessions, routes, pending
//! attempts) are moved only by guards ([`Open`], [`Pending`]) that count
//! themselves down when dropped, so no path can leave them drifting; the
//! ones that are "open" also keep an opened/closed counter pair, whose
//! difference is the gauge. What only the store knows (hosts locked,
//! notices by state) is read from it at scrape time
//! ([`Store::gauges`](crate::store::Store::gauges)).
//!
//! Labels are small fixed sets: never a user or host name or an address
//! (their number is unbounded, and they are not the scraper's business).
//!
//! This file holds [`Metrics`] and what builds it; `labels` the label
//! enums, `guards` the values that count while they live, `http` the
//! endpoint.

mod guards;
pub mod health;
mod http;
mod labels;

use std::{net::SocketAddr, time::Duration};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use thiserror::Error;

use crate::store::{StoreGauges, TxTimer};
use guards::Tracked;

pub(crate) use guards::{Handshake, Open, Pending};
pub(crate) use http::{bind, serve};
pub use http::{router, CONTENT_TYPE};
pub use labels::{
    ConnRole, ForwardDrop, HandshakeResult, LoginResult, RebootResult, RefusedReason,
};

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

/// The forwarding counters, held by the socket layer so that counting a
/// datagram costs no label lookup.
#[derive(Clone, Debug)]
pub struct ForwardCounters {
    /// Datagrams forwarded.
    pub datagrams: IntCounter,
    /// Bytes forwarded.
    pub bytes: IntCounter,
    /// Datagrams dropped, indexed by [`ForwardDrop::index`].
    dropped: [IntCounter; ForwardDrop::ALL.len()],
}

impl ForwardCounters {
    /// Counts `n` datagrams dropped for `why`.
    pub fn dropped(&self, why: ForwardDrop, n: u64) {
        self.dropped[why.index()].inc_by(n);
    }

    /// How many were dropped for `why` so far.
    pub fn dropped_so_far(&self, why: ForwardDrop) -> u64 {
        self.dropped[why.index()].get()
    }
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
    /// Routes between the devices of sessions (`latchkey_routes_opened_total`,
    /// `_closed_total`, `latchkey_routes`): one per session paired with its
    /// host, a new one each time it is paired again.
    routes: Tracked,
    /// Datagrams of end-to-end connections forwarded between devices, and
    /// their bytes (`latchkey_forwarded_bytes_total`).
    forwarded_datagrams: IntCounter,
    forwarded_bytes: IntCounter,
    /// Routed datagrams dropped, by reason: `unknown_leg` or `wrong_source`
    /// that keeps rising is someone probing for other sessions' routes.
    forward_dropped: IntCounterVec,
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
            routes: Tracked::new(r, "routes", "Routes between session devices", None, &[])?,
            forwarded_datagrams: counter(
                r,
                "latchkey_forwarded_datagrams_total",
                "Datagrams of end-to-end connections forwarded between devices.",
            )?,
            forwarded_bytes: counter(
                r,
                "latchkey_forwarded_bytes_total",
                "Bytes of end-to-end datagrams forwarded between devices.",
            )?,
            forward_dropped: counter_vec(
                r,
                "latchkey_forward_dropped_total",
                "Routed datagrams dropped, by reason.",
                &["reason"],
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
        for v in ForwardDrop::ALL {
            m.forward_dropped.with_label_values(&[v.label()]);
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
        Handshake::new(self.handshakes.clone())
    }

    /// A login's verdict.
    pub(crate) fn login(&self, result: LoginResult) {
        self.logins.with_label_values(&[result.label()]).inc();
    }

    /// An attempt just reserved, until the guard drops.
    pub(crate) fn pending_attempt(&self) -> Pending {
        Pending::new(&self.attempts_pending)
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

    /// A route, until the guard drops.
    pub(crate) fn route(&self) -> Open {
        self.routes.open(&[])
    }

    /// The counters the socket layer adds forwarded and dropped datagrams
    /// to.
    pub fn forwarding(&self) -> ForwardCounters {
        ForwardCounters {
            datagrams: self.forwarded_datagrams.clone(),
            bytes: self.forwarded_bytes.clone(),
            dropped: ForwardDrop::ALL.map(|v| self.forward_dropped.with_label_values(&[v.label()])),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `series` in rendered `text` (shared with the guards'
    /// tests).
    pub(super) fn value(text: &str, series: &str) -> Option<f64> {
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
