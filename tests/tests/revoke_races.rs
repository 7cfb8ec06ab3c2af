//! What an adversarial review of issue 12 broke on a live relay, kept as
//! regression tests: revokes racing logins, reboots and running commands,
//! and one grant holder trying to hold the whole lockout budget.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use latchkey_client::wire;
use latchkey_protocol::{
    frame::{LoginOutcome, Refusal, RelayToClient},
    handshake::InitiatorReply,
};
use latchkey_tests::{count, wait_until, Proc, World, OWNER_CODE};
use rand::rngs::OsRng;

/// Review finding 1: a command started before a revoke, which writes
/// nothing, is ended on the host with the session (its streams are reset,
/// and the host hangs it up), not left to run to completion.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_command_of_a_revoked_user_does_not_run_on() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mark = w.dir.path().join("ran-after-revoke");
    let script = format!(
        "exec >/dev/null 2>&1 </dev/null; sleep 2; touch {}",
        mark.display()
    );
    let mut exec = w
        .bob
        .spawn_with_code(OWNER_CODE, &["exec", "mypc", "--", "sh", "-c", &script])?;
    wait_until("bob's session", || {
        w.relay
            .audit_events("mypc")
            .map(|e| count(&e, "session-start") == 1)
            .unwrap_or(false)
    })?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    let revoked = Instant::now();
    let status = exec.wait_exit()?;
    println!(
        "client ended {:?} after the revoke (success: {})",
        revoked.elapsed(),
        status.success()
    );
    // Wait well past the command's sleep.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !mark.exists(),
        "the revoked user's command ran to completion on the host {:?} after the revoke",
        revoked.elapsed()
    );
    Ok(())
}

/// The same for a command typed in a shell.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_typed_in_a_revoked_shell_does_not_finish() -> Result<()> {
    use std::io::Write;
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mark = w.dir.path().join("shell-ran-after-revoke");
    let (mut shell, mut keys) = w.bob.spawn_shell("mypc")?;
    keys.write_all(b"echo ready-$((1+1))\n")?;
    shell.expect_line("ready-2")?;
    keys.write_all(format!("sleep 2; touch {}\n", mark.display()).as_bytes())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    let revoked = Instant::now();
    let _ = shell.wait_exit();
    println!("client ended {:?} after the revoke", revoked.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !mark.exists(),
        "a command typed by the revoked user finished on the host after the revoke"
    );
    Ok(())
}

/// Review finding 5: a login whose KE2 was issued before a revoke gets no
/// session, even when the user is granted again (same code record) before
/// the KE3 arrives: the grant has a new generation.
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

/// Review finding 4: lowering the threshold to the failures already counted
/// locks the host at once, instead of leaving it "busy" and unlocked.
#[tokio::test(flavor = "multi_thread")]
async fn lowering_the_threshold_to_the_failures_counted_locks_the_host() -> Result<()> {
    let w = World::with_env(vec![(
        "LATCHKEY_RELAY_HANDSHAKE_TIMEOUT_MS".into(),
        "2000".into(),
    )])?;
    w.relay
        .admin(&["policy", "mypc", "--lockout-threshold", "5"])?;
    for _ in 0..2 {
        assert!(w.bob.login("mypc", "wrong code").await.is_err());
    }
    assert_eq!(w.relay.status("mypc")?["failures"], 2);
    w.relay
        .admin(&["policy", "mypc", "--lockout-threshold", "2"])?;
    let r = w.alice.login("mypc", OWNER_CODE).await;
    let status = w.relay.status("mypc")?;
    println!(
        "owner's right code: {:?}; status: {status}",
        r.as_ref().err()
    );
    let events = w.relay.audit_events("mypc")?;
    println!("audit: {events:?}");
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("locked") && status["locked"] == true => Ok(()),
        Err(e) => bail!(
            "host at its threshold is neither locked nor usable: owner got {e:?}, locked = {}, failures = {}",
            status["locked"],
            status["failures"]
        ),
    }
}

/// Review finding 3: the requester of a reboot is revoked while the host
/// is down; the host comes back with the reboot's ticket, and the owner's
/// parked forward resumes.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_during_a_reboot_does_not_strand_the_others_sessions() -> Result<()> {
    let target = latchkey_tests::hello_target().await?;
    let w = World::with_env(vec![(
        "LATCHKEY_RELAY_REBOOT_DEADLINE_SECS".into(),
        "120".into(),
    )])?;
    w.mypc.set_reboot_command(&["true"])?;
    w.mypc.allow_forward(&[target.to_string()])?;
    let mut agent = w.start_agent()?;
    let (_forward, local) = w.start_forward(&target.to_string())?;
    assert!(latchkey_tests::fetch(local.clone())
        .await?
        .contains("hello"));
    let mut reboot: Proc = w.bob.spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?;
    assert!(agent.wait_exit()?.success());
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    let _ = reboot.wait_exit();
    let _agent = w.start_agent()?;
    let back = Instant::now();
    let mut worked = false;
    while back.elapsed() < Duration::from_secs(15) {
        let got =
            tokio::time::timeout(Duration::from_secs(2), latchkey_tests::fetch(local.clone()))
                .await;
        if matches!(got, Ok(Ok(ref s)) if s.contains("hello")) {
            worked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let events = w.relay.audit_events("mypc")?;
    println!("audit: {events:?}");
    assert!(
        worked,
        "the owner's forward did not resume within 15 s of the host's return"
    );
    Ok(())
}

/// Review finding 2: one grant holder who keeps attempts in flight (right
/// code, KE3 just before the deadline) holds at most one attempt of the
/// budget, so the owner still gets in.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_holder_who_keeps_attempts_in_flight_does_not_keep_the_owner_out() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut slots = Vec::new();
    for _ in 0..3 {
        let d = latchkey_tests::Device {
            home: w.bob.home.clone(),
        };
        let stop = stop.clone();
        slots.push(tokio::spawn(async move {
            let mut ok = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut login) = d.send_msg1("mypc", OWNER_CODE).await else {
                    continue;
                };
                let Ok(msg2) = wire::read_message(&mut login.recv).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let code = login.code.clone();
                let Ok(InitiatorReply::SendKe3 { msg3, awaiting }) =
                    login.init.read_msg2(&mut OsRng, &msg2, Some(&code))
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::time::sleep(Duration::from_secs(4)).await;
                if wire::write_message(&mut login.send, &msg3).await.is_ok() {
                    if let Ok(m4) = wire::read_message(&mut login.recv).await {
                        if let Ok((LoginOutcome::Accepted { .. }, _)) = awaiting.read_outcome(&m4) {
                            ok += 1;
                        }
                    }
                }
            }
            ok
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut busy, mut tries) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        tries += 1;
        match w.alice.login("mypc", OWNER_CODE).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("busy") || format!("{e:?}").contains("Busy") => {
                busy += 1
            }
            Err(e) => println!("alice: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut bob_ok = 0;
    for s in slots {
        bob_ok += tokio::time::timeout(Duration::from_secs(15), s).await??;
    }
    let status = w.relay.status("mypc")?;
    let events = w.relay.audit_events("mypc")?;
    println!(
        "owner refused busy {busy}/{tries} over 8 s; bob's logins ok {bob_ok}; status {status}; login-failed {}, host-locked {}, login-busy {}",
        count(&events, "login-failed"),
        count(&events, "host-locked"),
        count(&events, "login-busy")
    );
    assert!(
        busy * 2 < tries,
        "a grant holder with a right code kept the owner out ({busy}/{tries} busy) with no failure and no lock"
    );
    Ok(())
}

/// Six reboot requests at the same instant, from two users: the rate limit
/// is checked and claimed under one lock, so exactly one reboot is issued.
#[tokio::test(flavor = "multi_thread")]
async fn simultaneous_reboot_requests_issue_exactly_one_reboot() -> Result<()> {
    // The one reboot's client gives up soon (the host never comes back).
    let w = World::with_env(vec![(
        "LATCHKEY_RELAY_REBOOT_DEADLINE_SECS".into(),
        "4".into(),
    )])?;
    // A "reboot" that keeps the agent connected for a while.
    w.mypc.set_reboot_command(&["sleep", "3"])?;
    let _agent = w.start_agent()?;
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(w.alice.spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?);
        procs.push(w.bob.spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?);
    }
    let refused = procs
        .iter_mut()
        .filter_map(|p| p.wait_exit().ok())
        .filter(|s| !s.success())
        .count();
    assert!(refused >= 5, "{refused} of 6 refused");
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "reboot"), 1, "{events:?}");
    Ok(())
}

/// A user invited again (a lost or replaced device): the earlier invite no
/// longer works, and when the new device enrolls, the old one's live
/// sessions end.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_invite_cancels_the_old_one_and_the_new_device_ends_the_old_ones_sessions(
) -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut old_session = w.bob_sleeping_on_mypc(20)?;
    let first = w.relay.invite_user("bob")?;
    let second = w.relay.invite_user("bob")?;
    let phone = latchkey_tests::Device {
        home: w.dir.path().join("bobs-phone"),
    };
    let out = phone.cmd().args(["enroll", &first]).output()?;
    assert!(!out.status.success(), "a cancelled invite enrolled");
    phone.run(&["enroll", &second])?;
    let ended = Instant::now();
    assert!(!old_session.wait_exit()?.success());
    assert!(ended.elapsed() < Duration::from_secs(5));
    // The new device is bob now.
    phone.login("mypc", OWNER_CODE).await?;
    Ok(())
}
