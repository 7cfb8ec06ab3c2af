//! The host agents connected to this relay, one live link per host, and
//! the rule for one host key connected twice.
//!
//! A reconnecting agent replaces its own dead connection; but while the
//! older connection still answers, the newer one holds a copy of the host's
//! key (or a second agent runs on one identity). The relay keeps the older,
//! refuses the newer, and tells the owner and the admin (an audit row and a
//! notice) instead of quietly handing the host's sessions to whoever came
//! last. [`HostLinks`] owns the map and that rule, so no other part can put
//! a link in a host's place.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use latchkey_protocol::{
    frame::RelayToHost,
    ids::{HostName, PublicKey, SessionId},
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::warn;

use crate::{
    clock::now_unix,
    store::{AuditEvent, Event, Store},
};

/// Frames for one host's agent. Boxed: the channel allocates its first
/// block of 32 slots up front, and every idle host holds one.
pub(crate) type HostTx = mpsc::Sender<Box<RelayToHost>>;

/// A live host agent connection.
pub(crate) struct HostLink {
    /// Distinguishes this connection from a newer one of the same host.
    pub(crate) id: u64,
    /// The QUIC connection (closed when replaced).
    pub(crate) conn: quinn::Connection,
    /// Frames to send on the host's control stream.
    pub(crate) tx: HostTx,
    /// The host's device key, introduced to clients for the end-to-end
    /// handshake.
    pub(crate) key: PublicKey,
    /// Counts the agent's answers to pings (see [`still_answers`]).
    pub(crate) pongs: watch::Receiver<u64>,
}

/// How long the older connection has at least to answer a ping (more on
/// a slow path: four round trips).
const PROBE: Duration = Duration::from_millis(1500);

/// Holders probed in turn before a newcomer gives up (see
/// [`HostLinks::take_place`]).
const PROBE_ROUNDS: u32 = 3;

/// One record (audit and notice) per host and refused address at most
/// this often: a refused copy retries, and each retry must not mail the
/// owner again ...
const REPORT_EVERY: Duration = Duration::from_secs(600);
/// ... and at most this many per host an hour, however many addresses.
const REPORTS_PER_HOUR: usize = 6;

/// The hosts whose agents are connected here.
pub(crate) struct HostLinks {
    links: Mutex<HashMap<HostName, HostLink>>,
    next_id: AtomicU64,
    reports: Reports,
    /// Hosts that came back: `true` with a valid reboot ticket, `false` when
    /// the agent reconnected (sessions parked for a reboot wait for the former).
    back: broadcast::Sender<(HostName, bool)>,
    /// Announced routes whose host has not said it is ready for them yet
    /// ([`RoutedWait`]): one per session being paired.
    routed: Mutex<HashMap<(HostName, SessionId), oneshot::Sender<bool>>>,
}

impl Default for HostLinks {
    fn default() -> Self {
        Self {
            routed: Mutex::default(),
            links: Mutex::default(),
            next_id: AtomicU64::new(1),
            reports: Reports::default(),
            back: broadcast::channel(64).0,
        }
    }
}

impl HostLinks {
    fn links(&self) -> MutexGuard<'_, HashMap<HostName, HostLink>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A link for a newly authenticated agent connection.
    pub(crate) fn new_link(
        &self,
        conn: quinn::Connection,
        tx: HostTx,
        key: PublicKey,
        pongs: watch::Receiver<u64>,
    ) -> HostLink {
        HostLink {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            conn,
            tx,
            key,
            pongs,
        }
    }

    /// Whether `host`'s agent is connected here.
    pub(crate) fn is_here(&self, host: &HostName) -> bool {
        self.links().contains_key(host)
    }

    /// `host`'s connection, if its agent is here.
    pub(crate) fn conn(&self, host: &HostName) -> Option<quinn::Connection> {
        self.links().get(host).map(|l| l.conn.clone())
    }

    /// `host`'s connection and device key, if its agent is here.
    pub(crate) fn conn_and_key(&self, host: &HostName) -> Option<(quinn::Connection, PublicKey)> {
        self.links().get(host).map(|l| (l.conn.clone(), l.key))
    }

    /// Waits for `host`'s answer to the announcement of `session`'s route
    /// (made after this call, so no answer comes before the wait).
    pub(crate) fn await_routed(&self, host: &HostName, session: SessionId) -> RoutedWait<'_> {
        let (tx, rx) = oneshot::channel();
        let key = (host.clone(), session);
        self.routed_waits().insert(key.clone(), tx);
        RoutedWait {
            links: self,
            key,
            rx,
        }
    }

    /// `host` is ready for `session`'s route, and kept its connection or
    /// not. An answer nobody waits for (late, or made up) is dropped.
    pub(crate) fn routed(&self, host: &HostName, session: SessionId, kept: bool) {
        let waiting = self.routed_waits().remove(&(host.clone(), session));
        if let Some(tx) = waiting {
            let _ = tx.send(kept);
        }
    }

    fn routed_waits(
        &self,
    ) -> MutexGuard<'_, HashMap<(HostName, SessionId), oneshot::Sender<bool>>> {
        self.routed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where frames for `host`'s agent go, if it is here.
    pub(crate) fn tx(&self, host: &HostName) -> Option<HostTx> {
        self.links().get(host).map(|l| l.tx.clone())
    }

    /// `host`'s connection unless it was made with `key` (the host was
    /// enrolled again since; with `None`, removed).
    pub(crate) fn conn_unless_key(
        &self,
        host: &HostName,
        key: Option<&PublicKey>,
    ) -> Option<quinn::Connection> {
        self.links()
            .get(host)
            .filter(|l| Some(&l.key) != key)
            .map(|l| l.conn.clone())
    }

    /// The hosts whose links are still open.
    pub(crate) fn open_hosts(&self) -> Vec<HostName> {
        self.links()
            .iter()
            .filter(|(_, link)| link.conn.close_reason().is_none())
            .map(|(host, _)| host.clone())
            .collect()
    }

    /// Removes `host`'s link if it is still link `id` (not a newer one);
    /// `true` if it was.
    pub(crate) fn leave(&self, host: &HostName, id: u64) -> bool {
        let mut links = self.links();
        if links.get(host).map(|l| l.id) == Some(id) {
            links.remove(host);
            true
        } else {
            false
        }
    }

    /// Says `host` is back: `with_ticket` when it presented the ticket of
    /// the reboot the relay waited for.
    pub(crate) fn announce_back(&self, host: &HostName, with_ticket: bool) {
        let _ = self.back.send((host.clone(), with_ticket));
    }

    /// Hears of hosts coming back from now on.
    pub(crate) fn comebacks(&self) -> broadcast::Receiver<(HostName, bool)> {
        self.back.subscribe()
    }

    /// Puts `link` in the host's place, unless the connection there still
    /// answers: then returns that connection's address (the newcomer is a
    /// copy). Returns the connection it replaced. The place is taken only
    /// from the very link that was probed; if another took it meanwhile,
    /// that one is probed in turn, up to [`PROBE_ROUNDS`] times: a place
    /// that keeps changing hands that fast is contested, and the newcomer
    /// waits its turn.
    pub(crate) async fn take_place(
        &self,
        host: &HostName,
        link: HostLink,
    ) -> Result<Option<HostLink>, SocketAddr> {
        let mut probed = 0;
        loop {
            let current = self
                .links()
                .get(host)
                .map(|l| (l.id, l.conn.clone(), l.tx.clone(), l.pongs.clone()));
            let Some((id, conn, tx, pongs)) = current else {
                let mut links = self.links();
                if links.contains_key(host) {
                    continue;
                }
                links.insert(host.clone(), link);
                return Ok(None);
            };
            if probed == PROBE_ROUNDS || still_answers(&conn, &tx, pongs).await {
                return Err(conn.remote_address());
            }
            probed += 1;
            let mut links = self.links();
            if links.get(host).map(|l| l.id) == Some(id) {
                return Ok(links.insert(host.clone(), link));
            }
        }
    }

    /// Records a refused second connection (see [`REPORT_EVERY`]).
    pub(crate) async fn report_twice(
        &self,
        store: &Arc<dyn Store>,
        host: &HostName,
        older: SocketAddr,
        newer: SocketAddr,
    ) {
        warn!(%host, %older, %newer, "host key connected twice: the newer connection is refused");
        if !self.reports.due(host, (older, newer.ip())) {
            return;
        }
        let (store, h) = (store.clone(), host.clone());
        let (older, newer) = (older.to_string(), newer.to_string());
        let now = now_unix();
        match tokio::task::spawn_blocking(move || store.host_key_twice(&h, &older, &newer, now))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(%host, "cannot record the double connection: {e}"),
            Err(e) => warn!(%host, "cannot record the double connection: {e}"),
        }
    }
}

/// Whether the older connection's agent still answers: the relay pings it
/// on its control stream and waits for the agent's `Pong` (counted by the
/// link, so nothing an attacker replays on the wire counts). A connection
/// whose agent died without closing (power loss, a network change) says
/// nothing and is replaced; one too busy to take the ping is alive.
async fn still_answers(
    conn: &quinn::Connection,
    tx: &HostTx,
    mut pongs: watch::Receiver<u64>,
) -> bool {
    if conn.close_reason().is_some() {
        return false;
    }
    let before = *pongs.borrow_and_update();
    match tx.try_send(Box::new(RelayToHost::Ping)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
    }
    let wait = PROBE.max(conn.rtt() * 4);
    let answered = tokio::time::timeout(wait, pongs.wait_for(|n| *n > before)).await;
    matches!(answered, Ok(Ok(_))) && conn.close_reason().is_none()
}

/// When each host's double connections were last recorded, by the
/// connection that held the host and the refused address: a copy retrying
/// against the same holder is one report, and a holder that changed (the
/// copy took the place, then the original is refused) is a new one.
#[derive(Default)]
struct Reports(Mutex<HashMap<HostName, Vec<(Pair, Instant)>>>);

/// The connection that held a host, and the address refused beside it.
type Pair = (SocketAddr, IpAddr);

impl Reports {
    fn due(&self, host: &HostName, pair: Pair) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let recent = all.entry(host.clone()).or_default();
        recent.retain(|(_, at)| now.duration_since(*at) < Duration::from_secs(3600));
        let again = recent
            .iter()
            .any(|(p, at)| *p == pair && now.duration_since(*at) < REPORT_EVERY);
        if again || recent.len() >= REPORTS_PER_HOUR {
            return false;
        }
        recent.push((pair, now));
        true
    }
}

/// Records that a connection which had not closed, and did not answer the
/// probe, lost the host to a newer one: usually a network change or a
/// crash, but also what a copy of the key does while the agent stalls. An
/// audit row, so the owner can tell the two apart afterwards (no notice:
/// every roaming laptop would send one).
pub(crate) async fn record_silent_replacement(
    store: &Arc<dyn Store>,
    host: &HostName,
    older: SocketAddr,
    newer: SocketAddr,
) {
    let (store, h) = (store.clone(), host.clone());
    let detail = format!("a silent connection from {older} was replaced by one from {newer}");
    let now = now_unix();
    let written = tokio::task::spawn_blocking(move || {
        store.audit(
            Event {
                event: AuditEvent::HostReplaced,
                host: Some(h.as_str()),
                user: None,
                source: Some(newer.ip()),
                detail: Some(detail),
            },
            now,
        )
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        warn!(%host, "cannot record the replaced connection");
    }
}

/// A wait for a host's [`HostLinks::routed`] answer; dropped, it stops
/// waiting, so no way out of a pairing leaves an entry behind.
pub(crate) struct RoutedWait<'a> {
    links: &'a HostLinks,
    key: (HostName, SessionId),
    rx: oneshot::Receiver<bool>,
}

impl RoutedWait<'_> {
    /// Whether the host kept the session's connection; `None` if the wait
    /// ended without an answer (the host's link went).
    pub(crate) async fn kept(&mut self) -> Option<bool> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for RoutedWait<'_> {
    fn drop(&mut self) {
        self.links.routed_waits().remove(&self.key);
    }
}
