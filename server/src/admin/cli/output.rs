//! How admin commands print: JSON or text, tables whose stored text cannot
//! drive the terminal, and the words that stand for flags.

use std::io::Write;

use latchkey_protocol::text::shown;
use serde::Serialize;

use super::{AdminError, Context};
use crate::admin::service;

/// `text` with control and format characters escaped.
pub(super) fn printable(text: &str) -> String {
    shown(text).into_owned()
}

/// Prints `rows` under `headers`, each column as wide as its widest cell.
pub(super) fn print_table(
    out: &mut dyn Write,
    headers: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    // Measured before escaping: a cell with escapes runs past its column.
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Stored text (an email, an audit detail) must not drive the terminal.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// A flag as a table shows it.
pub(super) fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// Whether shared access is on, as text.
pub(super) fn enabled(b: bool) -> &'static str {
    if b {
        "enabled"
    } else {
        "disabled"
    }
}

/// Prints `value` as JSON with `--json`, else as `text` writes it.
pub(super) fn emit<T: Serialize>(
    cx: &mut Context<'_>,
    value: &T,
    text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), AdminError> {
    if cx.json {
        serde_json::to_writer_pretty(&mut *cx.out, value)?;
        writeln!(cx.out)?;
    } else {
        text(cx.out)?;
    }
    Ok(())
}

/// Creates `name` (if new) and its invite of `kind`, and prints the token
/// with the command that redeems it.
pub(super) fn invite_and_show(
    cx: &mut Context<'_>,
    name: &str,
    kind: crate::store::InviteKind,
) -> Result<(), AdminError> {
    let made = service::invite(cx.store, cx.config, &cx.data.pin(), name, kind, &cx.by)?;
    invitation(cx, name, &made)
}

/// Prints an invite token with the command that redeems it, for a user's
/// device or a host's agent.
fn invitation(
    cx: &mut Context<'_>,
    name: &str,
    invitation: &service::Invitation,
) -> Result<(), AdminError> {
    let service::Invitation {
        token,
        expires_at,
        is_host,
    } = invitation;
    let hours = cx.config.invite_ttl_secs / 3600;
    emit(
        cx,
        &serde_json::json!({"token": token, "expires_at": expires_at}),
        |out| {
            if *is_host {
                writeln!(
                    out,
                    "# on host '{name}': latchkey host enroll TOKEN  (valid {hours} h, single use)"
                )?;
            } else {
                writeln!(
                    out,
                    "# on {name}'s device: latchkey enroll TOKEN  (valid {hours} h, single use)"
                )?;
            }
            writeln!(out, "{token}")
        },
    )
}
