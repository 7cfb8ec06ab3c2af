//! What a SQL backend gives the store: transactions that run statements.
//! The store's logic ([`super::relational`]) is written once against these
//! traits, in the SQL that SQLite and PostgreSQL both run, so a second
//! backend supplies only its connections, its schema and its transactions.
//!
//! The common dialect: `?N` placeholders (PostgreSQL's driver rewrites them
//! to `$N`), integers as BIGINT (booleans as 0 and 1), `"user"` quoted,
//! `ON CONFLICT` instead of `OR IGNORE`, `RETURNING id` instead of the last
//! row id, and casts written `CAST(x AS BIGINT)`.

use std::time::Duration;

use super::{AuditRow, StoreError};

/// A statement's argument.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u32> for Value<'_> {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}

impl From<bool> for Value<'_> {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Blob(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Value<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a statement's argument list.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::Value::from($v)),*] };
}
pub(crate) use args;

/// One cell of a result row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A result row, with getters that turn a cell of the wrong type into
/// [`StoreError::Corrupt`] rather than a panic.
#[derive(Clone, Debug)]
pub(crate) struct Row(pub(crate) Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> Result<&Cell, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("result has no column {i}")))
    }

    fn wrong(i: usize, want: &str, cell: &Cell) -> StoreError {
        StoreError::Corrupt(format!("column {i}: expected {want}, found {cell:?}"))
    }

    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Int(v) => Ok(Some(*v)),
            other => Err(Self::wrong(i, "an integer", other)),
        }
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| Self::wrong(i, "an integer", &Cell::Null))
    }

    pub(crate) fn u32(&self, i: usize) -> Result<u32, StoreError> {
        let v = self.int(i)?;
        u32::try_from(v).map_err(|_| Self::wrong(i, "a count", &Cell::Int(v)))
    }

    /// A boolean stored as 0 or 1 (or computed by `IS NULL`).
    pub(crate) fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.int(i)? != 0)
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Text(v) => Ok(Some(v.clone())),
            other => Err(Self::wrong(i, "text", other)),
        }
    }

    pub(crate) fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?
            .ok_or_else(|| Self::wrong(i, "text", &Cell::Null))
    }

    pub(crate) fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            Cell::Blob(v) => Ok(Some(v.clone())),
            other => Err(Self::wrong(i, "bytes", other)),
        }
    }

    pub(crate) fn blob(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        self.opt_blob(i)?
            .ok_or_else(|| Self::wrong(i, "bytes", &Cell::Null))
    }
}

/// Statements inside one transaction.
pub(crate) trait Tx {
    /// Runs a statement; returns the rows it changed.
    fn exec(&mut self, sql: &'static str, args: &[Value<'_>]) -> Result<u64, StoreError>;
    /// Runs a query; returns all its rows.
    fn rows(&mut self, sql: &'static str, args: &[Value<'_>]) -> Result<Vec<Row>, StoreError>;
}

impl dyn Tx + '_ {
    /// The first row, if any.
    pub(crate) fn opt_row(
        &mut self,
        sql: &'static str,
        args: &[Value<'_>],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.rows(sql, args)?.into_iter().next())
    }

    /// The first row of a query that always returns one.
    pub(crate) fn row(&mut self, sql: &'static str, args: &[Value<'_>]) -> Result<Row, StoreError> {
        self.opt_row(sql, args)?
            .ok_or_else(|| StoreError::Corrupt("a query that returns a row returned none".into()))
    }
}

/// A transaction body. A backend may run it more than once (PostgreSQL
/// retries a transaction that lost a serialization race), so it must have
/// no effect outside its transaction.
pub(crate) type Body<'f, T> = &'f mut dyn FnMut(&mut dyn Tx) -> Result<T, StoreError>;

/// A database the store can run on.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Runs `body` in a transaction that behaves as if no other transaction
    /// ran beside it (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: SERIALIZABLE),
    /// and commits it.
    fn write<T>(&self, body: Body<'_, T>) -> Result<T, StoreError>;
    /// Runs `body` on a consistent view, changing nothing.
    fn read<T>(&self, body: Body<'_, T>) -> Result<T, StoreError>;
    /// Audit rows committed from now on, in the order they committed.
    fn event_feed(&self) -> Result<Box<dyn EventFeed>, StoreError>;
}

/// Audit rows as they are committed, by this relay or by any other process
/// on the same store (the admin CLI, another relay).
pub trait EventFeed: Send {
    /// The rows committed since the last call, waiting at most `wait` for
    /// the first. None are lost or repeated while the feed lives.
    fn next(&mut self, wait: Duration) -> Result<Vec<AuditRow>, StoreError>;
}

/// Reads `id, at, event, host, "user", source, detail`.
pub(crate) fn audit_row(r: &Row) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        id: r.int(0)?,
        at: r.int(1)?,
        event: r.text(2)?,
        host: r.opt_text(3)?,
        user: r.opt_text(4)?,
        source: r.opt_text(5)?,
        detail: r.opt_text(6)?,
    })
}
