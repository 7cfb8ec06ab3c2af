//! One host key connected from two places at once. A reconnecting agent
//! replaces its own dead connection; but while the older connection still
//! answers, the newer one holds a copy of the host's key (or a second agent
//! runs on one identity). The relay keeps the older, refuses the newer, and
//! tells the owner and the admin (an audit row and a notice) instead of
//! quietly handing the host's sessions to whoever came last.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use latchkey_protocol::{frame::RelayToHost, ids::HostName};
use tracing::warn;

use crate::{error::blocking, host::HostTx, now_unix, Shared};

/// How long the older connection has to show it is alive.
const PROBE: Duration = Duration::from_millis(1500);

/// One record (audit and notice) per host at most this often: a refused
/// copy retries, and each retry must not mail the owner again.
const REPORT_EVERY: Duration = Duration::from_secs(600);

/// Whether the older connection still answers: the relay pings its agent,
/// and any packet back within [`PROBE`] says it is alive. A connection
/// whose agent died without closing (power loss, a network change) says
/// nothing and is replaced.
pub(crate) async fn still_answers(conn: &quinn::Connection, tx: &HostTx) -> bool {
    if conn.close_reason().is_some() {
        return false;
    }
    let before = conn.stats().udp_rx.datagrams;
    if tx.try_send(RelayToHost::Ping).is_err() {
        return false;
    }
    let until = Instant::now() + PROBE;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if conn.close_reason().is_some() {
            return false;
        }
        if conn.stats().udp_rx.datagrams > before {
            return true;
        }
    }
    false
}

/// When each host's last double connection was recorded.
#[derive(Default)]
pub(crate) struct Reports(Mutex<HashMap<HostName, Instant>>);

impl Reports {
    fn due(&self, host: &HostName) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match last.get(host) {
            Some(t) if now.duration_since(*t) < REPORT_EVERY => false,
            _ => {
                last.insert(host.clone(), now);
                true
            }
        }
    }
}

/// Records a refused second connection (at most once per
/// [`REPORT_EVERY`] and host).
pub(crate) async fn report(shared: &Shared, host: &HostName, older: SocketAddr, newer: SocketAddr) {
    warn!(%host, %older, %newer, "host key connected twice: the newer connection is refused");
    if !shared.key_twice.due(host) {
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
