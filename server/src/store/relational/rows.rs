//! Lookups every domain of the store makes: a user's or host's ids by
//! name, and a device key read from its column.

use latchkey_protocol::ids::PublicKey;

use crate::store::{
    sql::{args, Tx},
    StoreError,
};

/// A stored device key, if any; one that is not 32 bytes is corrupt.
pub(super) fn key_from(blob: Option<Vec<u8>>) -> Result<Option<PublicKey>, StoreError> {
    blob.map(|b| {
        b.try_into()
            .map(PublicKey)
            .map_err(|_| StoreError::Corrupt("device key is not 32 bytes".into()))
    })
    .transpose()
}

/// The id of user `user`; a removed user is no user.
pub(super) fn user_id(tx: &mut dyn Tx, user: &str) -> Result<i64, StoreError> {
    tx.opt_row(
        "SELECT id FROM users WHERE name = ?1 AND removed_at IS NULL",
        args![user],
    )?
    .ok_or_else(|| StoreError::NoSuchUser(user.into()))?
    .int(0)
}

/// (id, owner id) of a host; a removed host is no host.
pub(super) fn host_ids(tx: &mut dyn Tx, host: &str) -> Result<(i64, i64), StoreError> {
    let row = tx
        .opt_row(
            "SELECT id, owner_id FROM hosts WHERE name = ?1 AND removed_at IS NULL",
            args![host],
        )?
        .ok_or_else(|| StoreError::NoSuchHost(host.into()))?;
    Ok((row.int(0)?, row.int(1)?))
}

/// The names of a host's shared (secondary) users, by name.
pub(super) fn shared_users(tx: &mut dyn Tx, host_id: i64) -> Result<Vec<String>, StoreError> {
    tx.rows(
        "SELECT u.name FROM grants g JOIN users u ON u.id = g.user_id
         WHERE g.host_id = ?1 AND g.is_owner = 0 ORDER BY u.name",
        args![host_id],
    )?
    .iter()
    .map(|r| r.text(0))
    .collect()
}
