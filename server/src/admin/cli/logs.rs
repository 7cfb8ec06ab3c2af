//! What the relay recorded: the audit log (in local time, with `--since`
//! parsed here) and the outbox of notices.

use std::io::Write;

use latchkey_protocol::ids::HostName;
use serde::Serialize;

use super::{
    output::{emit, print_table},
    AdminError, Context,
};
use crate::{
    admin::human_time::{iso_time, local_time, times_in_text},
    store::AuditRow,
};

/// `--since`: a timestamp, a local date or date and time, or an age.
pub(super) fn parse_since(s: &str) -> Result<jiff::Timestamp, String> {
    let zone = jiff::tz::TimeZone::system();
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(dt) = s.parse::<jiff::civil::DateTime>() {
        return dt
            .to_zoned(zone)
            .map(|z| z.timestamp())
            .map_err(|e| e.to_string());
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return d
            .to_zoned(zone)
            .map(|z| z.timestamp())
            .map_err(|e| e.to_string());
    }
    if let Ok(age) = s.parse::<jiff::Span>() {
        return jiff::Zoned::now()
            .with_time_zone(zone)
            .checked_sub(age)
            .map(|z| z.timestamp())
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "'{s}' is not a time: give a date (2026-11-28), a local date and time \
         (2026-11-28 14:30), a timestamp (2026-11-28T14:30:00Z) or an age (2h, 3d)"
    ))
}

/// An audit row as the admin sees it: times in the system's time zone.
#[derive(Serialize)]
struct AuditView {
    id: i64,
    /// ISO 8601 with the local offset.
    at: String,
    /// The same instant in Unix seconds.
    at_unix: i64,
    event: String,
    host: Option<String>,
    user: Option<String>,
    source: Option<String>,
    detail: Option<String>,
}

impl AuditView {
    fn new(r: &AuditRow, zone: &jiff::tz::TimeZone) -> Self {
        Self {
            id: r.id,
            at: iso_time(r.at, zone),
            at_unix: r.at,
            event: r.event.clone(),
            host: r.host.clone(),
            user: r.user.clone(),
            source: r.source.clone(),
            detail: r.detail.as_deref().map(|d| times_in_text(d, zone)),
        }
    }
}

/// `audit`: the newest `limit` events (of `host`, since `since`), oldest
/// first, and whether older ones were left out.
pub(super) fn audit(
    cx: &mut Context<'_>,
    host: Option<&HostName>,
    limit: usize,
    since: Option<jiff::Timestamp>,
) -> Result<(), AdminError> {
    // One more than asked tells whether older events were cut.
    let mut rows =
        cx.store
            .audit_log(host, since.map(|t| t.as_second()), limit.saturating_add(1))?;
    let cut = rows.len() > limit;
    if cut {
        rows.remove(0);
    }
    let zone = jiff::tz::TimeZone::system();
    let rows: Vec<AuditView> = rows.iter().map(|r| AuditView::new(r, &zone)).collect();
    emit(cx, &rows, |out| {
        print_audit(out, &rows, &zone)?;
        if cut {
            writeln!(
                out,
                "(the newest {limit} events; older ones left out: use --limit N or --since TIME)"
            )?;
        }
        Ok(())
    })?;
    if cut && cx.json {
        // The JSON stays a plain list; the note goes to stderr.
        eprintln!(
            "note: the newest {limit} events; older ones left out: use --limit N or --since TIME"
        );
    }
    Ok(())
}

/// The audit table, times in local time for people.
fn print_audit(
    out: &mut dyn Write,
    rows: &[AuditView],
    zone: &jiff::tz::TimeZone,
) -> std::io::Result<()> {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                local_time(r.at_unix, zone),
                r.event.clone(),
                r.host.clone().unwrap_or_default(),
                r.user.clone().unwrap_or_default(),
                r.source.clone().unwrap_or_default(),
                r.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        out,
        &["ID", "AT", "EVENT", "HOST", "USER", "SOURCE", "DETAIL"],
        &table,
    )
}

/// `outbox`: the newest `limit` notices and how their delivery went.
pub(super) fn outbox(cx: &mut Context<'_>, limit: usize) -> Result<(), AdminError> {
    let rows = cx.store.outbox(limit)?;
    emit(cx, &rows, |out| {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.channel.clone(),
                    r.recipient.clone(),
                    r.state.clone(),
                    r.attempts.to_string(),
                    r.subject.clone(),
                ]
            })
            .collect();
        print_table(
            out,
            &["ID", "VIA", "TO", "STATE", "TRIES", "SUBJECT"],
            &table,
        )
    })
}
