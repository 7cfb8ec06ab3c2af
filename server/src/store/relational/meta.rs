//! Settings the relay keeps about itself, by key (the `meta` table).

use crate::store::{
    sql::{args, Tx},
    StoreError,
};

pub(super) fn get(tx: &mut dyn Tx, key: &str) -> Result<Option<String>, StoreError> {
    tx.opt_row("SELECT value FROM meta WHERE key = ?1", args![key])?
        .map(|r| r.text(0))
        .transpose()
}

pub(super) fn set(tx: &mut dyn Tx, key: &str, value: &str) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        args![key, value],
    )?;
    Ok(())
}

/// Sets `key` unless it has a value; returns the value it has now.
pub(super) fn claim(tx: &mut dyn Tx, key: &str, value: &str) -> Result<String, StoreError> {
    tx.exec(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        args![key, value],
    )?;
    tx.row("SELECT value FROM meta WHERE key = ?1", args![key])?
        .text(0)
}
