//! Who is asking: the client's address (through a trusted proxy or not),
//! the signed-in admin (an extractor, so a handler cannot forget to ask),
//! and the CSRF check of every form that changes state. All cookies are
//! made and destroyed here.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, HeaderMap, HeaderValue},
    response::{IntoResponse, Redirect, Response},
};
use cookie::{time::Duration as CookieAge, Cookie, SameSite};
use rand::{rngs::OsRng, RngCore};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{paths, ConsoleError, ConsoleState};

/// The signed-in session's cookie.
const SESSION_COOKIE: &str = "latchkey_session";
/// The CSRF token of the forms shown before sign-in (login, setup).
const FORM_COOKIE: &str = "latchkey_form";
/// Most sessions kept at once; the least recently used goes first.
const MAX_SESSIONS: usize = 1024;
/// A session ends this long after sign-in, however busy.
const MAX_SESSION_AGE: Duration = Duration::from_secs(12 * 3600);
/// The largest form body accepted.
const MAX_FORM: usize = 16 * 1024;
/// How long a form body may take to arrive.
const FORM_DEADLINE: Duration = Duration::from_secs(10);

/// A random token for a cookie or a form (32 bytes, base64url).
pub(super) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

struct Session {
    admin: String,
    csrf: String,
    /// The digest of the password hash the admin signed in with: a reset
    /// or a new password ends the session.
    credential: [u8; 32],
    started: Instant,
    last_used: Instant,
}

/// Signed-in sessions, in memory: a relay restart signs everyone out.
/// Keyed by the token's digest, so the map never holds a usable cookie.
pub(super) struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What a session remembers of the password hash it was opened with.
pub(super) fn credential(password_hash: &str) -> [u8; 32] {
    digest(password_hash)
}

impl Sessions {
    pub(super) fn new(idle: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            idle,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signs `admin` in; returns the session's cookie value.
    fn start(&self, admin: &str, credential: [u8; 32]) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut map = self.map();
        let idle = self.idle;
        map.retain(|_, s| {
            now.duration_since(s.last_used) < idle
                && now.duration_since(s.started) < MAX_SESSION_AGE
        });
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            digest(&token),
            Session {
                admin: admin.to_string(),
                csrf: random_token(),
                credential,
                started: now,
                last_used: now,
            },
        );
        token
    }

    /// The admin, CSRF token and credential of a live session; using it
    /// keeps it alive.
    fn find(&self, token: &str) -> Option<(String, String, [u8; 32])> {
        let key = digest(token);
        let now = Instant::now();
        let mut map = self.map();
        let live = map.get(&key).is_some_and(|s| {
            now.duration_since(s.last_used) < self.idle
                && now.duration_since(s.started) < MAX_SESSION_AGE
        });
        if !live {
            map.remove(&key);
            return None;
        }
        let s = map.get_mut(&key)?;
        s.last_used = now;
        Some((s.admin.clone(), s.csrf.clone(), s.credential))
    }

    fn end(&self, token: &str) {
        self.map().remove(&digest(token));
    }
}

/// A cookie that only this site's own pages send back, never to scripts.
fn make_cookie(name: &'static str, value: String, secure: bool, max_age: CookieAge) -> HeaderValue {
    let cookie = Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(max_age)
        .build();
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| Cookie::split_parse(v.to_string()))
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// The peer of a request: its address, and whether it reached us over
/// TLS (so cookies are marked Secure).
#[derive(Clone, Copy, Debug)]
pub(super) struct Client {
    pub(super) source: IpAddr,
    pub(super) secure: bool,
}

impl FromRequestParts<Arc<ConsoleState>> for Client {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ConsoleState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_canonical())
            .ok_or(ConsoleError::Internal("no peer address"))?;
        if state.config.admin_trusted_proxies.contains(&peer) {
            // The proxy appends the address it saw last.
            // Only the last entry is the proxy's word; anything before it
            // came from the client. One that does not parse is not
            // replaced by an earlier one.
            let forwarded = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|a| a.trim().parse::<IpAddr>().ok());
            let https = parts
                .headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|p| p.eq_ignore_ascii_case("https"));
            return Ok(Self {
                source: forwarded.unwrap_or(peer),
                secure: https || state.tls,
            });
        }
        Ok(Self {
            source: peer,
            secure: state.tls,
        })
    }
}

/// A signed-in admin. A handler that takes one runs only for them; anyone
/// else is sent to the login page.
pub(super) struct SignedIn {
    pub(super) admin: String,
    pub(super) csrf: String,
    pub(super) client: Client,
    /// The session's cookie value, to check it again later.
    token: String,
}

/// The admin and CSRF token of session `token`, if it is live and its
/// account is as it was at sign-in: removed or reset since ends the
/// session (a lock does not: it stops guessing, and anyone who can reach
/// the sign-in page can cause one).
async fn session_of(
    state: &ConsoleState,
    token: &str,
) -> Result<Option<(String, String)>, ConsoleError> {
    let Some((admin, csrf, signed_with)) = state.sessions.find(token) else {
        return Ok(None);
    };
    let name = admin.clone();
    let current = state.blocking(move |s| s.admin_credentials(&name)).await?;
    if current.is_some_and(|c| credential(&c.password_hash) == signed_with) {
        Ok(Some((admin, csrf)))
    } else {
        state.sessions.end(token);
        Ok(None)
    }
}

impl FromRequestParts<Arc<ConsoleState>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ConsoleState>,
    ) -> Result<Self, Self::Rejection> {
        let client = Client::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Some(token) = read_cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(Redirect::to(paths::LOGIN).into_response());
        };
        match session_of(state, &token)
            .await
            .map_err(IntoResponse::into_response)?
        {
            Some((admin, csrf)) => Ok(Self {
                admin,
                csrf,
                client,
                token,
            }),
            None => Err(Redirect::to(paths::LOGIN).into_response()),
        }
    }
}

impl SignedIn {
    /// Whether the session is still live and its account unchanged (for a
    /// request that outlasts one check, such as a live-status stream).
    pub(super) async fn still_signed_in(&self, state: &ConsoleState) -> bool {
        matches!(session_of(state, &self.token).await, Ok(Some(_)))
    }

    /// The actor of this admin's changes.
    pub(super) fn actor(&self) -> crate::store::Actor {
        crate::store::Actor::console(&self.admin, self.client.source)
    }
}

/// A state-changing form of a signed-in admin, whose CSRF token matched
/// their session's. Handlers that change anything take this, so none can
/// skip the check.
pub(super) struct Action<T> {
    pub(super) by: SignedIn,
    pub(super) form: T,
}

/// Reads a form body (bounded) and its `csrf` field. A browser that says
/// the form came from another site is refused before the token is read
/// (a second line behind the token and SameSite cookies).
async fn form_body(req: Request) -> Result<(Bytes, Option<String>), ConsoleError> {
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site {
        return Err(ConsoleError::Csrf);
    }
    // A body that trickles in would hold its connection for ever.
    let bytes = tokio::time::timeout(
        FORM_DEADLINE,
        axum::body::to_bytes(req.into_body(), MAX_FORM),
    )
    .await
    .map_err(|_| ConsoleError::BadInput("the form took too long to arrive".into()))?
    .map_err(|_| ConsoleError::BadInput("the form is too large".into()))?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| ConsoleError::BadInput("the form does not parse".into()))?;
    let csrf = fields
        .into_iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v);
    Ok((bytes, csrf))
}

fn parse_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConsoleError> {
    serde_urlencoded::from_bytes(bytes)
        .map_err(|e| ConsoleError::BadInput(format!("the form is incomplete: {e}")))
}

impl<T: DeserializeOwned + Send> FromRequest<Arc<ConsoleState>> for Action<T> {
    type Rejection = Response;

    async fn from_request(
        req: Request,
        state: &Arc<ConsoleState>,
    ) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let by = SignedIn::from_request_parts(&mut parts, state).await?;
        let (bytes, csrf) = form_body(Request::from_parts(parts, body))
            .await
            .map_err(IntoResponse::into_response)?;
        if !csrf.is_some_and(|c| same(&c, &by.csrf)) {
            return Err(ConsoleError::Csrf.into_response());
        }
        let form = parse_form(&bytes).map_err(IntoResponse::into_response)?;
        Ok(Self { by, form })
    }
}

/// A form shown before sign-in (login, setup), checked against the form
/// cookie set with it.
pub(super) struct PublicForm<T> {
    pub(super) client: Client,
    pub(super) form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<Arc<ConsoleState>> for PublicForm<T> {
    type Rejection = Response;

    async fn from_request(
        req: Request,
        state: &Arc<ConsoleState>,
    ) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let client = Client::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let expected = read_cookie(&parts.headers, FORM_COOKIE);
        let (bytes, csrf) = form_body(Request::from_parts(parts, body))
            .await
            .map_err(IntoResponse::into_response)?;
        match (expected, csrf) {
            (Some(e), Some(c)) if same(&e, &c) => {}
            _ => return Err(ConsoleError::Csrf.into_response()),
        }
        let form = parse_form(&bytes).map_err(IntoResponse::into_response)?;
        Ok(Self { client, form })
    }
}

/// The form cookie's token for a public form: the one the browser has, or
/// a new one to set with the page.
pub(super) fn form_token(headers: &HeaderMap, client: Client) -> (String, Option<HeaderValue>) {
    match read_cookie(headers, FORM_COOKIE) {
        Some(token) if token.len() == 43 => (token, None),
        _ => {
            let token = random_token();
            let cookie = make_cookie(
                FORM_COOKIE,
                token.clone(),
                client.secure,
                CookieAge::hours(1),
            );
            (token, Some(cookie))
        }
    }
}

/// Signs `admin` in: a new session (never one the browser brought).
pub(super) fn sign_in(
    state: &ConsoleState,
    admin: &str,
    credential: [u8; 32],
    client: Client,
) -> Response {
    let token = state.sessions.start(admin, credential);
    let max_age = CookieAge::seconds(i64::try_from(MAX_SESSION_AGE.as_secs()).unwrap_or(0));
    let mut response = Redirect::to(paths::OVERVIEW).into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        make_cookie(SESSION_COOKIE, token, client.secure, max_age),
    );
    headers.append(
        header::SET_COOKIE,
        make_cookie(FORM_COOKIE, String::new(), client.secure, CookieAge::ZERO),
    );
    response
}

/// Signs the session of `headers` out and deletes its cookie.
pub(super) fn sign_out(state: &ConsoleState, headers: &HeaderMap, client: Client) -> Response {
    if let Some(token) = read_cookie(headers, SESSION_COOKIE) {
        state.sessions.end(&token);
    }
    let mut response = Redirect::to(paths::LOGIN).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        make_cookie(
            SESSION_COOKIE,
            String::new(),
            client.secure,
            CookieAge::ZERO,
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_end_on_sign_out() {
        let sessions = Sessions::new(Duration::from_millis(250));
        let token = sessions.start("alice", [0; 32]);
        assert_eq!(sessions.find(&token).map(|s| s.0).as_deref(), Some("alice"));
        std::thread::sleep(Duration::from_millis(400));
        assert!(sessions.find(&token).is_none(), "idle session lives on");
        let token = sessions.start("alice", [0; 32]);
        sessions.end(&token);
        assert!(sessions.find(&token).is_none());
        assert!(sessions.find("made-up").is_none());
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        let c = make_cookie(SESSION_COOKIE, "v".into(), true, CookieAge::hours(1));
        let c = c.to_str().unwrap();
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        let plain = make_cookie(SESSION_COOKIE, "v".into(), false, CookieAge::hours(1));
        assert!(!plain.to_str().unwrap().contains("Secure"));
    }
}
