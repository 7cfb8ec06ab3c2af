//! Reconnects without a reboot (SPEC R5, R6, B3): a forward survives an
//! agent restart and a relay crash without asking for the code again, the
//! agent reconnects by itself after a relay restart, and a revoke made while
//! the relay was down keeps a session from coming back.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use latchkey_tests::{count, Proc, World, OWNER_CODE};

use crate::world;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An agent restart (SIGTERM, then start) parks the sessions for the grace
/// period instead of ending them (SPEC R5); a forward keeps listening and
/// works again once the agent is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_forward_survives_an_agent_restart() -> Result<()> {
    let target = latchkey_tests::hello_target().await?;
    let w = world(Vec::new())?;
    w.mypc.allow_forward(&[target.to_string()])?;
    let mut agent = w.start_agent()?;
    let (mut forward, local) = w.start_forward(&target.to_string())?;
    assert!(latchkey_tests::fetch(local.clone())
        .await?
        .contains("hello"));
    agent.terminate()?;
    w.wait_online(false)?;
    assert!(
        forward.running(),
        "the forward ended when the agent stopped"
    );
    // Meanwhile a connection is refused cleanly, not hung.
    let during = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        latchkey_tests::fetch(local.clone()),
    )
    .await?
    .unwrap_or_default();
    assert!(!during.contains("hello"));
    let _agent = w.start_agent()?;
    latchkey_tests::wait_until_forwarding(&local)?;
    assert!(forward.running());
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "session-end"), 0, "{events:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_reconnects_after_a_relay_restart_and_a_new_session_works() -> Result<()> {
    let mut w = World::new()?;
    let mut agent = w.start_agent()?;
    w.relay.kill9();
    w.relay.restart()?;
    w.wait_online(true)?;
    assert!(agent.running());
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "back"])?;
    assert_eq!(text(&out.stdout), "back\n", "{}", text(&out.stderr));
    Ok(())
}

/// SPEC M5 and R6 on the embedded store: a relay that crashes and comes
/// back costs a forward a reconnect, not a login (its resume ticket); a
/// revoke made while the relay was down keeps a user's session from
/// coming back, and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_crash_costs_a_forward_a_reconnect_but_a_revoke_meanwhile_ends_it() -> Result<()> {
    let target = latchkey_tests::hello_target().await?.to_string();
    let mut w = World::new()?;
    w.mypc.allow_forward(std::slice::from_ref(&target))?;
    let _agent = w.start_agent()?;
    let (mut alices, alice_local) = w.start_forward(&target)?;
    let bob_log = w.dir.path().join("bob-forward.log");
    let mut bobs = Proc::spawn_logged(
        w.bob.cmd().env("LATCHKEY_ACCESS_CODE", OWNER_CODE).args([
            "forward",
            "mypc",
            &format!("0:{target}"),
        ]),
        std::fs::File::create(&bob_log)?,
    )?;
    let bob_local = latchkey_tests::world::forward_address(&bobs)?;
    latchkey_tests::wait_until_forwarding(&alice_local)?;
    latchkey_tests::wait_until_forwarding(&bob_local)?;
    let logins = latchkey_tests::count(&w.relay.audit_events("mypc")?, "login-ok");
    w.relay.kill9();
    // While the relay is down, the admin CLI revokes bob.
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    w.relay.restart()?;
    latchkey_tests::wait_until_forwarding(&alice_local)?;
    assert!(alices.running());
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(latchkey_tests::count(&events, "login-ok"), logins);
    assert_eq!(latchkey_tests::count(&events, "session-resume"), 1);
    let status = bobs.wait_exit()?;
    assert!(!status.success());
    let out = std::fs::read_to_string(&bob_log)?;
    assert!(out.contains("could not be resumed"), "{out}");
    assert!(out.contains("revoked"), "{out}");
    Ok(())
}

/// A relay's crash does not cut what runs in a session: the host keeps the
/// session's end-to-end connection while its link is down, the client
/// resumes the session on the restarted relay from the same socket, and
/// the connection continues on the new route (a path change under the
/// same virtual address). A TCP connection open through a forward goes on,
/// and the host made one end-to-end handshake in all.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_through_a_forward_survives_a_relay_crash_without_a_new_handshake(
) -> Result<()> {
    use std::time::{Duration, Instant};
    let target = latchkey_tests::tcp::echo_target().await?.to_string();
    let mut w = World::new()?;
    w.mypc.allow_forward(std::slice::from_ref(&target))?;
    let _agent = w.start_agent()?;
    let (mut forward, local) = w.start_forward(&target)?;
    let mut open = latchkey_tests::tcp::Echoes::connect(&local).await?;
    open.echo("before the crash", Duration::from_secs(10))
        .await?;
    let agent_log = w.dir.path().join("mypc-agent.log");
    let handshakes = || -> Result<usize> {
        Ok(std::fs::read_to_string(&agent_log)?
            .matches("end-to-end handshake")
            .count())
    };
    assert_eq!(handshakes()?, 1);
    w.relay.kill9();
    let killed = Instant::now();
    w.relay.restart()?;
    open.echo("after the crash", Duration::from_secs(40))
        .await?;
    println!(
        "the connection through the forward answered again {:?} after the kill",
        killed.elapsed()
    );
    assert!(forward.running());
    let log = std::fs::read_to_string(&agent_log)?;
    assert_eq!(handshakes()?, 1, "{log}");
    assert!(log.contains("session continues on a new route"), "{log}");
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "session-resume"), 1, "{events:?}");
    Ok(())
}

/// The other side of a kept connection: a session revoked while its relay
/// was down is not resumed, and what ran in it on the host ends soon after
/// the host is back online (the host waits a few seconds for the relay to
/// announce the session again), not at the connection's idle timeout.
#[tokio::test(flavor = "multi_thread")]
async fn what_a_session_revoked_while_its_relay_was_down_ran_ends_when_the_host_is_back(
) -> Result<()> {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A target that greets each connection, holds it, and says when it
    // closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?.to_string();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let _ = tcp.write_all(b"hi\n").await;
                let mut buf = [0u8; 64];
                while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                let _ = closed_tx.send(Instant::now());
            });
        }
    });
    let mut w = World::new()?;
    w.mypc.allow_forward(std::slice::from_ref(&target))?;
    let _agent = w.start_agent()?;
    let mut bobs = w
        .bob
        .spawn_with_code(OWNER_CODE, &["forward", "mypc", &format!("0:{target}")])?;
    let local = latchkey_tests::world::forward_address(&bobs)?;
    let mut tcp = tokio::net::TcpStream::connect(&local).await?;
    let mut hi = [0u8; 3];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut hi)).await??;
    w.relay.kill9();
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    w.relay.restart()?;
    let back = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(25), closed.recv())
        .await
        .context("bob's connection on the host still open 25 s after the relay came back")?
        .context("the target stopped")?;
    println!(
        "bob's connection on the host ended {:?} after the relay came back",
        ended.saturating_duration_since(back)
    );
    assert!(!bobs.wait_exit()?.success());
    drop(tcp);
    Ok(())
}

/// The shell of `connect` lives through a relay's crash: the same shell (a
/// variable set before the crash is still set after it), with a line that
/// says the relay went quiet (within seconds, before the connection gives
/// it up), one that it went away, and one when the session is back that
/// counts the outage from the relay's last word. A forward beside it,
/// which has no screen of its own, says the same on standard error.
#[tokio::test(flavor = "multi_thread")]
async fn a_shell_lives_through_a_relay_crash_and_says_so() -> Result<()> {
    use std::io::Write;
    let target = latchkey_tests::hello_target().await?;
    let mut w = World::new()?;
    w.mypc.allow_forward(&[target.to_string()])?;
    let _agent = w.start_agent()?;
    let (forward, _forward_in) = Proc::spawn_interactive_merged(
        w.bob.cmd().env("LATCHKEY_ACCESS_CODE", OWNER_CODE).args([
            "forward",
            "mypc",
            &format!("0:{target}"),
        ]),
    )?;
    let local = latchkey_tests::world::forward_address(&forward)?;
    let (mut shell, mut keys) = latchkey_tests::Proc::spawn_interactive_merged(
        w.alice
            .cmd()
            .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
            .args(["connect", "mypc"]),
    )?;
    keys.write_all(b"KEPT=same-$((6*7)); echo set-$KEPT\n")?;
    shell.expect_line("set-same-42")?;
    let killed = Instant::now();
    w.relay.kill9();
    // Said before the connection gives the relay up.
    let quiet = shell.expect_line("relay lost:")?;
    println!("told {:?} after the kill: {quiet}", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(5), "{quiet}");
    w.relay.restart()?;
    shell.expect_line("its relay went away")?;
    let back = shell.expect_line("is back after")?;
    // The outage it reports runs from the relay's silence, not from when
    // the client gave the relay up.
    let outage = Duration::from_secs(
        back.split("is back after ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no outage in {back:?}"))?,
    );
    let seen = killed.elapsed();
    println!("outage reported {outage:?}; measured {seen:?}");
    // Whole seconds, from the relay's last word (a keep-alive's answer, up
    // to a second and a half before the kill).
    assert!(
        outage + Duration::from_secs(2) >= seen && outage <= seen + Duration::from_secs(2),
        "reported {outage:?} for an outage of {seen:?}"
    );
    keys.write_all(b"echo still-$KEPT\n")?;
    shell.expect_line("still-same-42")?;
    forward.expect_line("relay lost:")?;
    let said = forward.lines_until("is back after")?;
    assert!(
        said.iter().any(|l| l.contains("its relay went away")),
        "{said:?}"
    );
    // The relay never answered again: the resumed session is on a new
    // connection, which the old one's silence ending does not mean.
    assert!(
        !said.iter().any(|l| l.contains("answers again")),
        "{said:?}"
    );
    assert!(latchkey_tests::fetch(local).await?.contains("hello"));
    keys.write_all(b"exit 3\n")?;
    assert_eq!(shell.wait_exit()?.code(), Some(3));
    Ok(())
}
