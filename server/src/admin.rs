//! `latchkey-relay admin ...`: manages users, hosts and grants directly in
//! the relay's data directory, so it works whether or not the relay runs
//! (SQLite in WAL mode lets both write; the relay re-reads lock and grant
//! state on every attempt).

use std::{io::Write, net::SocketAddr};

use clap::Subcommand;
use latchkey_protocol::{
    ids::{HostName, TokenSecret, UserName},
    invite::Invite,
};
use rand::{rngs::OsRng, RngCore};
use serde::Serialize;
use thiserror::Error;

use crate::{
    config::Config,
    datadir::DataDir,
    now_unix,
    store::{InviteKind, Store, StoreError},
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
        /// Failed attempts that lock the host (default 3).
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
    /// Show the audit log, oldest first.
    Audit {
        /// Only events about this host.
        #[arg(long)]
        host: Option<HostName>,
        /// Show at most this many of the newest events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// Errors of admin commands (shown to the admin, exit status 1).
#[derive(Debug, Error)]
pub enum AdminError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Output failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    /// Output failed.
    #[error("output: {0}")]
    Json(#[from] serde_json::Error),
    /// The relay's address is unknown.
    #[error("the relay's address is unknown: start it once (latchkey-relay serve) or set public_addr in its config")]
    NoAddress,
}

/// The address put into invite tokens.
fn relay_address(config: &Config, store: &dyn Store) -> Result<String, AdminError> {
    if let Some(addr) = &config.public_addr {
        return Ok(addr.clone());
    }
    // The address the relay last bound (exact even for port 0), else the
    // configured one (so an invite made while the relay starts works).
    let mut addr: SocketAddr = match store.meta("listen_addr")? {
        Some(listen) => listen.parse().map_err(|_| AdminError::NoAddress)?,
        None if config.listen.port() != 0 => config.listen,
        None => return Err(AdminError::NoAddress),
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr.to_string())
}

fn print_table(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
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
    let now = now_unix();
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
        ),
        AdminCommand::SetEmail { user, address } => {
            store.set_email(user, address.as_deref(), now)?;
            emit(
                out,
                json,
                &serde_json::json!({"user": user.as_str(), "email": address}),
                |out| match address {
                    Some(a) => writeln!(out, "notices for '{user}' go to {a}"),
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
            store.set_policy(host, shared, *lockout_threshold, now)?;
            let s = store.host_status(host)?;
            emit(out, json, &s, |out| {
                writeln!(
                    out,
                    "'{host}': shared access {}, locks after {} failed attempts",
                    if s.shared_access {
                        "enabled"
                    } else {
                        "disabled"
                    },
                    s.lockout_threshold
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
            store.grant(host, user, now)?;
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
            store.revoke(host, user, now)?;
            emit(
                out,
                json,
                &serde_json::json!({"revoked": true, "host": host.as_str(), "user": user.as_str()}),
                |out| writeln!(out, "'{user}' no longer has shared access to '{host}'."),
            )
        }
        AdminCommand::Unlock { host } => {
            let left = store.unlock(host, now)?;
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
                    vec!["online".into(), yes(s.online)],
                ];
                for row in rows {
                    writeln!(out, "{:<16} {}", format!("{}:", row[0]), row[1])?;
                }
                Ok(())
            })
        }
        AdminCommand::Audit { host, limit } => {
            let rows = store.audit_log(host.as_ref(), *limit)?;
            emit(out, json, &rows, |out| {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.at.to_string(),
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
            })
        }
    }
}

fn invite(
    data: &DataDir,
    store: &dyn Store,
    config: &Config,
    json: bool,
    out: &mut dyn Write,
    name: &str,
    kind: InviteKind,
) -> Result<(), AdminError> {
    let relay = relay_address(config, store)?;
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let secret = TokenSecret(secret);
    let now = now_unix();
    let expires_at = now + i64::try_from(config.invite_ttl_secs).unwrap_or(i64::MAX / 2);
    store.create_invite(name, &kind, secret.digest(), expires_at, now)?;
    let is_host = matches!(kind, InviteKind::Host { .. });
    let token = Invite {
        relay,
        pin: data.pin(),
        secret,
        for_host: is_host,
    }
    .to_text();
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
