//! The console's page frame and the fragments several pages share. Every
//! value goes through maud, which escapes it: nothing a user, a host or an
//! audit row carries is ever written into a page as markup.

use latchkey_protocol::rights::{Right, Rights};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::paths;
use crate::{admin::human_time, clock::now_unix};

/// The console's one style sheet. Wide screens get tables; under 40rem
/// (a phone) each row of a list becomes a card of "label: value" lines (the
/// labels come from each cell's `data-label`), so nothing is wider than the
/// screen and no empty column takes room.
pub(super) const STYLE: &str = r#"
:root { color-scheme: light dark; --accent: #2b6cb0; --bad: #c53030; --ok: #2f855a; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { font: 16px/1.45 system-ui, sans-serif; margin: 0; }
header { display: flex; flex-wrap: wrap; gap: .25rem 1rem; align-items: center;
         padding: .6rem 1rem; border-bottom: 1px solid #8884; }
header strong { margin-right: auto; }
header nav { display: flex; flex-wrap: wrap; gap: .2rem .9rem; }
main { padding: 1rem; max-width: 70rem; margin: auto; }
a { color: var(--accent); }
.table { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #8883; vertical-align: top;
         overflow-wrap: anywhere; }
td.event, time { white-space: nowrap; }
td.actions form + form { margin-left: .4rem; }
form.inline { display: inline; }
form.stack { display: grid; gap: .5rem; max-width: 26rem; margin: .5rem 0 1rem; }
form.stack label { display: grid; gap: .2rem; }
form.rights { display: flex; flex-wrap: wrap; gap: .3rem .8rem; align-items: center; max-width: 24rem; }
form.rights label { white-space: nowrap; }
form.rights label.targets { white-space: normal; flex-basis: 100%; }
form.rights label.targets input { display: block; width: 100%; max-width: 16rem; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: end; }
input, select, button { font: inherit; padding: .35rem .5rem; max-width: 100%; }
button { cursor: pointer; }
.bad { color: var(--bad); font-weight: 600; }
.good { color: var(--ok); }
.field-error { color: var(--bad); font-size: .95rem; }
.notice { padding: .6rem .8rem; border-left: 4px solid var(--accent); background: #8881; margin: .5rem 0 1rem; }
.notice.error { border-color: var(--bad); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(9rem, 1fr)); gap: .6rem; }
.card { border: 1px solid #8884; border-radius: .4rem; padding: .6rem .8rem; }
.card b { display: block; font-size: 1.6rem; }
code { overflow-wrap: anywhere; }
code.token { display: block; word-break: break-all; padding: .5rem; background: #8882; }
@media (max-width: 40rem) {
  main { padding: .75rem; }
  table.rows, table.rows tbody, table.rows tr, table.rows td { display: block; width: 100%; }
  table.rows thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); }
  table.rows tr { border: 1px solid #8884; border-radius: .4rem; margin: 0 0 .6rem; padding: .3rem .6rem; }
  table.rows td { border: 0; padding: .15rem 0 .15rem 7.5rem; }
  table.rows td::before { content: attr(data-label); float: left; width: 7rem; margin-left: -7.5rem;
                          font-weight: 600; }
  table.rows td::after { content: ""; display: block; clear: both; }
  table.rows td:empty { display: none; }
  table.rows td.actions { display: flex; flex-wrap: wrap; gap: .4rem; padding: .3rem 0; }
  table.rows td.actions form + form { margin-left: 0; }
  table.rows td.actions::before, table.rows td.actions::after { content: none; }
  table.pairs th { width: 7.5rem; }
}
"#;

/// Progressive enhancement: where a page shows hosts, their online, locked,
/// failures and last-seen values, which lock action they offer, and the
/// relay (shown while online) follow `/events` (server-sent events). The
/// server makes every value and picks the action; this only copies them,
/// as text through the DOM: nothing received becomes markup.
pub(super) const LIVE_SCRIPT: &str = r#"
if (window.EventSource && document.querySelector('[data-host]')) {
  const events = new EventSource('/events');
  const show = (cell, on, badWhenOn) => {
    if (!cell) return;
    const text = document.createElement('span');
    text.textContent = on ? 'yes' : 'no';
    if (on) text.className = badWhenOn ? 'bad' : 'good';
    cell.replaceChildren(text);
  };
  const write = (cell, text) => { if (cell) cell.textContent = text; };
  events.addEventListener('hosts', (e) => {
    const hosts = new Map(JSON.parse(e.data).map((h) => [h.host, h]));
    for (const row of document.querySelectorAll('[data-host]')) {
      const h = hosts.get(row.dataset.host);
      if (!h) continue;
      show(row.querySelector('.online'), h.online, false);
      show(row.querySelector('.locked'), h.locked, true);
      write(row.querySelector('.failures'), String(h.failures));
      write(row.querySelector('.last-seen'), h.seen);
      const relay = row.querySelector('.relay');
      if (relay) relay.hidden = !h.online;
      for (const form of row.querySelectorAll('form[data-offered]')) {
        form.hidden = form.dataset.offered !== h.offer;
      }
    }
  });
}
"#;

/// A whole page. `admin` is the signed-in admin (none on the login and
/// setup pages); `csrf` is their session's token, for the sign-out form.
pub(super) fn page(title: &str, signed_in: Option<(&str, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Latchkey" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "Latchkey admin" }
                    @if let Some((admin, csrf)) = signed_in {
                        nav {
                            a href=(paths::OVERVIEW) { "Overview" }
                            a href=(paths::HOSTS) { "Hosts" }
                            a href=(paths::USERS) { "Users" }
                            a href=(paths::AUDIT) { "Audit log" }
                            a href=(paths::OUTBOX) { "Outbox" }
                        }
                        form.inline method="post" action=(paths::LOGOUT) {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out " (admin) }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                @if signed_in.is_some() {
                    script { (PreEscaped(LIVE_SCRIPT)) }
                }
            }
        }
    }
}

/// A message above a page's content.
pub(super) fn notice(text: &str, error: bool) -> Markup {
    html! {
        @if error {
            p.notice.error role="alert" { (text) }
        } @else {
            p.notice role="status" { (text) }
        }
    }
}

/// "yes" or "no", marked when the yes is bad news.
pub(super) fn flag(on: bool, bad_when_on: bool) -> Markup {
    html! {
        @if on && bad_when_on { span.bad { "yes" } }
        @else if on { span.good { "yes" } }
        @else { "no" }
    }
}

/// A time as people read it, in the relay's time zone: short enough for
/// a phone's column (see [`short_time`]), with the full time on hover and
/// the exact instant for machines.
pub(super) fn time(at: i64) -> Markup {
    let zone = jiff::tz::TimeZone::system();
    match jiff::Timestamp::from_second(at) {
        Ok(t) => html! {
            time datetime=(t.to_string()) title=(human_time::local_time(at, &zone)) {
                (short_time(at, now_unix(), &zone))
            }
        },
        Err(_) => html! { (at) },
    }
}

/// `at` as briefly as it stays clear beside `now`: the time of day for
/// today (`14:03:05`), the day and minute this year (`29 Nov 14:03`), else
/// the date (`2025-11-29`).
pub(super) fn short_time(at: i64, now: i64, zone: &jiff::tz::TimeZone) -> String {
    let (Ok(at), Ok(now)) = (
        jiff::Timestamp::from_second(at),
        jiff::Timestamp::from_second(now),
    ) else {
        return at.to_string();
    };
    let (at, now) = (at.to_zoned(zone.clone()), now.to_zoned(zone.clone()));
    let format = if at.date() == now.date() {
        "%H:%M:%S"
    } else if at.year() == now.year() {
        "%-d %b %H:%M"
    } else {
        "%Y-%m-%d"
    };
    at.strftime(format).to_string()
}

/// When a host was last seen, as text: "now" while its agent is connected,
/// else when it left (the store records that moment as it goes offline).
/// Pages and the live status both say it this way.
pub(super) fn last_seen_text(online: bool, at: Option<i64>) -> String {
    match (online, at) {
        (true, _) => "now".into(),
        (false, Some(at)) => short_time(at, now_unix(), &jiff::tz::TimeZone::system()),
        (false, None) => "never".into(),
    }
}

/// [`last_seen_text`] in a page, where the live status rewrites it.
pub(super) fn last_seen(online: bool, at: Option<i64>) -> Markup {
    let zone = jiff::tz::TimeZone::system();
    let full = at
        .filter(|_| !online)
        .map(|at| human_time::local_time(at, &zone));
    html! { span.last-seen title=[full] { (last_seen_text(online, at)) } }
}

/// The lock action a host offers: Unlock while it is locked, Reset while
/// it counts failures short of the lock (both clear the count).
pub(super) fn lock_offer(locked: bool, failures: u32) -> Option<&'static str> {
    if locked {
        Some("unlock")
    } else if failures > 0 {
        Some("reset")
    } else {
        None
    }
}

/// A lock action's button, present in every host row so that the live
/// status can show it; hidden unless the host offers it.
fn lock_action(host: &str, csrf: &str, offer: Option<&str>, action: &str, label: &str) -> Markup {
    html! {
        " "
        form.inline method="post" action=(paths::host_action(host, "unlock"))
            data-offered=(action) hidden[offer != Some(action)] {
            (csrf_field(csrf))
            button type="submit" { (label) }
        }
    }
}

/// Whether a host is locked, with its Unlock button beside it.
pub(super) fn locked_cell(host: &str, csrf: &str, locked: bool, failures: u32) -> Markup {
    let offer = lock_offer(locked, failures);
    html! {
        span.locked { (flag(locked, true)) }
        (lock_action(host, csrf, offer, "unlock", "Unlock"))
    }
}

/// A host's failure count and the threshold, with its Reset button beside
/// them.
pub(super) fn failures_cell(
    host: &str,
    csrf: &str,
    locked: bool,
    failures: u32,
    threshold: u32,
) -> Markup {
    let offer = lock_offer(locked, failures);
    html! {
        span.failures { (failures) } " of " (threshold)
        (lock_action(host, csrf, offer, "reset", "Reset"))
    }
}

/// A hidden CSRF field, which every state-changing form carries.
pub(super) fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A one-button form that posts to `action`.
pub(super) fn button_form(
    action: &str,
    csrf: &str,
    fields: &[(&str, &str)],
    label: &str,
) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf_field(csrf))
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" { (label) }
        }
    }
}

/// A shared user's rights as a form: a checkbox per right, the forward
/// targets they are narrowed to, and a button that sets them.
pub(super) fn rights_form(
    action: &str,
    csrf: &str,
    user: &str,
    rights: &Rights,
    idle_secs: Option<u32>,
) -> Markup {
    let idle = idle_secs.map_or(String::new(), |s| {
        jiff::SignedDuration::from_secs(i64::from(s)).to_string()
    });
    let targets = rights
        .forward_targets()
        .map(|t| {
            t.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    html! {
        form.rights method="post" action=(action) {
            (csrf_field(csrf))
            input type="hidden" name="user" value=(user);
            @for right in Right::ALL {
                label {
                    input type="checkbox" name=(format!("right-{right}")) value="on" checked[rights.allows(right)];
                    " " (right.name())
                }
            }
            label.targets { "Forward only to (IP:PORT, comma-separated)"
                input type="text" name="forward_to" value=(targets) placeholder="any the host allows";
            }
            label.targets { "End a session idle for (15m, 1h)"
                input type="text" name="idle" value=(idle) placeholder="no limit";
            }
            button type="submit" { "Set rights" }
        }
    }
}

/// Rights from [`rights_form`]'s fields.
pub(super) fn rights_from_form(
    field: impl Fn(&str) -> String,
) -> Result<Rights, crate::admin::service::ServiceError> {
    let rights = Rights::only(
        Right::ALL
            .into_iter()
            .filter(|r| field(&format!("right-{r}")) == "on"),
    );
    let targets = latchkey_protocol::rights::parse_targets(&field("forward_to"))?;
    crate::admin::service::rights_from(&rights, &targets)
}

/// The form that invites a user.
pub(super) fn invite_user_form(csrf: &str) -> maud::Markup {
    html! {
        form.stack method="post" action=(paths::INVITE_USER) {
            (csrf_field(csrf))
            label { "Name" input name="name" required pattern="[A-Za-z0-9][A-Za-z0-9._-]*"; }
            label { "Email for notices (optional)" input type="email" name="email"; }
            button type="submit" { "Invite user" }
        }
    }
}

/// The form that invites a host.
pub(super) fn invite_host_form(csrf: &str) -> maud::Markup {
    html! {
        form.stack method="post" action=(paths::INVITE_HOST) {
            (csrf_field(csrf))
            label { "Host name" input name="name" required pattern="[A-Za-z0-9][A-Za-z0-9._-]*"; }
            label { "Owner (a user)" input name="owner" required; }
            button type="submit" { "Invite host" }
        }
    }
}
