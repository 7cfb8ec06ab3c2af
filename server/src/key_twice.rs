//! One host key connected from two places at once. A reconnecting agent
//! replaces its own dead connection; but while the older connection still
//! answers, the newer one holds a copy of the host's key (or a second agent
//! runs on one identity). The relay keeps the older, refuses the newer, and
//! tells the owner and the admin (an audit row and a notice) instead of
//! quietly handing the host's sessions to whoever came last.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use latchkey_protocol::{frame::RelayToHost, ids::HostName};
use tracing::warn;

use crate::{
    error::blocking,
    host::{HostLink, HostTx},
    now_unix, Shared,
};

/// How long the older connection has at least to answer a ping (more on
/// a slow path: four round trips).
const PROBE: Duration = Duration::from_millis(1500);

/// Holders probed in turn before a newcomer gives up (see [`take_place`]).
const PROBE_ROUNDS: u32 = 3;

/// One record (audit and notice) per host and refused address at most
/// this often: a refused copy retries, and each retry must not mail the
/// owner again ...
const REPORT_EVERY: Duration = Duration::from_secs(600);
/// ... and at most this many per host an hour, however many addresses.
const REPORTS_PER_HOUR: usize = 6;

/// Whether the older connection's agent still answers: the relay pings it
/// on its control stream and waits for the agent's `Pong` (counted by the
/// link, so nothing an attacker replays on the wire counts). A connection
/// whose agent died without closing (power loss, a network change) says
/// nothing and is replaced; one too busy to take the ping is alive.
pub(crate) async fn still_answers(
    conn: &quinn::Connection,
    tx: &HostTx,
    mut pongs: tokio::sync::watch::Receiver<u64>,
) -> bool {
    if conn.close_reason().is_some() {
        return false;
    }
    let before = *pongs.borrow_and_update();
    match tx.try_send(Box::new(RelayToHost::Ping)) {
        Ok(()) => {}
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => return true,
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
    }
    let wait = PROBE.max(conn.rtt() * 4);
    let answered = tokio::time::timeout(wait, pongs.wait_for(|n| *n > before)).await;
    matches!(answered, Ok(Ok(_))) && conn.close_reason().is_none()
}

/// Puts `link` in the host's place, unless the connection there still
/// answers: then returns that connection's address (the newcomer is a
/// copy). Returns the connection it replaced. The place is taken only from
/// the very link that was probed; if another took it meanwhile, that one
/// is probed in turn, up to [`PROBE_ROUNDS`] times: a place that keeps
/// changing hands that fast is contested, and the newcomer waits its turn.
pub(crate) async fn take_place(
    shared: &Shared,
    host: &HostName,
    link: HostLink,
) -> Result<Option<HostLink>, SocketAddr> {
    let mut probed = 0;
    loop {
        let current = shared
            .hosts()
            .get(host)
            .map(|l| (l.id, l.conn.clone(), l.tx.clone(), l.pongs.clone()));
        let Some((id, conn, tx, pongs)) = current else {
            let mut hosts = shared.hosts();
            if hosts.contains_key(host) {
                continue;
            }
            hosts.insert(host.clone(), link);
            return Ok(None);
        };
        if probed == PROBE_ROUNDS || still_answers(&conn, &tx, pongs).await {
            return Err(conn.remote_address());
        }
        probed += 1;
        let mut hosts = shared.hosts();
        if hosts.get(host).map(|l| l.id) == Some(id) {
            return Ok(hosts.insert(host.clone(), link));
        }
    }
}

/// When each host's double connections were last recorded, by the
/// connection that held the host and the refused address: a copy retrying
/// against the same holder is one report, and a holder that changed (the
/// copy took the place, then the original is refused) is a new one.
#[derive(Default)]
pub(crate) struct Reports(Mutex<HashMap<HostName, Vec<(Pair, Instant)>>>);

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

/// Records a refused second connection (see [`REPORT_EVERY`]).
pub(crate) async fn report(shared: &Shared, host: &HostName, older: SocketAddr, newer: SocketAddr) {
    warn!(%host, %older, %newer, "host key connected twice: the newer connection is refused");
    if !shared.key_twice.due(host, (older, newer.ip())) {
        return;
    }
    let (store, h) = (shared.store.clone(), host.clone());
    let (older, newer) = (older.to_string(), newer.to_string());
    let now = now_unix();
    match blocking(move || store.host_key_twice(&h, &older, &newer, now)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(%host, "cannot record the double connection: {e}"),
        Err(e) => warn!(%host, "cannot record the double connection: {e}"),
    }
}

/// Records that a connection which had not closed, and did not answer the
/// probe, lost the host to a newer one: usually a network change or a
/// crash, but also what a copy of the key does while the agent stalls. An
/// audit row, so the owner can tell the two apart afterwards (no notice:
/// every roaming laptop would send one).
pub(crate) async fn record_silent_replacement(
    shared: &Shared,
    host: &HostName,
    older: SocketAddr,
    newer: SocketAddr,
) {
    let (store, h) = (shared.store.clone(), host.clone());
    let detail = format!("a silent connection from {older} was replaced by one from {newer}");
    let now = now_unix();
    let written = blocking(move || {
        store.audit(
            crate::store::Event {
                event: "host-replaced",
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
