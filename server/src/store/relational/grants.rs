//! Who may log in to a host, and with which code: the owner's grant and
//! the secondary users' shared access (grant, revoke, regrant), and the
//! code records the grants point to.

use latchkey_protocol::{
    frame::CodeTarget,
    handshake::CodeRecord,
    ids::{HostName, PublicKey, RecordId, UserName},
    ksf::KsfProfile,
    rights::{GrantRights, Rights},
};

use super::{
    audit::{by_admin, event, insert_audit},
    outbox::{enqueue, enqueue_for_owner},
    rows::{host_ids, user_id},
};
use crate::store::{
    notice,
    sql::{args, Tx},
    Actor, AuditEvent, GrantRow, GrantTerms, StoreError, UnixTime,
};

/// Whether the user still holds the very grant a login (or a session's
/// ticket) was made under: the same code record, not revoked and granted
/// again meanwhile (a new grant has a new generation), and not past its
/// end at `now` (whether or not a sweep has ended it yet).
pub(super) fn grant_is_current(
    tx: &mut dyn Tx,
    host_id: i64,
    user_id: i64,
    record: &[u8],
    generation: i64,
    now: UnixTime,
) -> Result<bool, StoreError> {
    Ok(tx
        .opt_row(
            "SELECT 1 FROM grants
             WHERE host_id = ?1 AND user_id = ?2 AND record_id = ?3 AND generation = ?4
               AND (expires_at IS NULL OR expires_at > ?5)",
            args![host_id, user_id, record, generation, now],
        )?
        .is_some())
}

/// The next number of the store-wide counter that grants and their rights
/// are stamped with.
fn next_generation(tx: &mut dyn Tx) -> Result<i64, StoreError> {
    tx.row(
        "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT)
             WHERE key = 'grant_generation' RETURNING CAST(value AS BIGINT)",
        args![],
    )?
    .int(0)
}

/// The forward targets of `rights` as the store keeps them.
fn stored_targets(rights: &Rights) -> Option<String> {
    rights.forward_targets().map(|targets| {
        targets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// Rights from a grant's stored columns.
fn read_rights(bits: i64, targets: Option<String>) -> Result<Rights, StoreError> {
    let corrupt = |e: String| StoreError::Corrupt(format!("a grant's rights: {e}"));
    let bits = u8::try_from(bits).map_err(|e| corrupt(e.to_string()))?;
    let targets = targets
        .map(|t| {
            t.split(' ')
                .filter(|t| !t.is_empty())
                .map(|t| t.parse().map_err(|_| corrupt(format!("target {t}"))))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Rights::from_stored(bits, targets).map_err(|e| corrupt(e.to_string()))
}

/// A grant's stored idle limit.
fn read_idle(secs: Option<i64>) -> Result<Option<u32>, StoreError> {
    secs.map(|s| {
        u32::try_from(s).map_err(|_| StoreError::Corrupt(format!("a grant's idle limit {s}")))
    })
    .transpose()
}

/// Gives `user` shared access to `host` with the owner's current code, on
/// `terms`.
pub(super) fn grant(
    tx: &mut dyn Tx,
    host: &HostName,
    user: &UserName,
    terms: &GrantTerms,
    by: &Actor,
    now: UnixTime,
) -> Result<(), StoreError> {
    let rights = &terms.rights;
    if terms.expires_at.is_some_and(|at| at <= now) {
        return Err(StoreError::Refused(
            "a grant cannot end before it starts: give a time in the future".into(),
        ));
    }
    let (host_id, owner_id) = host_ids(tx, host.as_str())?;
    let user_id = user_id(tx, user.as_str())?;
    let r = tx.row(
        "SELECT h.shared_access, g.record_id FROM hosts h
             JOIN grants g ON g.host_id = h.id AND g.is_owner = 1 WHERE h.id = ?1",
        args![host_id],
    )?;
    let (shared, owner_record) = (r.flag(0)?, r.opt_blob(1)?);
    if !shared {
        return Err(StoreError::Refused(format!(
            "shared access is disabled on host '{host}': enable it first"
        )));
    }
    if user_id == owner_id {
        return Err(StoreError::Refused(format!(
            "'{user}' owns host '{host}' already"
        )));
    }
    let Some(record) = owner_record else {
        return Err(StoreError::Refused(format!(
            "the owner of host '{host}' has not set an access code yet (latchkey host set-code)"
        )));
    };
    let generation = next_generation(tx)?;
    let targets = stored_targets(rights);
    let inserted = tx.exec(
        "INSERT INTO grants (host_id, user_id, record_id, is_owner, created_at, generation,
                             rights, forward_to, rights_stamp, expires_at, idle_secs)
             VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?5, ?8, ?9) ON CONFLICT DO NOTHING",
        args![
            host_id,
            user_id,
            &record,
            now,
            generation,
            i64::from(rights.bits()),
            targets.as_deref(),
            terms.expires_at,
            terms.idle_secs.map(i64::from)
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::Refused(format!(
            "'{user}' has shared access to '{host}' already (revoke and grant again to give them \
             the current code)"
        )));
    }
    let mut row = by_admin(
        AuditEvent::Grant,
        Some(host.as_str()),
        Some(user.as_str()),
        by,
    );
    let mut detail = by.detail();
    if !rights.is_all() {
        detail.push_str(&format!("; rights: {rights}"));
    }
    if let Some(secs) = terms.idle_secs {
        detail.push_str(&format!("; idle limit {secs} s"));
    }
    if let Some(at) = terms.expires_at {
        // Shown in local time by the CLI and the console.
        detail.push_str(&format!("; expires at {at}"));
    }
    row.detail = Some(detail);
    insert_audit(tx, &row, now)?;
    enqueue_for_owner(tx, host_id, now, |owner| {
        notice::granted(host.as_str(), owner, user.as_str())
    })
}

/// Takes `user`'s shared access to `host` away, and tells the owner and
/// the user.
pub(super) fn revoke(
    tx: &mut dyn Tx,
    host: &HostName,
    user: &UserName,
    by: &Actor,
    now: UnixTime,
) -> Result<(), StoreError> {
    let host_id = take_away(tx, host, user, by, now)?;
    enqueue_for_owner(tx, host_id, now, |owner| {
        notice::revoked(host.as_str(), owner, user.as_str())
    })?;
    enqueue(
        tx,
        &notice::access_revoked(host.as_str(), user.as_str()),
        now,
    )
}

/// Deletes `user`'s grant on `host` with its `revoke` audit row (which
/// ends their live sessions); returns the host's id.
fn take_away(
    tx: &mut dyn Tx,
    host: &HostName,
    user: &UserName,
    by: &Actor,
    now: UnixTime,
) -> Result<i64, StoreError> {
    let (host_id, _) = host_ids(tx, host.as_str())?;
    let user_id = user_id(tx, user.as_str())?;
    let removed = tx.exec(
        "DELETE FROM grants WHERE host_id = ?1 AND user_id = ?2 AND is_owner = 0",
        args![host_id, user_id],
    )?;
    if removed == 0 {
        return Err(StoreError::Refused(format!(
            "'{user}' has no shared access to '{host}'"
        )));
    }
    insert_audit(
        tx,
        &by_admin(
            AuditEvent::Revoke,
            Some(host.as_str()),
            Some(user.as_str()),
            by,
        ),
        now,
    )?;
    Ok(host_id)
}

/// Revokes and grants again, so the grant inherits the owner's current
/// code, with the rights it had. Only the grant's notice goes out: the user
/// keeps their access.
pub(super) fn regrant(
    tx: &mut dyn Tx,
    host: &HostName,
    user: &UserName,
    by: &Actor,
    now: UnixTime,
) -> Result<(), StoreError> {
    let (host_id, _) = host_ids(tx, host.as_str())?;
    let user_id = user_id(tx, user.as_str())?;
    let kept = tx.opt_row(
        "SELECT rights, forward_to, expires_at, idle_secs FROM grants
         WHERE host_id = ?1 AND user_id = ?2 AND is_owner = 0",
        args![host_id, user_id],
    )?;
    let terms = match kept {
        Some(r) => GrantTerms {
            rights: read_rights(r.int(0)?, r.opt_text(1)?)?,
            expires_at: r.opt_int(2)?,
            idle_secs: read_idle(r.opt_int(3)?)?,
        },
        None => GrantTerms::default(),
    };
    take_away(tx, host, user, by, now)?;
    grant(tx, host, user, &terms, by, now)
}

/// Whether a grant's time is up at `now` (an index lookup).
pub(super) fn any_ended(tx: &mut dyn Tx, now: UnixTime) -> Result<bool, StoreError> {
    Ok(tx
        .opt_row(
            "SELECT 1 FROM grants WHERE expires_at <= ?1 AND is_owner = 0 LIMIT 1",
            args![now],
        )?
        .is_some())
}

/// Ends the grants whose time is up (see
/// [`crate::store::Store::expire_grants`]).
pub(super) fn expire(tx: &mut dyn Tx, now: UnixTime) -> Result<Vec<(String, String)>, StoreError> {
    let ended: Vec<(i64, i64, String, String)> = tx
        .rows(
            "SELECT g.host_id, g.user_id, h.name, u.name FROM grants g
             JOIN hosts h ON h.id = g.host_id JOIN users u ON u.id = g.user_id
             WHERE g.is_owner = 0 AND g.expires_at IS NOT NULL AND g.expires_at <= ?1
             ORDER BY g.expires_at",
            args![now],
        )?
        .iter()
        .map(|r| Ok((r.int(0)?, r.int(1)?, r.text(2)?, r.text(3)?)))
        .collect::<Result<_, StoreError>>()?;
    for (host_id, user_id, host, user) in &ended {
        tx.exec(
            "DELETE FROM grants WHERE host_id = ?1 AND user_id = ?2 AND is_owner = 0",
            args![*host_id, *user_id],
        )?;
        insert_audit(
            tx,
            &event(AuditEvent::GrantExpired, Some(host), Some(user)),
            now,
        )?;
        enqueue_for_owner(tx, *host_id, now, |owner| {
            notice::grant_expired(host, owner, user)
        })?;
        enqueue(tx, &notice::access_expired(host, user), now)?;
    }
    Ok(ended.into_iter().map(|(_, _, h, u)| (h, u)).collect())
}

/// Sets what `user` may do on `host` with their shared access.
pub(super) fn set_rights(
    tx: &mut dyn Tx,
    host: &HostName,
    user: &UserName,
    rights: &Rights,
    idle_secs: Option<u32>,
    by: &Actor,
    now: UnixTime,
) -> Result<(), StoreError> {
    let (host_id, _) = host_ids(tx, host.as_str())?;
    let user_id = user_id(tx, user.as_str())?;
    let stamp = next_generation(tx)?;
    let targets = stored_targets(rights);
    let changed = tx.exec(
        "UPDATE grants SET rights = ?1, forward_to = ?2, rights_stamp = ?3, idle_secs = ?6
         WHERE host_id = ?4 AND user_id = ?5 AND is_owner = 0",
        args![
            i64::from(rights.bits()),
            targets.as_deref(),
            stamp,
            host_id,
            user_id,
            idle_secs.map(i64::from)
        ],
    )?;
    if changed == 0 {
        return Err(StoreError::Refused(format!(
            "'{user}' has no shared access to '{host}' (an owner's rights are never narrowed)"
        )));
    }
    let mut row = by_admin(
        AuditEvent::Rights,
        Some(host.as_str()),
        Some(user.as_str()),
        by,
    );
    let idle = idle_secs.map_or(String::new(), |s| format!("; idle limit {s} s"));
    row.detail = Some(format!("{}; rights: {rights}{idle}", by.detail()));
    insert_audit(tx, &row, now)?;
    enqueue(
        tx,
        &notice::rights_changed(host.as_str(), user.as_str(), &rights.to_string()),
        now,
    )
}

/// What `user` may do on `host` (see [`crate::store::Store::grant_rights`]).
pub(super) fn rights_of(
    tx: &mut dyn Tx,
    host: &HostName,
    user: &UserName,
) -> Result<Option<GrantRights>, StoreError> {
    let Some(r) = tx.opt_row(
        "SELECT g.is_owner, g.rights, g.forward_to, g.rights_stamp, g.idle_secs FROM grants g
         JOIN users u ON u.id = g.user_id
         JOIN hosts h ON h.id = g.host_id
         WHERE u.name = ?1 AND h.name = ?2",
        args![user.as_str(), host.as_str()],
    )?
    else {
        return Ok(None);
    };
    if r.flag(0)? {
        return Ok(Some(GrantRights::owner()));
    }
    Ok(Some(GrantRights {
        rights: read_rights(r.int(1)?, r.opt_text(2)?)?,
        shared: true,
        stamp: u64::try_from(r.int(3)?).unwrap_or(0),
        idle_secs: read_idle(r.opt_int(4)?)?,
    }))
}

/// The secondary users of `host` (of every host with `None`).
pub(super) fn list(tx: &mut dyn Tx, host: Option<&HostName>) -> Result<Vec<GrantRow>, StoreError> {
    tx.rows(
        "SELECT h.name, u.name, g.created_at, c.created_at, g.rights, g.forward_to, g.expires_at,
                g.idle_secs
         FROM grants g
         JOIN hosts h ON h.id = g.host_id
         JOIN users u ON u.id = g.user_id
         LEFT JOIN code_records c ON c.id = g.record_id
         WHERE g.is_owner = 0 AND (CAST(?1 AS TEXT) IS NULL OR h.name = ?1)
         ORDER BY h.name, u.name",
        args![host.map(|h| h.as_str())],
    )?
    .iter()
    .map(|r| {
        Ok(GrantRow {
            host: r.text(0)?,
            user: r.text(1)?,
            granted_at: r.int(2)?,
            code_set_at: r.opt_int(3)?,
            rights: read_rights(r.int(4)?, r.opt_text(5)?)?,
            expires_at: r.opt_int(6)?,
            idle_secs: read_idle(r.opt_int(7)?)?,
        })
    })
    .collect()
}

/// The code record `user` logs in to `host` with, if any.
pub(super) fn code_record(
    tx: &mut dyn Tx,
    user: &UserName,
    host: &HostName,
) -> Result<Option<CodeRecord>, StoreError> {
    let Some(r) = tx.opt_row(
        "SELECT r.id, r.ksf, r.record FROM grants g
         JOIN users u ON u.id = g.user_id
         JOIN hosts h ON h.id = g.host_id
         JOIN code_records r ON r.id = g.record_id
         WHERE u.name = ?1 AND h.name = ?2",
        args![user.as_str(), host.as_str()],
    )?
    else {
        return Ok(None);
    };
    let ksf = r.text(1)?;
    Ok(Some(CodeRecord {
        id: RecordId(
            r.blob(0)?
                .try_into()
                .map_err(|_| StoreError::Corrupt("record id is not 16 bytes".into()))?,
        ),
        ksf: KsfProfile::parse(&ksf)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown key-stretching profile {ksf}")))?,
        record: r.blob(2)?,
    }))
}

/// Stores a new code record and points the owner's grant or one
/// secondary user's grant at it.
pub(super) fn set_code(
    tx: &mut dyn Tx,
    host: &HostName,
    device: &PublicKey,
    target: &CodeTarget,
    record: &CodeRecord,
    now: UnixTime,
) -> Result<(), StoreError> {
    // A device whose host was removed is no longer enrolled either: it is
    // told so, as one replaced by another device is.
    let (host_id, owner_id) = host_ids(tx, host.as_str()).map_err(|e| match e {
        StoreError::NoSuchHost(name) => StoreError::NotEnrolled(name),
        e => e,
    })?;
    let enrolled = tx.opt_row(
        "SELECT 1 FROM hosts WHERE id = ?1 AND device_key = ?2",
        args![host_id, &device.0[..]],
    )?;
    if enrolled.is_none() {
        return Err(StoreError::NotEnrolled(host.to_string()));
    }
    tx.exec(
        "INSERT INTO code_records (id, host_id, ksf, record, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![&record.id.0[..], host_id, record.ksf.as_str(), &record.record, now],
    )?;
    let (user_id, event_name) = match target {
        CodeTarget::Owner => (owner_id, AuditEvent::CodeChanged),
        CodeTarget::Grant(user) => (user_id(tx, user.as_str())?, AuditEvent::CodeReset),
        _ => return Err(StoreError::Refused("unknown code target".into())),
    };
    let is_owner = matches!(target, CodeTarget::Owner);
    let changed = tx.exec(
        "UPDATE grants SET record_id = ?1 WHERE host_id = ?2 AND user_id = ?3 AND is_owner = ?4",
        args![&record.id.0[..], host_id, user_id, is_owner],
    )?;
    if changed == 0 {
        return Err(StoreError::Refused(format!(
            "that user has no shared access to host '{host}'"
        )));
    }
    let user = tx
        .row("SELECT name FROM users WHERE id = ?1", args![user_id])?
        .text(0)?;
    insert_audit(
        tx,
        &event(event_name, Some(host.as_str()), Some(&user)),
        now,
    )
}
