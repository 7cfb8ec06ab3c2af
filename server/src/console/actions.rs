//! The console's state-changing forms. Each takes an [`Action`] (a
//! signed-in admin whose CSRF token matched) and calls [`crate::admin::service`],
//! exactly as the CLI does; a refusal re-renders the page with the reason.
//! What cannot be undone at once (a revoke, a removal) asks first: the
//! button opens a confirmation page, and only its form (`confirm=yes`)
//! changes anything.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use latchkey_protocol::ids::{HostName, UserName};
use maud::{html, Markup};
use serde::Deserialize;

use super::{
    auth::{Action, SignedIn},
    pages, paths, view, ConsoleError, ConsoleState,
};
use crate::{
    admin::service::{self, ServiceError},
    store::{GrantTerms, InviteKind, Removal, StoreError},
};

/// The policy form.
#[derive(Deserialize)]
pub(super) struct PolicyForm {
    shared_access: String,
    lockout_threshold: String,
}

fn parse_user(name: &str) -> Result<UserName, ConsoleError> {
    name.trim()
        .parse()
        .map_err(|_| ConsoleError::BadInput(format!("'{}' is not a valid user name", name.trim())))
}

fn parse_host(name: &str) -> Result<HostName, ConsoleError> {
    name.parse()
        .map_err(|_| ConsoleError::NotFound("There is no such host."))
}

/// Whether an action's failure is the admin's to fix (shown on the page)
/// rather than the relay's.
fn refusal(e: &ServiceError) -> bool {
    matches!(
        e,
        ServiceError::BadEmail(_)
            | ServiceError::Store(
                StoreError::Refused(_)
                    | StoreError::NoSuchHost(_)
                    | StoreError::NoSuchUser(_)
                    | StoreError::Exists { .. }
            )
    )
}

/// POST /hosts/{host}/{action}
pub(super) async fn host_action(
    State(state): State<Arc<ConsoleState>>,
    Path((host, action)): Path<(String, String)>,
    Action { by, form }: Action<std::collections::HashMap<String, String>>,
) -> Result<Response, ConsoleError> {
    let host = parse_host(&host)?;
    let actor = by.actor();
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if action == "remove" {
        return remove_host(&state, &by, host, field("confirm") == "yes").await;
    }
    let (done, result) = match action.as_str() {
        "grant" | "revoke" | "regrant" => {
            let user = parse_user(&field("user"))?;
            if action == "revoke" && field("confirm") != "yes" {
                return Ok(confirm_revoke(&by, &host, &user));
            }
            let (h, kind) = (host.clone(), action.clone());
            let result = state
                .run(move |s| match kind.as_str() {
                    "grant" => service::grant(s, &h, &user, &GrantTerms::default(), &actor),
                    "revoke" => service::revoke(s, &h, &user, &actor),
                    _ => service::regrant(s, &h, &user, &actor),
                })
                .await;
            (action.clone(), result)
        }
        "rights" => {
            let user = parse_user(&field("user"))?;
            let rights =
                view::rights_from_form(field).map_err(|e| ConsoleError::BadInput(e.to_string()))?;
            let idle = match field("idle").trim() {
                "" => None,
                text => Some(
                    service::idle_limit(text).map_err(|e| ConsoleError::BadInput(e.to_string()))?,
                ),
            };
            let h = host.clone();
            let result = state
                .run(move |s| service::set_rights(s, &h, &user, &rights, idle, &actor))
                .await;
            ("rights".to_string(), result)
        }
        "unlock" => {
            let h = host.clone();
            let result = state
                .run(move |s| service::unlock(s, &h, &actor).map(|_| ()))
                .await;
            ("unlocked".to_string(), result)
        }
        "policy" => {
            let form = PolicyForm {
                shared_access: field("shared_access"),
                lockout_threshold: field("lockout_threshold"),
            };
            let shared = match form.shared_access.as_str() {
                "enabled" => true,
                "disabled" => false,
                _ => {
                    return Err(ConsoleError::BadInput(
                        "shared access is enabled or disabled".into(),
                    ))
                }
            };
            let threshold: u32 = form.lockout_threshold.trim().parse().map_err(|_| {
                ConsoleError::BadInput("the lockout threshold must be a whole number".into())
            })?;
            let h = host.clone();
            let result = state
                .run(move |s| service::set_policy(s, &h, Some(shared), Some(threshold), &actor))
                .await;
            ("policy".to_string(), result)
        }
        _ => return Err(ConsoleError::NotFound("There is no such action.")),
    };
    match result {
        Ok(()) => {
            let done = match done.as_str() {
                "grant" => "granted",
                "revoke" => "revoked",
                "regrant" => "regranted",
                other => other,
            };
            Ok(
                Redirect::to(&format!("{}?done={done}", paths::host(host.as_str())))
                    .into_response(),
            )
        }
        Err(e) if refusal(&e) => {
            let body = pages::host_body(&state, &by, &host, Some((&e.to_string(), true))).await?;
            Ok((
                StatusCode::CONFLICT,
                view::page(&format!("Host {host}"), Some((&by.admin, &by.csrf)), body),
            )
                .into_response())
        }
        Err(e) => Err(e.into()),
    }
}

/// A revoke ends the user's sessions at once, so the first press only
/// asks; the revoke itself needs the form this page posts (`confirm=yes`),
/// which works without JavaScript.
fn confirm_revoke(by: &SignedIn, host: &HostName, user: &UserName) -> Response {
    let body = html! {
        p { "Revoke " strong { (user) } "'s shared access to " strong { (host) } "? "
            "Their sessions on " (host) " end at once, and they cannot log in to it again "
            "until an admin grants access anew." }
        form.inline method="post" action=(paths::host_action(host.as_str(), "revoke")) {
            (view::csrf_field(&by.csrf))
            input type="hidden" name="user" value=(user);
            input type="hidden" name="confirm" value="yes";
            button type="submit" { "Revoke" }
        }
        " "
        a href=(paths::host(host.as_str())) { "Cancel" }
    };
    view::page("Revoke shared access?", Some((&by.admin, &by.csrf)), body).into_response()
}

/// A list of names as a sentence says it: "a", "a and b", "a, b and c".
fn and_list(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// A page that asks before a removal: what will happen, then the form that
/// confirms (`confirm=yes`, no script needed) and a way back.
fn confirm_page(
    by: &SignedIn,
    title: &str,
    warning: Option<Markup>,
    what: Markup,
    action: &str,
    button: &str,
    back: &str,
) -> Response {
    let body = html! {
        @if let Some(warning) = warning { (warning) }
        (what)
        form.inline method="post" action=(action) {
            (view::csrf_field(&by.csrf))
            input type="hidden" name="confirm" value="yes";
            button type="submit" { (button) }
        }
        " "
        a href=(back) { "Cancel" }
    };
    view::page(title, Some((&by.admin, &by.csrf)), body).into_response()
}

/// Hosts as links to their pages, where each is removed.
fn host_links(hosts: &[String]) -> Markup {
    html! {
        @for (i, h) in hosts.iter().enumerate() {
            @if i > 0 { ", " }
            a href=(paths::host(h)) { (h) }
        }
    }
}

/// Asks before removing `host`, saying what the removal ends.
async fn confirm_remove_host(
    state: &ConsoleState,
    by: &SignedIn,
    host: &HostName,
) -> Result<Response, ConsoleError> {
    let h = host.clone();
    let (status, grants) = state
        .blocking(move |s| Ok((s.host_status(&h)?, s.grants_of(Some(&h))?)))
        .await?;
    let shared: Vec<String> = grants.into_iter().map(|g| g.user).collect();
    let what = html! {
        p { "Remove host " strong { (host) } " (owner " (status.owner) ") from Latchkey? "
            "This cannot be undone:" }
        ul {
            li { "Every session on " (host) " ends at once, on every relay." }
            li { "Its agent is refused as an unknown device and stops. " (host)
                 " can come back only through a new invite, as a new host with nothing of this one." }
            @if shared.is_empty() {
                li { "Nobody else has shared access to it." }
            } @else {
                li { "The shared access of " (and_list(&shared)) " ends." }
            }
            li { "Any unused invite for it is cancelled." }
            @if shared.is_empty() {
                li { "Its owner, " (status.owner) ", is emailed." }
            } @else {
                li { "Its owner, " (status.owner) ", and " (and_list(&shared)) " are emailed." }
            }
            li { "Its audit history stays." }
        }
    };
    Ok(confirm_page(
        by,
        &format!("Remove host {host}?"),
        None,
        what,
        &paths::host_action(host.as_str(), "remove"),
        &format!("Remove host {host}"),
        &paths::host(host.as_str()),
    ))
}

/// What a host's removal ended, for the notice on the hosts list.
fn host_removed_text(host: &HostName, removal: &Removal) -> String {
    let mut text = format!(
        "Host {host} removed: its agent can no longer connect, and every session on it ended."
    );
    if removal.grants.is_empty() {
        text.push_str(" Nobody else had shared access; the owner is emailed.");
    } else {
        text.push_str(&format!(
            " The shared access of {} ended; they and the owner are emailed.",
            and_list(&removal.grants)
        ));
    }
    if let Some(invites) = removal.invites_sentence() {
        text.push(' ');
        text.push_str(&invites);
    }
    text.push_str(" Its audit history stays.");
    text
}

/// POST /hosts/{host}/remove: asks first; with `confirmed`, removes the
/// host and shows the hosts list with what ended.
async fn remove_host(
    state: &ConsoleState,
    by: &SignedIn,
    host: HostName,
    confirmed: bool,
) -> Result<Response, ConsoleError> {
    if !confirmed {
        return confirm_remove_host(state, by, &host).await;
    }
    let (h, actor) = (host.clone(), by.actor());
    let (status, message) = match state
        .run(move |s| service::remove_host(s, &h, &actor))
        .await
    {
        Ok(removal) => (
            StatusCode::OK,
            view::notice(&host_removed_text(&host, &removal), false),
        ),
        Err(e) if refusal(&e) => (StatusCode::CONFLICT, view::notice(&e.to_string(), true)),
        Err(e) => return Err(e.into()),
    };
    let body = pages::hosts_body(state, by, Some(message)).await?;
    Ok((
        status,
        view::page("Hosts", Some((&by.admin, &by.csrf)), body),
    )
        .into_response())
}

/// Asks before removing `user`, saying what the removal ends; a user who
/// owns hosts is told that those go first.
async fn confirm_remove_user(
    state: &ConsoleState,
    by: &SignedIn,
    user: &UserName,
) -> Result<Response, ConsoleError> {
    let (users, hosts, grants) = state
        .blocking(|s| Ok((s.users()?, s.hosts()?, s.grants_of(None)?)))
        .await?;
    let name = user.as_str();
    if !users.iter().any(|u| u.name == name) {
        return Err(ConsoleError::NotFound("There is no such user."));
    }
    let owned: Vec<String> = hosts
        .iter()
        .filter(|h| h.owner == name)
        .map(|h| h.name.clone())
        .collect();
    let shared: Vec<String> = grants
        .iter()
        .filter(|g| g.user == name)
        .map(|g| g.host.clone())
        .collect();
    let warning = (!owned.is_empty()).then(|| {
        html! {
            p.notice.error role="alert" {
                strong { (user) } " owns " (host_links(&owned)) ". A user who owns hosts cannot be "
                "removed, so that no host is left without an owner: remove "
                @if owned.len() == 1 { "that host" } @else { "those hosts" }
                " first (Remove host, on its page), then " (user) "."
            }
        }
    });
    let what = html! {
        p { "Remove user " strong { (user) } " from Latchkey? This cannot be undone:" }
        ul {
            li { "Their device can no longer log in, and any session they have ends at once, on every relay." }
            @if shared.is_empty() {
                li { "They have no shared access to any host." }
            } @else {
                li { "Their shared access to " (and_list(&shared)) " ends, and "
                     @if shared.len() == 1 { "its owner is" } @else { "the owners are" } " emailed." }
            }
            li { "Any unused invite for them is cancelled." }
            li { "Their audit history stays. Inviting " (user) " again makes a new user with nothing of this one." }
        }
    };
    Ok(confirm_page(
        by,
        &format!("Remove user {user}?"),
        warning,
        what,
        &paths::user_remove(name),
        &format!("Remove user {user}"),
        paths::USERS,
    ))
}

/// What a user's removal ended, for the notice on the users list.
fn user_removed_text(user: &UserName, removal: &Removal) -> String {
    let mut text = format!("User {user} removed: their device can no longer log in.");
    if removal.grants.is_empty() {
        text.push_str(" They had no shared access.");
    } else {
        text.push_str(&format!(
            " Their shared access to {} ended, with any session on it; the owners are emailed.",
            and_list(&removal.grants)
        ));
    }
    if let Some(invites) = removal.invites_sentence() {
        text.push(' ');
        text.push_str(&invites);
    }
    text.push_str(" Their audit history stays.");
    text
}

/// The removal form: `confirm=yes` only on the confirmation page's.
#[derive(Deserialize)]
pub(super) struct RemoveForm {
    #[serde(default)]
    confirm: String,
}

/// POST /users/{user}/remove: asks first; confirmed, removes the user and
/// shows the users list with what ended, or why not (a user who owns
/// hosts is refused).
pub(super) async fn remove_user(
    State(state): State<Arc<ConsoleState>>,
    Path(user): Path<String>,
    Action { by, form }: Action<RemoveForm>,
) -> Result<Response, ConsoleError> {
    let user = parse_user(&user)?;
    if form.confirm != "yes" {
        return confirm_remove_user(&state, &by, &user).await;
    }
    let (u, actor) = (user.clone(), by.actor());
    let (status, message) = match state
        .run(move |s| service::remove_user(s, &u, &actor))
        .await
    {
        Ok(removal) => (
            StatusCode::OK,
            view::notice(&user_removed_text(&user, &removal), false),
        ),
        Err(e) if refusal(&e) => {
            let name = user.to_string();
            let owned: Vec<String> = state
                .blocking(move |s| {
                    Ok(s.hosts()?
                        .into_iter()
                        .filter(|h| h.owner == name)
                        .map(|h| h.name)
                        .collect())
                })
                .await?;
            let message = html! {
                (view::notice(&e.to_string(), true))
                @if !owned.is_empty() {
                    p { "Remove " (if owned.len() == 1 { "that host" } else { "those hosts" })
                        " from " (if owned.len() == 1 { "its page" } else { "their pages" })
                        " first: " (host_links(&owned)) "." }
                }
            };
            (StatusCode::CONFLICT, message)
        }
        Err(e) => return Err(e.into()),
    };
    let body = pages::users_body(&state, &by, Some(message)).await?;
    Ok((
        status,
        view::page("Users", Some((&by.admin, &by.csrf)), body),
    )
        .into_response())
}

/// The email form.
#[derive(Deserialize)]
pub(super) struct EmailForm {
    address: String,
}

/// POST /users/{user}/email
pub(super) async fn set_email(
    State(state): State<Arc<ConsoleState>>,
    Path(user): Path<String>,
    Action { by, form }: Action<EmailForm>,
) -> Result<Response, ConsoleError> {
    let user = parse_user(&user)?;
    let address = Some(form.address.trim().to_string()).filter(|a| !a.is_empty());
    let actor = by.actor();
    state
        .run(move |s| service::set_email(s, &user, address.as_deref(), &actor))
        .await?;
    Ok(Redirect::to(&format!("{}?done=email", paths::USERS)).into_response())
}

/// The invite forms.
#[derive(Deserialize)]
pub(super) struct InviteForm {
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    owner: String,
}

/// POST /invite/user and /invite/host: the token is shown once, here.
pub(super) async fn invite(
    State(state): State<Arc<ConsoleState>>,
    uri: axum::http::Uri,
    Action { by, form }: Action<InviteForm>,
) -> Result<Response, ConsoleError> {
    let for_host = uri.path() == paths::INVITE_HOST;
    let kind = if for_host {
        let host: HostName = form.name.trim().parse().map_err(|_| {
            ConsoleError::BadInput(format!("'{}' is not a valid host name", form.name.trim()))
        })?;
        let owner = parse_user(&form.owner)?;
        (
            host.to_string(),
            InviteKind::Host {
                owner,
                lockout_threshold: state.config.lockout_threshold,
            },
        )
    } else {
        let user = parse_user(&form.name)?;
        let email = Some(form.email.trim().to_string()).filter(|e| !e.is_empty());
        (user.to_string(), InviteKind::User { email })
    };
    let (name, kind) = kind;
    let actor = by.actor();
    let (config, pin, n) = (state.config.clone(), state.pin, name.clone());
    let invitation = state
        .run(move |s| service::invite(s, &config, &pin, &n, kind, &actor))
        .await;
    let invitation = match invitation {
        Ok(i) => i,
        Err(e) if refusal(&e) => {
            let body = html! {
                (view::notice(&e.to_string(), true))
                @if for_host { (view::invite_host_form(&by.csrf)) } @else { (view::invite_user_form(&by.csrf)) }
            };
            return Ok((
                StatusCode::CONFLICT,
                view::page("Invite", Some((&by.admin, &by.csrf)), body),
            )
                .into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let command = if invitation.is_host {
        format!("latchkey host enroll {}", invitation.token)
    } else {
        format!("latchkey enroll {}", invitation.token)
    };
    let body = html! {
        (view::notice("This token is shown once. It works once, until it expires.", false))
        p { @if for_host { "On host " strong { (name) } ", run:" } @else { "On " strong { (name) } "'s device, run:" } }
        code.token #invite-token { (command) }
        p {
            button type="button" data-copy="invite-token" hidden { "Copy" }
            " Expires " (view::time(invitation.expires_at)) "."
        }
        script { (maud::PreEscaped(COPY_SCRIPT)) }
        p { a href=(if for_host { paths::HOSTS } else { paths::USERS }) { "Back" } }
    };
    let mut response = view::page("Invite", Some((&by.admin, &by.csrf)), body).into_response();
    // A token page must not be kept by the browser or a proxy.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// Progressive enhancement: a Copy button, shown only where it works.
pub(super) const COPY_SCRIPT: &str = r#"
for (const b of document.querySelectorAll('button[data-copy]')) {
  if (!navigator.clipboard) continue;
  b.hidden = false;
  b.addEventListener('click', () => {
    const text = document.getElementById(b.dataset.copy).textContent;
    navigator.clipboard.writeText(text).then(() => { b.textContent = 'Copied'; });
  });
}
"#;
