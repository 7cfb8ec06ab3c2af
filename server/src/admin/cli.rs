//! `latchkey-relay admin ...`: manages users, hosts and grants directly in
//! the relay's store, so it works whether or not the relay runs (SQLite in
//! WAL mode lets both write; the relay re-reads lock and grant state on
//! every attempt). The actions themselves are [`crate::admin::service`]'s, which
//! the web console calls too; this module parses and prints.

use std::io::Write;

use clap::Subcommand;
use latchkey_protocol::ids::{HostName, UserName};
use serde::Serialize;
use thiserror::Error;

use crate::{
    admin::human_time::{iso_time, local_time, times_in_text},
    admin::service::{self, ServiceError},
    config::Config,
    datadir::DataDir,
    store::{Actor, InviteKind, Store, StoreError},
};

/// Admin subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Create a user (if new) and print a one-time invite token for their device.
    InviteUser {
        /// The user's name.
        name: UserName,
        /// Where to email the user's notices (shared access granted, code
        /// change recommended, host locked).
        #[arg(long)]
        email: Option<String>,
    },
    /// Set (or with no ADDRESS, clear) where a user's notices are emailed.
    SetEmail {
        /// The user.
        user: UserName,
        /// The address.
        address: Option<String>,
    },
    /// Change a host's shared-access policy.
    Policy {
        /// The host.
        host: HostName,
        /// Whether shared access may be granted on the host.
        #[arg(long, value_parser = ["enabled", "disabled"])]
        shared_access: Option<String>,
        /// Failed attempts that lock the host (default 3); a host whose
        /// failures already reach the new threshold locks at once.
        #[arg(long)]
        lockout_threshold: Option<u32>,
    },
    /// Show the newest notices (emails and host notices) and whether they were delivered.
    Outbox {
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Create a host owned by USER (if new) and print a one-time invite token for its agent.
    InviteHost {
        /// The host's name.
        name: HostName,
        /// The user who owns the host.
        #[arg(long)]
        owner: UserName,
    },
    /// List users.
    Users,
    /// List hosts with their state.
    Hosts,
    /// Create a console admin (or reset one: a new password and second
    /// factor, unlocked) and print their one-time setup link.
    AddAdmin {
        /// The admin's name.
        name: UserName,
        /// Where to email them when another console admin is locked out.
        #[arg(long)]
        email: Option<String>,
    },
    /// List console admins.
    Admins,
    /// Delete a console admin; their open console sessions end at once.
    RemoveAdmin {
        /// The admin's name.
        name: UserName,
    },
    /// Give USER shared access to HOST with the owner's current access code.
    Grant {
        /// The host.
        host: HostName,
        /// The secondary user.
        user: UserName,
    },
    /// Take USER's shared access to HOST away.
    Revoke {
        /// The host.
        host: HostName,
        /// The secondary user.
        user: UserName,
    },
    /// Revoke USER's shared access to HOST and grant it again, in one step,
    /// so they inherit the owner's current access code.
    Regrant {
        /// The host.
        host: HostName,
        /// The secondary user.
        user: UserName,
    },
    /// Unlock a host locked by failed access-code attempts.
    Unlock {
        /// The host.
        host: HostName,
    },
    /// Show one host: owner, grants, failure count, locked, online.
    Status {
        /// The host.
        host: HostName,
    },
    /// Show the audit log, oldest first, in local time (ISO 8601 with
    /// `--json`). Says so when older events were left out.
    Audit {
        /// Only events about this host.
        #[arg(long)]
        host: Option<HostName>,
        /// Show at most this many of the newest events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only events at or after this time: a date or date and time in
        /// local time (`2026-11-28`, `2026-11-28 14:30`), an ISO 8601
        /// timestamp (`2026-11-28T14:30:00Z`), or an age (`2h`, `3d`, `30m`).
        #[arg(long, value_parser = parse_since)]
        since: Option<jiff::Timestamp>,
    },
}

/// Errors of admin commands (shown to the admin, exit status 1).
#[derive(Debug, Error)]
pub enum AdminError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The action failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Output failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    /// Output failed.
    #[error("output: {0}")]
    Json(#[from] serde_json::Error),
}

impl AdminError {
    /// Whether the output's reader went away (`admin audit | head`).
    pub fn is_broken_pipe(&self) -> bool {
        match self {
            Self::Io(e) => e.kind() == std::io::ErrorKind::BrokenPipe,
            Self::Json(e) => e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe),
            _ => false,
        }
    }
}

/// `text` with control characters escaped.
fn printable(text: &str) -> String {
    let hidden = |c: char| c.is_control() || service::is_format(c);
    if text.chars().any(hidden) {
        text.chars()
            .map(|c| {
                if hidden(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        text.to_string()
    }
}

fn print_table(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
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
    let rows = &rows;
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
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
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
    fn new(r: &crate::store::AuditRow, zone: &jiff::tz::TimeZone) -> Self {
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

/// `--since`: a timestamp, a local date or date and time, or an age.
fn parse_since(s: &str) -> Result<jiff::Timestamp, String> {
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

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn emit<T: Serialize>(
    out: &mut dyn Write,
    json: bool,
    value: &T,
    text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), AdminError> {
    if json {
        serde_json::to_writer_pretty(&mut *out, value)?;
        writeln!(out)?;
    } else {
        text(out)?;
    }
    Ok(())
}

/// Runs one admin command.
pub fn run(
    cmd: &AdminCommand,
    data: &DataDir,
    store: &dyn Store,
    config: &Config,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), AdminError> {
    let by = Actor::cli();
    match cmd {
        AdminCommand::InviteUser { name, email } => invite(
            data,
            store,
            config,
            json,
            out,
            name.as_str(),
            InviteKind::User {
                email: email.clone(),
            },
            &by,
        ),
        AdminCommand::SetEmail { user, address } => {
            service::set_email(store, user, address.as_deref(), &by)?;
            emit(
                out,
                json,
                &serde_json::json!({"user": user.as_str(), "email": address}),
                |out| match address {
                    Some(a) => writeln!(out, "notices for '{user}' go to {}", printable(a)),
                    None => writeln!(out, "'{user}' gets no email notices"),
                },
            )
        }
        AdminCommand::Policy {
            host,
            shared_access,
            lockout_threshold,
        } => {
            let shared = shared_access.as_deref().map(|s| s == "enabled");
            service::set_policy(store, host, shared, *lockout_threshold, &by)?;
            let s = store.host_status(host)?;
            emit(out, json, &s, |out| {
                writeln!(
                    out,
                    "'{host}': shared access {}, locks after {} failed attempts{}",
                    if s.shared_access {
                        "enabled"
                    } else {
                        "disabled"
                    },
                    s.lockout_threshold,
                    if s.locked {
                        format!(" (locked: {} counted)", s.failures)
                    } else {
                        String::new()
                    }
                )
            })
        }
        AdminCommand::Outbox { limit } => {
            let rows = store.outbox(*limit)?;
            emit(out, json, &rows, |out| {
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
        AdminCommand::InviteHost { name, owner } => invite(
            data,
            store,
            config,
            json,
            out,
            name.as_str(),
            InviteKind::Host {
                owner: owner.clone(),
                lockout_threshold: config.lockout_threshold,
            },
            &by,
        ),
        AdminCommand::Users => {
            let users = store.users()?;
            emit(out, json, &users, |out| {
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            yes(u.enrolled),
                            u.email.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(out, &["USER", "ENROLLED", "EMAIL"], &rows)
            })
        }
        AdminCommand::Hosts => {
            let hosts = store.hosts()?;
            emit(out, json, &hosts, |out| {
                let rows: Vec<Vec<String>> = hosts
                    .iter()
                    .map(|h| {
                        vec![
                            h.name.clone(),
                            h.owner.clone(),
                            yes(h.online),
                            yes(h.locked),
                            format!("{}/{}", h.failures, h.lockout_threshold),
                            h.grants.join(","),
                        ]
                    })
                    .collect();
                print_table(
                    out,
                    &[
                        "HOST",
                        "OWNER",
                        "ONLINE",
                        "LOCKED",
                        "FAILURES",
                        "SHARED WITH",
                    ],
                    &rows,
                )
            })
        }
        AdminCommand::Grant { host, user } => {
            service::grant(store, host, user, &by)?;
            emit(
                out,
                json,
                &serde_json::json!({"granted": true, "host": host.as_str(), "user": user.as_str()}),
                |out| {
                    writeln!(out, "'{user}' now has shared access to '{host}' with the owner's current access code.")?;
                    writeln!(out, "The owner should give '{user}' that code.")
                },
            )
        }
        AdminCommand::Revoke { host, user } => {
            service::revoke(store, host, user, &by)?;
            emit(
                out,
                json,
                &serde_json::json!({"revoked": true, "host": host.as_str(), "user": user.as_str()}),
                |out| writeln!(out, "'{user}' no longer has shared access to '{host}'."),
            )
        }
        AdminCommand::Regrant { host, user } => {
            service::regrant(store, host, user, &by)?;
            emit(
                out,
                json,
                &serde_json::json!({"regranted": true, "host": host.as_str(), "user": user.as_str()}),
                |out| {
                    writeln!(out, "'{user}' has shared access to '{host}' again, with the owner's current access code.")?;
                    writeln!(out, "The owner should give '{user}' that code.")
                },
            )
        }
        AdminCommand::AddAdmin { name, email } => {
            let setup = service::add_admin(store, config, name, email.as_deref(), &by)?;
            emit(
                out,
                json,
                &serde_json::json!({"admin": name.as_str(), "setup_link": setup.link, "expires_at": setup.expires_at}),
                |out| {
                    writeln!(
                        out,
                        "# {name} opens this link once, within {} h, to set a password and a second factor:",
                        service::ADMIN_SETUP_TTL_SECS / 3600
                    )?;
                    writeln!(out, "{}", setup.link)
                },
            )
        }
        AdminCommand::RemoveAdmin { name } => {
            store.remove_admin(name.as_str(), &by, crate::clock::now_unix())?;
            emit(
                out,
                json,
                &serde_json::json!({"removed": name.as_str()}),
                |out| {
                    writeln!(
                        out,
                        "console admin '{name}' removed; their sessions have ended."
                    )
                },
            )
        }
        AdminCommand::Admins => {
            let admins = store.admins(config.console_lockout(), crate::clock::now_unix())?;
            let zone = jiff::tz::TimeZone::system();
            emit(out, json, &admins, |out| {
                let rows: Vec<Vec<String>> = admins
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            yes(a.enrolled),
                            a.locked_until
                                .map_or("no".into(), |t| format!("until {}", local_time(t, &zone))),
                            a.email.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(out, &["ADMIN", "ENROLLED", "LOCKED", "EMAIL"], &rows)
            })
        }
        AdminCommand::Unlock { host } => {
            let left = service::unlock(store, host, &by)?;
            emit(
                out,
                json,
                &serde_json::json!({"unlocked": true, "host": host.as_str(), "failures": left}),
                |out| {
                    match left {
                    0 => writeln!(out, "'{host}' is unlocked; its failure count is 0."),
                    n => writeln!(
                        out,
                        "'{host}' is unlocked; {n} attempt(s) still being decided count until they end."
                    ),
                }
                },
            )
        }
        AdminCommand::Status { host } => {
            let s = store.host_status(host)?;
            emit(out, json, &s, |out| {
                let rows = vec![
                    vec!["host".into(), s.name.clone()],
                    vec!["owner".into(), s.owner.clone()],
                    vec!["enrolled".into(), yes(s.enrolled)],
                    vec![
                        "platform".into(),
                        s.platform.clone().unwrap_or_else(|| "-".into()),
                    ],
                    vec!["access code set".into(), yes(s.code_set)],
                    vec![
                        "shared access".into(),
                        if s.shared_access {
                            "enabled"
                        } else {
                            "disabled"
                        }
                        .into(),
                    ],
                    vec![
                        "shared with".into(),
                        if s.grants.is_empty() {
                            "-".into()
                        } else {
                            s.grants.join(", ")
                        },
                    ],
                    vec![
                        "failures".into(),
                        format!("{} (locks at {})", s.failures, s.lockout_threshold),
                    ],
                    vec!["locked".into(), yes(s.locked)],
                    vec![
                        "online".into(),
                        match (&s.relay, s.online) {
                            (Some(relay), true) => format!("yes (on the relay at {relay})"),
                            _ => yes(s.online),
                        },
                    ],
                ];
                for row in rows {
                    writeln!(out, "{:<16} {}", format!("{}:", row[0]), row[1])?;
                }
                Ok(())
            })
        }
        AdminCommand::Audit { host, limit, since } => {
            // One more than asked tells whether older events were cut.
            let mut rows = store.audit_log(
                host.as_ref(),
                since.map(|t| t.as_second()),
                limit.saturating_add(1),
            )?;
            let cut = rows.len() > *limit;
            if cut {
                rows.remove(0);
            }
            let zone = jiff::tz::TimeZone::system();
            let rows: Vec<AuditView> = rows.iter().map(|r| AuditView::new(r, &zone)).collect();
            emit(out, json, &rows, |out| {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            local_time(r.at_unix, &zone),
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
                )?;
                if cut {
                    writeln!(
                        out,
                        "(the newest {limit} events; older ones left out: use --limit N or --since TIME)"
                    )?;
                }
                Ok(())
            })?;
            if cut && json {
                // The JSON stays a plain list; the note goes to stderr.
                eprintln!("note: the newest {limit} events; older ones left out: use --limit N or --since TIME");
            }
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn invite(
    data: &DataDir,
    store: &dyn Store,
    config: &Config,
    json: bool,
    out: &mut dyn Write,
    name: &str,
    kind: InviteKind,
    by: &Actor,
) -> Result<(), AdminError> {
    let service::Invitation {
        token,
        expires_at,
        is_host,
    } = service::invite(store, config, &data.pin(), name, kind, by)?;
    emit(
        out,
        json,
        &serde_json::json!({"token": token, "expires_at": expires_at}),
        |out| {
            if is_host {
                writeln!(
                    out,
                    "# on host '{name}': latchkey host enroll TOKEN  (valid {} h, single use)",
                    config.invite_ttl_secs / 3600
                )?;
            } else {
                writeln!(
                    out,
                    "# on {name}'s device: latchkey enroll TOKEN  (valid {} h, single use)",
                    config.invite_ttl_secs / 3600
                )?;
            }
            writeln!(out, "{token}")
        },
    )
}
