//! Every attempt settles and every revoke bites (issue 12, SPEC S4, S6,
//! S7a), end to end with the real relay, admin CLI and agent processes.

use std::{
    io::Read,
    net::TcpListener,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use latchkey_protocol::frame::{LoginOutcome, Refusal};
use latchkey_tests::{bin, count, wait_until, Proc, World, OWNER_CODE, WAIT};

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

/// An SMTP server that accepts connections and never says a word.
struct SilentSmtp {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl SilentSmtp {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((socket, _)) => held.push(socket),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self { port, stop })
    }
}

impl Drop for SilentSmtp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_ends_a_live_session_within_a_second_while_the_mail_server_hangs() -> Result<()> {
    let smtp = SilentSmtp::start()?;
    let w = World::with_env(vec![
        (
            "LATCHKEY_RELAY_SMTP".into(),
            format!(
                "{{ host = \"127.0.0.1\", port = {}, from = \"relay@example.test\", tls = \"none\" }}",
                smtp.port
            ),
        ),
        ("LATCHKEY_RELAY_ADMIN_EMAIL".into(), "admin@example.test".into()),
    ])?;
    w.relay
        .admin(&["set-email", "alice", "alice@example.test"])?;
    w.relay.admin(&["set-email", "bob", "bob@example.test"])?;
    // More notices than deliveries in flight, all stuck on the mail server.
    for _ in 0..6 {
        w.relay.admin(&["revoke", "mypc", "bob"])?;
        w.relay.admin(&["grant", "mypc", "bob"])?;
    }
    let _agent = w.start_agent()?;
    let mut exec = w.bob_sleeping_on_mypc(20)?;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    let revoked = Instant::now();
    let status = exec.wait_exit()?;
    let took = revoked.elapsed();
    assert!(!status.success());
    assert!(
        took < Duration::from_secs(1),
        "the revoke took {took:?} to end the session"
    );
    drop(smtp);
    Ok(())
}
