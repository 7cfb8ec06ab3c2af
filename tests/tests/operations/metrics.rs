//! The relay's `/metrics` (SPEC O2), scraped from the real binary over
//! loopback: after a scripted set of logins the counters equal what
//! happened, and the gauges read from the store follow a lock and an
//! unlock.

use std::{
    net::{SocketAddr, TcpListener},
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};
use latchkey_client::net::NetError;
use latchkey_tests::{bin, wait_until, Proc, World, OWNER_CODE};

/// A loopback port free a moment ago. The relay binds it itself; a port
/// taken in between fails the start, and the caller tries another.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A world whose relay serves metrics on a loopback port of their own.
fn world_with_metrics() -> Result<(World, SocketAddr)> {
    let mut last = None;
    for _ in 0..3 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let env = vec![(
            "LATCHKEY_RELAY_METRICS_LISTEN".to_string(),
            addr.to_string(),
        )];
        match World::with_env(env) {
            Ok(w) => return Ok((w, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no relay")))
}

/// One scrape: the content type and the text.
fn scrape(addr: SocketAddr) -> Result<(String, String)> {
    let mut response = ureq::get(&format!("http://{addr}/metrics")).call()?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((content_type, response.body_mut().read_to_string()?))
}

/// The value of one series (`name{label="value"}`) in a scrape.
fn value(text: &str, series: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {series} in the scrape:\n{text}"))
}

fn logins(text: &str, result: &str) -> Result<f64> {
    value(
        text,
        &format!("latchkey_logins_total{{result=\"{result}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn scraped_login_counters_equal_the_logins_that_happened() -> Result<()> {
    let (w, metrics) = world_with_metrics()?;
    let (content_type, before) = scrape(metrics)?;
    assert_eq!(content_type, "text/plain; version=0.0.4");
    for result in ["ok", "wrong", "locked", "busy", "outsider"] {
        assert_eq!(logins(&before, result)?, 0.0, "{result} before any login");
    }
    assert_eq!(value(&before, "latchkey_hosts_locked")?, 0.0);

    // Two right codes.
    drop(w.alice.login("mypc", OWNER_CODE).await?);
    drop(w.bob.login("mypc", OWNER_CODE).await?);
    // carol holds no grant: her login looks like a wrong code to her, and
    // is an outsider's to the relay.
    match w.carol.login("mypc", OWNER_CODE).await {
        Err(NetError::WrongCode(_)) => {}
        other => bail!("an outsider's login ended with {:?}", other.err()),
    }
    // Three wrong codes lock mypc; then even the owner's right code is
    // refused as locked.
    w.bob_locks_mypc_for(&[&w.alice]).await?;

    let (_, text) = scrape(metrics)?;
    assert_eq!(logins(&text, "ok")?, 2.0);
    assert_eq!(logins(&text, "wrong")?, 3.0);
    assert_eq!(logins(&text, "locked")?, 1.0);
    assert_eq!(logins(&text, "busy")?, 0.0);
    assert_eq!(logins(&text, "outsider")?, 1.0);
    // Every attempt got its verdict: none pending, none abandoned.
    assert_eq!(value(&text, "latchkey_attempts_pending")?, 0.0);
    assert_eq!(value(&text, "latchkey_attempts_abandoned_total")?, 0.0);
    assert_eq!(value(&text, "latchkey_hosts_locked")?, 1.0);
    assert_eq!(value(&text, "latchkey_sessions_opened_total")?, 2.0);
    assert_eq!(
        value(&text, "latchkey_connections_opened_total{role=\"session\"}")?,
        2.0
    );
    // The lock queued notices, and a scrape counts what the outbox holds
    // (sessions that end queue more meanwhile: read both until they agree).
    let notices = || -> Result<(f64, f64)> {
        let outbox = w.relay.admin_json(&["outbox"])?;
        let (_, text) = scrape(metrics)?;
        let by_state = ["pending", "sent", "stored"]
            .iter()
            .map(|s| value(&text, &format!("latchkey_notices{{state=\"{s}\"}}")))
            .sum::<Result<f64>>()?;
        Ok((outbox.as_array().map_or(0, Vec::len) as f64, by_state))
    };
    let mut seen = (0.0, 0.0);
    wait_until("the notices scraped to match the outbox", || {
        seen = notices().unwrap_or((-1.0, -2.0));
        seen.0 > 0.0 && seen.0 == seen.1
    })
    .with_context(|| format!("outbox and scrape: {seen:?}"))?;
    // The store was timed: every login wrote to it.
    assert!(
        value(
            &text,
            "latchkey_store_transaction_seconds_count{kind=\"write\"}"
        )? > 0.0
    );

    // The gauge is read from the store: an admin's unlock, from another
    // process, shows at the next scrape.
    w.relay.admin(&["unlock", "mypc"])?;
    let (_, text) = scrape(metrics)?;
    assert_eq!(value(&text, "latchkey_hosts_locked")?, 0.0);
    drop(w.alice.login("mypc", OWNER_CODE).await?);
    let mut last = String::new();
    // The sessions end (no agent is running) and their connections close.
    wait_until("sessions and their connections to close", || {
        last = scrape(metrics).map(|(_, t)| t).unwrap_or_default();
        value(&last, "latchkey_sessions").ok() == Some(0.0)
            && value(&last, "latchkey_connections{role=\"session\"}").ok() == Some(0.0)
    })
    .with_context(|| format!("last scrape:\n{last}"))?;
    assert_eq!(logins(&last, "ok")?, 3.0);
    assert_eq!(value(&last, "latchkey_sessions_opened_total")?, 3.0);
    assert_eq!(value(&last, "latchkey_sessions_closed_total")?, 3.0);
    Ok(())
}

/// The probes a service manager or an orchestrator reads: alive, and
/// ready (serving, with its store answering).
#[test]
fn the_probes_say_alive_and_ready() -> Result<()> {
    let (_w, metrics) = world_with_metrics()?;
    for (path, said) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let mut response = ureq::get(&format!("http://{metrics}{path}")).call()?;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.body_mut().read_to_string()?, said, "{path}");
    }
    Ok(())
}

#[test]
fn only_metrics_and_the_probes_are_served_on_the_metrics_listener() -> Result<()> {
    let (_w, metrics) = world_with_metrics()?;
    match ureq::get(&format!("http://{metrics}/")).call() {
        Err(ureq::Error::StatusCode(404)) => {}
        other => bail!("/ answered {:?}", other.map(|r| r.status())),
    }
    match ureq::get(&format!("http://{metrics}/admin")).call() {
        Err(ureq::Error::StatusCode(404)) => {}
        other => bail!("another path answered {:?}", other.map(|r| r.status())),
    }
    Ok(())
}

#[test]
fn a_taken_metrics_address_fails_the_start_naming_the_setting() -> Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("relay.log");
    let mut cmd = Command::new(bin("latchkey-relay"));
    cmd.arg("--data-dir")
        .arg(dir.path().join("relay"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env(
            "LATCHKEY_RELAY_METRICS_LISTEN",
            taken.local_addr()?.to_string(),
        );
    let mut relay = Proc::spawn_logged(&mut cmd, std::fs::File::create(&log_path)?)?;
    let status = relay.wait_exit()?;
    assert!(!status.success(), "the relay started on a taken address");
    // Nothing on standard output: the tests read the address from there.
    let printed = relay.stdout.recv_timeout(std::time::Duration::from_secs(5));
    assert!(printed.is_err(), "the relay printed {printed:?}");
    let log = std::fs::read_to_string(&log_path)?;
    assert!(log.contains("metrics_listen"), "{log}");
    Ok(())
}

/// A session's route lives exactly as long as the session: it carries the
/// session's connection, a revoke removes it at once (the gauge falls to
/// zero), and what the revoked client still sends under it is dropped and
/// counted, never forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_removes_the_sessions_route_and_its_datagrams_are_dropped_and_counted(
) -> Result<()> {
    use latchkey_protocol::session::{ChannelKind, ChannelReply};
    let (w, metrics) = world_with_metrics()?;
    let _agent = w.start_agent()?;
    let routes = |text: &str| value(text, "latchkey_routes");
    let dropped = |text: &str| {
        value(
            text,
            "latchkey_forward_dropped_total{reason=\"unknown_leg\"}",
        )
    };
    let mut session = w.bob.login("mypc", OWNER_CODE).await?;
    let host = w.bob.host_connection(&mut session, "mypc").await?;
    let check = ChannelKind::ForwardCheck {
        target: "127.0.0.1:22".into(),
    };
    let (_send, mut recv) = latchkey_tests::open_channel(&host, &check).await?;
    let reply = recv.read_frame_padded::<ChannelReply>().await?;
    assert!(reply.is_some(), "the host did not answer through the route");
    let (_, text) = scrape(metrics)?;
    assert_eq!(routes(&text)?, 1.0);
    assert!(value(&text, "latchkey_forwarded_datagrams_total")? > 0.0);
    let before = dropped(&text)?;

    w.relay.admin(&["revoke", "mypc", "bob"])?;
    wait_until("the route's removal", || {
        scrape(metrics)
            .ok()
            .and_then(|(_, t)| routes(&t).ok())
            .is_some_and(|n| n == 0.0)
    })?;
    // bob's client still holds its end and sends on it: the relay drops
    // every datagram, and says so.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        latchkey_tests::open_channel(&host, &check),
    )
    .await;
    wait_until("bob's datagrams counted as dropped", || {
        scrape(metrics)
            .ok()
            .and_then(|(_, t)| dropped(&t).ok())
            .is_some_and(|n| n > before)
    })?;
    // The host, told of the end, closed its side of the connection.
    let out = w.alice.with_code(
        OWNER_CODE,
        &["exec", "mypc", "--", "echo", "alice-still-in"],
    )?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice-still-in\n");
    Ok(())
}
