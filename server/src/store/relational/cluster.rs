//! Several relays on one store: each serving relay's heartbeat and
//! address, where a host's agent is held, and the sweep that settles and
//! ends what a relay that stopped answering left behind.

use latchkey_protocol::ids::HostName;

use super::{attempts, sessions};
use crate::{
    rules::lockout::Proof,
    store::{
        sql::{args, Tx},
        SessionEnd, StoreError, SweptRelays, UnixTime,
    },
};

/// Says `relay` is alive at `addr`; `true` if it was not on record.
pub(super) fn heartbeat(
    tx: &mut dyn Tx,
    relay: &str,
    addr: &str,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let updated = tx.exec(
        "UPDATE relays SET heartbeat_at = ?2, addr = ?3 WHERE id = ?1",
        args![relay, now, addr],
    )?;
    if updated == 0 {
        tx.exec(
            "INSERT INTO relays (id, started_at, heartbeat_at, addr) VALUES (?1, ?2, ?2, ?3)",
            args![relay, now, addr],
        )?;
    }
    Ok(updated == 0)
}

/// Forgets `relay` (a clean stop).
pub(super) fn forget(tx: &mut dyn Tx, relay: &str) -> Result<(), StoreError> {
    tx.exec("DELETE FROM relays WHERE id = ?1", args![relay])?;
    Ok(())
}

/// Settles the pending attempts and ends the open sessions of every relay
/// but `me` whose heartbeat is older than `heartbeat_before`, frees its
/// hosts and forgets it.
pub(super) fn sweep_lapsed(
    tx: &mut dyn Tx,
    heartbeat_before: UnixTime,
    now: UnixTime,
    me: Option<&str>,
) -> Result<SweptRelays, StoreError> {
    // No relay has the empty id: a store serving none sweeps them all.
    let me = me.unwrap_or("");
    let lapsed = tx.rows(
        "SELECT id FROM relays WHERE heartbeat_at < ?1 AND id <> ?2 ORDER BY id",
        args![heartbeat_before, me],
    )?;
    let mut settled = 0;
    for r in &lapsed {
        let relay = r.text(0)?;
        let pending = tx.rows(
            "SELECT id FROM attempts WHERE state = 'pending' AND relay_id = ?1 ORDER BY id",
            args![&relay],
        )?;
        let why = format!("its relay ({relay}) stopped answering");
        for a in &pending {
            attempts::settle(tx, a.int(0)?, Proof::NotProven, &why, None, now)?;
        }
        settled += pending.len();
        let open = tx.rows(
            "SELECT id FROM sessions WHERE ended_at IS NULL AND relay_id = ?1",
            args![&relay],
        )?;
        for s in &open {
            sessions::end(tx, &s.text(0)?, &why, SessionEnd::Continues, now)?;
        }
        tx.exec(
            "UPDATE hosts SET online = 0, relay_id = NULL, last_seen = ?1 WHERE relay_id = ?2",
            args![now, &relay],
        )?;
        tx.exec("DELETE FROM relays WHERE id = ?1", args![&relay])?;
    }
    Ok(SweptRelays {
        relays: lapsed.len(),
        attempts: settled,
    })
}

/// The address of a live relay other than `me` that holds `host`'s agent.
pub(super) fn host_elsewhere(
    tx: &mut dyn Tx,
    host: &HostName,
    heartbeat_after: UnixTime,
    me: Option<&str>,
) -> Result<Option<String>, StoreError> {
    // No relay has the empty id: for a store serving none, every relay
    // is another.
    let me = me.unwrap_or("");
    tx.opt_row(
        "SELECT r.addr FROM hosts h JOIN relays r ON r.id = h.relay_id
         WHERE h.name = ?1 AND h.online = 1 AND r.id <> ?2
           AND r.heartbeat_at >= ?3 AND r.addr IS NOT NULL",
        args![host.as_str(), me, heartbeat_after],
    )?
    .map(|r| r.text(0))
    .transpose()
}

/// The addresses of the live relays, oldest first.
pub(super) fn relay_addrs(
    tx: &mut dyn Tx,
    heartbeat_after: UnixTime,
) -> Result<Vec<String>, StoreError> {
    tx.rows(
        "SELECT addr FROM relays WHERE heartbeat_at >= ?1 AND addr IS NOT NULL
         ORDER BY started_at, id",
        args![heartbeat_after],
    )?
    .iter()
    .map(|r| r.text(0))
    .collect()
}
