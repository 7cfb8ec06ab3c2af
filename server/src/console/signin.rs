//! Signing in (password and TOTP code), the one-time setup link that sets
//! both, and signing out. Password hashes are Argon2id; a TOTP code is
//! accepted once (the store keeps the last step used). Logins are
//! rate-limited per address here and counted per account in the store,
//! which locks the account after `admin_login_lockout` failures in a row.

use std::sync::Arc;

use argon2::{
    password_hash::{PasswordHasher, SaltString},
    Argon2,
};
use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;
use totp_rs::{Secret, Totp};
use zeroize::Zeroizing;

use super::{
    auth::{self, Action, Client, PublicForm},
    hashing, paths, view, ConsoleError, ConsoleState,
};
use crate::{
    admin::service,
    clock::now_unix,
    rules::account_lockout::ConsoleLockout,
    store::{ConsoleLogin, StoreError},
};

/// Shortest password accepted at setup.
const MIN_PASSWORD: usize = 12;

/// The TOTP parameters every authenticator app takes: SHA-1, 6 digits,
/// 30 s steps, one step of clock skew either way.
pub(super) fn totp(secret: &[u8], account: &str) -> Result<Totp, ConsoleError> {
    totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .with_account_name(account.replace(':', "_"))
        .with_issuer(Some("Latchkey"))
        .build()
        .map_err(|_| ConsoleError::BadInput("the second-factor key is not valid".into()))
}

fn unix_now_u64() -> u64 {
    u64::try_from(now_unix()).unwrap_or(0)
}

/// A hash that no password matches, checked when the name is unknown so
/// that an unknown name takes as long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(auth::random_token().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// The sign-in form, with the name typed before (a password or code is
/// never sent back).
fn login_page(
    csrf: &str,
    name: &str,
    message: Option<&str>,
    error: bool,
    status: StatusCode,
) -> Response {
    let body = html! {
        @if let Some(m) = message { (view::notice(m, error)) }
        form.stack method="post" action=(paths::LOGIN) {
            (view::csrf_field(csrf))
            label { "Name" input name="name" value=(name) autocomplete="username" required autofocus[name.is_empty()]; }
            label { "Password" input type="password" name="password" autocomplete="current-password" required autofocus[!name.is_empty()]; }
            label { "Code from your authenticator app"
                input name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9 ]*" required;
            }
            button type="submit" { "Sign in" }
        }
    };
    (status, view::page("Sign in", None, body)).into_response()
}

fn with_cookie(mut response: Response, cookie: Option<header::HeaderValue>) -> Response {
    if let Some(c) = cookie {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

/// GET /login
pub(super) async fn show_login(
    client: Client,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Response {
    let (csrf, cookie) = auth::form_token(&headers, client);
    let ready = query
        .ready
        .then_some("Your account is ready: sign in with your password and a new code.");
    with_cookie(login_page(&csrf, "", ready, false, StatusCode::OK), cookie)
}

/// The login page's query: `?ready=true` right after setup.
#[derive(Deserialize)]
pub(super) struct LoginQuery {
    #[serde(default)]
    ready: bool,
}

/// The login form.
#[derive(Deserialize)]
pub(super) struct LoginForm {
    name: String,
    password: Zeroizing<String>,
    code: String,
    csrf: String,
}

/// Why a sign-in failed, as vague as it must be (it never says which
/// field was wrong, or whether the account is locked), with how long a lock
/// lasts, from the rule the store enforces.
fn sign_in_failed(rule: ConsoleLockout) -> String {
    format!(
        "Sign-in failed: the name, password or code is wrong, or the account is locked \
         after repeated failures. A lock ends by itself {} after it began (or at once \
         with a new setup link from another admin).",
        duration_text(rule.lasts_secs)
    )
}

/// A duration for people: whole hours, whole minutes, or seconds.
fn duration_text(secs: i64) -> String {
    let (n, unit) = match secs {
        s if s % 3600 == 0 => (s / 3600, "hour"),
        s if s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// POST /login
pub(super) async fn login(
    State(state): State<Arc<ConsoleState>>,
    PublicForm { client, form }: PublicForm<LoginForm>,
) -> Result<Response, ConsoleError> {
    if !state.allow_login(client.source) {
        return Ok(login_page(
            &form.csrf,
            form.name.trim(),
            Some("Too many sign-in attempts from your address: wait a minute."),
            true,
            StatusCode::TOO_MANY_REQUESTS,
        ));
    }
    let store = state.store.clone();
    let rule = state.config.console_lockout();
    let name = form.name.trim().to_string();
    let csrf = form.csrf.clone();
    let signed_in = state
        .hashing
        .run(move || {
            let name = form.name.trim().to_string();
            let creds = store.admin_credentials(&name)?;
            let hash = creds
                .as_ref()
                .map_or(decoy_hash(), |c| c.password_hash.as_str());
            let password_ok = hashing::verify(form.password.as_bytes(), hash);
            let step = creds.as_ref().and_then(|c| {
                let code: String = form.code.chars().filter(|c| !c.is_whitespace()).collect();
                totp(&c.totp_secret, &name)
                    .ok()?
                    .check(&code, unix_now_u64())
            });
            let outcome = match (creds.as_ref(), password_ok, step) {
                (Some(_), true, Some(totp_step)) => ConsoleLogin::Passed { totp_step },
                _ => ConsoleLogin::Failed,
            };
            let ok = store.console_login(&name, outcome, rule, client.source, now_unix())?;
            let credential = creds.map(|c| auth::credential(&c.password_hash));
            Ok::<_, StoreError>(credential.filter(|_| ok).map(|c| (name, c)))
        })
        .await??;
    Ok(match signed_in {
        Some((admin, credential)) => auth::sign_in(&state, &admin, credential, client),
        None => login_page(
            &csrf,
            &name,
            Some(&sign_in_failed(rule)),
            true,
            StatusCode::UNAUTHORIZED,
        ),
    })
}

/// POST /logout
pub(super) async fn logout(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    action: Action<serde::de::IgnoredAny>,
) -> Response {
    auth::sign_out(&state, &headers, action.by.client)
}

/// The setup form.
#[derive(Deserialize)]
pub(super) struct SetupForm {
    password: Zeroizing<String>,
    password_again: Zeroizing<String>,
    secret: Zeroizing<String>,
    code: String,
    csrf: String,
}

/// What a set-up form got wrong, field by field: each message is shown
/// beside its field, which is marked invalid.
#[derive(Default)]
struct SetupErrors {
    password: Option<String>,
    password_again: Option<&'static str>,
    code: Option<&'static str>,
}

impl SetupErrors {
    fn any(&self) -> bool {
        self.password.is_some() || self.password_again.is_some() || self.code.is_some()
    }
}

/// One field's error beside it, under `id` (which the field names as its
/// description).
fn field_error(id: &str, error: Option<&str>) -> Markup {
    html! { @if let Some(e) = error { span.field-error id=(id) { (e) } } }
}

/// The set-up page. After a refusal it keeps the key and the code typed
/// (neither is a secret from the person at this page: the key is shown on
/// it) and marks each wrong field; the passwords are never sent back, so
/// they are typed again.
fn setup_page(
    token: &str,
    admin: &str,
    secret_b32: &str,
    csrf: &str,
    code: &str,
    errors: &SetupErrors,
) -> Result<Markup, ConsoleError> {
    let secret = Secret::try_from_base32(secret_b32)
        .map_err(|_| ConsoleError::BadInput("the second-factor key is not valid".into()))?;
    let url = totp(secret.as_ref(), admin)?
        .to_url()
        .map_err(|_| ConsoleError::Internal("no authenticator URL"))?;
    let qr = qrcode::QrCode::new(url.as_bytes())
        .map(|qr| {
            qr.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build()
        })
        .unwrap_or_default();
    let invalid = |e: bool| e.then_some("true");
    Ok(html! {
        @if errors.any() {
            (view::notice("Nothing is saved yet: correct the marked fields. For safety the \
                page never sends a password back, so type both passwords again.", true))
        }
        p { "Welcome, " strong { (admin) } ". Choose a password and add Latchkey to your authenticator app "
            "(scan the code, or type the key), then enter the code it shows." }
        figure aria-label="Authenticator QR code" { (PreEscaped(qr)) }
        p { "Key: " code #totp-secret { (secret_b32) } }
        form.stack method="post" action=(paths::setup(token)) {
            (view::csrf_field(csrf))
            input type="hidden" name="secret" value=(secret_b32);
            label { "Password (at least " (MIN_PASSWORD) " characters)"
                input type="password" name="password" autocomplete="new-password" minlength=(MIN_PASSWORD) required
                    aria-invalid=[invalid(errors.password.is_some())]
                    aria-describedby=[errors.password.as_ref().map(|_| "password-error")];
                (field_error("password-error", errors.password.as_deref()))
            }
            label { "Password again"
                input type="password" name="password_again" autocomplete="new-password" required
                    aria-invalid=[invalid(errors.password_again.is_some())]
                    aria-describedby=[errors.password_again.map(|_| "password-again-error")];
                (field_error("password-again-error", errors.password_again))
            }
            label { "Code from your authenticator app"
                input name="code" value=(code) inputmode="numeric" autocomplete="one-time-code" required
                    aria-invalid=[invalid(errors.code.is_some())]
                    aria-describedby=[errors.code.map(|_| "code-error")];
                (field_error("code-error", errors.code))
            }
            button type="submit" { "Finish setup" }
        }
    })
}

async fn setup_admin(state: &ConsoleState, token: &str) -> Result<String, ConsoleError> {
    let (store, digest) = (state.store.clone(), service::setup_digest(token));
    tokio::task::spawn_blocking(move || store.admin_setup_for(digest, now_unix()))
        .await
        .map_err(|_| ConsoleError::Internal("the store call failed"))??
        .ok_or(ConsoleError::NotFound(
            "This setup link is unknown, used or expired: ask for a new one \
             (latchkey-relay admin add-admin NAME).",
        ))
}

/// GET /setup/{token}
pub(super) async fn show_setup(
    State(state): State<Arc<ConsoleState>>,
    Path(token): Path<String>,
    client: Client,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let admin = setup_admin(&state, &token).await?;
    let (csrf, cookie) = auth::form_token(&headers, client);
    let secret = Secret::generate().to_base32();
    let body = setup_page(&token, &admin, &secret, &csrf, "", &SetupErrors::default())?;
    Ok(with_cookie(
        view::page("Set up your admin account", None, body).into_response(),
        cookie,
    ))
}

/// POST /setup/{token}
pub(super) async fn setup(
    State(state): State<Arc<ConsoleState>>,
    Path(token): Path<String>,
    PublicForm { client, form }: PublicForm<SetupForm>,
) -> Result<Response, ConsoleError> {
    let admin = setup_admin(&state, &token).await?;
    let Ok(secret) = Secret::try_from_base32(form.secret.as_str()) else {
        return Err(ConsoleError::BadInput(
            "the second-factor key is not valid".into(),
        ));
    };
    let secret = Zeroizing::new(secret.as_ref().to_vec());
    let code = form.code.trim();
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    // Every field is checked, so that each wrong one is named at once.
    let mut errors = SetupErrors::default();
    if form.password.trim().chars().count() < MIN_PASSWORD {
        errors.password = Some(format!(
            "The password needs at least {MIN_PASSWORD} characters."
        ));
    } else if *form.password != *form.password_again {
        errors.password_again = Some("This differs from the password above.");
    }
    // The code proves the app holds the key; as a sign-in's, it is spent
    // (the first sign-in needs a newer one).
    let totp_step = totp(&secret, &admin)?.check(&digits, unix_now_u64());
    if totp_step.is_none() {
        errors.code = Some("This code does not match the key above: check the app's clock and type the newest code.");
    }
    let Some(totp_step) = totp_step.filter(|_| !errors.any()) else {
        let body = setup_page(&token, &admin, &form.secret, &form.csrf, code, &errors)?;
        return Ok((
            StatusCode::BAD_REQUEST,
            view::page("Set up your admin account", None, body),
        )
            .into_response());
    };
    let store = state.store.clone();
    let digest = service::setup_digest(&token);
    let password = form.password.clone();
    state
        .hashing
        .run(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            let hash = Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map_err(|_| StoreError::Refused("the password could not be hashed".into()))?
                .to_string();
            store.finish_admin_setup(digest, &hash, &secret, totp_step, client.source, now_unix())
        })
        .await??;
    Ok(Redirect::to(&format!("{}?ready=true", paths::LOGIN)).into_response())
}
