//! Hosts: invite one (a token for its agent), list them, show one, change
//! its shared-access policy, unlock it.

use std::collections::BTreeMap;

use latchkey_protocol::ids::{HostName, UserName};
use serde::Serialize;

use super::{
    output::{emit, enabled, invite_and_show, print_table, yes},
    AdminError, Context,
};
use crate::{
    admin::{human_time, service},
    store::{GrantRow, HostStatus, InviteKind, UnixTime, Unlock},
};

/// `invite-host`: creates the host if new and prints a token for its agent.
pub(super) fn invite(
    cx: &mut Context<'_>,
    name: &HostName,
    owner: &UserName,
) -> Result<(), AdminError> {
    let kind = InviteKind::Host {
        owner: owner.clone(),
        lockout_threshold: cx.config.lockout_threshold,
    };
    invite_and_show(cx, name.as_str(), kind)
}

/// `remove-host`: offboards a host.
pub(super) fn remove(cx: &mut Context<'_>, name: &HostName) -> Result<(), AdminError> {
    let removed = service::remove_host(cx.store, name, &cx.by)?;
    emit(cx, &removed, |out| {
        writeln!(
            out,
            "removed host '{name}': its agent can no longer connect, and every session on it ends."
        )?;
        if !removed.grants.is_empty() {
            writeln!(
                out,
                "Shared access of {} ended; they and the owner are emailed.",
                removed.grants.join(", ")
            )?;
        }
        if let Some(invites) = removed.invites_sentence() {
            writeln!(out, "{invites}")?;
        }
        writeln!(out, "Its audit history stays (admin audit --host {name}).")
    })
}

/// `hosts`: every host with its owner, state and secondary users.
pub(super) fn list(cx: &mut Context<'_>) -> Result<(), AdminError> {
    let hosts = cx.store.hosts()?;
    emit(cx, &hosts, |out| {
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

/// `status` as `--json` gives it: the host, and for each shared user what
/// their grant allows, when it ends and its idle limit, where set.
#[derive(Serialize)]
struct StatusView<'a> {
    #[serde(flatten)]
    status: &'a HostStatus,
    rights: BTreeMap<&'a str, String>,
    expires: BTreeMap<&'a str, UnixTime>,
    idle: BTreeMap<&'a str, u32>,
}

/// `status`: one host, a field a line.
pub(super) fn status(cx: &mut Context<'_>, host: &HostName) -> Result<(), AdminError> {
    let s = cx.store.host_status(host)?;
    let grants = cx.store.grants_of(Some(host))?;
    let view = StatusView {
        status: &s,
        rights: grants
            .iter()
            .map(|g| (g.user.as_str(), g.rights.to_string()))
            .collect(),
        expires: grants
            .iter()
            .filter_map(|g| Some((g.user.as_str(), g.expires_at?)))
            .collect(),
        idle: grants
            .iter()
            .filter_map(|g| Some((g.user.as_str(), g.idle_secs?)))
            .collect(),
    };
    emit(cx, &view, |out| {
        for (field, value) in status_fields(&s, &grants) {
            writeln!(out, "{:<16} {}", format!("{field}:"), value)?;
        }
        Ok(())
    })
}

/// A shared user as `status` lists them: the name, and their grant's terms
/// where they differ from the default.
fn shared_user(g: &GrantRow, zone: &jiff::tz::TimeZone) -> String {
    let mut terms = Vec::new();
    if !g.rights.is_all() {
        terms.push(g.rights.to_string());
    }
    if let Some(secs) = g.idle_secs {
        let idle = jiff::SignedDuration::from_secs(i64::from(secs));
        terms.push(format!("idle limit {idle:#}"));
    }
    if let Some(at) = g.expires_at {
        terms.push(format!("until {}", human_time::local_time(at, zone)));
    }
    if terms.is_empty() {
        g.user.clone()
    } else {
        format!("{} ({})", g.user, terms.join("; "))
    }
}

/// The fields `status` prints, in order.
fn status_fields(s: &HostStatus, grants: &[GrantRow]) -> Vec<(&'static str, String)> {
    let zone = jiff::tz::TimeZone::system();
    vec![
        ("host", s.name.clone()),
        ("owner", s.owner.clone()),
        ("enrolled", yes(s.enrolled)),
        ("platform", s.platform.clone().unwrap_or_else(|| "-".into())),
        ("access code set", yes(s.code_set)),
        ("shared access", enabled(s.shared_access).into()),
        (
            "shared with",
            if grants.is_empty() {
                "-".into()
            } else {
                let users: Vec<String> = grants.iter().map(|g| shared_user(g, &zone)).collect();
                users.join(", ")
            },
        ),
        (
            "failures",
            format!("{} (locks at {})", s.failures, s.lockout_threshold),
        ),
        ("locked", yes(s.locked)),
        (
            "online",
            match (&s.relay, s.online) {
                (Some(relay), true) => format!("yes (on the relay at {relay})"),
                _ => yes(s.online),
            },
        ),
    ]
}

/// `policy`: changes what is given, then shows the host's policy.
pub(super) fn policy(
    cx: &mut Context<'_>,
    host: &HostName,
    shared_access: Option<&str>,
    lockout_threshold: Option<u32>,
) -> Result<(), AdminError> {
    let shared = shared_access.map(|s| s == "enabled");
    service::set_policy(cx.store, host, shared, lockout_threshold, &cx.by)?;
    let s = cx.store.host_status(host)?;
    emit(cx, &s, |out| {
        let locked = if s.locked {
            format!(" (locked: {} counted)", s.failures)
        } else {
            String::new()
        };
        writeln!(
            out,
            "'{host}': shared access {}, locks after {} failed attempts{locked}",
            enabled(s.shared_access),
            s.lockout_threshold,
        )
    })
}

/// `unlock`: unlocks the host and says what still counts; a host with
/// nothing to unlock is said to be so (exit status 0: the host is open, as
/// asked).
pub(super) fn unlock(cx: &mut Context<'_>, host: &HostName) -> Result<(), AdminError> {
    let done = service::unlock(cx.store, host, &cx.by)?;
    let (was_locked, changed, left) = match done {
        Unlock::Done {
            was_locked,
            still_counted,
        } => (was_locked, true, still_counted),
        Unlock::NotLocked => (false, false, 0),
    };
    emit(
        cx,
        &serde_json::json!({
            "unlocked": true, "host": host.as_str(), "failures": left,
            "was_locked": was_locked, "changed": changed,
        }),
        |out| match (done, left) {
            (Unlock::NotLocked, _) => writeln!(
                out,
                "host '{host}' is not locked and counts no failed attempts; nothing was changed."
            ),
            (_, 0) if !was_locked => writeln!(
                out,
                "host '{host}' was not locked; its failure count is reset to 0."
            ),
            (_, 0) => writeln!(out, "'{host}' is unlocked; its failure count is 0."),
            (_, n) => writeln!(
                out,
                "'{host}' is unlocked; {n} attempt(s) still being decided count until they end."
            ),
        },
    )
}
