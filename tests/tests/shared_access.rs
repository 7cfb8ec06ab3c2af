//! Shared access exactly as the seed article describes it (issue 5, SPEC
//! S1-S9). Each test is named after the sentence it proves.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use latchkey_client::net::NetError;
use latchkey_tests::{smtp::SmtpSink, wait_until, Device, World, OWNER_CODE, WAIT};

const NEW_CODE: &str = "owner code 2";

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
async fn secondary_user_keeps_inherited_code_after_owner_changes_it() -> Result<()> {
    // "This access code will remain the same for the secondary user, even if
    // you change the access code afterwards."
    let w = World::new()?;
    w.mypc.set_code(NEW_CODE, None)?;
    w.alice.login("mypc", NEW_CODE).await?;
    w.bob.login("mypc", OWNER_CODE).await?;
    let err = w
        .alice
        .login("mypc", OWNER_CODE)
        .await
        .expect_err("owner's old code still works");
    assert!(matches!(err, NetError::WrongCode(_)));
    let err = w
        .bob
        .login("mypc", NEW_CODE)
        .await
        .expect_err("secondary user got the new code");
    assert!(matches!(err, NetError::WrongCode(_)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn regrant_after_revoke_inherits_current_code() -> Result<()> {
    // "If the original access code is forgotten by both you and the
    // secondary user, then the admin will need to revoke the original shared
    // access invitation and grant a new one."
    let w = World::new()?;
    w.mypc.set_code(NEW_CODE, None)?;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    let err = w
        .bob
        .login("mypc", OWNER_CODE)
        .await
        .expect_err("revoked user got in");
    assert!(matches!(err, NetError::WrongCode(_)));
    w.relay.admin(&["grant", "mypc", "bob"])?;
    w.bob.login("mypc", NEW_CODE).await?;
    assert!(w.bob.login("mypc", OWNER_CODE).await.is_err());
    // Granting twice is refused with what to do instead.
    let out = w.relay.admin_output(&["grant", "mypc", "bob"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoke and grant again"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_ends_live_session() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut shell = w.bob_sleeping_on_mypc(30)?;
    let revoked = Instant::now();
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    wait_until("the session to end", || !shell.running())?;
    let took = revoked.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "session outlived the revoke by {took:?}"
    );
    let events = w.relay.audit_events("mypc")?;
    assert!(events.iter().any(|e| e == "session-end"), "{events:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_code_at_host_changes_only_that_users_code() -> Result<()> {
    // "If the secondary user has physical access to your host computer, they
    // can change the access code by following the Forgot Your Access Code steps."
    let w = World::new()?;
    let dave = Device {
        home: w.dir.path().join("dave"),
    };
    dave.run(&["enroll", &w.relay.invite_user("dave")?])?;
    w.relay.admin(&["grant", "mypc", "dave"])?;
    w.mypc.set_code("bob's own code", Some("bob"))?;
    w.bob.login("mypc", "bob's own code").await?;
    assert!(w.bob.login("mypc", OWNER_CODE).await.is_err());
    w.alice.login("mypc", OWNER_CODE).await?;
    dave.login("mypc", OWNER_CODE).await?;
    // Only users with a grant can be reset.
    let out = w.mypc.set_code("whatever code", Some("carol"));
    assert!(out.is_err());
    assert!(out.unwrap_err().to_string().contains("no shared access"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_failures_by_secondary_lock_every_user_until_admin_unlock() -> Result<()> {
    // "Note that if the secondary user fails to log in after three attempts,
    // all users who have access to your computer will be locked out. In that
    // case, you will need to contact your admin to unlock your computer."
    let w = World::new()?;
    let dave = Device {
        home: w.dir.path().join("dave"),
    };
    dave.run(&["enroll", &w.relay.invite_user("dave")?])?;
    w.relay.admin(&["grant", "mypc", "dave"])?;
    w.bob_locks_mypc_for(&[&w.alice, &w.bob, &dave]).await?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("host 'mypc' is locked: ask your admin to unlock it"));
    assert!(!out.status.success());
    w.relay.admin(&["unlock", "mypc"])?;
    for user in [&w.alice, &w.bob, &dave] {
        user.login("mypc", OWNER_CODE).await?;
    }
    Ok(())
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
    // The standard headers spam filters look for (issue 17, item 12).
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

/// Issue 17, item 13: a revoke tells the owner and the revoked user.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_emails_the_owner_and_the_revoked_user() -> Result<()> {
    let sink = SmtpSink::start("127.0.0.1:0".parse()?).await?;
    let w = world_with_mail(sink.addr.port())?;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    for to in ["alice@example.test", "bob@example.test"] {
        let mail = wait_for_mail(&sink, "the revoke email", |m| {
            m.contains(&format!("To: {to}")) && m.contains("revoked")
        })?;
        assert!(
            mail.contains("Shared access to mypc revoked for bob"),
            "{mail}"
        );
    }
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

#[tokio::test(flavor = "multi_thread")]
async fn granting_on_a_host_with_shared_access_disabled_is_refused() -> Result<()> {
    let w = World::new()?;
    w.relay
        .admin(&["policy", "mypc", "--shared-access", "disabled"])?;
    let out = w.relay.admin_output(&["grant", "mypc", "carol"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shared access is disabled on host 'mypc'")
    );
    w.relay.admin(&[
        "policy",
        "mypc",
        "--shared-access",
        "enabled",
        "--lockout-threshold",
        "5",
    ])?;
    w.relay.admin(&["grant", "mypc", "carol"])?;
    for _ in 0..4 {
        let _ = w.carol.login("mypc", "wrong").await;
    }
    assert_eq!(w.relay.status("mypc")?["locked"], false);
    let _ = w.carol.login("mypc", "wrong").await;
    assert_eq!(w.relay.status("mypc")?["locked"], true);
    let events = w.relay.audit_events("mypc")?;
    for e in ["grant", "policy", "host-locked", "login-failed"] {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }
    Ok(())
}
