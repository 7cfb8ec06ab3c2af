//! Offboarding: removing a user or a host ends what they hold at once,
//! on a live relay, from the admin CLI (another process): sessions, the
//! device's logins, a host's agent. The history stays, and the name
//! invited again starts with nothing.

use std::time::{Duration, Instant};

use anyhow::Result;
use latchkey_tests::{count, wait_until, Device, World, OWNER_CODE};

/// The longest a removal may take to end a live session.
const AT_ONCE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_user_ends_their_sessions_and_their_device() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut session = w.bob_sleeping_on_mypc(30)?;
    let refused = w.relay.admin_output(&["remove-user", "alice"])?;
    assert!(!refused.status.success(), "the owner of mypc was removed");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("owns mypc"), "{why}");

    let removed = Instant::now();
    let said = w.relay.admin(&["remove-user", "bob"])?;
    assert!(said.contains("shared access to mypc ended"), "{said}");
    wait_until("bob's session to end", || !session.running())?;
    assert!(removed.elapsed() < AT_ONCE, "{:?}", removed.elapsed());

    let login = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(!login.status.success(), "{login:?}");
    let said = String::from_utf8_lossy(&login.stderr);
    assert!(said.contains("does not know this device"), "{said}");
    // The owner is not touched, and the history stays.
    let owner = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(owner.status.success(), "{owner:?}");
    let events = w.relay.audit_events("mypc")?;
    assert!(count(&events, "session-start") >= 2, "{events:?}");
    let users = w.relay.admin_json(&["users"])?;
    assert!(
        !users.to_string().contains("\"bob\""),
        "a removed user is listed: {users}"
    );

    // Invited again, bob is a new user: enrolled, with no host.
    let again = Device {
        home: w.dir.path().join("bob-again"),
    };
    again.run(&["enroll", &w.relay.invite_user("bob")?])?;
    let hosts = again.run(&["hosts"])?;
    assert!(!hosts.contains("mypc"), "{hosts}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_host_ends_its_agent_and_every_session_on_it() -> Result<()> {
    let w = World::new()?;
    let mut agent = w.start_agent()?;
    let mut session = w.bob_sleeping_on_mypc(30)?;
    let removed = Instant::now();
    let said = w.relay.admin(&["remove-host", "mypc"])?;
    assert!(said.contains("Shared access of bob ended"), "{said}");
    wait_until("bob's session to end", || !session.running())?;
    assert!(removed.elapsed() < AT_ONCE, "{:?}", removed.elapsed());
    // The agent is refused when it dials again, and stops: retrying cannot
    // help it.
    let status = agent.wait_exit()?;
    assert!(!status.success(), "the removed host's agent: {status:?}");

    let login = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(!login.status.success(), "{login:?}");
    let said = String::from_utf8_lossy(&login.stderr);
    assert!(said.contains("no host 'mypc'"), "{said}");
    let hosts = w.relay.admin_json(&["hosts"])?;
    assert_eq!(hosts, serde_json::json!([]), "a removed host is listed");
    let events = w.relay.audit_events("mypc")?;
    for kept in ["session-start", "host-removed"] {
        assert!(count(&events, kept) >= 1, "no {kept} in {events:?}");
    }
    Ok(())
}
