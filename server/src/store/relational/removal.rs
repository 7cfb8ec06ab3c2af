//! Offboarding: removing a user or a host. A removed row stays (its
//! lockout counts, sessions and audit history point at it) but keeps
//! nothing that lets a device in: no device key, no grant, no invite, no
//! ticket. Relays end what is live from the audit row, whichever process
//! wrote it; inviting the name again brings the row back as new.

use super::{
    audit::{by_admin, insert_audit},
    outbox::{enqueue, enqueue_for_owner},
    rows::{host_ids, shared_users, user_id},
};
use crate::store::{
    notice,
    sql::{args, Tx},
    Actor, AuditEvent, Event, Removal, StoreError, UnixTime,
};

/// Cancels the live invites of a device (unused, unexpired), so none
/// enrolls it after its removal; returns how many.
fn cancel_invites(
    tx: &mut dyn Tx,
    kind: &str,
    name: &str,
    now: UnixTime,
) -> Result<u64, StoreError> {
    tx.exec(
        "UPDATE invites SET used_at = ?1
         WHERE kind = ?2 AND name = ?3 AND used_at IS NULL AND expires_at > ?1",
        args![now, kind, name],
    )
}

/// The audit row's detail: what ended, and who acted.
fn detail(what: &str, ended: &[String], invites: u64, by: &Actor) -> String {
    let mut out = if ended.is_empty() {
        format!("no {what}")
    } else {
        format!("{what}: {}", ended.join(", "))
    };
    if invites > 0 {
        out.push_str(&format!("; {invites} unused invite(s) cancelled"));
    }
    out.push_str("; ");
    out.push_str(&by.detail());
    out
}

/// Removes `user`: their device key, shared access, invites and tickets
/// go, in one commit. A user who owns hosts is refused: their hosts go
/// first, so no host is left without an owner.
pub(super) fn remove_user(
    tx: &mut dyn Tx,
    user: &str,
    by: &Actor,
    now: UnixTime,
) -> Result<Removal, StoreError> {
    let id = user_id(tx, user)?;
    let owned: Vec<String> = tx
        .rows(
            "SELECT name FROM hosts WHERE owner_id = ?1 AND removed_at IS NULL ORDER BY name",
            args![id],
        )?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_, _>>()?;
    if !owned.is_empty() {
        return Err(StoreError::Refused(format!(
            "'{user}' owns {}: remove {} first (latchkey-relay admin remove-host NAME)",
            owned.join(", "),
            if owned.len() == 1 { "it" } else { "them" }
        )));
    }
    let shared: Vec<(i64, String)> = tx
        .rows(
            "SELECT h.id, h.name FROM grants g JOIN hosts h ON h.id = g.host_id
             WHERE g.user_id = ?1 AND g.is_owner = 0 ORDER BY h.name",
            args![id],
        )?
        .iter()
        .map(|r| Ok((r.int(0)?, r.text(1)?)))
        .collect::<Result<_, StoreError>>()?;
    tx.exec("DELETE FROM grants WHERE user_id = ?1", args![id])?;
    tx.exec("DELETE FROM session_tickets WHERE user_id = ?1", args![id])?;
    // Not the reboot tickets the user asked for: a ticket is the host's,
    // and the other sessions waiting for its reboot still need it.
    let invites = cancel_invites(tx, "user", user, now)?;
    tx.exec(
        "UPDATE users SET device_key = NULL, email = NULL, removed_at = ?1 WHERE id = ?2",
        args![now, id],
    )?;
    let hosts: Vec<String> = shared.iter().map(|(_, name)| name.clone()).collect();
    let e = Event {
        detail: Some(detail("shared access ended", &hosts, invites, by)),
        ..by_admin(AuditEvent::UserRemoved, None, Some(user), by)
    };
    insert_audit(tx, &e, now)?;
    for (host_id, host) in &shared {
        enqueue_for_owner(tx, *host_id, now, |owner| {
            notice::user_removed(host, owner, user)
        })?;
    }
    Ok(Removal {
        grants: hosts,
        invites_cancelled: invites,
    })
}

/// Removes `host`: its device key, grants (the owner's and the shared
/// users'), code records, invites and tickets go, in one commit.
pub(super) fn remove_host(
    tx: &mut dyn Tx,
    host: &str,
    by: &Actor,
    now: UnixTime,
) -> Result<Removal, StoreError> {
    let (id, owner_id) = host_ids(tx, host)?;
    let owner = tx
        .row("SELECT name FROM users WHERE id = ?1", args![owner_id])?
        .text(0)?;
    let shared = shared_users(tx, id)?;
    tx.exec("DELETE FROM grants WHERE host_id = ?1", args![id])?;
    tx.exec("DELETE FROM code_records WHERE host_id = ?1", args![id])?;
    tx.exec("DELETE FROM session_tickets WHERE host_id = ?1", args![id])?;
    tx.exec("DELETE FROM resume_tickets WHERE host_id = ?1", args![id])?;
    // Notices not yet delivered to the removed agent would otherwise reach
    // whichever machine is enrolled under the name next. Kept as `stored`
    // (no address any more), not deleted: a deleted row's id could be
    // given to the next notice while a delivery of the old one finishes.
    tx.exec(
        "UPDATE outbox SET state = 'stored', last_error = 'the host was removed before delivery'
         WHERE channel = 'host' AND recipient = ?1 AND state = 'pending'",
        args![host],
    )?;
    let invites = cancel_invites(tx, "host", host, now)?;
    tx.exec(
        "UPDATE hosts SET device_key = NULL, online = 0, relay_id = NULL, locked_at = NULL,
                removed_at = ?1
         WHERE id = ?2",
        args![now, id],
    )?;
    let e = Event {
        detail: Some(detail("shared users cut off", &shared, invites, by)),
        ..by_admin(AuditEvent::HostRemoved, Some(host), None, by)
    };
    insert_audit(tx, &e, now)?;
    enqueue(tx, &notice::host_removed(host, &owner, &shared), now)?;
    for user in &shared {
        enqueue(tx, &notice::host_removed_for_user(host, user), now)?;
    }
    Ok(Removal {
        grants: shared,
        invites_cancelled: invites,
    })
}
