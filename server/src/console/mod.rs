//! The admin console: server-rendered pages (axum and maud, no JavaScript
//! needed) on their own TCP listener, for what `latchkey-relay admin` does.
//! Its actions are [`crate::admin::service`]'s, so a change made here is audited
//! with the admin's name and address and reaches live sessions exactly as
//! the CLI's does.
//!
//! `auth` knows who asks (and holds every cookie), `signin` signs admins
//! in, `pages` shows, `actions` changes, `view` frames the pages.

mod actions;
mod auth;
mod hashing;
mod listener;
mod live;
mod pages;
pub(crate) mod paths;
mod signin;
#[cfg(test)]
mod tests;
mod view;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use latchkey_protocol::ids::RelayPin;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    admin::service::ServiceError,
    config::Config,
    rules::ratelimit::RateLimiter,
    store::{Store, StoreError},
};

/// Sign-in attempts one address may make in a burst, and earns back per
/// minute.
const LOGIN_BURST: u32 = 10;
const LOGINS_PER_MINUTE: f64 = 6.0;

/// What every console request shares.
pub struct ConsoleState {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    /// Put into invite tokens.
    pin: RelayPin,
    sessions: auth::Sessions,
    logins: Mutex<RateLimiter>,
    /// Where password hashes are checked and made.
    hashing: hashing::Hashing,
    /// Places for live-status streams.
    streams: Arc<tokio::sync::Semaphore>,
    /// Served over TLS: cookies are Secure.
    tls: bool,
}

impl ConsoleState {
    /// The state of a console for `store`.
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>, pin: RelayPin, tls: bool) -> Self {
        let idle = Duration::from_secs(config.admin_session_idle_secs.max(60));
        Self {
            store,
            config,
            pin,
            sessions: auth::Sessions::new(idle),
            logins: Mutex::new(RateLimiter::new(
                LOGIN_BURST,
                LOGINS_PER_MINUTE / 60.0,
                4096,
            )),
            hashing: hashing::Hashing::new(),
            streams: Arc::new(tokio::sync::Semaphore::new(live::MAX_STREAMS)),
            tls,
        }
    }

    fn allow_login(&self, source: IpAddr) -> bool {
        self.logins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(source, 1.0, Instant::now())
    }

    /// Runs a store call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ConsoleError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|_| ConsoleError::Internal("the store call failed"))?
            .map_err(ConsoleError::Store)
    }

    /// Runs an admin action off the async threads.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .unwrap_or(Err(ServiceError::Store(StoreError::Refused(
                "the action failed".into(),
            ))))
    }
}

/// Why a console request failed; shown as a page.
#[derive(Debug, Error)]
pub enum ConsoleError {
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An action failed.
    #[error(transparent)]
    Service(ServiceError),
    /// A state-changing form without its session's CSRF token.
    #[error("This form is out of date or did not come from this console: reload the page and try again.")]
    Csrf,
    /// The request does not make sense.
    #[error("{0}")]
    BadInput(String),
    /// Nothing is there.
    #[error("{0}")]
    NotFound(&'static str),
    /// Not served to this client.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The relay failed.
    #[error("{0}")]
    Internal(&'static str),
    /// Too many password checks at once.
    #[error("The console is busy checking other sign-ins: try again in a moment.")]
    Busy,
}

impl From<ServiceError> for ConsoleError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Store(e) => Self::Store(e),
            e => Self::Service(e),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Store(StoreError::NoSuchHost(_) | StoreError::NoSuchUser(_)) => {
                StatusCode::NOT_FOUND
            }
            Self::Store(StoreError::Refused(_) | StoreError::Exists { .. })
            | Self::Service(ServiceError::Store(StoreError::Refused(_))) => StatusCode::CONFLICT,
            Self::BadInput(_) | Self::Service(ServiceError::BadEmail(_)) => StatusCode::BAD_REQUEST,
            Self::Store(_) | Self::Service(_) | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Csrf | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            warn!("console: {self}");
        }
        let body = maud::html! {
            (view::notice(&self.to_string(), true))
            p { a href=(paths::OVERVIEW) { "Back to the overview" } }
        };
        (status, view::page("Something went wrong", None, body)).into_response()
    }
}

/// The Content-Security-Policy of every page: nothing from elsewhere, and
/// only the console's own style and script (by hash).
fn content_security_policy() -> HeaderValue {
    let hash = |text: &str| {
        let digest = Sha256::digest(text.as_bytes());
        format!(
            "'sha256-{}'",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest)
        )
    };
    let policy = format!(
        "default-src 'none'; style-src {}; script-src {} {}; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        hash(view::STYLE),
        hash(actions::COPY_SCRIPT),
        hash(view::LIVE_SCRIPT),
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

/// The console's routes, with `extra` ones that need no sign-in
/// (`/metrics`), all behind the proxy rule where it applies.
pub fn router(state: Arc<ConsoleState>, extra: Option<Router>) -> Router {
    let csp = content_security_policy();
    let proxies =
        proxied_only(&state.config).then(|| Arc::new(state.config.admin_trusted_proxies.clone()));
    let mut app = Router::new()
        .route(paths::OVERVIEW, get(pages::overview))
        .route(paths::LOGIN, get(signin::show_login).post(signin::login))
        .route(paths::LOGOUT, post(signin::logout))
        .route(paths::SETUP, get(signin::show_setup).post(signin::setup))
        .route(paths::HOSTS, get(pages::hosts))
        .route(paths::HOST, get(pages::host))
        .route(paths::HOST_ACTION, post(actions::host_action))
        .route(paths::USERS, get(pages::users))
        .route(paths::USER_EMAIL, post(actions::set_email))
        .route(paths::USER_REMOVE, post(actions::remove_user))
        .route(paths::INVITE_USER, post(actions::invite))
        .route(paths::INVITE_HOST, post(actions::invite))
        .route(paths::AUDIT, get(pages::audit))
        .route(paths::OUTBOX, get(pages::outbox))
        .route(paths::EVENTS, get(live::events))
        .with_state(state);
    if let Some(extra) = extra {
        app = match proxies {
            // On its routes only: unknown paths stay the router's 404.
            Some(_) => app.merge(extra.route_layer(axum::middleware::from_fn(not_forwarded))),
            None => app.merge(extra),
        };
    }
    if let Some(proxies) = proxies {
        app = app.layer(axum::middleware::from_fn_with_state(proxies, only_proxies));
    }
    // Outermost: every answer, refusals included, carries the headers.
    app.layer(axum::middleware::map_response(
        move |mut response: Response| {
            let csp = csp.clone();
            async move {
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_SECURITY_POLICY, csp);
                headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
                headers.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                headers.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                );
                headers
                    .entry(header::CACHE_CONTROL)
                    .or_insert(HeaderValue::from_static("no-store"));
                response
            }
        },
    ))
}

/// A plain listener on a non-loopback address: only the trusted proxies
/// (which terminate TLS) are served there.
fn proxied_only(config: &Config) -> bool {
    config.admin_tls_cert.is_none()
        && config
            .console_listen()
            .ok()
            .flatten()
            .is_some_and(|a| !a.ip().is_loopback())
}

/// Serves only requests whose peer is one of `proxies`.
async fn only_proxies(
    axum::extract::State(proxies): axum::extract::State<Arc<Vec<IpAddr>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    if !peer.is_some_and(|p| proxies.contains(&p)) {
        return ConsoleError::Forbidden("this console is served only through its proxy")
            .into_response();
    }
    next.run(req).await
}

/// Refuses what a proxy forwards: routes without a sign-in (metrics) are
/// for whoever runs on the proxy's machine, not for the public.
async fn not_forwarded(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = req.headers();
    if ["x-forwarded-for", "forwarded", "x-real-ip"]
        .iter()
        .any(|h| headers.contains_key(*h))
    {
        return ConsoleError::Forbidden("this is not served through the proxy").into_response();
    }
    next.run(req).await
}

/// Errors starting the console.
#[derive(Debug, Error)]
pub enum ConsoleStartError {
    /// A non-loopback address without TLS or a proxy.
    #[error(
        "admin_listen {0} is not a loopback address: the console needs TLS there \
         (admin_tls_cert and admin_tls_key) or a TLS proxy in front (admin_trusted_proxies); \
         or set admin_listen = \"off\""
    )]
    NeedsTls(SocketAddr),
    /// Only one of certificate and key.
    #[error("admin_tls_cert and admin_tls_key go together: set both or neither")]
    HalfTls,
    /// The certificate or key could not be used.
    #[error("the console's TLS certificate or key: {0}")]
    Tls(String),
    /// The address could not be bound.
    #[error("the admin console cannot listen on {addr} ({source}): set admin_listen to another address, or to \"off\"")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The console's TLS settings from its PEM files.
fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ConsoleStartError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConsoleStartError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ConsoleStartError::Tls(format!(
            "{}: no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ConsoleStartError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConsoleStartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConsoleStartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// How long a relay's stop waits for the console (its own grace, and a
/// second more).
pub const STOP_DEADLINE: Duration = Duration::from_secs(3);

/// A console that is listening.
pub struct Console {
    /// Where.
    pub addr: SocketAddr,
    /// Its URL.
    pub url: String,
    /// Ends when the console has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the console at `addr` (checking the TLS rule first) and serves
/// `extra` routes beside it (`/metrics`, when configured there) until
/// `shutdown`.
pub async fn start(
    addr: SocketAddr,
    store: Arc<dyn Store>,
    config: Arc<Config>,
    pin: RelayPin,
    extra: Option<Router>,
    shutdown: CancellationToken,
) -> Result<Console, ConsoleStartError> {
    let tls = match (&config.admin_tls_cert, &config.admin_tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        (None, None) => None,
        _ => return Err(ConsoleStartError::HalfTls),
    };
    if tls.is_none() && !addr.ip().is_loopback() && config.admin_trusted_proxies.is_empty() {
        return Err(ConsoleStartError::NeedsTls(addr));
    }
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| ConsoleStartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ConsoleStartError::Bind { addr, source })?;
    let state = Arc::new(ConsoleState::new(store, config.clone(), pin, tls.is_some()));
    let app = router(state, extra);
    let url = crate::admin::service::console_url_for(&config, bound);
    let task = listener::serve(listener, tls, app, shutdown)
        .map_err(|source| ConsoleStartError::Bind { addr, source })?;
    info!(%url, "admin console listening");
    Ok(Console {
        addr: bound,
        url,
        task,
    })
}
