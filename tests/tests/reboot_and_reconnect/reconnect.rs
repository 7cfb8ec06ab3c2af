//! Reconnects without a reboot (SPEC R5, R6, B3): a forward survives an
//! agent restart and a relay crash without asking for the code again, the
//! agent reconnects by itself after a relay restart, and a revoke made while
//! the relay was down keeps a session from coming back.

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
    let line = bobs.expect_line("forwarding")?;
    let bob_local = line
        .strip_prefix("forwarding ")
        .and_then(|l| l.split(' ').next())
        .context("bob's forward address")?
        .to_string();
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
