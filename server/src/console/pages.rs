//! The console's pages: what the CLI's listing commands show, for people.
//! Reading only; the forms on them post to [`super::actions`].

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use latchkey_protocol::{ids::HostName, text::shown};
use maud::{html, Markup};
use serde::Deserialize;

use super::{auth::SignedIn, paths, view, ConsoleError, ConsoleState};
use crate::{
    admin::human_time,
    clock::now_unix,
    store::{AuditEvent, AuditFilter, AuditRow, GrantRow, HostStatus},
};

/// The events the audit page offers as filters.
const FILTERED_EVENTS: [AuditEvent; 19] = [
    AuditEvent::LoginOk,
    AuditEvent::LoginFailed,
    AuditEvent::LoginLocked,
    AuditEvent::LoginBusy,
    AuditEvent::LoginRefused,
    AuditEvent::HostLocked,
    AuditEvent::Unlock,
    AuditEvent::Grant,
    AuditEvent::Revoke,
    AuditEvent::UserRemoved,
    AuditEvent::HostRemoved,
    AuditEvent::Policy,
    AuditEvent::InviteCreated,
    AuditEvent::Enrolled,
    AuditEvent::SessionStart,
    AuditEvent::SessionEnd,
    AuditEvent::ConsoleLogin,
    AuditEvent::ConsoleLoginFailed,
    AuditEvent::ConsoleAdminLocked,
];

/// Rows per page of the audit log.
const AUDIT_PAGE: usize = 50;
/// Notices shown on the outbox page.
const OUTBOX_ROWS: usize = 200;

/// What an action did, shown on the page it returns to. A fixed list, so a
/// link cannot make the console say anything else.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum Done {
    Granted,
    Revoked,
    Regranted,
    Rights,
    Unlocked,
    Policy,
    Email,
}

impl Done {
    fn text(self) -> &'static str {
        match self {
            Self::Granted => "Shared access granted: the owner was told to give the user their current access code.",
            Self::Revoked => "Shared access revoked: the user's sessions on this host were ended.",
            Self::Regranted => "Shared access granted again: the user now inherits the owner's current access code.",
            Self::Rights => "Rights set: what the user had running that they no longer allow was ended, and the user was told.",
            Self::Unlocked => "Host unlocked: its failure count is back to zero.",
            Self::Policy => "Policy saved.",
            Self::Email => "Email address saved.",
        }
    }
}

/// The query of a page an action returns to.
#[derive(Deserialize)]
pub(super) struct DoneQuery {
    done: Option<Done>,
}

fn events_table(rows: &[AuditRow]) -> Markup {
    let zone = jiff::tz::TimeZone::system();
    html! {
        div.table { table.rows {
            thead { tr { th { "When" } th { "Event" } th { "Host" } th { "User" } th { "From" } th { "Detail" } } }
            tbody {
                @for r in rows {
                    tr {
                        td data-label="When" { (view::time(r.at)) }
                        td.event data-label="Event" { (r.event) }
                        td data-label="Host" { @if let Some(h) = &r.host { a href=(paths::host(h)) { (h) } } }
                        td data-label="User" { (r.user.as_deref().unwrap_or("")) }
                        td data-label="From" { (r.source.as_deref().unwrap_or("")) }
                        td data-label="Detail" { (r.detail.as_deref().map(|d| shown(&human_time::times_in_text(d, &zone)).into_owned()).unwrap_or_default()) }
                    }
                }
            }
        } }
    }
}

/// GET /
pub(super) async fn overview(
    State(state): State<Arc<ConsoleState>>,
    me: SignedIn,
) -> Result<Markup, ConsoleError> {
    let since = now_unix() - 3600;
    let (hosts, counts, newest) = state
        .blocking(move |s| {
            Ok((
                s.hosts()?,
                s.audit_counts(since)?,
                s.audit_page(&AuditFilter::default(), 15)?,
            ))
        })
        .await?;
    let count = |event: AuditEvent| {
        counts
            .iter()
            .find(|(e, _)| e == event.name())
            .map_or(0, |(_, n)| *n)
    };
    let online = hosts.iter().filter(|h| h.online).count();
    let locked: Vec<&HostStatus> = hosts.iter().filter(|h| h.locked).collect();
    let failures = count(AuditEvent::LoginFailed) + count(AuditEvent::LoginLocked);
    let body = html! {
        div.cards {
            div.card { b { (online) " / " (hosts.len()) } "hosts online" }
            div.card { b.bad[!locked.is_empty()] { (locked.len()) } "hosts locked" }
            div.card { b { (count(AuditEvent::LoginOk)) } "logins in the last hour" }
            div.card { b.bad[failures > 0] { (failures) } "failed logins in the last hour" }
        }
        @if !locked.is_empty() {
            h2 { "Locked hosts" }
            ul { @for h in &locked { li { a href=(paths::host(&h.name)) { (h.name) } " (owner " (h.owner) ")" } } }
        }
        h2 { "Newest events" }
        (events_table(&newest))
        p { a href=(paths::AUDIT) { "The whole audit log" } }
    };
    Ok(view::page("Overview", Some((&me.admin, &me.csrf)), body))
}

fn grants_cell(grants: &[GrantRow]) -> Markup {
    html! {
        @for (i, g) in grants.iter().enumerate() {
            @if i > 0 { ", " }
            (g.user)
            @if let Some(at) = g.code_set_at { " (code of " (view::time(at)) ")" }
        }
    }
}

/// GET /hosts
pub(super) async fn hosts(
    State(state): State<Arc<ConsoleState>>,
    me: SignedIn,
) -> Result<Markup, ConsoleError> {
    let body = hosts_body(&state, &me, None).await?;
    Ok(view::page("Hosts", Some((&me.admin, &me.csrf)), body))
}

/// The hosts list, with `message` (a notice) on top.
pub(super) async fn hosts_body(
    state: &ConsoleState,
    me: &SignedIn,
    message: Option<Markup>,
) -> Result<Markup, ConsoleError> {
    let (hosts, all_grants) = state
        .blocking(|s| Ok((s.hosts()?, s.grants_of(None)?)))
        .await?;
    let mut by_host: std::collections::HashMap<String, Vec<GrantRow>> = Default::default();
    for g in all_grants {
        by_host.entry(g.host.clone()).or_default().push(g);
    }
    let hosts: Vec<(HostStatus, Vec<GrantRow>)> = hosts
        .into_iter()
        .map(|h| {
            let grants = by_host.remove(&h.name).unwrap_or_default();
            (h, grants)
        })
        .collect();
    Ok(html! {
        @if let Some(message) = message { (message) }
        div.table { table.rows {
            thead { tr {
                th { "Host" } th { "Owner" } th { "Online" } th { "Locked" } th { "Failures" }
                th { "Shared with (code inherited)" } th { "Last seen" }
            } }
            tbody {
                @for (h, grants) in &hosts {
                    tr data-host=(h.name) {
                        td data-label="Host" { a href=(paths::host(&h.name)) { (h.name) } }
                        td data-label="Owner" { (h.owner) }
                        td data-label="Online" { span.online { (view::flag(h.online, false)) } }
                        td data-label="Locked" { (view::locked_cell(&h.name, &me.csrf, h.locked, h.failures)) }
                        td data-label="Failures" { (view::failures_cell(&h.name, &me.csrf, h.locked, h.failures, h.lockout_threshold)) }
                        td data-label="Shared with" { (grants_cell(grants)) }
                        td data-label="Last seen" { (view::last_seen(h.online, h.last_seen)) }
                    }
                }
            }
        } }
        h2 { "Invite a host" }
        (view::invite_host_form(&me.csrf))
    })
}

/// GET /hosts/{host}
pub(super) async fn host(
    State(state): State<Arc<ConsoleState>>,
    me: SignedIn,
    Path(name): Path<String>,
    Query(query): Query<DoneQuery>,
) -> Result<Markup, ConsoleError> {
    let host: HostName = name
        .parse()
        .map_err(|_| ConsoleError::NotFound("There is no such host."))?;
    let body = host_body(&state, &me, &host, query.done.map(|d| (d.text(), false))).await?;
    Ok(view::page(
        &format!("Host {host}"),
        Some((&me.admin, &me.csrf)),
        body,
    ))
}

/// A host's page, with `message` (and whether it is an error) on top.
pub(super) async fn host_body(
    state: &ConsoleState,
    me: &SignedIn,
    host: &HostName,
    message: Option<(&str, bool)>,
) -> Result<Markup, ConsoleError> {
    let h = host.clone();
    let (status, grants, users, events, last_lock) = state
        .blocking(move |s| {
            let filter = AuditFilter {
                host: Some(h.to_string()),
                ..AuditFilter::default()
            };
            let locks = AuditFilter {
                event: Some(AuditEvent::HostLocked.name().into()),
                ..filter.clone()
            };
            Ok((
                s.host_status(&h)?,
                s.grants_of(Some(&h))?,
                s.users()?,
                s.audit_page(&filter, 10)?,
                s.audit_page(&locks, 1)?.pop(),
            ))
        })
        .await?;
    let name = host.as_str();
    let csrf = me.csrf.as_str();
    let grantable: Vec<&str> = users
        .iter()
        .map(|u| u.name.as_str())
        .filter(|u| *u != status.owner && !grants.iter().any(|g| g.user == *u))
        .collect();
    Ok(html! {
        @if let Some((text, error)) = message { (view::notice(text, error)) }
        div.table { table.pairs #host-status data-host=(host.as_str()) {
            tbody {
                tr { th { "Owner" } td { (status.owner) } }
                tr { th { "Online" } td { span.online { (view::flag(status.online, false)) } } }
                tr { th { "Last seen" } td { (view::last_seen(status.online, status.last_seen)) } }
                @if let Some(relay) = status.relay.as_ref().filter(|_| status.online) {
                    tr.relay { th { "Relay" } td { (relay) } }
                }
                tr { th { "Locked" } td { (view::locked_cell(name, csrf, status.locked, status.failures)) } }
                @if let Some(lock) = last_lock.as_ref().filter(|_| status.locked) {
                    tr { th { "Locked since" } td #lock-cause {
                        (view::time(lock.at))
                        @if let Some(d) = &lock.detail { ": " (shown(d)) }
                    } }
                }
                tr { th { "Failures" } td { (view::failures_cell(name, csrf, status.locked, status.failures, status.lockout_threshold)) } }
                tr { th { "Access code set" } td { (view::flag(status.code_set, false)) } }
                tr { th { "Shared access" } td { @if status.shared_access { "enabled" } @else { "disabled" } } }
                tr { th { "Platform" } td { (status.platform.as_deref().unwrap_or("-")) } }
            }
        } }
        h2 { "Shared access" }
        @if grants.is_empty() { p { "Nobody but the owner." } }
        @else {
            div.table { table.rows {
                thead { tr { th { "User" } th { "Granted" } th { "Code inherited" } th { "Rights" } th { "Actions" } } }
                tbody {
                    @for g in &grants {
                        tr data-user=(g.user) {
                            td data-label="User" { (g.user) }
                            td data-label="Granted" {
                                (view::time(g.granted_at))
                                @if let Some(at) = g.expires_at { br; span.ends { "ends " (view::time(at)) } }
                            }
                            td data-label="Code inherited" { @if let Some(at) = g.code_set_at { "set " (view::time(at)) } @else { "-" } }
                            td data-label="Rights" { (view::rights_form(&paths::host_action(name, "rights"), csrf, &g.user, &g.rights, g.idle_secs)) }
                            td.actions {
                                (view::button_form(&paths::host_action(name, "revoke"), csrf, &[("user", &g.user)], "Revoke"))
                                (view::button_form(&paths::host_action(name, "regrant"), csrf, &[("user", &g.user)], "Grant again (current code)"))
                            }
                        }
                    }
                }
            } }
        }
        @if status.shared_access && !grantable.is_empty() {
            form.stack method="post" action=(paths::host_action(name, "grant")) {
                (view::csrf_field(csrf))
                label { "Grant shared access to"
                    select name="user" required {
                        @for u in &grantable { option value=(u) { (u) } }
                    }
                }
                button type="submit" { "Grant shared access" }
            }
        }
        h2 { "Policy" }
        form.stack method="post" action=(paths::host_action(name, "policy")) {
            (view::csrf_field(csrf))
            label { "Shared access"
                select name="shared_access" {
                    option value="enabled" selected[status.shared_access] { "enabled" }
                    option value="disabled" selected[!status.shared_access] { "disabled" }
                }
            }
            label { "Failed attempts that lock the host"
                input type="number" name="lockout_threshold" min="1" max="1000" value=(status.lockout_threshold) required;
            }
            button type="submit" { "Save policy" }
        }
        h2 { "Remove host" }
        p { "For a host that is gone or leaves Latchkey: every session on it and every grant of it end, "
            "and its agent can no longer connect. The next page says what will happen and asks you to confirm." }
        (view::button_form(&paths::host_action(name, "remove"), csrf, &[], "Remove host"))
        h2 { "Recent events" }
        (events_table(&events))
        p { a href={ (paths::AUDIT) "?host=" (name) } { "All events of " (name) } }
    })
}

/// GET /users
pub(super) async fn users(
    State(state): State<Arc<ConsoleState>>,
    me: SignedIn,
    Query(query): Query<DoneQuery>,
) -> Result<Markup, ConsoleError> {
    let message = query.done.map(|d| view::notice(d.text(), false));
    let body = users_body(&state, &me, message).await?;
    Ok(view::page("Users", Some((&me.admin, &me.csrf)), body))
}

/// The users list, with `message` (a notice) on top.
pub(super) async fn users_body(
    state: &ConsoleState,
    me: &SignedIn,
    message: Option<Markup>,
) -> Result<Markup, ConsoleError> {
    let users = state.blocking(|s| s.users()).await?;
    let csrf = me.csrf.as_str();
    Ok(html! {
        @if let Some(message) = message { (message) }
        div.table { table.rows {
            thead { tr { th { "User" } th { "Device" } th { "Email for notices" } th { "Actions" } } }
            tbody {
                @for u in &users {
                    tr {
                        td data-label="User" { (u.name) }
                        td data-label="Device" { @if let Some(d) = &u.device { "enrolled, key " code { (d) } } @else { "not enrolled" } }
                        td data-label="Email" {
                            form.inline method="post" action=(paths::user_email(&u.name)) {
                                (view::csrf_field(csrf))
                                input type="email" name="address" value=(u.email.as_deref().unwrap_or("")) aria-label={ "Email of " (u.name) };
                                " " button type="submit" { "Save" }
                            }
                        }
                        td.actions {
                            form.inline method="post" action=(paths::user_remove(&u.name)) {
                                (view::csrf_field(csrf))
                                button type="submit" aria-label={ "Remove " (u.name) } { "Remove" }
                            }
                        }
                    }
                }
            }
        } }
        h2 { "Invite a user" }
        (view::invite_user_form(csrf))
    })
}

/// The audit page's filters.
#[derive(Deserialize, Default)]
pub(super) struct AuditQuery {
    host: Option<String>,
    user: Option<String>,
    event: Option<String>,
    before: Option<i64>,
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// GET /audit
pub(super) async fn audit(
    State(state): State<Arc<ConsoleState>>,
    me: SignedIn,
    Query(query): Query<AuditQuery>,
) -> Result<Markup, ConsoleError> {
    let filter = AuditFilter {
        host: nonempty(query.host),
        user: nonempty(query.user),
        event: nonempty(query.event),
        before: query.before,
    };
    let f = filter.clone();
    let mut rows = state
        .blocking(move |s| s.audit_page(&f, AUDIT_PAGE + 1))
        .await?;
    let more = rows.len() > AUDIT_PAGE;
    rows.truncate(AUDIT_PAGE);
    let older = rows.last().filter(|_| more).map(|r| {
        serde_urlencoded::to_string([
            ("host", filter.host.as_deref().unwrap_or("")),
            ("user", filter.user.as_deref().unwrap_or("")),
            ("event", filter.event.as_deref().unwrap_or("")),
            ("before", &r.id.to_string()),
        ])
        .unwrap_or_default()
    });
    let body = html! {
        form.filters method="get" action=(paths::AUDIT) {
            label { "Host " input name="host" size="12" value=(filter.host.as_deref().unwrap_or("")); }
            label { "User " input name="user" size="12" value=(filter.user.as_deref().unwrap_or("")); }
            label { "Event " input name="event" size="16" list="events" value=(filter.event.as_deref().unwrap_or("")); }
            datalist #events {
                @for e in FILTERED_EVENTS {
                    option value=(e.name()) {}
                }
            }
            button type="submit" { "Filter" }
        }
        (events_table(&rows))
        @if rows.is_empty() { p { "No events match." } }
        @if let Some(q) = older { p { a rel="next" href={ (paths::AUDIT) "?" (q) } { "Older events" } } }
    };
    Ok(view::page("Audit log", Some((&me.admin, &me.csrf)), body))
}

/// GET /outbox
pub(super) async fn outbox(
    State(state): State<Arc<ConsoleState>>,
    me: SignedIn,
) -> Result<Markup, ConsoleError> {
    let rows = state.blocking(|s| s.outbox(OUTBOX_ROWS)).await?;
    let body = html! {
        p { "Notices are sent at least once: a relay that stops between sending one and recording it sends it again." }
        div.table { table.rows {
            thead { tr { th { "#" } th { "Via" } th { "To" } th { "State" } th { "Tries" } th { "Subject" } th { "Last error" } } }
            tbody {
                @for r in &rows {
                    tr {
                        td data-label="#" { (r.id) } td data-label="Via" { (r.channel) } td data-label="To" { (r.recipient) }
                        td data-label="State" { (r.state) } td data-label="Tries" { (r.attempts) } td data-label="Subject" { (shown(&r.subject)) }
                        td data-label="Last error" { (shown(r.last_error.as_deref().unwrap_or(""))) }
                    }
                }
            }
        } }
    };
    Ok(view::page("Outbox", Some((&me.admin, &me.csrf)), body))
}
