//! The console's page frame and the fragments several pages share. Every
//! value goes through maud, which escapes it: nothing a user, a host or an
//! audit row carries is ever written into a page as markup.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::paths;
use crate::admin::human_time;

/// Readable on a phone: one column, tables that scroll sideways.
pub(super) const STYLE: &str = r#"
:root { color-scheme: light dark; --accent: #2b6cb0; --bad: #c53030; --ok: #2f855a; }
* { box-sizing: border-box; }
body { font: 16px/1.45 system-ui, sans-serif; margin: 0; }
header { display: flex; flex-wrap: wrap; gap: .25rem 1rem; align-items: center;
         padding: .6rem 1rem; border-bottom: 1px solid #8884; }
header strong { margin-right: auto; }
header nav { display: flex; flex-wrap: wrap; gap: .2rem .9rem; }
main { padding: 1rem; max-width: 70rem; margin: auto; }
a { color: var(--accent); }
.table { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
td.event { white-space: nowrap; }
form.stack label { display: grid; gap: .2rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #8883; vertical-align: top; }
form.inline { display: inline; }
form.stack { display: grid; gap: .5rem; max-width: 26rem; margin: .5rem 0 1rem; }
input, select, button { font: inherit; padding: .35rem .5rem; }
button { cursor: pointer; }
.bad { color: var(--bad); font-weight: 600; }
.good { color: var(--ok); }
.notice { padding: .6rem .8rem; border-left: 4px solid var(--accent); background: #8881; margin: .5rem 0 1rem; }
.notice.error { border-color: var(--bad); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(9rem, 1fr)); gap: .6rem; }
.card { border: 1px solid #8884; border-radius: .4rem; padding: .6rem .8rem; }
.card b { display: block; font-size: 1.6rem; }
code.token { display: block; word-break: break-all; padding: .5rem; background: #8882; }
"#;

/// Progressive enhancement: where a page shows hosts, their online and
/// locked cells follow `/events` (server-sent events). Text only, through
/// the DOM: nothing received becomes markup.
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
  events.addEventListener('hosts', (e) => {
    const hosts = new Map(JSON.parse(e.data).map((h) => [h.host, h]));
    for (const row of document.querySelectorAll('[data-host]')) {
      const h = hosts.get(row.dataset.host);
      if (!h) continue;
      show(row.querySelector('.online'), h.online, false);
      show(row.querySelector('.locked'), h.locked, true);
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

/// A time as people read it, in the relay's time zone, with the exact
/// instant for machines.
pub(super) fn time(at: i64) -> Markup {
    let zone = jiff::tz::TimeZone::system();
    match jiff::Timestamp::from_second(at) {
        Ok(t) => html! {
            time datetime=(t.to_string()) { (human_time::local_time(at, &zone)) }
        },
        Err(_) => html! { (at) },
    }
}

/// When a host was last seen: now while it is online.
pub(super) fn last_seen(online: bool, at: Option<i64>) -> Markup {
    html! {
        @if online { "now" }
        @else if let Some(at) = at { (time(at)) }
        @else { "never" }
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
