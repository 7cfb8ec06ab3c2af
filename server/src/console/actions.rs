//! The console's state-changing forms. Each takes an [`Action`] (a
//! signed-in admin whose CSRF token matched) and calls [`crate::admin::service`],
//! exactly as the CLI does; a refusal re-renders the page with the reason.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use latchkey_protocol::ids::{HostName, UserName};
use maud::html;
use serde::Deserialize;

use super::{
    auth::{Action, SignedIn},
    pages, paths, view, ConsoleError, ConsoleState,
};
use crate::{
    admin::service::{self, ServiceError},
    store::{InviteKind, StoreError},
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
    let (done, result) = match action.as_str() {
        "grant" | "revoke" | "regrant" => {
            let user = parse_user(&field("user"))?;
            if action == "revoke" && field("confirm") != "yes" {
                return Ok(confirm_revoke(&by, &host, &user));
            }
            let (h, kind) = (host.clone(), action.clone());
            let result = state
                .run(move |s| match kind.as_str() {
                    "grant" => service::grant(s, &h, &user, &actor),
                    "revoke" => service::revoke(s, &h, &user, &actor),
                    _ => service::regrant(s, &h, &user, &actor),
                })
                .await;
            (action.clone(), result)
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
