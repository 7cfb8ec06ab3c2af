//! `latchkey-relay admin ...`: manages users, hosts and grants directly in
//! the relay's store, so it works whether or not the relay runs (SQLite in
//! WAL mode lets both write; the relay re-reads lock and grant state on
//! every attempt). The actions themselves are [`crate::admin::service`]'s, which
//! the web console calls too; this module parses and prints: the commands
//! and their errors here, each group of commands in a module of its own
//! (`users`, `hosts`, `grants`, `admins`, `logs`), and the printing they
//! share in `output`.

mod admins;
mod grants;
mod hosts;
mod logs;
mod output;
mod users;

use std::io::Write;

use clap::Subcommand;
use latchkey_protocol::{
    ids::{HostName, UserName},
    rights::Rights,
};
use thiserror::Error;

use self::logs::parse_since;
use crate::{
    admin::service::ServiceError,
    config::Config,
    datadir::DataDir,
    store::{Actor, Store, StoreError},
};

/// What a shared user may do, as `grant` and `rights` take it.
#[derive(Debug, Clone, clap::Args)]
pub struct RightsArgs {
    /// What the user may do, comma-separated: shell, exec, copy-from,
    /// copy-to, forward, reboot; or all, or none. The host's own config
    /// may narrow it further; an owner's access is never narrowed.
    #[arg(long, value_name = "RIGHTS", default_value = "all")]
    allow: Rights,
    /// Forward only to these targets (IP:PORT, comma-separated) among those
    /// the host allows. Default: any the host allows.
    #[arg(long, value_name = "IP:PORT", value_delimiter = ',')]
    forward_to: Vec<std::net::SocketAddr>,
    /// End a session of theirs after this long without channel traffic
    /// (15m, 1h; from 1s to 7d). Default: no limit.
    #[arg(long, value_name = "DURATION")]
    idle: Option<String>,
}

impl RightsArgs {
    fn rights(&self) -> Result<Rights, ServiceError> {
        crate::admin::service::rights_from(&self.allow, &self.forward_to)
    }

    fn idle_secs(&self) -> Result<Option<u32>, ServiceError> {
        self.idle
            .as_deref()
            .map(crate::admin::service::idle_limit)
            .transpose()
    }
}

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
    /// Remove a user who left: their device can no longer log in, their
    /// shared access and live sessions end, the owners of those hosts are
    /// emailed. Their audit history stays. Remove the hosts they own first.
    RemoveUser {
        /// The user.
        name: UserName,
    },
    /// Set (or with no ADDRESS, clear) where a user's notices are emailed.
    SetEmail {
        /// The user.
        user: UserName,
        /// The address.
        address: Option<String>,
    },
    /// Show a host's shared-access policy, or change it with a flag (with
    /// no flag nothing is written, not even an audit row).
    ///
    /// Disabling shared access refuses new grants and regrants, and
    /// in-session reboots by anyone, the owner too. Grants already made
    /// stay: their users keep logging in with the code each inherited, and
    /// live sessions go on. Revoke a grant to end it.
    Policy {
        /// The host.
        host: HostName,
        /// Whether shared access may be granted on the host. `disabled`
        /// refuses new grants, regrants and in-session reboots; existing
        /// grants stay and keep working until revoked.
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
    /// Remove a host: its agent can no longer connect, every session on
    /// it and every grant of it end, its owner and shared users are
    /// emailed. Its audit history stays; inviting the name again makes it
    /// a new host.
    RemoveHost {
        /// The host.
        name: HostName,
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
        /// What they may do.
        #[command(flatten)]
        rights: RightsArgs,
        /// End the grant by itself after this long (8h, 2d, 90m); it ends
        /// as a revoke does: sessions end, owner and user are emailed.
        #[arg(long = "for", value_name = "DURATION", conflicts_with = "until")]
        lasting: Option<jiff::Span>,
        /// End the grant by itself at this local time (2026-12-31T18:00,
        /// or a timestamp with its offset).
        #[arg(long, value_name = "TIME", value_parser = grants::parse_until)]
        until: Option<jiff::Timestamp>,
    },
    /// Set what USER may do on HOST with their shared access, and their
    /// idle limit (what is not given goes back to its default: all rights,
    /// no limit). Running channels the new rights do not allow end at once.
    Rights {
        /// The host.
        host: HostName,
        /// The secondary user.
        user: UserName,
        /// What they may do from now on.
        #[command(flatten)]
        rights: RightsArgs,
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
    /// Unlock a host locked by failed access-code attempts and clear its
    /// failure count.
    ///
    /// A host that is not locked and counts no failures is said to be so
    /// and left alone: nothing is audited, and the exit status is 0 (the
    /// host is open, as asked), so scripts may unlock "just in case".
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

/// The admin commands in the groups `admin --help` lists them in, each
/// group in the order an admin takes them: make, list, change, remove.
const GROUPS: &[(&str, &[&str])] = &[
    (
        "Users",
        &["invite-user", "users", "set-email", "remove-user"],
    ),
    (
        "Hosts",
        &[
            "invite-host",
            "hosts",
            "status",
            "policy",
            "unlock",
            "remove-host",
        ],
    ),
    ("Shared access", &["grant", "rights", "revoke", "regrant"]),
    ("Console admins", &["add-admin", "admins", "remove-admin"]),
    ("Logs", &["audit", "outbox"]),
];

/// The heading of commands no group names (none, while [`GROUPS`] is
/// complete).
const OTHER: &str = "Other";

/// `admin` as the binary builds it: its commands in [`GROUPS`]' order (man
/// pages and completion list them so), and `--help` listing them under a
/// heading per group, which clap cannot do for subcommands by itself.
pub fn arrange(mut admin: clap::Command) -> clap::Command {
    for (order, name) in GROUPS.iter().flat_map(|(_, names)| *names).enumerate() {
        if admin.find_subcommand(name).is_some() {
            admin = admin.mut_subcommand(name, |c| c.display_order(order));
        }
    }
    let template = grouped_help(&admin);
    admin.help_template(template)
}

/// clap's help layout, with the commands written in as [`GROUPS`] has them.
fn grouped_help(admin: &clap::Command) -> String {
    use std::fmt::Write as _;
    let styles = admin.get_styles();
    let (header, literal) = (styles.get_header(), styles.get_literal());
    let visible: Vec<&clap::Command> = admin
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .collect();
    let width = visible
        .iter()
        .map(|c| c.get_name().len())
        .max()
        .unwrap_or(0);
    let mut groups: Vec<(&str, Vec<&clap::Command>)> = GROUPS
        .iter()
        .map(|(heading, names)| {
            let members = names
                .iter()
                .filter_map(|n| visible.iter().copied().find(|c| c.get_name() == *n));
            (*heading, members.collect())
        })
        .collect();
    let grouped = |c: &&clap::Command| {
        GROUPS
            .iter()
            .any(|(_, names)| names.contains(&c.get_name()))
    };
    groups.push((
        OTHER,
        visible.iter().copied().filter(|c| !grouped(c)).collect(),
    ));
    let mut text = String::from("{before-help}{about-with-newline}\n{usage-heading} {usage}\n\n");
    for (heading, members) in groups.iter().filter(|(_, m)| !m.is_empty()) {
        let _ = writeln!(text, "{header}{heading}:{header:#}");
        for c in members {
            let name = c.get_name();
            let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
            let pad = width - name.len();
            let _ = writeln!(text, "  {literal}{name}{literal:#}{:pad$}  {about}", "");
        }
        text.push('\n');
    }
    let _ = write!(
        text,
        "{header}Options:{header:#}\n{{options}}{{after-help}}"
    );
    text
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
    /// An argument that cannot be used.
    #[error("{0}")]
    Input(String),
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

/// What every command works with: the relay's data and store, how it
/// prints, and who the audit log says acted.
struct Context<'a> {
    data: &'a DataDir,
    store: &'a dyn Store,
    config: &'a Config,
    /// JSON instead of text.
    json: bool,
    out: &'a mut dyn Write,
    by: Actor,
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
    let cx = &mut Context {
        data,
        store,
        config,
        json,
        out,
        by: Actor::cli(),
    };
    match cmd {
        AdminCommand::InviteUser { name, email } => users::invite(cx, name, email.as_deref()),
        AdminCommand::SetEmail { user, address } => users::set_email(cx, user, address.as_deref()),
        AdminCommand::RemoveUser { name } => users::remove(cx, name),
        AdminCommand::Users => users::list(cx),
        AdminCommand::InviteHost { name, owner } => hosts::invite(cx, name, owner),
        AdminCommand::RemoveHost { name } => hosts::remove(cx, name),
        AdminCommand::Hosts => hosts::list(cx),
        AdminCommand::Status { host } => hosts::status(cx, host),
        AdminCommand::Policy {
            host,
            shared_access,
            lockout_threshold,
        } => hosts::policy(cx, host, shared_access.as_deref(), *lockout_threshold),
        AdminCommand::Unlock { host } => hosts::unlock(cx, host),
        AdminCommand::Grant {
            host,
            user,
            rights,
            lasting,
            until,
        } => {
            let terms = crate::store::GrantTerms {
                rights: rights.rights()?,
                expires_at: grants::grant_end(lasting.as_ref(), until.as_ref())?,
                idle_secs: rights.idle_secs()?,
            };
            grants::grant(cx, host, user, &terms)
        }
        AdminCommand::Rights { host, user, rights } => {
            grants::set_rights(cx, host, user, &rights.rights()?, rights.idle_secs()?)
        }
        AdminCommand::Revoke { host, user } => grants::revoke(cx, host, user),
        AdminCommand::Regrant { host, user } => grants::regrant(cx, host, user),
        AdminCommand::AddAdmin { name, email } => admins::add(cx, name, email.as_deref()),
        AdminCommand::Admins => admins::list(cx),
        AdminCommand::RemoveAdmin { name } => admins::remove(cx, name),
        AdminCommand::Audit { host, limit, since } => {
            logs::audit(cx, host.as_ref(), *limit, *since)
        }
        AdminCommand::Outbox { limit } => logs::outbox(cx, *limit),
    }
}

#[cfg(test)]
mod tests {
    use clap::Subcommand;

    use super::*;

    #[test]
    fn every_admin_command_has_a_group() {
        let admin = AdminCommand::augment_subcommands(clap::Command::new("admin"));
        for c in admin.get_subcommands() {
            assert!(
                GROUPS
                    .iter()
                    .any(|(_, names)| names.contains(&c.get_name())),
                "`admin {}` is in no group of GROUPS",
                c.get_name()
            );
        }
    }
}
