//! IPv6 (SPEC I2, S9): a relay on `[::1]` serves a host and an `exec`, its
//! invite tokens carry the IPv6 address and its audit the source; a relay on
//! `[::]` serves IPv4 clients too (dual stack). Skipped, with the reason
//! printed, on a machine without IPv6 loopback.

use anyhow::{Context, Result};
use latchkey_protocol::invite::Invite;
use latchkey_tests::{World, OWNER_CODE};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether this machine has IPv6 loopback.
fn ipv6_loopback() -> bool {
    match std::net::UdpSocket::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            println!("skipped: no IPv6 loopback here ({e})");
            false
        }
    }
}

fn exec_echo(w: &World, word: &str) -> Result<()> {
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", word])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{word}\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_on_ipv6_loopback_serves_a_host_and_an_exec() -> Result<()> {
    if !ipv6_loopback() {
        return Ok(());
    }
    let w = World::listening_on("[::1]:0".parse()?, Vec::new())?;
    assert!(w.relay.addr.is_ipv6(), "{}", w.relay.addr);
    let token = w.relay.invite_user("dave")?;
    let invite = Invite::from_text(&token)?;
    assert_eq!(invite.relays, [w.relay.addr.to_string()]);
    assert!(
        invite.relays[0].starts_with("[::1]:"),
        "{:?}",
        invite.relays
    );
    let _agent = w.start_agent()?;
    exec_echo(&w, "over-ipv6")?;
    let source = last_login_source(&w)?;
    assert_eq!(source, "::1");
    Ok(())
}

/// The source address the audit log gives for the newest successful login.
fn last_login_source(w: &World) -> Result<String> {
    let audit = w.relay.admin_json(&["audit", "--host", "mypc"])?;
    Ok(audit
        .as_array()
        .context("a list")?
        .iter()
        .rev()
        .find(|r| r["event"] == "login-ok")
        .and_then(|r| r["source"].as_str())
        .context("a login with its source")?
        .to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_on_the_ipv6_wildcard_serves_ipv4_clients_too() -> Result<()> {
    if !ipv6_loopback() {
        return Ok(());
    }
    let w = World::listening_on("[::]:0".parse()?, Vec::new())?;
    let port = w.relay.addr.port();
    // The host dials over IPv6 (its token says [::1]), alice over IPv4.
    let user_file = w.alice.home.join("user.toml");
    let mut cfg: toml::Table = std::fs::read_to_string(&user_file)?.parse()?;
    cfg.insert("relay".into(), format!("127.0.0.1:{port}").into());
    std::fs::write(&user_file, cfg.to_string())?;
    let _agent = w.start_agent()?;
    exec_echo(&w, "over-ipv4")?;
    let source = last_login_source(&w)?;
    // Shown as the IPv4 address it is, not as ::ffff:127.0.0.1.
    assert_eq!(source, "127.0.0.1");
    Ok(())
}
