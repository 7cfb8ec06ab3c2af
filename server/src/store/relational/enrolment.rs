//! How a device joins: the admin's invite (which creates the user, or the
//! host with its owner's grant), its single redemption with the device's
//! key, and the keys enrolment leaves behind.

use std::net::IpAddr;

use latchkey_protocol::ids::{HostName, Platform, PublicKey, UserName};

use super::{
    audit::{by_admin, event, insert_audit},
    rows::{host_ids, key_from, user_id},
};
use crate::{
    rules::lockout,
    store::{
        sql::{args, Tx},
        Actor, AuditEvent, Enrolled, Event, InviteKind, StoreError, UnixTime,
    },
};

/// Creates the user or host, if new, and its invite, cancelling the
/// device's earlier invites.
pub(super) fn create_invite(
    tx: &mut dyn Tx,
    name: &str,
    kind: &InviteKind,
    digest: [u8; 32],
    expires_at: UnixTime,
    by: &Actor,
    now: UnixTime,
) -> Result<(), StoreError> {
    let kind_text = match kind {
        InviteKind::User { email } => {
            tx.exec(
                "INSERT INTO users (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                args![name, now],
            )?;
            // A removed user invited again comes back with nothing: no
            // device, grants or address (removal took them).
            tx.exec(
                "UPDATE users SET removed_at = NULL WHERE name = ?1",
                args![name],
            )?;
            if let Some(email) = email {
                tx.exec(
                    "UPDATE users SET email = ?1 WHERE name = ?2",
                    args![email, name],
                )?;
            }
            "user"
        }
        InviteKind::Host {
            owner,
            lockout_threshold,
        } => {
            let owner_id = user_id(tx, owner.as_str())?;
            match host_ids(tx, name) {
                Ok((_, existing_owner)) if existing_owner != owner_id => {
                    return Err(StoreError::Exists {
                        kind: "host",
                        name: name.into(),
                    })
                }
                Ok(_) => {}
                Err(StoreError::NoSuchHost(_)) => {
                    let threshold = lockout::checked_threshold(*lockout_threshold)
                        .map_err(StoreError::Refused)?;
                    let host_id = new_host(tx, name, owner_id, threshold, now)?;
                    tx.exec(
                        "INSERT INTO grants (host_id, user_id, record_id, is_owner, created_at)
                         VALUES (?1, ?2, NULL, 1, ?3)",
                        args![host_id, owner_id, now],
                    )?;
                }
                Err(e) => return Err(e),
            }
            "host"
        }
    };
    // A new invite replaces the earlier ones of the same device.
    let cancelled = tx.exec(
        "UPDATE invites SET used_at = ?1 WHERE kind = ?2 AND name = ?3 AND used_at IS NULL",
        args![now, kind_text, name],
    )?;
    tx.exec(
        "INSERT INTO invites (digest, kind, name, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![&digest[..], kind_text, name, expires_at, now],
    )?;
    let cancelled = if cancelled > 0 {
        format!("; {cancelled} earlier invite(s) cancelled")
    } else {
        String::new()
    };
    let e = Event {
        detail: Some(format!(
            "expires at {expires_at}{cancelled}; {}",
            by.detail()
        )),
        ..by_admin(
            AuditEvent::InviteCreated,
            (kind_text == "host").then_some(name),
            (kind_text == "user").then_some(name),
            by,
        )
    };
    insert_audit(tx, &e, now)
}

/// Creates host `name`, or brings back a removed host of that name as new:
/// its row (and the history that points at it) stays, its owner, policy
/// and lockout start again.
fn new_host(
    tx: &mut dyn Tx,
    name: &str,
    owner_id: i64,
    threshold: u32,
    now: UnixTime,
) -> Result<i64, StoreError> {
    let revived = tx.opt_row(
        "UPDATE hosts SET removed_at = NULL, owner_id = ?2, lockout_threshold = ?3,
                shared_access = 1, locked_at = NULL, platform = NULL, last_seen = NULL, desktop = NULL,
                created_at = ?4
         WHERE name = ?1 AND removed_at IS NOT NULL RETURNING id",
        args![name, owner_id, threshold, now],
    )?;
    if let Some(row) = revived {
        let id = row.int(0)?;
        tx.exec("DELETE FROM user_failures WHERE host_id = ?1", args![id])?;
        return Ok(id);
    }
    tx.row(
        "INSERT INTO hosts (name, owner_id, lockout_threshold, created_at)
         VALUES (?1, ?2, ?3, ?4) RETURNING id",
        args![name, owner_id, threshold, now],
    )?
    .int(0)
}

/// Spends a live invite, registering `device_key`; `None` (and nothing
/// written) if the invite is unknown, used or expired.
pub(super) fn redeem(
    tx: &mut dyn Tx,
    digest: [u8; 32],
    device_key: PublicKey,
    platform: Platform,
    source: IpAddr,
    now: UnixTime,
) -> Result<Option<Enrolled>, StoreError> {
    let Some(r) = tx.opt_row(
        "SELECT kind, name FROM invites
         WHERE digest = ?1 AND used_at IS NULL AND expires_at > ?2",
        args![&digest[..], now],
    )?
    else {
        return Ok(None);
    };
    let (kind, name) = (r.text(0)?, r.text(1)?);
    tx.exec(
        "UPDATE invites SET used_at = ?1 WHERE digest = ?2",
        args![now, &digest[..]],
    )?;
    let is_host = kind == "host";
    if is_host {
        tx.exec(
            "UPDATE hosts SET device_key = ?1, platform = ?2 WHERE name = ?3",
            args![&device_key.0[..], platform.as_str(), &name],
        )?;
    } else {
        tx.exec(
            "UPDATE users SET device_key = ?1 WHERE name = ?2",
            args![&device_key.0[..], &name],
        )?;
    }
    let e = Event {
        source: Some(source),
        detail: Some(format!("device key {}", device_key.to_text())),
        ..event(
            AuditEvent::Enrolled,
            is_host.then_some(&name),
            (!is_host).then_some(&name),
        )
    };
    insert_audit(tx, &e, now)?;
    Ok(Some(Enrolled { name, is_host }))
}

/// The audit row of an invite that could not be redeemed.
pub(super) fn refused(source: IpAddr) -> Event<'static> {
    Event {
        event: AuditEvent::EnrollRefused,
        host: None,
        user: None,
        source: Some(source),
        detail: Some("unknown, used or expired invite".into()),
    }
}

pub(super) fn user_key(tx: &mut dyn Tx, user: &UserName) -> Result<Option<PublicKey>, StoreError> {
    let r = tx.opt_row(
        "SELECT device_key FROM users WHERE name = ?1",
        args![user.as_str()],
    )?;
    key_from(r.map(|r| r.opt_blob(0)).transpose()?.flatten())
}

pub(super) fn host_key(tx: &mut dyn Tx, host: &HostName) -> Result<Option<PublicKey>, StoreError> {
    let r = tx.opt_row(
        "SELECT device_key FROM hosts WHERE name = ?1",
        args![host.as_str()],
    )?;
    key_from(r.map(|r| r.opt_blob(0)).transpose()?.flatten())
}
