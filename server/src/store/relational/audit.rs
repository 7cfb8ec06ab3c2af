//! The audit log: every domain's rows are written through
//! [`insert_audit`] in the transaction of the change they record; the
//! admin reads them back, pruned by age. Also the counts the metrics read
//! at scrape time.

use latchkey_protocol::ids::HostName;

use crate::store::{
    sql::{args, audit_row, Tx},
    Actor, AuditEvent, AuditFilter, AuditRow, Event, StoreError, StoreGauges, UnixTime,
};

pub(in crate::store) fn insert_audit(
    tx: &mut dyn Tx,
    e: &Event<'_>,
    now: UnixTime,
) -> Result<(), StoreError> {
    let source = e.source.map(|s| s.to_string());
    tx.exec(
        r#"INSERT INTO audit (at, event, host, "user", source, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"#,
        args![now, e.event.name(), e.host, e.user, source.as_ref(), e.detail.as_ref()],
    )?;
    Ok(())
}

/// An admin change's audit row: who made it, and from where.
pub(super) fn by_admin<'a>(
    event: AuditEvent,
    host: Option<&'a str>,
    user: Option<&'a str>,
    by: &Actor,
) -> Event<'a> {
    Event {
        event,
        host,
        user,
        source: by.source,
        detail: Some(by.detail()),
    }
}

pub(super) fn event<'a>(
    event: AuditEvent,
    host: Option<&'a str>,
    user: Option<&'a str>,
) -> Event<'a> {
    Event {
        event,
        host,
        user,
        source: None,
        detail: None,
    }
}

/// Deletes the rows written before `before`; returns how many.
pub(super) fn prune(tx: &mut dyn Tx, before: UnixTime) -> Result<usize, StoreError> {
    let n = tx.exec("DELETE FROM audit WHERE at < ?1", args![before])?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// The newest `limit` rows (of `host`, at or after `since`), oldest first.
pub(super) fn log(
    tx: &mut dyn Tx,
    host: Option<&HostName>,
    since: Option<UnixTime>,
    limit: usize,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut out = tx
        .rows(
            r#"SELECT id, at, event, host, "user", source, detail FROM audit
               WHERE (CAST(?1 AS TEXT) IS NULL OR host = ?1)
                 AND (CAST(?3 AS BIGINT) IS NULL OR at >= ?3)
               ORDER BY id DESC LIMIT ?2"#,
            args![
                host.map(|h| h.as_str()),
                i64::try_from(limit).unwrap_or(i64::MAX),
                since
            ],
        )?
        .iter()
        .map(audit_row)
        .collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

/// At most `limit` rows that match `filter`, newest first.
pub(super) fn page(
    tx: &mut dyn Tx,
    filter: &AuditFilter,
    limit: usize,
) -> Result<Vec<AuditRow>, StoreError> {
    tx.rows(
        r#"SELECT id, at, event, host, "user", source, detail FROM audit
           WHERE (CAST(?1 AS TEXT) IS NULL OR host = ?1)
             AND (CAST(?2 AS TEXT) IS NULL OR "user" = ?2)
             AND (CAST(?3 AS TEXT) IS NULL OR event = ?3)
             AND (CAST(?4 AS BIGINT) IS NULL OR id < ?4)
           ORDER BY id DESC LIMIT ?5"#,
        args![
            filter.host.as_deref(),
            filter.user.as_deref(),
            filter.event.as_deref(),
            filter.before,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
    )?
    .iter()
    .map(audit_row)
    .collect()
}

/// How many rows of each event were written at or after `since`.
pub(super) fn counts(tx: &mut dyn Tx, since: UnixTime) -> Result<Vec<(String, u64)>, StoreError> {
    tx.rows(
        "SELECT event, COUNT(*) FROM audit WHERE at >= ?1 GROUP BY event ORDER BY event",
        args![since],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, u64::try_from(r.int(1)?).unwrap_or(0))))
    .collect()
}

/// Locked hosts and notices by state, in one read.
pub(super) fn gauges(tx: &mut dyn Tx) -> Result<StoreGauges, StoreError> {
    let r = tx.row(
        "SELECT (SELECT COUNT(*) FROM hosts WHERE locked_at IS NOT NULL),
                (SELECT COUNT(*) FROM outbox WHERE state = 'pending'),
                (SELECT COUNT(*) FROM outbox WHERE state = 'sent'),
                (SELECT COUNT(*) FROM outbox WHERE state = 'stored')",
        args![],
    )?;
    let count = |i| r.int(i).map(|n| u64::try_from(n).unwrap_or(0));
    Ok(StoreGauges {
        hosts_locked: count(0)?,
        notices_pending: count(1)?,
        notices_sent: count(2)?,
        notices_stored: count(3)?,
    })
}
