//! `latchkey desktop`: the host's declared desktop in one command. A real
//! VNC desktop (Xvfb and x11vnc) answers through it; the viewer named in
//! user.toml is opened on the forwarded port; a host without a desktop, or
//! with one its `forward_allow` does not permit, says so plainly.

use anyhow::{anyhow, Result};
use latchkey_tests::{hello_target, vnc, Device, World, OWNER_CODE};

use crate::within;

/// Sets `desktop` in the host's host.toml.
fn declare_desktop(host: &Device, url: &str) -> Result<()> {
    let path = host.home.join("host.toml");
    let mut cfg: toml::Table = std::fs::read_to_string(&path)?.parse()?;
    cfg.insert("desktop".into(), toml::Value::String(url.into()));
    std::fs::write(&path, cfg.to_string())?;
    Ok(())
}

/// Where a started `latchkey desktop` listens, from its "desktop of HOST
/// at URL (...)" line: the URL's `IP:PORT`.
fn desktop_address(desktop: &latchkey_tests::Proc) -> Result<String> {
    let line = desktop.expect_line("desktop of mypc at ")?;
    line.split("://")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("unexpected desktop output {line:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn desktop_reaches_the_hosts_vnc_screen_through_the_relay() -> Result<()> {
    const TEST: &str = "desktop_reaches_the_hosts_vnc_screen_through_the_relay";
    let Some(screen) = vnc::start_or_skip(TEST, 1024, 768) else {
        return Ok(());
    };
    let w = World::new()?;
    w.mypc.allow_forward(&[screen.addr.to_string()])?;
    declare_desktop(&w.mypc, &format!("vnc://{}", screen.addr))?;
    let _agent = w.start_agent()?;

    let desktop = w
        .alice
        .spawn_with_code(OWNER_CODE, &["desktop", "mypc", "--no-viewer"])?;
    let local = desktop_address(&desktop)?;
    assert_ne!(local, screen.addr.to_string(), "no forward in between");
    let init = vnc::view_one_frame(&local).await?;
    assert_eq!(
        (init.width, init.height),
        (screen.width, screen.height),
        "ServerInit gave another screen than Xvfb's"
    );
    // A viewer reconnects: the forward serves every connection.
    vnc::view_one_frame(&local).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn desktop_opens_the_viewer_named_in_user_toml_on_the_forwarded_port() -> Result<()> {
    let w = World::new()?;
    let service = hello_target().await?;
    w.mypc.allow_forward(&[service.to_string()])?;
    declare_desktop(&w.mypc, &format!("rdp://{service}"))?;
    let _agent = w.start_agent()?;
    let opened = w.dir.path().join("viewer-opened");
    let user_toml = w.alice.home.join("user.toml");
    let mut cfg: toml::Table = std::fs::read_to_string(&user_toml)?.parse()?;
    let viewer = format!("echo '{{url}} {{addr}} {{port}}' > '{}'", opened.display());
    cfg.insert(
        "viewer".into(),
        toml::Value::Table(toml::Table::from_iter([(
            "rdp".to_string(),
            toml::Value::Array(
                ["sh", "-c", viewer.as_str()]
                    .map(toml::Value::from)
                    .to_vec(),
            ),
        )])),
    );
    std::fs::write(&user_toml, cfg.to_string())?;
    // Its users see which desktop it offers, once its agent is online.
    let listed = |user: &Device| -> Result<serde_json::Value> {
        let rows: serde_json::Value = serde_json::from_str(&user.run(&["hosts", "--json"])?)?;
        Ok(rows[0].clone())
    };
    within(latchkey_tests::WAIT, "mypc to be listed online", || {
        listed(&w.bob).is_ok_and(|row| row["online"] == true)
    })?;
    assert_eq!(listed(&w.bob)?["desktop"], "rdp");
    assert!(w
        .alice
        .run(&["hosts"])?
        .lines()
        .any(|l| l.starts_with("mypc") && l.ends_with(" rdp")));

    let desktop = w
        .alice
        .spawn_with_code(OWNER_CODE, &["desktop", "mypc", "--port", "0"])?;
    let local = desktop_address(&desktop)?;
    within(latchkey_tests::WAIT, "the viewer to be opened", || {
        std::fs::read_to_string(&opened).is_ok_and(|t| t.ends_with('\n'))
    })?;
    let port = local.rsplit(':').next().unwrap_or_default();
    assert_eq!(
        std::fs::read_to_string(&opened)?,
        format!("rdp://{local} {local} {port}\n")
    );
    let got = latchkey_tests::fetch(local).await?;
    assert_eq!(got, "hello from the host side\n");
    Ok(())
}

#[test]
fn a_host_without_a_desktop_says_so_and_desktop_exits_255() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let rows: serde_json::Value = serde_json::from_str(&w.alice.run(&["hosts", "--json"])?)?;
    assert!(rows[0]["desktop"].is_null(), "{rows}");
    let out = w
        .alice
        .with_code(OWNER_CODE, &["desktop", "mypc", "--no-viewer"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("mypc declares no desktop (set desktop in its host.toml)"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
fn an_agent_whose_desktop_forward_allow_does_not_permit_refuses_to_start() -> Result<()> {
    let w = World::new()?;
    declare_desktop(&w.mypc, "vnc://127.0.0.1:5901")?;
    let out = w.mypc.cmd().args(["host", "run"]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "desktop vnc://127.0.0.1:5901 is not a target forward_allow permits: \
             add \"127.0.0.1:5901\" to forward_allow"
        ),
        "{stderr}"
    );
    Ok(())
}
