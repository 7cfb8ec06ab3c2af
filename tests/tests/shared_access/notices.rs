//! Notices (SPEC S2, S3, S4, S6, B2): mail to the owner on a grant (and a
//! notice on the host agent), to owner and user on a revoke, a
//! recommendation to change the code when a secondary user's session ends,
//! lock mail to owner and admin, and an outbox that survives a relay
//! restart. The mail server is a sink in this process.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use latchkey_tests::{smtp::SmtpSink, wait_until, Device, World, OWNER_CODE, WAIT};

fn smtp_env(port: u16) -> Vec<(String, String)> {
    vec![
        (
            "LATCHKEY_RELAY_SMTP".into(),
            format!("{{ host = \"127.0.0.1\", port = {port}, from = \"Latchkey <relay@example.test>\", tls = \"none\" }}"),
        ),
        ("LATCHKEY_RELAY_ADMIN_EMAIL".into(), "admin@example.test".into()),
    ]
}

/// A world whose users have email addresses and whose relay mails `sink`.
fn world_with_mail(port: u16) -> Result<World> {
    let w = World::with_env(smtp_env(port))?;
    w.relay
        .admin(&["set-email", "alice", "alice@example.test"])?;
    w.relay.admin(&["set-email", "bob", "bob@example.test"])?;
    Ok(w)
}

fn wait_for_mail(sink: &SmtpSink, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
    let mut found = None;
    wait_until(what, || {
        found = sink.received().into_iter().find(|m| pred(m));
        found.is_some()
    })
    .with_context(|| format!("mail received: {:#?}", sink.received()))?;
    found.context("mail")
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_sends_email_to_owner() -> Result<()> {
    // "Receive an email ... notifying you that your admin has enabled shared
    // access of your computer with at least one other user. Be asked to
    // provide the additional user with your access code."
    let sink = SmtpSink::start("127.0.0.1:0".parse()?).await?;
    let w = world_with_mail(sink.addr.port())?;
    let mut agent = w.start_agent()?;
    let dave = Device {
        home: w.dir.path().join("dave"),
    };
    dave.run(&["enroll", &w.relay.invite_user("dave")?])?;
    w.relay.admin(&["grant", "mypc", "dave"])?;
    let mail = wait_for_mail(&sink, "the grant email", |m| m.contains("for dave"))?;
    assert!(mail.contains("To: alice@example.test"), "{mail}");
    // The standard headers spam filters look for.
    for header in [
        "Message-ID: <",
        "MIME-Version: 1.0",
        "Content-Type: text/plain",
        "Date: ",
    ] {
        assert!(mail.contains(header), "no {header:?} in {mail}");
    }
    assert!(mail.contains("Shared access enabled on mypc"), "{mail}");
    assert!(mail.contains("Give dave your access code"), "{mail}");
    // The host agent shows the same notice.
    let deadline = Instant::now() + WAIT;
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        let log = std::fs::read_to_string(w.dir.path().join("mypc-agent.log")).unwrap_or_default();
        seen = log.contains("Give dave your access code");
        if !seen {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = agent.terminate();
    assert!(seen, "the host agent did not show the notice");
    Ok(())
}

/// A revoke tells the owner and the revoked user (SPEC S4), each in words
/// for them; the session it ends sends no "change your code" mail of its
/// own.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_emails_the_owner_and_the_revoked_user() -> Result<()> {
    let sink = SmtpSink::start("127.0.0.1:0".parse()?).await?;
    let w = world_with_mail(sink.addr.port())?;
    let _agent = w.start_agent()?;
    let mut session = w.bob_sleeping_on_mypc(30)?;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    wait_until("bob's session to end", || !session.running())?;
    let owners = wait_for_mail(&sink, "the owner's revoke email", |m| {
        m.contains("To: alice@example.test") && m.contains("revoked")
    })?;
    assert!(
        owners.contains("Shared access to mypc revoked for bob"),
        "{owners}"
    );
    assert!(owners.contains("change it"), "{owners}");
    let bobs = wait_for_mail(&sink, "bob's revoke email", |m| {
        m.contains("To: bob@example.test") && m.contains("revoked")
    })?;
    assert!(
        bobs.contains("Your shared access to mypc was revoked"),
        "{bobs}"
    );
    assert!(
        !bobs.contains("change it"),
        "the owner's advice to bob: {bobs}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        sink.received().iter().all(|m| !m.contains("bob ended")),
        "a session-end mail after the revoke: {:#?}",
        sink.received()
    );
    Ok(())
}

/// Removing a user mails the owners of the hosts they shared; removing a
/// host mails its owner and its shared users.
#[tokio::test(flavor = "multi_thread")]
async fn removals_email_whom_they_concern() -> Result<()> {
    let sink = SmtpSink::start("127.0.0.1:0".parse()?).await?;
    let w = world_with_mail(sink.addr.port())?;
    w.granted_user("dave")?;
    w.relay.admin(&["set-email", "dave", "dave@example.test"])?;
    w.relay.admin(&["remove-user", "bob"])?;
    let mail = wait_for_mail(&sink, "the user's removal email", |m| {
        m.contains("bob was removed")
    })?;
    assert!(mail.contains("To: alice@example.test"), "{mail}");
    w.relay.admin(&["remove-host", "mypc"])?;
    for to in ["alice@example.test", "dave@example.test"] {
        wait_for_mail(&sink, "the host's removal email", |m| {
            m.contains(&format!("To: {to}")) && m.contains("mypc was removed")
        })?;
    }
    assert!(
        sink.received()
            .iter()
            .all(|m| !(m.contains("To: bob@") && m.contains("mypc was removed"))),
        "a removed user was mailed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn secondary_session_end_recommends_code_change() -> Result<()> {
    // "After the second user ends their connection to your computer, we
    // recommend that you change your access code."
    let sink = SmtpSink::start("127.0.0.1:0".parse()?).await?;
    let w = world_with_mail(sink.addr.port())?;
    let _agent = w.start_agent()?;
    let out = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(out.status.success());
    let mail = wait_for_mail(&sink, "the recommendation", |m| {
        m.contains("bob ended their connection")
    })?;
    assert!(mail.contains("To: alice@example.test"));
    assert!(mail.contains("change your access code"));
    // bob's next session, within the hour, continues the run: no mail.
    let out = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(out.status.success());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let told = sink
        .received()
        .iter()
        .filter(|m| m.contains("bob ended their connection"))
        .count();
    assert_eq!(told, 1, "one mail per session, not per run");
    // The owner's own sessions send no such mail.
    let before = sink.received().len();
    w.alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(sink.received()[before..]
        .iter()
        .all(|m| !m.contains("alice ended")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lockout_notifies_owner_and_admin() -> Result<()> {
    let sink = SmtpSink::start("127.0.0.1:0".parse()?).await?;
    let w = world_with_mail(sink.addr.port())?;
    for _ in 0..3 {
        let _ = w.bob.login("mypc", "forgotten").await;
    }
    wait_for_mail(&sink, "owner's lock mail", |m| {
        m.contains("To: alice@example.test") && m.contains("is locked")
    })?;
    wait_for_mail(&sink, "admin's lock mail", |m| {
        m.contains("To: admin@example.test") && m.contains("is locked")
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_survives_relay_restart() -> Result<()> {
    // Reserve a port for the sink, then leave it closed: mail fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut w = world_with_mail(port)?;
    let dave = Device {
        home: w.dir.path().join("dave"),
    };
    dave.run(&["enroll", &w.relay.invite_user("dave")?])?;
    w.relay.admin(&["grant", "mypc", "dave"])?;
    wait_until("a failed delivery", || {
        w.relay
            .admin_json(&["outbox"])
            .map(|rows| {
                rows.as_array().is_some_and(|r| {
                    r.iter()
                        .any(|n| n["attempts"].as_u64() >= Some(1) && n["channel"] == "email")
                })
            })
            .unwrap_or(false)
    })?;
    w.relay.kill9();
    w.relay.restart()?;
    let sink = SmtpSink::start(format!("127.0.0.1:{port}").parse()?).await?;
    wait_for_mail(&sink, "the grant email after the restart", |m| {
        m.contains("for dave")
    })?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let copies = sink
        .received()
        .iter()
        .filter(|m| m.contains("for dave"))
        .count();
    assert_eq!(copies, 1);
    Ok(())
}
