//! The admin console as the real relay serves it (SPEC O4): it refuses a
//! public address without TLS, serves HTTPS with the admin's certificate
//! (cookies marked Secure), the CLI's setup link points at it, and slow
//! clients hold neither the console nor a stopping relay.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use latchkey_tests::{bin, Relay};

fn https_agent(cert_pem: &[u8]) -> Result<ureq::Agent> {
    let cert = ureq::tls::Certificate::from_pem(cert_pem)?.to_owned();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into())
}

#[test]
fn a_public_address_without_tls_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(bin("latchkey-relay"))
        .arg("--data-dir")
        .arg(dir.path().join("relay"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("LATCHKEY_RELAY_ADMIN_LISTEN", "0.0.0.0:0")
        .output()?;
    assert!(!out.status.success(), "the relay started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("admin_tls_cert"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "it said it listens");
    Ok(())
}

#[test]
fn the_console_serves_https_with_the_admins_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    let (cert_path, key_path) = (
        dir.path().join("console.crt"),
        dir.path().join("console.key"),
    );
    std::fs::write(&cert_path, cert.cert.pem())?;
    std::fs::write(&key_path, cert.key_pair.serialize_pem())?;
    let env = vec![
        ("LATCHKEY_RELAY_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
        (
            "LATCHKEY_RELAY_ADMIN_TLS_CERT".into(),
            cert_path.display().to_string(),
        ),
        (
            "LATCHKEY_RELAY_ADMIN_TLS_KEY".into(),
            key_path.display().to_string(),
        ),
        ("LATCHKEY_RELAY_METRICS_LISTEN".into(), "console".into()),
    ];
    let relay = Relay::start_with(dir.path(), env)?;
    let said = relay
        .proc
        .as_ref()
        .context("running")?
        .stdout
        .recv_timeout(Duration::from_secs(10))
        .context("the console's address")?;
    let url = said
        .strip_prefix("admin console on ")
        .with_context(|| format!("relay said {said:?}"))?
        .to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    // The setup link the CLI prints points at the running console.
    let setup = relay.admin(&["add-admin", "alice"])?;
    let link = setup.lines().last().context("a link")?;
    assert!(link.starts_with(&format!("{url}/setup/")), "{setup}");

    let agent = https_agent(cert.cert.pem().as_bytes())?;
    let page = agent.get(link).call()?;
    assert_eq!(page.status(), 200);
    let cookie = page
        .headers()
        .get("set-cookie")
        .context("a form cookie")?
        .to_str()?
        .to_string();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let body = page.into_body().read_to_string()?;
    assert!(body.contains("totp-secret"), "{body}");
    // The link is not a page of its own without TLS.
    let plain: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let plain_url = link.replacen("https://", "http://", 1);
    let answered = plain.get(&plain_url).call().map(|r| r.status().as_u16());
    assert!(!matches!(answered, Ok(200)), "plain HTTP served the page");
    // Metrics on the console's listener need no sign-in.
    let metrics = agent.get(&format!("{url}/metrics")).call()?;
    assert_eq!(metrics.status(), 200);
    let text = metrics.into_body().read_to_string()?;
    assert!(text.contains("latchkey_logins_total"), "{text}");
    // Nor do the probes.
    for (path, said) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let probe = agent.get(&format!("{url}{path}")).call()?;
        assert_eq!(probe.status(), 200, "{path}");
        assert_eq!(probe.into_body().read_to_string()?, said, "{path}");
    }
    // Pages do.
    let overview = agent.get(&url).config().max_redirects(0).build().call()?;
    assert_eq!(overview.status(), 303);
    Ok(())
}

#[test]
fn slow_clients_neither_hold_the_console_nor_the_relays_stop() -> Result<()> {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir()?;
    let env = vec![("LATCHKEY_RELAY_ADMIN_LISTEN".into(), "127.0.0.1:0".into())];
    let mut relay = Relay::start_with(dir.path(), env)?;
    let said = relay
        .proc
        .as_ref()
        .context("running")?
        .stdout
        .recv_timeout(Duration::from_secs(10))?;
    let addr = said
        .strip_prefix("admin console on http://")
        .with_context(|| format!("relay said {said:?}"))?
        .to_string();
    // Headers that never end: the console closes the connection.
    let mut slow = std::net::TcpStream::connect(&addr)?;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")?;
    slow.set_read_timeout(Some(Duration::from_secs(30)))?;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "a request whose headers never end held its connection"
    );
    // A body that never arrives: the console closes the connection too.
    let mut trickle = std::net::TcpStream::connect(&addr)?;
    trickle.write_all(
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000\r\n\r\na",
    )?;
    trickle.set_read_timeout(Some(Duration::from_secs(30)))?;
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = trickle.read_to_end(&mut answer);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "a form body that never arrives held its connection"
    );
    // An unfinished request does not keep a stopping relay alive.
    let mut stuck = std::net::TcpStream::connect(&addr)?;
    stuck.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")?;
    let mut proc = relay.proc.take().context("running")?;
    let status = proc.terminate()?;
    assert!(status.success(), "{status}");
    drop(stuck);
    Ok(())
}
