//! The host's key (SPEC E3, E5): clients pin it and refuse a changed one,
//! saying how to compare; a copy of it connecting beside the host is refused
//! and reported; a root agent runs sessions as its `session_user`, which
//! cannot read the key (those two tests run only as root, as CI does).

use anyhow::Result;
use latchkey_tests::{current_account, wait_until, World, OWNER_CODE};

use crate::{alice_exec, succeeded};

/// A host whose key changed since the client pinned it is refused, with
/// how to compare fingerprints and accept the new key; after `hosts
/// --forget` the next connection pins it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_host_key_is_refused_with_how_to_compare() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let out = alice_exec(&w, &["true"])?;
    succeeded(&out)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("new host 'mypc', key pinned"), "{stderr}");
    // The pin is the host's key, as `host info` shows it.
    let info = w.mypc.run(&["host", "info"])?;
    let keys = w.alice.run(&["hosts", "--keys"])?;
    let fingerprint = info
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    assert!(!fingerprint.is_empty(), "{info}");
    assert!(keys.contains(&fingerprint), "{keys} vs {info}");

    // Another key pinned for mypc: as if the relay swapped the host.
    let known = w.alice.home.join("known_hosts");
    let text = std::fs::read_to_string(&known)?;
    let (relay, rest) = text.trim().split_once(' ').unwrap_or_default();
    let (host, _) = rest.split_once(' ').unwrap_or_default();
    let other = latchkey_protocol::handshake::Keypair::generate(&mut rand::rngs::OsRng);
    std::fs::write(
        &known,
        format!("{relay} {host} {}\n", other.public.to_text()),
    )?;
    let out = alice_exec(&w, &["true"])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needed in [
        "the key of host 'mypc' has changed",
        &other.public.fingerprint(),
        &fingerprint,
        "latchkey host info",
        "latchkey hosts --forget mypc",
    ] {
        assert!(stderr.contains(needed), "missing {needed:?} in: {stderr}");
    }
    w.alice.run(&["hosts", "--forget", "mypc"])?;
    let out = alice_exec(&w, &["echo", "back"])?;
    succeeded(&out)?;
    assert!(w.alice.run(&["hosts", "--keys"])?.contains(&fingerprint));
    Ok(())
}

/// A copy of mypc's whole home, key included, as a session that could read
/// it would take.
fn stolen_host_home(w: &World) -> Result<latchkey_tests::Device> {
    let copy = w.dir.path().join("stolen-home");
    std::fs::create_dir_all(&copy)?;
    for name in ["host.toml", "host.key", "e2e.keys"] {
        std::fs::copy(w.mypc.home.join(name), copy.join(name))?;
    }
    Ok(latchkey_tests::Device { home: copy })
}

/// A second agent with a copy of the host's key, while the host is
/// connected: the relay keeps the first, refuses the copy, and records it
/// for the owner and the admin (an audit row, a notice), instead of handing
/// the host's next sessions to the copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_copied_host_key_connecting_twice_is_refused_and_reported() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    w.wait_online(true)?;
    let thief = stolen_host_home(&w)?;
    let mut stolen = thief.start_agent()?;
    wait_until("the double connection in the audit", || {
        w.relay
            .audit_events("mypc")
            .map(|e| e.iter().any(|e| e == "host-key-twice"))
            .unwrap_or(false)
    })?;
    let outbox = w.relay.admin_json(&["outbox"])?;
    let told: Vec<String> = outbox
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["subject"].as_str().unwrap_or("").contains("two places"))
                .filter_map(|r| r["recipient"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        told.contains(&"alice".to_string()) && told.contains(&"admin".to_string()),
        "{outbox}"
    );
    // The first agent still serves the host's sessions.
    let out = alice_exec(&w, &["echo", "original"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "original\n");
    let log = std::fs::read_to_string(w.mypc.home.join(latchkey_client::host::CHANNEL_LOG))?;
    assert!(log.contains("original"), "{log}");
    assert!(
        stolen.running(),
        "the copy should wait and try again, not exit"
    );
    Ok(())
}

/// A copy of the host's key that takes the place while the agent stalls
/// (here stopped for a moment) leaves a `host-replaced` row, and when the
/// agent comes back and is refused beside the copy, that is reported too,
/// though the copy was reported from the same address a moment before.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_that_takes_over_from_a_stalled_agent_is_on_record() -> Result<()> {
    let w = World::new()?;
    let agent = w.start_agent()?;
    w.wait_online(true)?;
    let thief = stolen_host_home(&w)?;
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &agent.pid().to_string()])
            .status()
    };
    signal("-STOP")?;
    let _stolen = thief.start_agent()?;
    let events = |name: &str| {
        w.relay
            .audit_events("mypc")
            .map(|e| e.iter().filter(|e| *e == name).count())
            .unwrap_or(0)
    };
    wait_until("the silent replacement on record", || {
        events("host-replaced") >= 1
    })?;
    signal("-CONT")?;
    wait_until("the original's refusal on record", || {
        events("host-key-twice") >= 1
    })?;
    Ok(())
}

/// Whether the tests run as root; prints why a test is skipped if not.
fn as_root(test: &str) -> Result<bool> {
    let root = current_account()? == "root";
    if !root {
        println!(
            "skipping {test}: the tests do not run as root, so the agent cannot change account"
        );
    }
    Ok(root)
}

fn set_session_user(w: &World, account: &str) -> Result<()> {
    let path = w.mypc.home.join("host.toml");
    let mut cfg: toml::Table = std::fs::read_to_string(&path)?.parse()?;
    cfg.insert("session_user".into(), toml::Value::String(account.into()));
    std::fs::write(&path, cfg.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_as_session_user_cannot_read_the_hosts_keys() -> Result<()> {
    if !as_root("a_session_as_session_user_cannot_read_the_hosts_keys")? {
        return Ok(());
    }
    let w = World::new()?;
    set_session_user(&w, "nobody")?;
    let _agent = w.start_agent()?;
    let key = w.mypc.home.join("host.key");
    let key = key.to_string_lossy();

    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "id", "-un"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nobody");
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "cat", &key])?;
    assert!(!out.status.success(), "nobody read host.key");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // Copies run as the account too: the key does not come out that way,
    // and what arrives belongs to the account.
    let dest = w.dir.path().join("stolen.key");
    let out = w.alice.with_code(
        OWNER_CODE,
        &["cp", &format!("mypc:{key}"), &dest.to_string_lossy()],
    )?;
    assert!(!out.status.success(), "the key was copied out");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(!dest.exists());
    let src = w.dir.path().join("note.txt");
    std::fs::write(&src, b"for nobody\n")?;
    let landed = std::path::PathBuf::from(format!(
        "/tmp/latchkey-session-user-{}.txt",
        std::process::id()
    ));
    let out = w.alice.with_code(
        OWNER_CODE,
        &[
            "cp",
            &src.to_string_lossy(),
            &format!("mypc:{}", landed.display()),
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&landed)?);
    let _ = std::fs::remove_file(&landed);
    let nobody = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()?;
    assert_eq!(
        owner.to_string(),
        String::from_utf8_lossy(&nobody.stdout).trim()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_agent_without_session_user_refuses_to_start_and_says_why() -> Result<()> {
    if !as_root("a_root_agent_without_session_user_refuses_to_start_and_says_why")? {
        return Ok(());
    }
    let w = World::new()?;
    let path = w.mypc.home.join("host.toml");
    let mut cfg: toml::Table = std::fs::read_to_string(&path)?.parse()?;
    cfg.remove("session_user");
    std::fs::write(&path, cfg.to_string())?;
    let out = w.mypc.cmd().args(["host", "run"]).output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("session_user") && stderr.contains("root"),
        "{stderr}"
    );
    Ok(())
}
