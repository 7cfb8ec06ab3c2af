//! Several relays on one PostgreSQL (SPEC M2-M5, R6): three real relay
//! processes sharing one identity and one store, real clients and a real
//! host agent: exact lockout across relays, redirects to the host's relay,
//! admin actions that reach another relay at once, and a relay's death that
//! costs a reconnect, not a login.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use latchkey_client::net::{self, NetError};
use latchkey_protocol::{ids::AccessCode, invite::Invite};
use latchkey_server::testing::postgres::{start_or_skip, TestPostgres};
use latchkey_tests::{count, unlimited, wait_until, Device, Relay, World, OWNER_CODE};

/// A world whose relay (A) is joined by two more (B and C) on one database,
/// with the rate limits out of the way (the tests log in from one address).
struct Cluster {
    w: World,
    b: Relay,
    c: Relay,
}

impl Cluster {
    fn start(pg: &TestPostgres) -> Result<Self> {
        let mut env = unlimited();
        env.push(("LATCHKEY_RELAY_STORE".into(), pg.fresh_database()));
        let w = World::with_env(env)?;
        let b = w.relay.join(w.dir.path().join("relay-b"))?;
        let c = w.relay.join(w.dir.path().join("relay-c"))?;
        let cluster = Self { w, b, c };
        // Each relay's first heartbeat puts it on the list invites carry.
        wait_until("three relays on record", || {
            cluster.invite_relays().is_ok_and(|r| r.len() == 3)
        })?;
        Ok(cluster)
    }

    fn relays(&self) -> [&Relay; 3] {
        [&self.w.relay, &self.b, &self.c]
    }

    fn addrs(&self) -> Vec<String> {
        self.relays().iter().map(|r| r.addr.to_string()).collect()
    }

    /// The relay addresses a new invite carries.
    fn invite_relays(&self) -> Result<Vec<String>> {
        let token = self.c.invite_user(&format!("probe{}", rand_suffix()))?;
        Ok(Invite::from_text(&token)?.relays)
    }

    /// mypc's status as relay C's admin CLI reads it.
    fn status(&self) -> Result<serde_json::Value> {
        self.c.status("mypc")
    }

    /// The address of the relay that holds mypc's agent, and its place
    /// in [`Cluster::relays`].
    fn holder(&self) -> Result<(String, usize)> {
        let holder = self.status()?["relay"]
            .as_str()
            .context("no relay holds mypc")?
            .to_owned();
        let at = self
            .relays()
            .iter()
            .position(|r| r.addr.to_string() == holder)
            .context("the holder is not one of the cluster's relays")?;
        Ok((holder, at))
    }

    /// Kills the relay at `at` in [`Cluster::relays`] with SIGKILL.
    fn kill(&mut self, at: usize) {
        match at {
            0 => self.w.relay.kill9(),
            1 => self.b.kill9(),
            _ => self.c.kill9(),
        }
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `device` logs in to mypc on the relay at `relay` alone.
async fn login_at(device: &Device, relay: &str, code: &str) -> Result<net::Session, NetError> {
    let (_, pin, key) = device
        .identity()
        .map_err(|e| NetError::Local(e.to_string()))?;
    let user = device.user().map_err(|e| NetError::Local(e.to_string()))?;
    let code = AccessCode::for_login(code.into()).map_err(|e| NetError::Local(e.to_string()))?;
    net::login(
        &[relay.to_string()],
        &pin,
        &key,
        &user,
        &"mypc".parse().expect("name"),
        code,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_wrong_codes_over_three_relays_count_exactly_the_threshold_and_one_unlock_frees_all(
) -> Result<()> {
    let Some(pg) = start_or_skip("fifty_wrong_codes_over_three_relays") else {
        return Ok(());
    };
    let cl = Cluster::start(&pg)?;
    // The host is offline, so no relay sends a login elsewhere: every relay
    // reserves its attempts in the one store.
    let addrs = cl.addrs();
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..50 {
        let device = if i % 2 == 0 {
            Device {
                home: cl.w.alice.home.clone(),
            }
        } else {
            Device {
                home: cl.w.bob.home.clone(),
            }
        };
        let relay = addrs[i % 3].clone();
        logins.spawn(async move { login_at(&device, &relay, "not the code").await });
    }
    let (mut wrong, mut locked, mut other) = (0, 0, Vec::new());
    while let Some(done) = logins.join_next().await {
        match done? {
            Err(NetError::WrongCode(_)) => wrong += 1,
            Err(NetError::Locked(_)) => locked += 1,
            Err(e) => other.push(e.to_string()),
            Ok(_) => bail!("a wrong code got in"),
        }
    }
    assert_eq!(other, Vec::<String>::new());
    assert_eq!(wrong, 3, "exactly the threshold was evaluated");
    assert_eq!(locked, 47);
    let status = cl.status()?;
    assert_eq!(status["failures"], 3, "{status}");
    assert_eq!(status["locked"], true, "{status}");
    assert_eq!(count(&cl.c.audit_events("mypc")?, "login-failed"), 3);
    // Locked on every relay, for every user, even with the right code.
    for relay in &addrs {
        for device in [&cl.w.alice, &cl.w.bob] {
            match login_at(device, relay, OWNER_CODE).await {
                Err(NetError::Locked(_)) => {}
                other => bail!("relay {relay} let a locked host's user through: {other:?}"),
            }
        }
    }
    // One unlock, made through relay B, frees it on all three.
    cl.b.admin(&["unlock", "mypc"])?;
    for relay in &addrs {
        let session = login_at(&cl.w.alice, relay, OWNER_CODE)
            .await
            .with_context(|| format!("after the unlock, on {relay}"))?;
        session.control.relay.close(b"done").await;
    }
    assert_eq!(cl.status()?["failures"], 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_at_a_relay_without_the_host_is_sent_to_its_relay_and_counted_once() -> Result<()> {
    let Some(pg) = start_or_skip("a_login_at_a_relay_without_the_host") else {
        return Ok(());
    };
    let cl = Cluster::start(&pg)?;
    // mypc enrolled before B and C joined: its agent knows only A.
    let _agent = cl.w.start_agent()?;
    let a = cl.w.relay.addr;
    assert_eq!(cl.status()?["relay"], a.to_string());
    // Invites made now list the whole cluster.
    let mut listed = cl.invite_relays()?;
    listed.sort();
    let mut all = cl.addrs();
    all.sort();
    assert_eq!(listed, all);
    // Bob asks B: he is sent to A before anything is tried, and logs in
    // there with one attempt.
    let session = login_at(&cl.w.bob, &cl.b.addr.to_string(), OWNER_CODE).await?;
    // (A device's socket shows quinn IPv4 addresses mapped to IPv6.)
    let reached = session.control.relay.conn.remote_address();
    assert_eq!(
        (reached.ip().to_canonical(), reached.port()),
        (a.ip(), a.port())
    );
    session.control.relay.close(b"done").await;
    let events = cl.c.audit_events("mypc")?;
    assert_eq!(count(&events, "login-ok"), 1, "{events:?}");
    assert_eq!(count(&events, "login-failed"), 0, "{events:?}");
    // The real client does the same: a user whose device dials C first
    // runs a command on mypc.
    let dave = cl.w.granted_user("dave")?;
    let mut order = cl.addrs();
    order.rotate_left(2);
    dave.set_relays(&order)?;
    let out = dave.with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "via-c"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-c");
    assert_eq!(count(&cl.c.audit_events("mypc")?, "login-ok"), 2);
    // A wrong code sent on from B counts once, like one made at A.
    match login_at(&cl.w.bob, &cl.b.addr.to_string(), "not the code").await {
        Err(NetError::WrongCode(_)) => {}
        other => bail!("a wrong code was answered with {other:?}"),
    }
    assert_eq!(cl.status()?["failures"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_made_through_one_relay_ends_a_session_held_on_another_at_once() -> Result<()> {
    let Some(pg) = start_or_skip("a_revoke_made_through_one_relay") else {
        return Ok(());
    };
    let cl = Cluster::start(&pg)?;
    let _agent = cl.w.start_agent()?;
    // Bob's session is on A (the host's relay); the revoke goes through B.
    let mut sleeping = cl.w.bob_sleeping_on_mypc(60)?;
    let revoked = Instant::now();
    cl.b.admin(&["revoke", "mypc", "bob"])?;
    let ended = wait_until("bob's session ends", || !sleeping.running());
    let took = revoked.elapsed();
    ended?;
    println!("revoke through B ended the session on A in {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "the session outlived the revoke by {took:?}"
    );
    let status = sleeping.wait_exit()?;
    assert!(!status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn when_a_relay_is_killed_its_host_moves_its_attempt_settles_and_nothing_is_lost(
) -> Result<()> {
    let Some(pg) = start_or_skip("when_a_relay_is_killed") else {
        return Ok(());
    };
    let mut cl = Cluster::start(&pg)?;
    // Devices that know the whole cluster (as those invited now do), the
    // relay that dies among the first they dial.
    cl.w.mypc.set_relays(&cl.addrs())?;
    cl.w.alice.set_relays(&cl.addrs())?;
    let _agent = cl.w.start_agent()?;
    let (holder, victim) = cl.holder()?;
    // Before the kill, on the host's relay: a session, a grant, and an
    // attempt still being decided (message 1 sent, never finished).
    let session = login_at(&cl.w.bob, &holder, OWNER_CODE).await?;
    session.control.relay.close(b"done").await;
    let dave = Device {
        home: cl.w.dir.path().join("dave"),
    };
    let survivor = (victim + 1) % 3;
    dave.run(&["enroll", &cl.relays()[victim].invite_user("dave")?])?;
    cl.relays()[victim].admin(&["grant", "mypc", "dave"])?;
    let pending = cl.w.alice.send_msg1_at(&holder, "mypc", OWNER_CODE).await?;
    wait_until("the attempt is pending", || {
        cl.relays()[survivor]
            .status("mypc")
            .is_ok_and(|s| s["failures"] == 1)
    })?;
    let killed = Instant::now();
    cl.kill(victim);
    let survivor = cl.relays()[survivor];
    // The agent is on another relay within seconds.
    wait_until("mypc back on another relay", || {
        survivor
            .status("mypc")
            .is_ok_and(|s| s["online"] == true && s["relay"] != holder.as_str())
    })?;
    println!("mypc was back {:?} after the kill", killed.elapsed());
    // The dead relay's attempt is settled as a failure: by its age (past
    // the handshake deadline) or when the relay's lease lapses (20 s),
    // whichever sweep comes first; and the relay is forgotten.
    let settled = || -> Result<bool> {
        let rows = survivor.admin_json(&["audit", "--host", "mypc"])?;
        Ok(rows.as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["event"] == "login-failed"
                    && r["detail"].as_str().is_some_and(|d| {
                        d.contains("stopped answering") || d.contains("settled by the sweeper")
                    })
            })
        }))
    };
    wait_until("the dead relay's attempt is settled", || {
        settled().unwrap_or(false)
    })?;
    wait_until("the dead relay is forgotten", || {
        Invite::from_text(&survivor.invite_user("probe-after").unwrap_or_default())
            .is_ok_and(|i| i.relays.len() == 2 && !i.relays.contains(&holder))
    })?;
    println!(
        "its attempt was settled {:?} after the kill",
        killed.elapsed()
    );
    drop(pending);
    let status = survivor.status("mypc")?;
    assert_eq!(status["failures"], 1, "{status}");
    assert_eq!(status["locked"], false, "{status}");
    // What was answered before the kill is all there.
    assert!(status["grants"]
        .as_array()
        .is_some_and(|g| g.iter().any(|u| u == "dave")));
    assert_eq!(count(&survivor.audit_events("mypc")?, "login-ok"), 1);
    // And the host is reached through what is left of the cluster (alice's
    // client moves on from a dead relay it dials).
    let out =
        cl.w.alice
            .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "still-here"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still-here");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_with_another_identity_is_refused_and_says_what_to_copy() -> Result<()> {
    let Some(pg) = start_or_skip("a_relay_with_another_identity") else {
        return Ok(());
    };
    let cl = Cluster::start(&pg)?;
    // A data directory of its own identity, on the cluster's store.
    let refused = std::process::Command::new(latchkey_tests::bin("latchkey-relay"))
        .arg("--data-dir")
        .arg(cl.w.dir.path().join("stranger"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("LATCHKEY_RELAY_ADMIN_LISTEN", "off")
        .envs(cl.w.relay.env.iter().cloned())
        .output()?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("copy relay.key, tls.crt and tls.key"),
        "{stderr}"
    );
    assert!(!stderr.contains("dbname"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forward_resumes_without_the_code_when_its_relay_is_killed() -> Result<()> {
    let Some(pg) = start_or_skip("a_forward_resumes_without_the_code") else {
        return Ok(());
    };
    let mut cl = Cluster::start(&pg)?;
    let target = latchkey_tests::hello_target().await?.to_string();
    let echo = latchkey_tests::tcp::echo_target().await?.to_string();
    cl.w.mypc.allow_forward(&[target.clone(), echo.clone()])?;
    cl.w.mypc.set_relays(&cl.addrs())?;
    cl.w.alice.set_relays(&cl.addrs())?;
    let _agent = cl.w.start_agent()?;
    let (_, victim) = cl.holder()?;
    let (mut forward, local) = cl.w.start_forward(&target)?;
    latchkey_tests::wait_until_forwarding(&local)?;
    // A second forward, with a connection open through it across the kill.
    let (_echoes, echo_local) = cl.w.start_forward(&echo)?;
    let mut open = latchkey_tests::tcp::Echoes::connect(&echo_local).await?;
    open.echo("before", Duration::from_secs(10)).await?;
    let survivor = (victim + 1) % 3;
    let logins_before = count(&cl.relays()[survivor].audit_events("mypc")?, "login-ok");
    let killed = Instant::now();
    cl.kill(victim);
    // The same forward process, never asked for the code again, reaches
    // the host through what is left of the cluster.
    latchkey_tests::wait_until_forwarding(&local)?;
    println!(
        "the forward worked again {:?} after the kill",
        killed.elapsed()
    );
    // The open connection went on: its session's end-to-end connection
    // moved to the surviving relay (SPEC R7).
    open.echo("after", Duration::from_secs(30)).await?;
    println!(
        "the connection open through the other forward answered again {:?} after the kill",
        killed.elapsed()
    );
    assert!(forward.running(), "the forward gave up");
    let survivor = cl.relays()[survivor];
    let events = survivor.audit_events("mypc")?;
    assert_eq!(count(&events, "login-ok"), logins_before, "{events:?}");
    assert_eq!(count(&events, "session-resume"), 2, "{events:?}");
    // A ticket works once: the session's next one is another.
    let status = survivor.status("mypc")?;
    assert_eq!(status["failures"], 0, "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_reboots_back_onto_another_relay_takes_its_sessions_along() -> Result<()> {
    let Some(pg) = start_or_skip("a_host_that_reboots_back_onto_another_relay") else {
        return Ok(());
    };
    let cl = Cluster::start(&pg)?;
    cl.w.mypc.set_relays(&cl.addrs())?;
    cl.w.alice.set_relays(&cl.addrs())?;
    // The "reboot" runs `true`: the agent exits, and the test starts it
    // again, on another relay.
    cl.w.mypc.set_reboot_command(&["true"])?;
    let mut agent = cl.w.start_agent()?;
    let (holder, _) = cl.holder()?;
    let mut reboot =
        cl.w.alice
            .spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?;
    assert!(agent.wait_exit()?.success());
    let other = cl
        .addrs()
        .into_iter()
        .find(|a| *a != holder)
        .context("another relay")?;
    cl.w.mypc.set_relays(std::slice::from_ref(&other))?;
    let back = Instant::now();
    let _agent = cl.w.start_agent()?;
    assert_eq!(cl.status()?["relay"], other.as_str());
    // The waiting session, parked on the old relay, follows the host and
    // sees it back; no code was asked again.
    assert!(reboot.wait_exit()?.success());
    println!(
        "the session saw its host back {:?} after it returned elsewhere",
        back.elapsed()
    );
    let events = cl.c.audit_events("mypc")?;
    assert_eq!(count(&events, "session-resume"), 1, "{events:?}");
    assert_eq!(count(&events, "login-ok"), 1, "{events:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_enrolled_again_through_one_relay_loses_its_sessions_on_another() -> Result<()> {
    let Some(pg) = start_or_skip("a_device_enrolled_again_through_one_relay") else {
        return Ok(());
    };
    let cl = Cluster::start(&pg)?;
    let _agent = cl.w.start_agent()?;
    // Bob's session is on A, the host's relay.
    let mut sleeping = cl.w.bob_sleeping_on_mypc(60)?;
    // Bob's device is enrolled again (a new laptop) through B alone.
    let token = cl.c.invite_user("bob")?;
    let mut invite = Invite::from_text(&token)?;
    invite.relays = vec![cl.b.addr.to_string()];
    let laptop = Device {
        home: cl.w.dir.path().join("bob-laptop"),
    };
    let enrolled = Instant::now();
    laptop.run(&["enroll", &invite.to_text()])?;
    wait_until("bob's old session ends", || !sleeping.running())?;
    println!(
        "the old device's session on A ended {:?} after the enrolment through B",
        enrolled.elapsed()
    );
    assert!(!sleeping.wait_exit()?.success());
    // The new device logs in as bob.
    let out = laptop.with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "new-laptop"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "new-laptop");
    // A command that is done closes its session: nothing resumes it.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(&cl.c.audit_events("mypc")?, "session-resume"), 0);
    Ok(())
}
