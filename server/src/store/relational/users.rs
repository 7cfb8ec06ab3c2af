//! Users as the admin sees them, and where their notices are emailed.

use latchkey_protocol::ids::{PublicKey, UserName};

use super::{
    audit::{by_admin, insert_audit},
    rows::{key_from, user_id},
};
use crate::store::{
    sql::{args, Tx},
    Actor, AuditEvent, StoreError, UnixTime, UserRow,
};

/// A device key as the admin sees it: the first 8 bytes of its SHA-256,
/// in hex.
fn fingerprint(key: &PublicKey) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.0)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every user, by name (not the removed ones).
pub(super) fn all(tx: &mut dyn Tx) -> Result<Vec<UserRow>, StoreError> {
    tx.rows(
        "SELECT name, device_key, email FROM users WHERE removed_at IS NULL ORDER BY name",
        args![],
    )?
    .iter()
    .map(|r| {
        let device = key_from(r.opt_blob(1)?)?;
        Ok(UserRow {
            name: r.text(0)?,
            enrolled: device.is_some(),
            email: r.opt_text(2)?,
            device: device.map(|k| fingerprint(&k)),
        })
    })
    .collect()
}

pub(super) fn set_email(
    tx: &mut dyn Tx,
    user: &UserName,
    email: Option<&str>,
    by: &Actor,
    now: UnixTime,
) -> Result<(), StoreError> {
    let id = user_id(tx, user.as_str())?;
    tx.exec(
        "UPDATE users SET email = ?1 WHERE id = ?2",
        args![email, id],
    )?;
    insert_audit(
        tx,
        &by_admin(AuditEvent::EmailChanged, None, Some(user.as_str()), by),
        now,
    )
}

pub(super) fn email(tx: &mut dyn Tx, user: &str) -> Result<Option<String>, StoreError> {
    Ok(tx
        .opt_row("SELECT email FROM users WHERE name = ?1", args![user])?
        .map(|r| r.opt_text(0))
        .transpose()?
        .flatten())
}
