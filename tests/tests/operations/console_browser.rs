//! The admin console in a real browser (SPEC O4, S6): headless Chromium
//! driven over WebDriver (chromedriver, through fantoccini), against the
//! real relay, host agent and `latchkey` client.
//!
//! An admin sets up their account from the one-time link (the TOTP code
//! computed here), signs in, grants bob shared access on the host's page,
//! sees the host locked after bob's three wrong codes, presses Unlock
//! beside the lock, unticks bob's exec right and sees the host refuse his
//! next command, and sees the owner's login in the audit log. Then every
//! page is opened as a phone shows it (390 px wide), where no table, list
//! or form may be wider than the screen nor any time wrap; bob's access is
//! revoked there through its confirmation step; the host page, left open,
//! shows when the host went offline; and, each through its confirmation
//! page, alice (who owns mypc) is refused removal, bob is removed, then
//! mypc, and the audit log shows both removals. Screenshots of each step go
//! to `target/console-screenshots/`.
//!
//! Without Chromium and chromedriver the test is skipped with the reason
//! printed, except in CI (`CI` set), where it fails.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use fantoccini::{elements::Element, Client, ClientBuilder, Locator};
use latchkey_tests::{wait_until, Proc, World, OWNER_CODE};
use serde_json::Value;

/// Longest wait for any one thing in the browser.
const STEP: Duration = Duration::from_secs(10);

/// The admin's console password (at least 12 characters).
const PASSWORD: &str = "a long console passphrase";

/// The admin's name.
const ADMIN: &str = "alice";

/// A readable desktop window.
const DESKTOP: (u32, u32) = (1100, 1000);

/// A phone's width.
const PHONE: (u32, u32) = (390, 844);

/// The browser and its driver, found on this machine.
struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// Finds `name` in `/usr/bin` or on `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin").join(name);
    if fixed.exists() {
        return Some(fixed);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
}

/// The tools, or `None` (with the reason printed) when they are missing
/// outside CI; in CI a missing tool is a failure.
fn tools(test: &str) -> Option<Tools> {
    let found = find_program("chromium")
        .ok_or("chromium is not installed")
        .and_then(|chromium| {
            let chromedriver =
                find_program("chromedriver").ok_or("chromedriver is not installed")?;
            Ok(Tools {
                chromium,
                chromedriver,
            })
        });
    let found = found.map_err(|why| format!("{why} (apt-get install chromium chromium-driver)"));
    latchkey_server::testing::needed_in_ci(test, "a browser", found)
}

/// Where the screenshots are kept: `target/console-screenshots/`.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("console-screenshots")
}

/// chromedriver on a free loopback port, killed (with the browser it
/// started, which shares its process group) when dropped.
struct ChromeDriver {
    proc: Proc,
    url: String,
}

impl ChromeDriver {
    fn start(tools: &Tools, dir: &Path) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.join("chromedriver.log"))?;
        let mut cmd = Command::new(&tools.chromedriver);
        cmd.arg(format!("--port={port}"));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let proc = Proc::spawn_logged(&mut cmd, log)?;
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_until("chromedriver to answer", || {
            ureq::get(&status).call().is_ok()
        })?;
        Ok(Self { proc, url })
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group is the one chromedriver leads (process_group(0)): the
        // browser it started, should the session not have been closed.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.proc.pid())])
            .status();
    }
}

/// A fresh headless Chromium session with its own profile in `dir`.
async fn open_browser(driver: &ChromeDriver, tools: &Tools, dir: &Path) -> Result<Client> {
    let profile = dir.join("chromium-profile");
    std::fs::create_dir_all(&profile)?;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": tools.chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .context("starting a Chromium session")?;
    browser.set_window_size(DESKTOP.0, DESKTOP.1).await?;
    Ok(browser)
}

/// The current TOTP code for the base32 `key`, as an authenticator app
/// shows it (SHA-1, 6 digits, 30 s).
/// The authenticator's code `steps_ahead` 30 s steps from now: the set-up
/// spends the current one, so sign-in uses the next (the console takes one
/// step of clock skew).
fn totp_code(key: &str, steps_ahead: u64) -> Result<String> {
    let secret = totp_rs::Secret::try_from_base32(key.trim())?;
    let totp = totp_rs::Builder::new().with_secret(secret).build()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(totp.generate(now + 30 * steps_ahead).to_string())
}

/// Saves a screenshot of the window as `NAME.png`.
async fn screenshot(browser: &Client, name: &str) -> Result<PathBuf> {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, browser.screenshot().await?)?;
    Ok(path)
}

/// Waits for an element.
async fn find(browser: &Client, locator: Locator<'_>) -> Result<Element> {
    match browser.wait().at_most(STEP).for_element(locator).await {
        Ok(e) => Ok(e),
        Err(e) => Err(anyhow!(e).context(format!("no {locator:?} on {}", url(browser).await))),
    }
}

/// The page's address, for error messages.
async fn url(browser: &Client) -> String {
    browser
        .current_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_default()
}

/// The input inside the label whose text starts with `label`.
async fn field(browser: &Client, label: &str) -> Result<Element> {
    find(
        browser,
        Locator::XPath(&format!(
            "//label[starts-with(normalize-space(.), '{label}')]//*[self::input or self::select]"
        )),
    )
    .await
}

/// Types `text` into the field labelled `label`.
async fn fill(browser: &Client, label: &str, text: &str) -> Result<()> {
    let input = field(browser, label).await?;
    input.clear().await?;
    input.send_keys(text).await?;
    Ok(())
}

/// Presses the button that reads `text`.
async fn press(browser: &Client, text: &str) -> Result<()> {
    find(
        browser,
        Locator::XPath(&format!("//button[normalize-space()='{text}']")),
    )
    .await?
    .click()
    .await?;
    Ok(())
}

/// Waits until the element at `css` reads something `ok` accepts; returns
/// that text.
async fn wait_text(browser: &Client, css: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + STEP;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = browser.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if ok(&last) {
                return Ok(last);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{css} reads {last:?} on {}, not what was expected",
        url(browser).await
    )
}

/// Checks, in the page, that it fits a phone's screen: the page does not
/// scroll sideways, no table, list or form is wider than the window or
/// reaches past its edge, and no time wraps onto a second line. Saves a
/// screenshot as `name` first, so a failure can be seen.
async fn fits_phone(browser: &Client, name: &str) -> Result<()> {
    const CHECK: &str = r#"
        const width = window.innerWidth;
        const describe = (e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
            + (e.className ? '.' + e.className : '');
        const wide = [...document.querySelectorAll('table, ul, ol, dl, form')].filter((e) => {
            const r = e.getBoundingClientRect();
            return r.width > width || r.right > width;
        }).map(describe);
        const wrapped = [...document.querySelectorAll('time')]
            .filter((t) => t.getClientRects().length > 1).map((t) => t.textContent);
        return { width, scrollWidth: document.documentElement.scrollWidth, wide, wrapped };
    "#;
    screenshot(browser, name).await?;
    let found = browser.execute(CHECK, Vec::new()).await?;
    let width = found["width"].as_u64().context("no width")?;
    let scroll_width = found["scrollWidth"].as_u64().context("no scroll width")?;
    ensure!(
        width <= u64::from(PHONE.0),
        "{name}: the window is {width} px wide, not a phone's"
    );
    ensure!(
        scroll_width <= width,
        "{name}: the page is {scroll_width} px wide on a {width} px screen"
    );
    ensure!(
        found["wide"] == Value::Array(Vec::new()),
        "{name}: wider than the screen: {}",
        found["wide"]
    );
    ensure!(
        found["wrapped"] == Value::Array(Vec::new()),
        "{name}: times that wrap: {}",
        found["wrapped"]
    );
    Ok(())
}

/// Waits for the status or error notice on top of the page to say `text`.
async fn notice(browser: &Client, text: &str) -> Result<String> {
    wait_text(browser, "p.notice", |t| t.contains(text)).await
}

/// Opens the one-time setup `link` as `admin`: reads the key shown, sets
/// the password and proves the second factor with a computed code.
/// Returns the TOTP key.
async fn set_up_admin(browser: &Client, link: &str) -> Result<String> {
    browser.goto(link).await?;
    wait_text(browser, "h1", |t| t == "Set up your admin account").await?;
    let key = find(browser, Locator::Id("totp-secret"))
        .await?
        .text()
        .await?;
    ensure!(key.trim().len() >= 16, "a short TOTP key {key:?}");
    screenshot(browser, "01-setup").await?;
    fill(browser, "Password (at least", PASSWORD).await?;
    fill(browser, "Password again", PASSWORD).await?;
    fill(
        browser,
        "Code from your authenticator app",
        &totp_code(&key, 0)?,
    )
    .await?;
    press(browser, "Finish setup").await?;
    notice(browser, "Your account is ready").await?;
    Ok(key)
}

/// Signs in on `console`/login with the name, password and a fresh code
/// (the next step's: the set-up's is spent).
async fn sign_in(browser: &Client, console: &str, admin: &str, key: &str) -> Result<()> {
    if !browser.current_url().await?.path().ends_with("/login") {
        browser.goto(&format!("{console}/login")).await?;
    }
    fill(browser, "Name", admin).await?;
    fill(browser, "Password", PASSWORD).await?;
    fill(
        browser,
        "Code from your authenticator app",
        &totp_code(key, 1)?,
    )
    .await?;
    press(browser, "Sign in").await?;
    wait_text(browser, "h1", |t| t == "Overview").await?;
    wait_text(browser, "header", |t| {
        t.contains(&format!("Sign out {admin}"))
    })
    .await?;
    Ok(())
}

/// Grants `user` shared access on the open host page.
async fn grant_on_host_page(browser: &Client, user: &str) -> Result<()> {
    field(browser, "Grant shared access to")
        .await?
        .select_by_label(user)
        .await?;
    press(browser, "Grant shared access").await?;
    notice(browser, "Shared access granted").await?;
    Ok(())
}

/// The host page's rows of the shared-access table: the users listed.
async fn shared_with(browser: &Client) -> Result<Vec<String>> {
    let cells = browser
        .find_all(Locator::XPath(
            "//h2[normalize-space()='Shared access']/following-sibling::*[1][self::div]//tbody/tr/td[1]",
        ))
        .await?;
    let mut users = Vec::new();
    for c in cells {
        users.push(c.text().await?);
    }
    Ok(users)
}

/// Runs `latchkey exec mypc -- ARGS` as `who` with `code` (the real
/// client binary), off the async workers.
fn exec(who: &latchkey_tests::Device, code: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut all = vec!["exec", "mypc", "--"];
    all.extend_from_slice(args);
    tokio::task::block_in_place(|| who.with_code(code, &all))
}

/// Whether an audit row with these cells (event, host, user, and a detail
/// containing `detail`) is on the open audit page.
async fn audit_row(
    browser: &Client,
    event: &str,
    host: &str,
    user: &str,
    detail: &str,
) -> Result<Option<Element>> {
    let xpath = format!(
        "//table//tbody/tr[td[2][normalize-space()='{event}'] and td[3][normalize-space()='{host}'] \
         and td[4][normalize-space()='{user}'] and td[6][contains(normalize-space(), \"{detail}\")]]"
    );
    Ok(browser
        .find_all(Locator::XPath(&xpath))
        .await?
        .into_iter()
        .next())
}

/// The whole story, in the browser `browser` against world `w` whose
/// console is at `console`.
async fn admin_unlocks_a_host(w: &World, browser: &Client, console: &str) -> Result<()> {
    // 1. The first admin: a setup link from the CLI, then sign in.
    let out = w.relay.admin(&["add-admin", ADMIN])?;
    let link = out
        .lines()
        .last()
        .context("no setup link")?
        .trim()
        .to_string();
    ensure!(
        link.starts_with(&format!("{console}/setup/")),
        "the setup link {link:?} is not on {console}"
    );
    let key = set_up_admin(browser, &link).await?;
    sign_in(browser, console, ADMIN, &key).await?;
    wait_text(browser, "div.cards", |t| t.contains("1 / 1")).await?;
    screenshot(browser, "02-overview-signed-in").await?;

    // 2. Grant bob shared access on mypc's page.
    browser.goto(&format!("{console}/hosts/mypc")).await?;
    wait_text(browser, "h1", |t| t == "Host mypc").await?;
    ensure!(
        shared_with(browser).await?.is_empty(),
        "bob has access already"
    );
    grant_on_host_page(browser, "bob").await?;
    let users = shared_with(browser).await?;
    ensure!(users == ["bob"], "shared with {users:?}, not bob");
    wait_text(browser, "#host-status .locked", |t| t == "no").await?;
    screenshot(browser, "03-host-bob-granted").await?;

    // 3. Bob types a wrong code three times, with the real client; the
    // owner is then locked out too.
    for attempt in 1..=3 {
        let out = exec(&w.bob, "not the code", &["true"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains("wrong access code"),
            "bob's wrong attempt {attempt}: {stderr}"
        );
    }
    let out = exec(&w.alice, OWNER_CODE, &["true"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("is locked"),
        "a locked host let the owner in: {stderr}"
    );

    // The host page still open shows the lock by itself (live status
    // through server-sent events), before any reload.
    wait_text(browser, "#host-status .locked", |t| t == "yes").await?;

    // 4. The console shows mypc locked: the hosts list, then its page,
    // with Unlock beside the lock.
    browser.goto(&format!("{console}/hosts")).await?;
    wait_text(browser, "tr[data-host='mypc'] .locked", |t| t == "yes").await?;
    screenshot(browser, "04-hosts-locked").await?;
    browser.goto(&format!("{console}/hosts/mypc")).await?;
    wait_text(browser, "#host-status .locked", |t| t == "yes").await?;
    wait_text(browser, "#host-status .failures", |t| t == "3").await?;
    ensure!(
        find(
            browser,
            Locator::XPath("//tr[th='Locked']/td//button[normalize-space()='Unlock']")
        )
        .await?
        .is_displayed()
        .await?,
        "no Unlock beside the lock"
    );
    screenshot(browser, "05-host-locked").await?;

    // The same page on a phone.
    browser.set_window_size(PHONE.0, PHONE.1).await?;
    wait_text(browser, "#host-status .locked", |t| t == "yes").await?;
    fits_phone(browser, "06-host-locked-phone").await?;
    browser.set_window_size(DESKTOP.0, DESKTOP.1).await?;

    // 5. Unlock.
    press(browser, "Unlock").await?;
    notice(browser, "Host unlocked").await?;
    wait_text(browser, "#host-status .locked", |t| t == "no").await?;
    wait_text(browser, "#host-status .failures", |t| t == "0").await?;
    ensure!(
        shared_with(browser).await? == ["bob"],
        "the unlock changed the grants"
    );
    screenshot(browser, "07-host-unlocked").await?;

    // Bob's rights: exec unticked on his row; the host refuses his next
    // command, with the reason.
    let bobs = |name: &str| format!("//tr[@data-user='bob']//input[@name='right-{name}']");
    let exec_box = find(browser, Locator::XPath(&bobs("exec"))).await?;
    ensure!(
        exec_box.is_selected().await?,
        "bob's exec box starts unticked"
    );
    exec_box.click().await?;
    find(
        browser,
        Locator::XPath("//tr[@data-user='bob']//button[normalize-space()='Set rights']"),
    )
    .await?
    .click()
    .await?;
    notice(browser, "Rights set").await?;
    ensure!(
        !find(browser, Locator::XPath(&bobs("exec")))
            .await?
            .is_selected()
            .await?
            && find(browser, Locator::XPath(&bobs("shell")))
                .await?
                .is_selected()
                .await?,
        "the boxes do not show bob's rights as set"
    );
    let out = exec(&w.bob, OWNER_CODE, &["echo", "bob ran"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(255)
            && stderr.contains("your grant on mypc does not allow running commands on it")
            && !String::from_utf8_lossy(&out.stdout).contains("bob ran"),
        "bob ran a command his rights no longer allow: {stderr}"
    );
    screenshot(browser, "07b-host-rights-set").await?;

    // 6. The owner logs in again with the real client, and the audit log
    // shows it, and who unlocked.
    let out = exec(&w.alice, OWNER_CODE, &["echo", "back in"])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("back in"),
        "the owner could not log in after the unlock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    browser
        .goto(&format!("{console}/audit?event=login-ok"))
        .await?;
    wait_text(browser, "h1", |t| t == "Audit log").await?;
    ensure!(
        audit_row(browser, "login-ok", "mypc", "alice", "")
            .await?
            .is_some(),
        "no login-ok of alice on mypc in the audit log"
    );
    screenshot(browser, "08-audit-login-ok").await?;
    browser.goto(&format!("{console}/audit?host=mypc")).await?;
    wait_text(browser, "h1", |t| t == "Audit log").await?;
    ensure!(
        audit_row(browser, "unlock", "mypc", "", "by console admin 'alice'")
            .await?
            .is_some(),
        "no unlock by console admin 'alice' in the audit log"
    );
    ensure!(
        audit_row(browser, "grant", "mypc", "bob", "by console admin 'alice'")
            .await?
            .is_some(),
        "no grant to bob by console admin 'alice' in the audit log"
    );
    ensure!(
        audit_row(browser, "rights", "mypc", "bob", "by console admin 'alice'")
            .await?
            .is_some(),
        "no change of bob's rights by console admin 'alice' in the audit log"
    );
    screenshot(browser, "09-audit-mypc").await?;
    Ok(())
}

/// The users the relay has, as `admin users --json` lists them.
fn relay_users(w: &World) -> Result<Vec<String>> {
    let users = w.relay.admin_json(&["users"])?;
    Ok(users
        .as_array()
        .context("a list of users")?
        .iter()
        .filter_map(|u| u["name"].as_str().map(str::to_string))
        .collect())
}

/// Presses the users list's Remove button of `user` (its label names them).
async fn press_remove_user(browser: &Client, user: &str) -> Result<()> {
    find(
        browser,
        Locator::XPath(&format!("//button[@aria-label='Remove {user}']")),
    )
    .await?
    .click()
    .await?;
    Ok(())
}

/// Offboarding on a phone, each step through its confirmation page: alice
/// owns mypc, so she is told it goes first and refused when confirmed
/// anyway; bob is removed; then mypc; the audit log shows both.
async fn removals_on_a_phone(w: &World, browser: &Client, console: &str) -> Result<()> {
    browser.goto(&format!("{console}/users")).await?;
    wait_text(browser, "h1", |t| t == "Users").await?;
    press_remove_user(browser, "alice").await?;
    wait_text(browser, "h1", |t| t == "Remove user alice?").await?;
    notice(browser, "alice owns mypc").await?;
    fits_phone(browser, "19-phone-remove-owner-confirm").await?;
    press(browser, "Remove user alice").await?;
    wait_text(browser, "h1", |t| t == "Users").await?;
    notice(browser, "'alice' owns mypc: remove it first").await?;
    ensure!(
        relay_users(w)?.contains(&"alice".to_string()),
        "an owner of a host was removed"
    );
    fits_phone(browser, "20-phone-remove-owner-refused").await?;

    press_remove_user(browser, "bob").await?;
    wait_text(browser, "h1", |t| t == "Remove user bob?").await?;
    wait_text(browser, "main", |t| t.contains("Their audit history stays")).await?;
    fits_phone(browser, "21-phone-remove-user-confirm").await?;
    ensure!(
        relay_users(w)?.contains(&"bob".to_string()),
        "bob was removed before the confirmation"
    );
    press(browser, "Remove user bob").await?;
    wait_text(browser, "h1", |t| t == "Users").await?;
    notice(browser, "User bob removed").await?;
    ensure!(
        browser
            .find_all(Locator::XPath("//button[@aria-label='Remove bob']"))
            .await?
            .is_empty(),
        "bob is still listed"
    );
    ensure!(
        !relay_users(w)?.contains(&"bob".to_string()),
        "the relay still has bob"
    );
    fits_phone(browser, "22-phone-user-removed").await?;

    browser.goto(&format!("{console}/hosts/mypc")).await?;
    wait_text(browser, "h1", |t| t == "Host mypc").await?;
    press(browser, "Remove host").await?;
    wait_text(browser, "h1", |t| t == "Remove host mypc?").await?;
    wait_text(browser, "main", |t| {
        t.contains("Every session on mypc ends")
    })
    .await?;
    fits_phone(browser, "23-phone-remove-host-confirm").await?;
    press(browser, "Remove host mypc").await?;
    wait_text(browser, "h1", |t| t == "Hosts").await?;
    notice(browser, "Host mypc removed").await?;
    ensure!(
        browser
            .find_all(Locator::Css("tr[data-host='mypc']"))
            .await?
            .is_empty(),
        "mypc is still listed"
    );
    fits_phone(browser, "24-phone-host-removed").await?;

    browser.goto(&format!("{console}/audit")).await?;
    wait_text(browser, "h1", |t| t == "Audit log").await?;
    let by = "by console admin 'alice'";
    ensure!(
        audit_row(browser, "user-removed", "", "bob", by)
            .await?
            .is_some(),
        "no user-removed of bob by console admin 'alice' in the audit log"
    );
    ensure!(
        audit_row(browser, "host-removed", "mypc", "", by)
            .await?
            .is_some(),
        "no host-removed of mypc by console admin 'alice' in the audit log"
    );
    fits_phone(browser, "25-phone-audit-removals").await?;
    Ok(())
}

/// Every page as a phone shows it, then a revoke through its confirmation
/// step, a host going offline under an open page, removals, and the
/// sign-in and set-up pages.
async fn on_a_phone(w: &World, agent: &mut Proc, browser: &Client, console: &str) -> Result<()> {
    browser.set_window_size(PHONE.0, PHONE.1).await?;
    let pages = [
        ("/", "Overview", "10-phone-overview"),
        ("/hosts", "Hosts", "11-phone-hosts"),
        ("/hosts/mypc", "Host mypc", "12-phone-host"),
        ("/users", "Users", "13-phone-users"),
        ("/audit", "Audit log", "14-phone-audit"),
        ("/audit?host=mypc", "Audit log", "15-phone-audit-mypc"),
        ("/outbox", "Outbox", "16-phone-outbox"),
    ];
    for (path, title, name) in pages {
        browser.goto(&format!("{console}{path}")).await?;
        wait_text(browser, "h1", |t| t == title).await?;
        fits_phone(browser, name).await?;
    }

    // Revoke asks first; nothing changes until it is confirmed.
    browser.goto(&format!("{console}/hosts/mypc")).await?;
    press(browser, "Revoke").await?;
    wait_text(browser, "h1", |t| t == "Revoke shared access?").await?;
    fits_phone(browser, "17-phone-revoke-confirm").await?;
    let out = w.relay.admin(&["status", "mypc"])?;
    ensure!(
        out.lines()
            .any(|l| l.starts_with("shared with:") && l.contains("bob")),
        "bob lost access before the confirmation: {out}"
    );
    press(browser, "Revoke").await?;
    notice(browser, "Shared access revoked").await?;
    ensure!(
        shared_with(browser).await?.is_empty(),
        "bob still has access"
    );

    // The host's agent stops: the open page says when it was last seen.
    wait_text(browser, "#host-status .last-seen", |t| t == "now").await?;
    tokio::task::block_in_place(|| agent.terminate())?;
    wait_text(browser, "#host-status .online", |t| t == "no").await?;
    wait_text(browser, "#host-status .last-seen", |t| {
        t.contains(':') && t != "now"
    })
    .await?;
    ensure!(
        !browser
            .find(Locator::Css("#host-status .relay"))
            .await?
            .is_displayed()
            .await?,
        "an offline host still shows its relay"
    );
    fits_phone(browser, "18-phone-host-offline").await?;

    removals_on_a_phone(w, browser, console).await?;

    // Signed out: the sign-in page, then a new admin's set-up page.
    press(browser, &format!("Sign out {ADMIN}")).await?;
    wait_text(browser, "h1", |t| t == "Sign in").await?;
    fits_phone(browser, "26-phone-sign-in").await?;
    let out = w.relay.admin(&["add-admin", "dave"])?;
    let link = out.lines().last().context("no setup link")?.trim();
    browser.goto(link).await?;
    wait_text(browser, "h1", |t| t == "Set up your admin account").await?;
    fits_phone(browser, "27-phone-setup").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_grants_sees_the_lock_and_unlocks_in_a_browser() -> Result<()> {
    let Some(tools) = tools("admin_grants_sees_the_lock_and_unlocks_in_a_browser") else {
        return Ok(());
    };
    let started = Instant::now();
    // A failure's screenshot from an earlier run would mislead.
    let _ = std::fs::remove_file(screenshot_dir().join("failure.png"));
    let w = World::without_grant(vec![(
        "LATCHKEY_RELAY_ADMIN_LISTEN".into(),
        "127.0.0.1:0".into(),
    )])?;
    let line = w
        .relay
        .proc
        .as_ref()
        .ok_or_else(|| anyhow!("the relay is not running"))?
        .expect_line("admin console on")?;
    let console = line
        .rsplit(' ')
        .next()
        .context("no console address")?
        .trim_end_matches('/')
        .to_string();
    let mut agent = w.start_agent()?;
    let driver = ChromeDriver::start(&tools, w.dir.path())?;
    let browser = open_browser(&driver, &tools, w.dir.path()).await?;

    let mut outcome = admin_unlocks_a_host(&w, &browser, &console).await;
    if outcome.is_ok() {
        outcome = on_a_phone(&w, &mut agent, &browser, &console).await;
    }
    if outcome.is_err() {
        let _ = screenshot(&browser, "failure").await;
    }
    let closed = browser.close().await;
    outcome?;
    closed?;
    println!(
        "the browser test took {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        screenshot_dir().display()
    );
    Ok(())
}
