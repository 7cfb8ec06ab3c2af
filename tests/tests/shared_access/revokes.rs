//! Revokes (SPEC S4): a revoke ends the user's live sessions at once, within
//! a second even while the mail server hangs, and what the user was running
//! on the host (a quiet command, a command typed in a shell) does not run
//! on to completion.

use std::{
    net::TcpListener,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use latchkey_tests::{count, wait_until, World, OWNER_CODE};

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
    // The end is audited by the relay's settler, a moment after.
    wait_until("the session's end in the audit", || {
        w.relay
            .audit_events("mypc")
            .map(|e| e.iter().any(|e| e == "session-end"))
            .unwrap_or(false)
    })?;
    Ok(())
}

/// A command started before a revoke, which writes nothing, is ended on
/// the host with the session (its streams are reset, and the host hangs it
/// up), not left to run to completion.
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
