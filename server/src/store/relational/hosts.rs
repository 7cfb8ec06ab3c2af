//! Hosts: whether their agents are connected (and to which relay), how
//! the admin and the users' clients see them, and the owner's policy
//! (shared access, lockout threshold).

use latchkey_protocol::{
    frame::HostInfo,
    ids::{HostName, UserName},
    session::DesktopProtocol,
};

use super::{
    attempts::{lock_host, tally},
    audit::{by_admin, event, insert_audit},
    outbox::enqueue_for_owner,
    rows::{host_ids, shared_users},
};
use crate::{
    rules::lockout,
    store::{
        notice,
        sql::{args, Tx},
        Actor, AuditEvent, Event, HostPresence, HostStatus, StoreError, UnixTime,
    },
};

/// Records agents that connected to the serving relay `me` or left it.
pub(super) fn set_presence(
    tx: &mut dyn Tx,
    changes: &[(HostName, HostPresence)],
    now: UnixTime,
    me: Option<&str>,
) -> Result<(), StoreError> {
    for (host, presence) in changes {
        if let HostPresence::Online { desktop } = presence {
            tx.exec(
                "UPDATE hosts SET online = 1, last_seen = ?1, relay_id = ?2, desktop = ?3
                 WHERE name = ?4",
                args![now, me, desktop.map(DesktopProtocol::scheme), host.as_str()],
            )?;
        } else {
            // Only while it is still ours: a host that moved to
            // another relay meanwhile stays online there.
            tx.exec(
                "UPDATE hosts SET online = 0, last_seen = ?1, relay_id = NULL
                 WHERE name = ?2 AND (relay_id = ?3 OR relay_id IS NULL OR ?3 IS NULL)",
                args![now, host.as_str(), me],
            )?;
        }
    }
    Ok(())
}

/// Records `hosts` online on `me` again, each only if no relay holds it.
pub(super) fn reclaim(
    tx: &mut dyn Tx,
    hosts: &[HostName],
    now: UnixTime,
    me: Option<&str>,
) -> Result<(), StoreError> {
    for host in hosts {
        tx.exec(
            "UPDATE hosts SET online = 1, last_seen = ?1, relay_id = ?2
             WHERE name = ?3 AND (relay_id IS NULL OR relay_id = ?2)",
            args![now, me, host.as_str()],
        )?;
    }
    Ok(())
}

/// Marks the hosts of `me` offline (every host when `me` is `None`).
pub(super) fn clear_online(
    tx: &mut dyn Tx,
    now: UnixTime,
    me: Option<&str>,
) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE hosts SET online = 0, relay_id = NULL,
         last_seen = CASE WHEN online = 1 THEN ?1 ELSE last_seen END
         WHERE online = 1 AND (relay_id = ?2 OR relay_id IS NULL OR ?2 IS NULL)",
        args![now, me],
    )?;
    Ok(())
}

/// One host as the admin sees it.
fn status_of(tx: &mut dyn Tx, id: i64) -> Result<HostStatus, StoreError> {
    let r = tx.row(
        "SELECT h.name, o.name, CASE WHEN h.device_key IS NULL THEN 0 ELSE 1 END, h.platform,
                CASE WHEN g.record_id IS NULL THEN 0 ELSE 1 END,
                h.shared_access, h.lockout_threshold,
                CASE WHEN h.locked_at IS NULL THEN 0 ELSE 1 END, h.online, h.last_seen,
                (SELECT r.addr FROM relays r WHERE r.id = h.relay_id)
         FROM hosts h JOIN users o ON o.id = h.owner_id
         JOIN grants g ON g.host_id = h.id AND g.is_owner = 1
         WHERE h.id = ?1",
        args![id],
    )?;
    let grants = shared_users(tx, id)?;
    Ok(HostStatus {
        name: r.text(0)?,
        owner: r.text(1)?,
        enrolled: r.flag(2)?,
        platform: r.opt_text(3)?,
        code_set: r.flag(4)?,
        shared_access: r.flag(5)?,
        lockout_threshold: r.u32(6)?,
        failures: tally(tx, id)?.count(),
        locked: r.flag(7)?,
        online: r.flag(8)?,
        last_seen: r.opt_int(9)?,
        relay: r.opt_text(10)?,
        grants,
    })
}

/// Every host as the admin sees it, by name.
pub(super) fn all(tx: &mut dyn Tx) -> Result<Vec<HostStatus>, StoreError> {
    tx.rows(
        "SELECT id FROM hosts WHERE removed_at IS NULL ORDER BY name",
        args![],
    )?
    .iter()
    .map(|r| status_of(tx, r.int(0)?))
    .collect()
}

/// One host as the admin sees it, by name.
pub(super) fn status(tx: &mut dyn Tx, host: &HostName) -> Result<HostStatus, StoreError> {
    let (id, _) = host_ids(tx, host.as_str())?;
    status_of(tx, id)
}

fn parse_host(name: &str) -> Result<HostName, StoreError> {
    name.parse()
        .map_err(|_| StoreError::Corrupt(format!("host name {name:?}")))
}

/// The hosts `user` may reach, as their client lists them.
pub(super) fn for_user(tx: &mut dyn Tx, user: &UserName) -> Result<Vec<HostInfo>, StoreError> {
    tx.rows(
        "SELECT h.name, o.name, h.online, CASE WHEN h.locked_at IS NULL THEN 0 ELSE 1 END,
                g.is_owner, h.desktop, g.expires_at
         FROM grants g JOIN users u ON u.id = g.user_id
         JOIN hosts h ON h.id = g.host_id JOIN users o ON o.id = h.owner_id
         WHERE u.name = ?1 ORDER BY h.name LIMIT ?2",
        args![
            user.as_str(),
            i64::try_from(latchkey_protocol::limits::MAX_HOSTS_LISTED).unwrap_or(i64::MAX)
        ],
    )?
    .iter()
    .map(|r| {
        let owner = r.text(1)?;
        Ok(HostInfo {
            name: parse_host(&r.text(0)?)?,
            owner: owner
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("user name {owner:?}")))?,
            online: r.flag(2)?,
            locked: r.flag(3)?,
            is_owner: r.flag(4)?,
            // One a newer relay of the cluster knows and this one does
            // not is left out rather than failing the list.
            desktop: r
                .opt_text(5)?
                .and_then(|scheme| DesktopProtocol::from_scheme(&scheme)),
            expires_at: r.opt_int(6)?,
        })
    })
    .collect()
}

/// Changes a host's shared access and lockout threshold; a threshold
/// lowered to the failures counted locks the host at once.
pub(super) fn set_policy(
    tx: &mut dyn Tx,
    host: &HostName,
    shared_access: Option<bool>,
    lockout_threshold: Option<u32>,
    by: &Actor,
    now: UnixTime,
) -> Result<(), StoreError> {
    let (host_id, _) = host_ids(tx, host.as_str())?;
    if let Some(shared) = shared_access {
        tx.exec(
            "UPDATE hosts SET shared_access = ?1 WHERE id = ?2",
            args![shared, host_id],
        )?;
    }
    if let Some(threshold) = lockout_threshold {
        lockout::checked_threshold(threshold).map_err(StoreError::Refused)?;
        tx.exec(
            "UPDATE hosts SET lockout_threshold = ?1 WHERE id = ?2",
            args![threshold, host_id],
        )?;
        // A host already at its new threshold locks now, rather than
        // stay "busy" and unlocked until an attempt settles.
        let now_tally = tally(tx, host_id)?;
        if lockout::locks_now(&now_tally) {
            let cause = format!("the lockout threshold was lowered to {threshold}");
            lock_host(
                tx,
                host_id,
                host.as_str(),
                None,
                None,
                &now_tally,
                &cause,
                now,
            )?;
        }
    }
    let detail = format!(
        "shared access {}, lockout threshold {}; {}",
        shared_access.map_or("unchanged", |s| if s { "enabled" } else { "disabled" }),
        lockout_threshold.map_or("unchanged".to_string(), |t| t.to_string()),
        by.detail()
    );
    insert_audit(
        tx,
        &Event {
            detail: Some(detail),
            ..by_admin(AuditEvent::Policy, Some(host.as_str()), None, by)
        },
        now,
    )
}

/// Records that the host's key connected from `newer` while connected
/// from `older`, and tells the owner, the admin and the host.
pub(super) fn key_twice(
    tx: &mut dyn Tx,
    host: &HostName,
    older: &str,
    newer: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    let (host_id, _) = host_ids(tx, host.as_str())?;
    let e = Event {
        detail: Some(format!(
            "connected from {newer} while connected from {older}; the newer was refused"
        )),
        ..event(AuditEvent::HostKeyTwice, Some(host.as_str()), None)
    };
    insert_audit(tx, &e, now)?;
    enqueue_for_owner(tx, host_id, now, |owner| {
        notice::host_key_twice(host.as_str(), owner, older, newer)
    })
}
