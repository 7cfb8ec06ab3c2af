//! The console over HTTP, in process: real requests through the router to
//! a real SQLite store, with a cookie jar like a browser's.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{header, HeaderMap, Method, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use latchkey_protocol::{
    frame::CodeTarget,
    handshake::{CodeRecord, Reservation},
    ids::{HostName, Platform, PublicKey, RecordId, SessionId, UserName},
    ksf::KsfProfile,
};
use tower::ServiceExt;

use super::{router, ConsoleState};
use crate::{
    admin::service,
    config::Config,
    datadir::DataDir,
    rules::lockout::Proof,
    store::{Actor, ConsoleLogin, Event, GrantTerms, HostPresence, InviteKind, SqliteStore, Store},
};

const PASSWORD: &str = "correct horse battery";

struct Browser {
    app: Router,
    store: Arc<dyn Store>,
    config: Arc<Config>,
    jar: HashMap<String, String>,
    peer: SocketAddr,
    _dir: tempfile::TempDir,
    /// The TOTP code the last set-up used.
    setup_code: String,
}

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    /// The value of the first `name="csrf"` field.
    fn csrf(&self) -> String {
        between(&self.body, "name=\"csrf\" value=\"", "\"")
    }

    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A code of the next TOTP step: the current one was spent at set-up, and
/// the server takes one step of clock skew.
fn next_code(totp: &totp_rs::Totp) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    totp.generate(now + 30).to_string()
}

fn between(text: &str, start: &str, end: &str) -> String {
    let from = text.find(start).map(|i| i + start.len()).expect(start);
    let to = text[from..].find(end).expect(end) + from;
    text[from..to].to_string()
}

impl Browser {
    fn new() -> Self {
        Self::with_config(Config::default())
    }

    /// A console with `config`, on the addresses the tests use.
    fn with_config(config: Config) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::open_or_create(&dir.path().join("relay")).expect("data dir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("relay.db")).expect("store"));
        let config = Arc::new(Config {
            admin_listen: "127.0.0.1:8080".into(),
            listen: "127.0.0.1:4433".parse().expect("address"),
            ..config
        });
        let state = Arc::new(ConsoleState::new(
            store.clone(),
            config.clone(),
            data.pin(),
            false,
        ));
        Self {
            app: router(state, None),
            store,
            config,
            jar: HashMap::new(),
            peer: "127.0.0.1:50000".parse().expect("address"),
            setup_code: String::new(),
            _dir: dir,
        }
    }

    async fn send(&mut self, method: Method, path: &str, form: Option<&[(&str, &str)]>) -> Page {
        let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut req = Request::builder().method(method).uri(path);
        if !cookies.is_empty() {
            req = req.header(header::COOKIE, cookies.join("; "));
        }
        let body = match form {
            Some(fields) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Body::from(serde_urlencoded::to_string(fields).expect("form"))
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).expect("request");
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let response = self.app.clone().oneshot(req).await.expect("response");
        for set in response.headers().get_all(header::SET_COOKIE) {
            let c =
                cookie::Cookie::parse(set.to_str().expect("ascii").to_string()).expect("cookie");
            if c.value().is_empty() {
                self.jar.remove(c.name());
            } else {
                self.jar.insert(c.name().to_string(), c.value().to_string());
            }
        }
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Another browser on the same console.
    fn clone_app(&self) -> Self {
        Self {
            app: self.app.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            jar: HashMap::new(),
            peer: self.peer,
            setup_code: String::new(),
            _dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        self.send(Method::GET, path, None).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(Method::POST, path, Some(form)).await
    }

    /// Creates admin `name` through the setup link; returns their TOTP.
    async fn set_up_admin(&mut self, name: &str, email: Option<&str>) -> totp_rs::Totp {
        let admin: UserName = name.parse().expect("name");
        let setup = service::add_admin(&*self.store, &self.config, &admin, email, &Actor::cli())
            .expect("add admin");
        let path = setup
            .link
            .trim_start_matches("http://127.0.0.1:8080")
            .to_string();
        let page = self.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let secret = between(&page.body, "id=\"totp-secret\">", "<");
        let totp = super::signin::totp(
            totp_rs::Secret::try_from_base32(&secret)
                .expect("base32")
                .as_ref(),
            name,
        )
        .expect("totp");
        let code = totp.generate_current().to_string();
        let done = self
            .post(
                &path,
                &[
                    ("csrf", &page.csrf()),
                    ("secret", &secret),
                    ("password", PASSWORD),
                    ("password_again", PASSWORD),
                    ("code", &code),
                ],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        self.setup_code = code;
        // The link works once.
        assert_eq!(self.get(&path).await.status, StatusCode::NOT_FOUND);
        totp
    }

    async fn log_in(&mut self, name: &str, password: &str, code: &str) -> Page {
        let form = self.get("/login").await;
        self.post(
            "/login",
            &[
                ("csrf", &form.csrf()),
                ("name", name),
                ("password", password),
                ("code", code),
            ],
        )
        .await
    }

    /// A signed-in admin `alice`; returns their TOTP.
    async fn signed_in() -> (Self, totp_rs::Totp) {
        let mut b = Self::new();
        let totp = b.set_up_admin("alice", None).await;
        let page = b.log_in("alice", PASSWORD, &next_code(&totp)).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), "/");
        (b, totp)
    }
}

/// Users alice (owner of mypc, code set) and bob, as the relay has them.
fn alice_owns_mypc(store: &dyn Store) -> HostName {
    for (i, name) in ["alice", "bob"].iter().enumerate() {
        store
            .create_invite(
                name,
                &InviteKind::User { email: None },
                [i as u8 + 1; 32],
                10,
                &Actor::cli(),
                0,
            )
            .expect("user");
    }
    let kind = InviteKind::Host {
        owner: "alice".parse().expect("name"),
        lockout_threshold: 3,
    };
    store
        .create_invite("mypc", &kind, [9; 32], 10, &Actor::cli(), 0)
        .expect("host");
    let host: HostName = "mypc".parse().expect("name");
    let record = CodeRecord {
        id: RecordId([1; 16]),
        ksf: KsfProfile::InsecureFastForTests,
        record: vec![1; 8],
    };
    let key = PublicKey([0x48; 32]);
    let source = "127.0.0.1".parse().expect("address");
    store
        .redeem_invite([9; 32], key, Platform::Linux, source, 0)
        .expect("host enrolled");
    store
        .set_code(&host, &key, &CodeTarget::Owner, &record, 1)
        .expect("code");
    host
}

fn fail_logins(store: &dyn Store, user: &str, host: &HostName, n: usize) {
    let user: UserName = user.parse().expect("name");
    for _ in 0..n {
        let Reservation::Reserved(a) = store
            .reserve_attempt(
                &user,
                host,
                &RecordId([1; 16]),
                "127.0.0.1".parse().expect("ip"),
                2,
            )
            .expect("reserve")
        else {
            panic!("not reserved")
        };
        store
            .settle_attempt(a, Proof::NotProven, "wrong code", &SessionId([0; 16]), 2)
            .expect("settle");
    }
}

#[tokio::test]
async fn every_page_needs_a_sign_in_and_then_shows() {
    let mut b = Browser::new();
    let host = alice_owns_mypc(&*b.store);
    let pages = [
        "/",
        "/hosts",
        "/hosts/mypc",
        "/users",
        "/audit",
        "/audit?host=mypc&event=grant",
        "/outbox",
    ];
    for path in pages {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(page.location(), "/login", "{path}");
    }
    let totp = b.set_up_admin("root", None).await;
    let login = b.log_in("root", PASSWORD, &next_code(&totp)).await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
    let cookie = login
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .find(|c| c.starts_with("latchkey_session="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain loopback HTTP: {cookie}");
    b.store
        .grant(
            &host,
            &"bob".parse().expect("n"),
            &GrantTerms::default(),
            &Actor::cli(),
            3,
        )
        .expect("grant");
    for path in pages {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        assert!(page.body.contains("Sign out root"), "{path}");
        let csp = page
            .headers
            .get(header::CONTENT_SECURITY_POLICY)
            .expect("csp");
        assert!(csp
            .to_str()
            .expect("ascii")
            .starts_with("default-src 'none'"));
    }
    let hosts = b.get("/hosts").await.body;
    assert!(
        hosts.contains("mypc") && hosts.contains("bob (code of"),
        "{hosts}"
    );
    let host_page = b.get("/hosts/mypc").await.body;
    assert!(host_page.contains("Revoke") && host_page.contains("Grant again"));
    assert_eq!(b.get("/hosts/nosuch").await.status, StatusCode::NOT_FOUND);
    // Signing out ends the session on the server, not only in the browser.
    let stolen = b.jar.clone();
    let csrf = b.get("/").await.csrf();
    assert_eq!(
        b.post("/logout", &[("csrf", &csrf)]).await.status,
        StatusCode::SEE_OTHER
    );
    b.jar = stolen;
    assert_eq!(b.get("/").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn actions_need_the_sessions_csrf_token_and_are_audited_with_the_admin() {
    let (mut b, _) = Browser::signed_in().await;
    let host = alice_owns_mypc(&*b.store);
    let csrf = b.get("/hosts/mypc").await.csrf();
    for form in [
        vec![("user", "bob")],
        vec![("user", "bob"), ("csrf", "forged")],
    ] {
        let page = b.post("/hosts/mypc/grant", &form).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    }
    assert!(b.store.grants_of(Some(&host)).expect("grants").is_empty());
    // A token that is not this session's is refused.
    let page = b
        .post(
            "/hosts/mypc/grant",
            &[("user", "bob"), ("csrf", &super::auth::random_token())],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);

    let page = b
        .post("/hosts/mypc/grant", &[("user", "bob"), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), "/hosts/mypc?done=granted");
    assert_eq!(
        b.store.grants_of(Some(&host)).expect("grants")[0].user,
        "bob"
    );
    let audit = b.store.audit_page(&Default::default(), 1).expect("audit");
    assert_eq!(audit[0].event, "grant");
    assert_eq!(audit[0].source.as_deref(), Some("127.0.0.1"));
    assert_eq!(audit[0].detail.as_deref(), Some("by console admin 'alice'"));
    // A refusal is shown on the page, with the store's reason.
    let page = b
        .post("/hosts/mypc/grant", &[("user", "bob"), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.body.contains("has shared access to"), "{}", page.body);

    // Rights: the boxes ticked, the targets typed.
    let page = b
        .post(
            "/hosts/mypc/rights",
            &[
                ("user", "bob"),
                ("right-exec", "on"),
                ("right-forward", "on"),
                ("forward_to", "127.0.0.1:22, 127.0.0.1:5900"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(page.location(), "/hosts/mypc?done=rights", "{}", page.body);
    let bob: UserName = "bob".parse().expect("name");
    let rights = b
        .store
        .grant_rights(&host, &bob)
        .expect("read")
        .expect("bob's");
    assert_eq!(
        rights.rights.to_string(),
        "exec,forward(127.0.0.1:22 127.0.0.1:5900)"
    );
    let host_page = b.get("/hosts/mypc").await.body;
    assert!(
        host_page.contains(r#"name="right-exec" value="on" checked"#),
        "{host_page}"
    );
    assert!(!host_page.contains(r#"name="right-shell" value="on" checked"#));
    assert!(host_page.contains("127.0.0.1:22, 127.0.0.1:5900"));
    let page = b
        .post(
            "/hosts/mypc/rights",
            &[("user", "bob"), ("forward_to", "nonsense"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert!(page.body.contains("is not IP:PORT"), "{}", page.body);
    let audit = b.store.audit_page(&Default::default(), 1).expect("audit");
    assert_eq!(audit[0].event, "rights");

    let page = b
        .post("/hosts/mypc/regrant", &[("user", "bob"), ("csrf", &csrf)])
        .await;
    assert_eq!(
        page.location(),
        "/hosts/mypc?done=regranted",
        "{}",
        page.body
    );
    let page = b
        .post(
            "/hosts/mypc/revoke",
            &[("user", "bob"), ("confirm", "yes"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.location(), "/hosts/mypc?done=revoked", "{}", page.body);
    assert!(b.store.grants_of(Some(&host)).expect("grants").is_empty());

    fail_logins(&*b.store, "alice", &host, 3);
    assert!(b.store.host_status(&host).expect("status").locked);
    let page = b.get("/hosts/mypc").await;
    assert!(page.body.contains("Unlock"));
    let page = b.post("/hosts/mypc/unlock", &[("csrf", &csrf)]).await;
    assert_eq!(
        page.location(),
        "/hosts/mypc?done=unlocked",
        "{}",
        page.body
    );
    assert!(!b.store.host_status(&host).expect("status").locked);

    let page = b
        .post(
            "/hosts/mypc/policy",
            &[
                ("shared_access", "disabled"),
                ("lockout_threshold", "5"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(page.location(), "/hosts/mypc?done=policy", "{}", page.body);
    let status = b.store.host_status(&host).expect("status");
    assert!(!status.shared_access && status.lockout_threshold == 5);
    let page = b
        .post(
            "/hosts/mypc/policy",
            &[
                ("shared_access", "enabled"),
                ("lockout_threshold", "zero"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);

    for bad in [
        "bob@example.com\r\nBcc: eve@example.com",
        "no-at-sign",
        "x@y\u{1b}]0;t\u{7}",
        "\"\u{202e}gro.live\"@x.com",
        "\"\u{9b}2J\"@x.com",
    ] {
        let page = b
            .post("/users/bob/email", &[("address", bad), ("csrf", &csrf)])
            .await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{bad:?} was taken");
    }
    let page = b
        .post(
            "/hosts/mypc/policy",
            &[
                ("shared_access", "enabled"),
                ("lockout_threshold", "4294967295"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::CONFLICT,
        "a threshold that never locks"
    );
    let page = b
        .post(
            "/users/bob/email",
            &[("address", "bob@example.com"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(
        b.store.user_email("bob").expect("email").as_deref(),
        Some("bob@example.com")
    );

    let page = b
        .post(
            "/invite/user",
            &[("name", "carol"), ("email", ""), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("latchkey enroll "), "{}", page.body);
    assert_eq!(
        page.headers.get(header::CACHE_CONTROL).expect("cache"),
        "no-store"
    );
    let page = b
        .post(
            "/invite/host",
            &[("name", "lab1"), ("owner", "carol"), ("csrf", &csrf)],
        )
        .await;
    assert!(page.body.contains("latchkey host enroll "), "{}", page.body);
    let page = b
        .post(
            "/invite/host",
            &[("name", "lab2"), ("owner", "nobody"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);

    let events: Vec<String> = b
        .store
        .audit_page(&Default::default(), 100)
        .expect("audit")
        .into_iter()
        .filter(|r| {
            r.detail
                .as_deref()
                .is_some_and(|d| d.contains("by console admin 'alice'"))
        })
        .map(|r| r.event)
        .collect();
    for e in [
        "grant",
        "revoke",
        "unlock",
        "policy",
        "email-changed",
        "invite-created",
    ] {
        assert!(
            events.iter().any(|x| x == e),
            "{e} not audited with the admin: {events:?}"
        );
    }
}

#[tokio::test]
async fn what_users_and_hosts_can_write_is_escaped_everywhere() {
    let (mut b, _) = Browser::signed_in().await;
    let host = alice_owns_mypc(&*b.store);
    const XSS: &str = "<script>alert(1)</script>";
    b.store
        .grant(
            &host,
            &"bob".parse().expect("n"),
            &GrantTerms::default(),
            &Actor::cli(),
            3,
        )
        .expect("grant");
    b.store
        .set_email(
            &"bob".parse().expect("n"),
            Some(&format!("{XSS}@x")),
            &Actor::cli(),
            3,
        )
        .expect("email");
    b.store
        .audit(
            Event {
                event: crate::store::AuditEvent::LoginFailed,
                host: Some("mypc"),
                user: Some("bob"),
                source: None,
                detail: Some(XSS.into()),
            },
            4,
        )
        .expect("audit");
    let notice = b.store.outbox(10).expect("outbox")[0].id;
    b.store.notice_retry(notice, XSS, 5).expect("retry");
    let paths = [
        "/".to_string(),
        "/hosts".into(),
        "/hosts/mypc".into(),
        "/users".into(),
        "/outbox".into(),
        "/audit".into(),
        format!("/audit?host={0}&user={0}&event={0}", urlencode(XSS)),
        format!("/hosts/{}", urlencode(XSS)),
    ];
    for path in &paths {
        let page = b.get(path).await;
        assert!(
            !page.body.contains("<script>alert"),
            "{path} is not escaped: {}",
            page.body
        );
    }
    for path in ["/users", "/outbox", "/audit"] {
        let page = b.get(path).await;
        assert!(page.body.contains("&lt;script&gt;"), "{path} lost the text");
    }
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).expect("encode")[2..].to_string()
}

#[tokio::test]
async fn console_logins_lock_the_account_after_repeated_failures() {
    let mut b = Browser::new();
    let totp = b.set_up_admin("alice", None).await;
    b.set_up_admin("bob", Some("bob@example.com")).await;
    let code = next_code(&totp);
    let threshold = b.config.admin_login_lockout as usize;
    for _ in 0..threshold {
        let page = b.log_in("alice", "wrong password!", &code).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
        assert!(!page.body.contains("latchkey_session"));
    }
    // The right password and code no longer open it.
    let page = b.log_in("alice", PASSWORD, &code).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
    let rule = b.config.console_lockout();
    let now = crate::clock::now_unix();
    assert!(b.store.admins(rule, now).expect("admins")[0]
        .locked_until
        .is_some());
    // The lock ends by itself after a while.
    let later = now + rule.lasts_secs + 1;
    assert!(b.store.admins(rule, later).expect("admins")[0]
        .locked_until
        .is_none());
    let source = "127.0.0.1".parse().expect("ip");
    let passed = ConsoleLogin::Passed {
        totp_step: u64::MAX / 2,
    };
    assert!(
        !b.store
            .console_login("alice", passed, rule, source, now)
            .expect("login"),
        "a locked account signed in"
    );
    assert!(b
        .store
        .console_login("alice", passed, rule, source, later)
        .expect("login"));
    let events: Vec<String> = b
        .store
        .audit_page(&Default::default(), 50)
        .expect("audit")
        .into_iter()
        .map(|r| r.event)
        .collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| *e == "console-admin-locked")
            .count(),
        1
    );
    let to: Vec<String> = b
        .store
        .outbox(10)
        .expect("outbox")
        .into_iter()
        .map(|n| n.recipient)
        .collect();
    assert!(
        to.contains(&"admin:bob".to_string()) && to.contains(&"admin".to_string()),
        "{to:?}"
    );
    // A new setup link unlocks it.
    let totp = b.set_up_admin("alice", None).await;
    let page = b.log_in("alice", PASSWORD, &next_code(&totp)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
}

#[tokio::test]
async fn the_code_that_finished_the_set_up_cannot_sign_in() {
    let mut b = Browser::new();
    let totp = b.set_up_admin("alice", None).await;
    let spent = b.setup_code.clone();
    let page = b.log_in("alice", PASSWORD, &spent).await;
    assert_eq!(
        page.status,
        StatusCode::UNAUTHORIZED,
        "the set-up's code signed in"
    );
    let page = b.log_in("alice", PASSWORD, &next_code(&totp)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
}

#[tokio::test]
async fn a_totp_code_signs_in_once_and_one_address_is_rate_limited() {
    let mut b = Browser::new();
    let totp = b.set_up_admin("alice", None).await;
    let code = next_code(&totp);
    assert_eq!(
        b.log_in("alice", PASSWORD, &code).await.status,
        StatusCode::SEE_OTHER
    );
    b.jar.clear();
    let replay = b.log_in("alice", PASSWORD, &code).await;
    assert_eq!(
        replay.status,
        StatusCode::UNAUTHORIZED,
        "a code was accepted twice"
    );
    // Unknown names and wrong codes count against the address.
    let mut limited = false;
    for i in 0..20 {
        let page = b.log_in(&format!("nobody{i}"), PASSWORD, "000000").await;
        if page.status == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(
        limited,
        "20 sign-ins from one address in a row were all checked"
    );
    // The login form itself carries a CSRF token.
    let page = b
        .post(
            "/login",
            &[("name", "alice"), ("password", PASSWORD), ("code", "1")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_non_loopback_listener_without_tls_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::open_or_create(&dir.path().join("relay")).expect("data dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().expect("store"));
    let start = |config: Config| {
        let (store, pin) = (store.clone(), data.pin());
        let addr = config.console_listen().expect("addr").expect("on");
        async move {
            super::start(
                addr,
                store,
                Arc::new(config),
                pin,
                None,
                tokio_util::sync::CancellationToken::new(),
            )
            .await
        }
    };
    let open = Config {
        admin_listen: "0.0.0.0:0".into(),
        ..Config::default()
    };
    let err = start(open.clone())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("admin_tls_cert"), "{err}");
    let half = Config {
        admin_tls_cert: Some(dir.path().join("cert.pem")),
        ..open.clone()
    };
    assert!(start(half).await.is_err());
    // With a certificate, or behind a named proxy, it starts.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("write");
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).expect("write");
    let tls = Config {
        admin_tls_cert: Some(dir.path().join("cert.pem")),
        admin_tls_key: Some(dir.path().join("key.pem")),
        ..open.clone()
    };
    let console = start(tls).await.expect("starts with TLS");
    assert!(console.url.starts_with("https://"), "{}", console.url);
    let proxied = Config {
        admin_trusted_proxies: vec!["127.0.0.1".parse().expect("ip")],
        ..open
    };
    start(proxied).await.expect("starts behind a proxy");
}

#[tokio::test]
async fn behind_a_proxy_only_the_proxy_is_served_and_names_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::open_or_create(&dir.path().join("relay")).expect("data dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().expect("store"));
    let config = Arc::new(Config {
        admin_listen: "10.0.0.2:8080".into(),
        admin_trusted_proxies: vec!["10.0.0.1".parse().expect("ip")],
        ..Config::default()
    });
    let state = Arc::new(ConsoleState::new(store, config, data.pin(), false));
    let app = router(state, None);
    let get = |peer: &str, forwarded: Option<&str>| {
        let mut req = Request::builder().uri("/login");
        if let Some(f) = forwarded {
            req = req
                .header("x-forwarded-for", f)
                .header("x-forwarded-proto", "https");
        }
        let mut req = req.body(Body::empty()).expect("request");
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(peer.parse().expect("addr")));
        app.clone().oneshot(req)
    };
    let direct = get("10.0.0.9:4000", Some("1.2.3.4"))
        .await
        .expect("response");
    assert_eq!(direct.status(), StatusCode::FORBIDDEN);
    let proxied = get("10.0.0.1:4000", Some("203.0.113.5"))
        .await
        .expect("response");
    assert_eq!(proxied.status(), StatusCode::OK);
    let cookie = proxied
        .headers()
        .get(header::SET_COOKIE)
        .expect("form cookie");
    assert!(
        cookie.to_str().expect("ascii").contains("Secure"),
        "{cookie:?}"
    );
}

#[tokio::test]
async fn a_reset_or_removal_ends_the_admins_open_sessions_and_a_lock_does_not() {
    let (mut b, _) = Browser::signed_in().await;
    assert_eq!(b.get("/").await.status, StatusCode::OK);
    // A new setup link (a reset) ends the session at its next request.
    let alice: UserName = "alice".parse().expect("name");
    service::add_admin(&*b.store, &b.config, &alice, None, &Actor::cli()).expect("reset");
    assert_eq!(b.get("/").await.location(), "/login");

    let (mut b, _) = Browser::signed_in().await;
    b.store
        .remove_admin("alice", &Actor::cli(), 1)
        .expect("remove");
    assert_eq!(b.get("/").await.location(), "/login");

    let (mut b, totp) = Browser::signed_in().await;
    let mut attacker = b.clone_app();
    attacker.peer = "127.0.0.9:40000".parse().expect("address");
    let code = next_code(&totp);
    for _ in 0..b.config.admin_login_lockout {
        attacker.log_in("alice", "guessed wrong!", &code).await;
    }
    let page = b.get("/").await;
    assert_eq!(
        page.status,
        StatusCode::OK,
        "a lock anyone can cause signed the admin out"
    );
}

#[tokio::test]
async fn a_form_a_browser_says_came_from_another_site_is_refused() {
    let (b, _) = Browser::signed_in().await;
    let host = alice_owns_mypc(&*b.store);
    let mut b = b;
    let csrf = b.get("/hosts/mypc").await.csrf();
    let cookies: Vec<String> = b.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/hosts/mypc/unlock")
        .header(header::COOKIE, cookies.join("; "))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body(Body::from(format!("csrf={csrf}")))
        .expect("request");
    req.extensions_mut().insert(ConnectInfo(b.peer));
    let response = b.app.clone().oneshot(req).await.expect("response");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let events = b.store.audit_page(&Default::default(), 5).expect("audit");
    assert!(
        events.iter().all(|e| e.event != "unlock"),
        "{host} was unlocked"
    );
}

#[tokio::test]
async fn live_host_status_streams_to_signed_in_admins_as_it_changes() {
    let mut anonymous = Browser::new();
    assert_eq!(anonymous.get("/events").await.location(), "/login");
    let (b, _) = Browser::signed_in().await;
    let host = alice_owns_mypc(&*b.store);
    let cookies: Vec<String> = b.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut req = Request::builder()
        .uri("/events")
        .header(header::COOKIE, cookies.join("; "))
        .body(Body::empty())
        .expect("request");
    req.extensions_mut().insert(ConnectInfo(b.peer));
    let response = b.app.clone().oneshot(req).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).expect("type"),
        "text/event-stream"
    );
    let mut body = response.into_body();
    let first = next_event(&mut body).await;
    assert!(
        first.contains(r#""host":"mypc","online":false,"locked":false"#),
        "{first}"
    );
    fail_logins(&*b.store, "alice", &host, 3);
    let second = next_event(&mut body).await;
    assert!(second.contains(r#""locked":true"#), "{second}");
    // Resetting the admin ends the stream, not only their next page.
    let alice: UserName = "alice".parse().expect("name");
    service::add_admin(&*b.store, &b.config, &alice, None, &Actor::cli()).expect("reset");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(frame) = body.frame().await {
            frame.expect("no error");
        }
    })
    .await;
    assert!(ended.is_ok(), "a reset admin's stream went on");
}

/// The next `hosts` event of a live-status stream.
async fn next_event(body: &mut Body) -> String {
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("an event in time")
            .expect("a frame")
            .expect("no error");
        if let Ok(data) = frame.into_data() {
            let text = String::from_utf8_lossy(&data).into_owned();
            if text.contains("event: hosts") {
                return text;
            }
        }
    }
}

/// Whether the first host in `body` shows its lock action `action`
/// (`unlock` or `reset`): the form is always there, hidden unless the host
/// offers it.
fn offers(body: &str, action: &str) -> bool {
    !between(body, &format!("data-offered=\"{action}\""), ">").contains("hidden")
}

#[tokio::test]
async fn a_hosts_lock_actions_sit_beside_its_lock_state_and_follow_it() {
    let (mut b, _) = Browser::signed_in().await;
    let host = alice_owns_mypc(&*b.store);
    for path in ["/hosts", "/hosts/mypc"] {
        let body = b.get(path).await.body;
        assert!(
            !offers(&body, "unlock") && !offers(&body, "reset"),
            "{path}"
        );
    }
    // Failures short of the lock: Reset beside the count.
    fail_logins(&*b.store, "alice", &host, 1);
    let body = b.get("/hosts/mypc").await.body;
    let failures_row = between(&body, "<th>Failures</th>", "</tr>");
    assert!(
        failures_row.contains("data-offered=\"reset\""),
        "{failures_row}"
    );
    assert!(offers(&body, "reset") && !offers(&body, "unlock"), "{body}");
    // Locked: Unlock beside "yes", in the list and on the host's page.
    fail_logins(&*b.store, "alice", &host, 2);
    for path in ["/hosts", "/hosts/mypc"] {
        let body = b.get(path).await.body;
        assert!(offers(&body, "unlock") && !offers(&body, "reset"), "{path}");
    }
    let body = b.get("/hosts/mypc").await.body;
    let locked_row = between(&body, "<th>Locked</th>", "</tr>");
    assert!(
        locked_row.contains("class=\"locked\"") && locked_row.contains(">Unlock</button>"),
        "the Unlock button is not beside the lock state: {locked_row}"
    );
    // The live status names the action too, so an open page shows it.
    let first = first_event(&b).await;
    assert!(first.contains(r#""offer":"unlock""#), "{first}");
}

#[tokio::test]
async fn a_revoke_happens_only_once_confirmed() {
    let (mut b, _) = Browser::signed_in().await;
    let host = alice_owns_mypc(&*b.store);
    let bob: UserName = "bob".parse().expect("name");
    b.store
        .grant(&host, &bob, &GrantTerms::default(), &Actor::cli(), 3)
        .expect("grant");
    let csrf = b.get("/hosts/mypc").await.csrf();
    // The Revoke button only asks, with a form that confirms (no script).
    let page = b
        .post("/hosts/mypc/revoke", &[("user", "bob"), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Revoke shared access?"), "{}", page.body);
    assert!(
        page.body
            .contains(r#"<input type="hidden" name="confirm" value="yes">"#),
        "{}",
        page.body
    );
    assert_eq!(b.store.grants_of(Some(&host)).expect("grants").len(), 1);
    // Anything but the confirmation is refused in the same way.
    for confirm in ["", "no", "YES "] {
        b.post(
            "/hosts/mypc/revoke",
            &[("user", "bob"), ("confirm", confirm), ("csrf", &csrf)],
        )
        .await;
        assert_eq!(
            b.store.grants_of(Some(&host)).expect("grants").len(),
            1,
            "revoked with confirm={confirm:?}"
        );
    }
    let audit = b.store.audit_page(&Default::default(), 20).expect("audit");
    assert!(audit.iter().all(|r| r.event != "revoke"));
    let page = b
        .post(
            "/hosts/mypc/revoke",
            &[("user", "bob"), ("confirm", "yes"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.location(), "/hosts/mypc?done=revoked", "{}", page.body);
    assert!(b.store.grants_of(Some(&host)).expect("grants").is_empty());
}

/// A six-digit code that `totp` accepts at no step near now.
fn wrong_code(totp: &totp_rs::Totp) -> String {
    let now = crate::clock::now_unix() as u64;
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| (0..=4).all(|i| totp.generate(now + i * 30 - 60).to_string() != *c))
        .expect("a wrong code")
}

#[tokio::test]
async fn a_refused_set_up_keeps_the_code_names_each_wrong_field_and_never_echoes_a_password() {
    let mut b = Browser::new();
    let admin: UserName = "alice".parse().expect("name");
    let setup =
        service::add_admin(&*b.store, &b.config, &admin, None, &Actor::cli()).expect("add admin");
    let path = setup
        .link
        .trim_start_matches("http://127.0.0.1:8080")
        .to_string();
    let page = b.get(&path).await;
    let secret = between(&page.body, "id=\"totp-secret\">", "<");
    let totp = super::signin::totp(
        totp_rs::Secret::try_from_base32(&secret)
            .expect("base32")
            .as_ref(),
        "alice",
    )
    .expect("totp");
    let csrf = page.csrf();
    let form = |password, again, code| {
        [
            ("csrf", csrf.as_str()),
            ("secret", secret.as_str()),
            ("password", password),
            ("password_again", again),
            ("code", code),
        ]
    };
    let invalid = |body: &str, field: &str| {
        let input = between(body, &format!("name=\"{field}\""), ">");
        input.contains("aria-invalid=\"true\"")
    };

    // Good passwords, a wrong code: only the code is marked, and kept.
    let code = wrong_code(&totp);
    let page = b.post(&path, &form(PASSWORD, PASSWORD, &code)).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert!(invalid(&page.body, "code"), "{}", page.body);
    assert!(!invalid(&page.body, "password") && !invalid(&page.body, "password_again"));
    assert!(
        page.body.contains("This code does not match"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&format!("value=\"{code}\"")),
        "the code typed was lost"
    );
    assert!(page.body.contains(&secret), "the key changed");
    assert!(!page.body.contains(PASSWORD), "a password was sent back");

    // A short password with a right code: the password is marked, the code kept.
    let code = totp.generate_current().to_string();
    let page = b.post(&path, &form("short", "short", &code)).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(invalid(&page.body, "password") && !invalid(&page.body, "code"));
    assert!(
        page.body.contains("at least 12 characters"),
        "{}",
        page.body
    );
    assert!(page.body.contains(&format!("value=\"{code}\"")));

    // Passwords that differ, and a wrong code: both are named at once.
    let wrong = wrong_code(&totp);
    let page = b
        .post(&path, &form(PASSWORD, "correct horse battery!", &wrong))
        .await;
    assert!(invalid(&page.body, "password_again") && invalid(&page.body, "code"));
    assert!(!invalid(&page.body, "password"));
    assert!(page.body.contains("differs from the password above"));
    assert!(!page.body.contains(PASSWORD) && !page.body.contains("battery!"));

    // Nothing was saved: the link still works, and finishes the set-up.
    let page = b.post(&path, &form(PASSWORD, PASSWORD, &code)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
}

#[tokio::test]
async fn a_failed_sign_in_says_how_long_a_lock_lasts_by_the_rule_and_keeps_the_name() {
    for (secs, says) in [(900, "15 minutes"), (3600, "1 hour"), (90, "90 seconds")] {
        let mut b = Browser::with_config(Config {
            admin_lockout_secs: secs,
            ..Config::default()
        });
        b.set_up_admin("alice", None).await;
        let page = b.log_in("alice", "wrong password!", "000000").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
        let ends = format!("A lock ends by itself {says} after it began");
        assert!(page.body.contains(&ends), "{}", page.body);
        assert!(page.body.contains(r#"name="name" value="alice""#));
        assert!(!page.body.contains("wrong password!"));
    }
}

#[tokio::test]
async fn an_offline_host_shows_when_it_was_last_seen_not_now() {
    let (mut b, _) = Browser::signed_in().await;
    let host = alice_owns_mypc(&*b.store);
    let now = crate::clock::now_unix();
    b.store
        .set_presence(
            &[(host.clone(), HostPresence::Online { desktop: None })],
            now - 600,
        )
        .expect("online");
    for path in ["/hosts", "/hosts/mypc"] {
        let body = b.get(path).await.body;
        assert!(
            body.contains(r#"<span class="last-seen">now</span>"#),
            "{path}"
        );
    }
    assert!(first_event(&b).await.contains(r#""seen":"now""#));
    let left = now - 180;
    b.store
        .set_presence(&[(host.clone(), HostPresence::Offline)], left)
        .expect("offline");
    let zone = jiff::tz::TimeZone::system();
    let shown = super::view::short_time(left, now, &zone);
    for path in ["/hosts", "/hosts/mypc"] {
        let body = b.get(path).await.body;
        let cell = between(&body, "class=\"last-seen\"", "</span>");
        assert!(
            cell.ends_with(&format!(">{shown}")) && !cell.contains(">now"),
            "{path}: {cell}"
        );
    }
    // The live status, which updates a page left open, says the same.
    let event = first_event(&b).await;
    assert!(event.contains(&format!(r#""seen":"{shown}""#)), "{event}");
}

#[test]
fn times_are_short_enough_for_a_phone_and_still_clear() {
    let zone = jiff::tz::TimeZone::UTC;
    let now = 1_796_000_000; // 2026-11-30 00:53:20 UTC
    let short = |at| super::view::short_time(at, now, &zone);
    assert_eq!(short(now - 60), "00:52:20");
    assert_eq!(short(now - 3600), "29 Nov 23:53");
    assert_eq!(short(now - 300 * 86_400), "3 Feb 00:53");
    assert_eq!(short(now - 400 * 86_400), "2025-10-26");
}

/// The first `hosts` event of a new live-status stream of `b`'s session.
async fn first_event(b: &Browser) -> String {
    let cookies: Vec<String> = b.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut req = Request::builder()
        .uri("/events")
        .header(header::COOKIE, cookies.join("; "))
        .body(Body::empty())
        .expect("request");
    req.extensions_mut().insert(ConnectInfo(b.peer));
    let response = b.app.clone().oneshot(req).await.expect("response");
    next_event(&mut response.into_body()).await
}

/// Whether the store still has user `name`.
fn has_user(store: &dyn Store, name: &str) -> bool {
    store.users().expect("users").iter().any(|u| u.name == name)
}

/// Whether the store still has host `name`.
fn has_host(store: &dyn Store, name: &str) -> bool {
    store.hosts().expect("hosts").iter().any(|h| h.name == name)
}

/// The audit rows of `event`, newest first.
fn audited(store: &dyn Store, event: &str) -> Vec<crate::store::AuditRow> {
    store
        .audit_page(&Default::default(), 100)
        .expect("audit")
        .into_iter()
        .filter(|r| r.event == event)
        .collect()
}

#[tokio::test]
async fn a_user_is_removed_only_once_confirmed_and_then_leaves_the_list() {
    let (mut b, _) = Browser::signed_in().await;
    let host = alice_owns_mypc(&*b.store);
    let bob: UserName = "bob".parse().expect("name");
    b.store
        .grant(&host, &bob, &GrantTerms::default(), &Actor::cli(), 3)
        .expect("grant");
    // An invite still open (the first expired long ago), which the removal
    // cancels and counts.
    let kind = InviteKind::User { email: None };
    let now = crate::clock::now_unix();
    b.store
        .create_invite("bob", &kind, [7; 32], now + 3600, &Actor::cli(), now)
        .expect("invite");
    let users = b.get("/users").await;
    assert!(
        users.body.contains(r#"action="/users/bob/remove""#)
            && users.body.contains(r#"aria-label="Remove bob""#),
        "{}",
        users.body
    );
    let csrf = users.csrf();
    // The Remove button only asks, saying what will happen.
    let page = b.post("/users/bob/remove", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Remove user bob?"), "{}", page.body);
    for says in [
        "any session they have ends at once",
        "Their shared access to mypc ends, and its owner is emailed",
        "Any unused invite for them is cancelled",
        "Their audit history stays",
    ] {
        assert!(page.body.contains(says), "{says:?} not on {}", page.body);
    }
    assert!(
        page.body
            .contains(r#"<input type="hidden" name="confirm" value="yes">"#),
        "{}",
        page.body
    );
    assert!(!page.body.contains("cannot be removed"), "{}", page.body);
    // Anything but the confirmation changes nothing.
    for confirm in ["", "no", "YES "] {
        let page = b
            .post(
                "/users/bob/remove",
                &[("confirm", confirm), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(has_user(&*b.store, "bob"), "removed with {confirm:?}");
    }
    assert_eq!(b.store.grants_of(Some(&host)).expect("grants").len(), 1);
    assert!(audited(&*b.store, "user-removed").is_empty());

    let page = b
        .post("/users/bob/remove", &[("confirm", "yes"), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let notice = between(&page.body, r#"<p class="notice" role="status">"#, "</p>");
    assert_eq!(
        notice,
        "User bob removed: their device can no longer log in. Their shared access to mypc \
         ended, with any session on it; the owners are emailed. Unused invites cancelled: 1. \
         Their audit history stays."
    );
    assert!(!page.body.contains("Remove bob"), "{}", page.body);
    assert!(!has_user(&*b.store, "bob"));
    assert!(b.store.grants_of(Some(&host)).expect("grants").is_empty());
    let users = b.get("/users").await.body;
    assert!(
        !users.contains("/users/bob/") && users.contains("/users/alice/remove"),
        "{users}"
    );
    let rows = audited(&*b.store, "user-removed");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].user.as_deref(), Some("bob"));
    assert_eq!(rows[0].source.as_deref(), Some("127.0.0.1"));
    assert!(
        rows[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("by console admin 'alice'")),
        "{:?}",
        rows[0].detail
    );
    let audit = b.get("/audit?event=user-removed").await.body;
    assert!(audit.contains(">user-removed<"), "{audit}");
    // Sent again (a reload), it says there is no such user.
    let again = b
        .post("/users/bob/remove", &[("confirm", "yes"), ("csrf", &csrf)])
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.body.contains("no user named"), "{}", again.body);
    assert_eq!(audited(&*b.store, "user-removed").len(), 1);
}

#[tokio::test]
async fn a_host_is_removed_only_once_confirmed_and_then_leaves_the_list() {
    let (mut b, _) = Browser::signed_in().await;
    let host = alice_owns_mypc(&*b.store);
    let bob: UserName = "bob".parse().expect("name");
    b.store
        .grant(&host, &bob, &GrantTerms::default(), &Actor::cli(), 3)
        .expect("grant");
    // An invite still open (the first expired long ago), which the removal
    // cancels and counts.
    let kind = InviteKind::Host {
        owner: "alice".parse().expect("name"),
        lockout_threshold: 3,
    };
    let now = crate::clock::now_unix();
    b.store
        .create_invite("mypc", &kind, [7; 32], now + 3600, &Actor::cli(), now)
        .expect("invite");
    let page = b.get("/hosts/mypc").await;
    let section = between(&page.body, "<h2>Remove host</h2>", "<h2>");
    assert!(
        section.contains(r#"action="/hosts/mypc/remove""#)
            && section.contains(">Remove host</button>"),
        "{section}"
    );
    let csrf = page.csrf();
    let page = b.post("/hosts/mypc/remove", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Remove host mypc?"), "{}", page.body);
    for says in [
        "Every session on mypc ends at once",
        "refused as an unknown device",
        "The shared access of bob ends",
        "Its owner, alice, and bob are emailed",
        "Its audit history stays",
    ] {
        assert!(page.body.contains(says), "{says:?} not on {}", page.body);
    }
    for confirm in ["", "no"] {
        b.post(
            "/hosts/mypc/remove",
            &[("confirm", confirm), ("csrf", &csrf)],
        )
        .await;
        assert!(has_host(&*b.store, "mypc"), "removed with {confirm:?}");
    }
    assert!(audited(&*b.store, "host-removed").is_empty());

    let page = b
        .post("/hosts/mypc/remove", &[("confirm", "yes"), ("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("<h1>Hosts</h1>"), "{}", page.body);
    let notice = between(&page.body, r#"<p class="notice" role="status">"#, "</p>");
    assert_eq!(
        notice,
        "Host mypc removed: its agent can no longer connect, and every session on it ended. \
         The shared access of bob ended; they and the owner are emailed. Unused invites \
         cancelled: 1. Its audit history stays."
    );
    assert!(!page.body.contains(r#"data-host="mypc""#), "{}", page.body);
    assert!(!has_host(&*b.store, "mypc"));
    assert!(!b.get("/hosts").await.body.contains(r#"data-host="mypc""#));
    assert_eq!(b.get("/hosts/mypc").await.status, StatusCode::NOT_FOUND);
    let rows = audited(&*b.store, "host-removed");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].host.as_deref(), Some("mypc"));
    assert!(rows[0]
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("by console admin 'alice'")));
    let audit = b.get("/audit?event=host-removed").await.body;
    assert!(audit.contains(">host-removed<"), "{audit}");
    // With its host gone, the owner may go too.
    let page = b
        .post(
            "/users/alice/remove",
            &[("confirm", "yes"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("User alice removed"), "{}", page.body);
}

#[tokio::test]
async fn an_owner_of_hosts_is_told_to_remove_them_first_and_refused_if_confirmed_anyway() {
    let (mut b, _) = Browser::signed_in().await;
    alice_owns_mypc(&*b.store);
    let csrf = b.get("/users").await.csrf();
    let page = b.post("/users/alice/remove", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let warning = between(
        &page.body,
        r#"<p class="notice error" role="alert">"#,
        "</p>",
    );
    assert!(
        warning.contains(r#"<a href="/hosts/mypc">mypc</a>"#)
            && warning.contains("cannot be removed")
            && warning.contains("remove that host first"),
        "{warning}"
    );
    let page = b
        .post(
            "/users/alice/remove",
            &[("confirm", "yes"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    let refusal = between(
        &page.body,
        r#"<p class="notice error" role="alert">"#,
        "</p>",
    );
    assert!(
        refusal.contains("'alice' owns mypc: remove it first"),
        "{refusal}"
    );
    assert!(
        page.body
            .contains(r#"first: <a href="/hosts/mypc">mypc</a>."#),
        "{}",
        page.body
    );
    assert!(has_user(&*b.store, "alice") && has_host(&*b.store, "mypc"));
    assert!(audited(&*b.store, "user-removed").is_empty());
    assert_eq!(
        b.post("/users/nobody/remove", &[("csrf", &csrf)])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_removal_needs_the_sessions_csrf_token() {
    let (mut b, _) = Browser::signed_in().await;
    alice_owns_mypc(&*b.store);
    let forged = super::auth::random_token();
    for path in ["/users/bob/remove", "/hosts/mypc/remove"] {
        for form in [
            vec![("confirm", "yes")],
            vec![("confirm", "yes"), ("csrf", "forged")],
            vec![("confirm", "yes"), ("csrf", forged.as_str())],
        ] {
            let page = b.post(path, &form).await;
            assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}: {}", page.body);
        }
        // Not even the confirmation page is shown without it.
        let page = b.post(path, &[("csrf", "forged")]).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert!(has_user(&*b.store, "bob") && has_host(&*b.store, "mypc"));
    assert!(audited(&*b.store, "user-removed").is_empty());
    assert!(audited(&*b.store, "host-removed").is_empty());
}
