//! Every reserved attempt settles (SPEC A3, S4, S7, S7a, B2): attempts
//! abandoned after message 1 count as failures, a relay killed in the
//! middle of attempts or under load keeps everything it answered, a KE3
//! that arrives after a revoke (and a regrant) gets no session, and one
//! relay process owns a data directory.

use std::{io::Read, time::Duration};

use anyhow::{bail, Context, Result};
use latchkey_client::{
    net::{self, NetError},
    wire,
};
use latchkey_protocol::frame::{LoginOutcome, Refusal, RelayToClient};
use latchkey_tests::{bin, count, unlimited, wait_until, Device, Proc, World, OWNER_CODE, WAIT};

use crate::{failures, futures_join_all};

#[tokio::test(flavor = "multi_thread")]
async fn three_grant_holders_who_abandon_after_message_1_lock_the_host_until_an_unlock(
) -> Result<()> {
    let w = World::with_env(vec![(
        "LATCHKEY_RELAY_HANDSHAKE_TIMEOUT_MS".into(),
        "2000".into(),
    )])?;
    w.relay.admin(&["grant", "mypc", "carol"])?;
    // Each sends message 1, then stops reading and says nothing more.
    let mut walked_away = Vec::new();
    for device in [&w.alice, &w.bob, &w.carol] {
        let mut login = device.send_msg1("mypc", OWNER_CODE).await?;
        login.recv.stop(0u32.into())?;
        walked_away.push(login);
    }
    wait_until("the host locked", || {
        w.relay
            .status("mypc")
            .map(|s| s["locked"] == true)
            .unwrap_or(false)
    })?;
    assert_eq!(w.relay.status("mypc")?["failures"], 3);
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "login-failed"), 3, "{events:?}");
    assert_eq!(count(&events, "host-locked"), 1, "{events:?}");
    let err = w.alice.login("mypc", OWNER_CODE).await.unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    w.relay.admin(&["unlock", "mypc"])?;
    w.alice.login("mypc", OWNER_CODE).await?;
    drop(walked_away);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_between_message_1_and_ke3_means_no_session_and_no_channel() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut login = w.bob.send_msg1("mypc", OWNER_CODE).await?;
    let msg2 = login.read_msg2().await?;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    let (outcome, control) = login.finish(&msg2).await?;
    match outcome {
        LoginOutcome::Refused(Refusal::NotAllowed(why)) => {
            assert!(why.contains("revoked"), "{why}")
        }
        other => bail!("a revoked grant got {other:?}"),
    }
    // The connection is closed: no channel can open on it.
    let conn = control.relay.conn.clone();
    let opened = tokio::time::timeout(WAIT, async move {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"\0\0\0\x01\0").await?;
        let mut buf = [0u8; 1];
        recv.read_exact(&mut buf).await?;
        anyhow::Ok(())
    })
    .await
    .context("the connection stayed open")?;
    assert!(opened.is_err(), "a channel opened after the revoke");
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "session-start"), 0, "{events:?}");
    assert_eq!(
        w.relay.status("mypc")?["failures"],
        0,
        "a right code counted"
    );
    Ok(())
}

/// A login whose KE2 was issued before a revoke gets no session, even when
/// the user is granted again (same code record) before the KE3 arrives: the
/// grant has a new generation.
#[tokio::test(flavor = "multi_thread")]
async fn a_login_begun_before_a_revoke_and_regrant_gets_no_session() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut login = w.bob.send_msg1("mypc", OWNER_CODE).await?;
    let msg2 = login.read_msg2().await?;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    // Let the relay apply the revoke (it polls every 200 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    w.relay.admin(&["grant", "mypc", "bob"])?;
    let (outcome, control) = login.finish(&msg2).await?;
    if let LoginOutcome::Accepted { .. } = outcome {
        let mut recv = control.recv;
        let ready: Option<RelayToClient> = wire::read_frame(&mut recv).await?;
        bail!("a login begun before the revoke got a session ({ready:?})");
    }
    match outcome {
        LoginOutcome::Refused(Refusal::NotAllowed(why)) => {
            assert!(why.contains("revoked"), "{why}")
        }
        other => bail!("a login begun before the revoke got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_attempts_keeps_counters_and_locks_as_committed() -> Result<()> {
    let mut w = World::with_env(unlimited())?;
    // Two failures committed.
    for _ in 0..2 {
        assert!(w.bob.login("mypc", "not the code").await.is_err());
    }
    // Attempts in flight when the relay dies.
    let attempts = tokio::spawn({
        let bob = Device {
            home: w.bob.home.clone(),
        };
        async move {
            let all = (0..20).map(|_| bob.login("mypc", "not the code"));
            futures_join_all(all).await
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    w.relay.kill9();
    let _ = attempts.await;
    w.relay.restart()?;
    let (fails, locked) = failures(&w)?;
    let events = w.relay.audit_events("mypc")?;
    // At most the threshold was ever counted, the lock matches the count,
    // and every counted attempt has its failure in the audit log (those cut
    // off by the crash are recorded at restart).
    assert!(fails <= 3, "{fails} failures counted");
    assert_eq!(locked, fails == 3);
    assert_eq!(count(&events, "login-failed") as u64, fails, "{events:?}");
    if locked {
        let err = w
            .alice
            .login("mypc", OWNER_CODE)
            .await
            .expect_err("locked host let owner in");
        assert!(matches!(err, NetError::Locked(_)));
    } else {
        w.alice.login("mypc", OWNER_CODE).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_nothing_that_was_answered() -> Result<()> {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let mut w = World::with_env(unlimited())?;
    w.without_lockout()?;
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for i in 0..6 {
        let (dev, ok, failed) = (
            if i % 2 == 0 { &w.alice } else { &w.bob },
            ok.clone(),
            failed.clone(),
        );
        let login = dev.login_factory();
        let wrong = latchkey_tests::Device {
            home: dev.home.clone(),
        };
        load.push(tokio::spawn(async move {
            for n in 0.. {
                let result = if n % 3 == 0 {
                    wrong.login("mypc", "not the code").await
                } else {
                    login().await
                };
                match result {
                    Ok(s) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        s.control.relay.conn.close(0u32.into(), b"");
                    }
                    Err(net::NetError::WrongCode(_)) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.relay.kill9();
    let (answered_ok, answered_failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    for l in load {
        l.abort();
    }
    w.relay.restart()?;
    let events = w.relay.audit_events("mypc")?;
    let count = |e: &str| events.iter().filter(|x| *x == e).count();
    println!("answered before the kill: {answered_ok} ok, {answered_failed} wrong; in the store after the restart: {} ok, {} failed", count("login-ok"), count("login-failed"));
    assert!(answered_ok > 0 && answered_failed > 0, "no load ran");
    assert!(count("login-ok") >= answered_ok);
    assert!(count("login-failed") >= answered_failed);
    let status = w.relay.status("mypc")?;
    assert_eq!(status["grants"], serde_json::json!(["bob"]));
    assert_eq!(status["code_set"], true);
    assert_eq!(status["locked"], false);
    w.alice.login("mypc", OWNER_CODE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_relay_on_the_same_data_directory_refuses_and_the_admin_cli_still_works(
) -> Result<()> {
    let w = World::new()?;
    let first = w
        .relay
        .proc
        .as_ref()
        .map(|p| p.pid())
        .context("relay running")?;
    let log = w.dir.path().join("second-relay.log");
    let mut second = Proc::spawn_logged(
        std::process::Command::new(bin("latchkey-relay"))
            .arg("--data-dir")
            .arg(&w.relay.data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("LATCHKEY_RELAY_ADMIN_LISTEN", "off"),
        std::fs::File::create(&log)?,
    )?;
    let status = second.wait_exit()?;
    let mut said = String::new();
    std::fs::File::open(&log)?.read_to_string(&mut said)?;
    assert!(!status.success(), "the second relay ran: {said}");
    let want = format!(
        "data directory {} is in use by another relay (pid {first})",
        w.relay.data_dir.display()
    );
    assert!(said.contains(&want), "{said}");
    // The first relay serves on, and the admin CLI works beside it.
    assert_eq!(w.relay.status("mypc")?["locked"], false);
    w.alice.login("mypc", OWNER_CODE).await?;
    Ok(())
}
