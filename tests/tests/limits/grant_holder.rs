//! What one grant holder can hold on a host (SPEC X5, X6): at most 16
//! sessions on it, each of whose streams, handshakes included, counts
//! against the user's share of the host's link, a handshake's stream for
//! 15 s at most, and the link's flow control has room for all of one
//! user's streams stalled. However bob uses what he may hold, the host
//! stays reachable for alice.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use latchkey_tests::{count, fetch, hello_target, unlimited, wait_until, World, OWNER_CODE};

/// alice's `exec` on mypc runs and answers (`beside` says what bob is doing).
fn alices_exec_works(w: &World, beside: &str) -> Result<()> {
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "still mine"])?;
    assert!(
        out.status.success(),
        "alice's command failed {beside}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still mine");
    Ok(())
}

/// bob holds every session he may on mypc, each with its end-to-end
/// connection up and its handshake left hanging (message 1 sent, the
/// answer never read): the next right code starts no session and counts
/// nothing, and alice's exec, forward and shell all work as usual meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_holder_holding_all_he_may_leaves_the_host_to_the_others() -> Result<()> {
    let w = World::with_env(unlimited())?;
    let target = hello_target().await?;
    w.mypc.allow_forward(&[target.to_string()])?;
    let _agent = w.start_agent()?;
    let mut held = Vec::new();
    for n in 0..latchkey_server::rules::session_cap::PER_HOST {
        let mut session = w.bob.login("mypc", OWNER_CODE).await?;
        let conn = w.bob.raw_host_connection(&mut session, "mypc").await?;
        // Message 1 sent, and nothing after: the host's answer is never
        // read, the stream never finished.
        let (mut send, recv) = conn.open_bi().await?;
        let request = latchkey_protocol::session::HandshakeRequest {
            msg1: vec![n as u8; 48],
        };
        latchkey_client::wire::write_frame(&mut send, &request).await?;
        held.push((session, conn, send, recv));
    }
    match w.bob.login("mypc", OWNER_CODE).await {
        Ok(_) => bail!("bob started a 17th session on mypc"),
        Err(e) => {
            let why = e.to_string();
            assert!(why.contains("16 sessions open on 'mypc'"), "{why}");
        }
    }
    let status = w.relay.status("mypc")?;
    assert_eq!(status["failures"], 0, "{status}");
    assert_eq!(status["locked"], false, "{status}");
    assert!(w
        .relay
        .audit_events("mypc")?
        .iter()
        .any(|e| e == "login-refused"));

    let started = Instant::now();
    alices_exec_works(&w, "beside bob's full share of sessions")?;
    let (_forward, local) = w.start_forward(&target.to_string())?;
    assert!(fetch(local).await?.contains("hello"));
    let (shell, mut stdin) = w.alice.spawn_shell("mypc")?;
    std::io::Write::write_all(&mut stdin, b"echo shell-works; exit\n")?;
    shell.expect_line("shell-works")?;
    println!(
        "alice's exec, forward and shell beside bob's {} sessions: {:?}",
        held.len(),
        started.elapsed()
    );
    // A session that ends gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match w.bob.login("mypc", OWNER_CODE).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("bob's freed place was not given back: {e}"),
        }
    }
    Ok(())
}

/// Kills the processes it holds when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// bob runs as many commands as he may, each pouring out output that his
/// client never reads: what piles up for him stays within his share of the
/// link's flow control, and alice's command goes through as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_holder_who_never_reads_leaves_the_hosts_link_to_the_others() -> Result<()> {
    let w = World::with_env(unlimited())?;
    let _agent = w.start_agent()?;
    let sessions = latchkey_server::rules::session_cap::PER_HOST as usize;
    let mut stalled = Children(Vec::new());
    for _ in 0..sessions {
        let child = w
            .bob
            .cmd()
            .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
            .args(["exec", "mypc", "--", "cat", "/dev/zero"])
            .stdin(std::process::Stdio::null())
            // Piped and never read: the client stops reading the stream.
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        stalled.0.push(child);
    }
    wait_until("bob's sessions", || {
        w.relay
            .audit_events("mypc")
            .is_ok_and(|e| count(&e, "session-start") >= sessions)
    })?;
    // Long enough for each stalled stream to fill its window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    alices_exec_works(&w, "beside bob's stalled ones")?;
    println!(
        "alice's exec beside {sessions} stalled ones of bob's: {:?}",
        started.elapsed()
    );
    drop(stalled);
    Ok(())
}
