//! End-to-end encryption between client and host (SPEC X4, E1, E2): the
//! relay forwards datagrams it cannot read, a relay that introduces keys of
//! its own gets nothing, a host without the code's export key says what to
//! do, a long session opens channel after channel, and a cut channel is
//! never taken for its end.

use std::{
    io::{Read, Write},
    net::TcpListener,
    time::Duration,
};

use anyhow::{bail, Result};
use latchkey_client::{config::Home, user::remote::Remote};
use latchkey_protocol::{ids::AccessCode, session::ChannelKind};
use latchkey_tests::{wait_until, World, OWNER_CODE};

use crate::{alice_exec, succeeded};

/// A marker nobody else writes: any copy of it in the relay's buffers is
/// a leak.
fn marker() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("MARKER-{hex}")
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

/// The host logged no channel (it logs each one it serves).
fn no_channel_reached_the_host(w: &World) {
    let log = w.mypc.home.join(latchkey_client::host::CHANNEL_LOG);
    assert!(!log.exists(), "a channel reached the host");
}

/// Alice's session on mypc, in process.
async fn alice_on_mypc(w: &World) -> Result<Remote> {
    let home = Home::locate(Some(w.alice.home.clone()));
    let code = AccessCode::for_login(OWNER_CODE.into())?;
    Ok(Remote::open(&home, &"mypc".parse()?, code).await?)
}

/// A TCP echo service on the host's side.
fn echo_service() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        for mut tcp in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf) {
                    if n == 0 || tcp.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A marker sent through a forward (both ways), an exec (its command line
/// and its output) and a copy reaches the other end, and no datagram the
/// relay forwarded (the test relay appends every one to a file), nor its
/// store, holds it. The host's own channel log has the command; the
/// relay's audit has only the bytes each session moved.
#[tokio::test(flavor = "multi_thread")]
async fn the_relay_never_holds_channel_plaintext() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let capture = scratch.path().join("forwarded.bytes");
    let w = World::with_env(vec![(
        "LATCHKEY_TEST_FORWARD_CAPTURE".into(),
        capture.display().to_string(),
    )])?;
    let target = echo_service()?;
    w.mypc.allow_forward(std::slice::from_ref(&target))?;
    let _agent = w.start_agent()?;
    let secret = marker();

    // A forward, in-process: the marker goes out and comes back.
    let remote = alice_on_mypc(&w).await?;
    let (mut send, mut recv, _) = remote
        .channel(ChannelKind::Forward {
            target: target.clone(),
        })
        .await?;
    let mut sent = 0;
    for _ in 0..64 {
        send.write_all(format!("{secret}\n").as_bytes()).await?;
        sent += secret.len() + 1;
    }
    let mut echoed = Vec::new();
    let mut buf = [0u8; 4096];
    while echoed.len() < sent {
        let n = tokio::time::timeout(Duration::from_secs(10), recv.read(&mut buf)).await??;
        if n == 0 {
            bail!("the forward ended after {} bytes", echoed.len());
        }
        echoed.extend_from_slice(&buf[..n]);
    }
    assert!(contains(&echoed, &secret), "the echo lost the marker");
    send.finish().await?;
    remote.close().await;

    // An exec: the marker in the command line and in its output.
    let out = alice_exec(&w, &["echo", &secret])?;
    succeeded(&out)?;
    assert!(contains(&out.stdout, &secret), "exec lost the marker");

    // A copy of a file holding it.
    let file = w.dir.path().join("secret.txt");
    std::fs::write(&file, secret.repeat(100))?;
    let dest = w.dir.path().join("copied.txt");
    let out = w.alice.with_code(
        OWNER_CODE,
        &[
            "cp",
            &file.to_string_lossy(),
            &format!("mypc:{}", dest.display()),
        ],
    )?;
    succeeded(&out)?;
    assert_eq!(std::fs::read(&dest)?, secret.repeat(100).into_bytes());

    // The relay forwarded every byte of that, sealed.
    let forwarded = std::fs::read(&capture)?;
    println!("the relay forwarded {} bytes", forwarded.len());
    assert!(
        forwarded.len() > sent * 2 + secret.len() * 100,
        "the capture holds only {} bytes: is this a test build of the relay?",
        forwarded.len()
    );
    assert!(
        !contains(&forwarded, &secret),
        "the relay forwarded the marker in plaintext"
    );
    for (path, bytes) in files_under(&w.relay.data_dir) {
        assert!(
            !contains(&bytes, &secret),
            "the relay's {} holds the marker",
            path.display()
        );
    }
    // The host logs what ran; the relay knows bytes, not channels.
    let log = std::fs::read_to_string(w.mypc.home.join(latchkey_client::host::CHANNEL_LOG))?;
    assert!(
        log.lines()
            .any(|l| l.contains("\"exec\"") && l.contains(&secret) && l.contains("\"alice\"")),
        "{log}"
    );
    wait_until("the sessions' ends in the audit", || {
        w.relay
            .admin_json(&["audit", "--host", "mypc", "--limit", "100"])
            .map(|rows| {
                rows.as_array()
                    .map(|r| {
                        r.iter()
                            .filter(|e| e["event"] == "session-end")
                            .filter(|e| {
                                let detail = e["detail"].as_str().unwrap_or("");
                                detail.contains("bytes to the host") && !detail.contains("channel")
                            })
                            .count()
                            >= 2
                    })
                    .unwrap_or(false)
            })
            .unwrap_or(false)
    })?;
    Ok(())
}

/// A relay that introduces a key of its own as the host's cannot make the
/// handshake succeed without the host's key and the access code: the
/// client stops there, says why, and no channel reaches the host.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_that_introduces_its_own_keys_fails_the_handshake() -> Result<()> {
    let w = World::with_env(vec![("LATCHKEY_TEST_IMPERSONATE_HOST".into(), "1".into())])?;
    let _agent = w.start_agent()?;
    let out = alice_exec(&w, &["echo", "hi"])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("end-to-end handshake") && stderr.contains("trying to read your session"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hi"));
    no_channel_reached_the_host(&w);
    Ok(())
}

/// A code set before the host kept export keys (or whose key file is
/// lost) opens no session, and the user is told to set the code again.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_without_the_codes_export_key_says_to_set_the_code_again() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    std::fs::remove_file(w.mypc.home.join("e2e.keys"))?;
    let out = alice_exec(&w, &["true"])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused the end-to-end handshake")
            && stderr.contains("latchkey host set-code"),
        "{stderr}"
    );
    w.mypc.set_code(OWNER_CODE, None)?;
    let out = alice_exec(&w, &["true"])?;
    succeeded(&out)?;
    Ok(())
}

/// A long session opens channel after channel (a forward serves one per
/// connection): each one's stream is freed when it ends, so the 1,100th
/// opens as the first did, far past the 33 streams a session's connection
/// takes at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_opens_1100_channels_one_after_another() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let remote = alice_on_mypc(&w).await?;
    for i in 0..1100 {
        let kind = ChannelKind::ForwardCheck {
            target: "127.0.0.1:22".into(),
        };
        let opened = tokio::time::timeout(Duration::from_secs(10), remote.channel(kind)).await;
        let Ok(Ok((mut send, mut recv, _))) = opened else {
            bail!("channel {i} did not open: {:?}", opened.map(|r| r.err()));
        };
        send.finish().await?;
        let mut buf = [0u8; 1];
        assert_eq!(recv.read(&mut buf).await?, 0);
    }
    remote.close().await;
    Ok(())
}

/// The host keeps state for the sessions that are live: when 300 of bob's
/// sessions come and go, alice's long-lived session still opens channels
/// (the relay tells the host when a session ends, so bob's never fill the
/// host's table of 256).
#[tokio::test(flavor = "multi_thread")]
async fn sessions_that_come_and_go_do_not_push_out_a_long_lived_ones_keys() -> Result<()> {
    let w = World::with_env(latchkey_tests::unlimited())?;
    let _agent = w.start_agent()?;
    let remote = alice_on_mypc(&w).await?;
    let check = || ChannelKind::ForwardCheck {
        target: "127.0.0.1:22".into(),
    };
    remote.channel(check()).await?;
    for _ in 0..300 {
        let mut session = w.bob.login("mypc", OWNER_CODE).await?;
        let host = w.bob.host_connection(&mut session, "mypc").await?;
        drop(host);
        session.control.relay.conn.close(0u32.into(), b"done");
    }
    let opened = tokio::time::timeout(Duration::from_secs(10), remote.channel(check())).await?;
    if let Err(e) = opened {
        bail!("alice's session was pushed out: {e}");
    }
    remote.close().await;
    Ok(())
}

/// A forwarded connection whose channel is cut (here the host's agent
/// stops mid-stream) is reset, not closed: the application never mistakes
/// a cut for the end of what it was sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_channel_resets_the_forwarded_connection_instead_of_ending_it() -> Result<()> {
    // A target that sends a little, then holds the connection open.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let target = listener.local_addr()?.to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut tcp in listener.incoming().flatten() {
            let _ = tcp.write_all(b"hello\n");
            held.push(tcp);
        }
    });
    let w = World::new()?;
    w.mypc.allow_forward(std::slice::from_ref(&target))?;
    let mut agent = w.start_agent()?;
    let (_forward, local) = w.start_forward(&target)?;
    let mut tcp = std::net::TcpStream::connect(&local)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut hello = [0u8; 6];
    tcp.read_exact(&mut hello)?;
    assert_eq!(&hello, b"hello\n");
    agent.terminate()?;
    let mut rest = [0u8; 16];
    match tcp.read(&mut rest) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(0) => bail!("the cut channel looked like a clean end to the application"),
        other => bail!("unexpected: {other:?}"),
    }
    Ok(())
}

/// On the end-to-end connection the host serves nothing before the
/// handshake on the first stream succeeds: a channel opened beside an
/// unfinished handshake gets no answer, and a forged message 1 closes the
/// connection with nothing run.
#[tokio::test(flavor = "multi_thread")]
async fn the_host_serves_no_channel_before_the_handshake() -> Result<()> {
    use latchkey_client::channel::{ChannelRecv, ChannelSend};
    use latchkey_protocol::session::HandshakeRequest;
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut session = w.bob.login("mypc", OWNER_CODE).await?;
    let conn = w.bob.raw_host_connection(&mut session, "mypc").await?;
    // Stream 0, the handshake's, opened and left waiting; a channel beside it.
    let (handshake_send, _handshake_recv) = conn.open_bi().await?;
    let mut handshake = ChannelSend::new(handshake_send);
    handshake.write_all(&[]).await?;
    let (send, recv) = conn.open_bi().await?;
    let (mut send, mut recv) = (ChannelSend::new(send), ChannelRecv::new(recv));
    let exec = ChannelKind::Exec {
        argv: vec![
            "touch".into(),
            w.dir.path().join("ran").display().to_string(),
        ],
    };
    send.write_frame_padded(&exec).await?;
    let answer = tokio::time::timeout(Duration::from_secs(3), recv.recv()).await;
    assert!(
        answer.is_err(),
        "the host answered a channel before the handshake: {answer:?}"
    );
    // A forged message 1: the host refuses and closes the connection.
    handshake
        .write_frame(&HandshakeRequest { msg1: vec![7; 96] })
        .await?;
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    assert!(
        closed.is_ok(),
        "the host kept a connection whose handshake failed"
    );
    assert!(
        !w.dir.path().join("ran").exists(),
        "a command ran without a handshake"
    );
    no_channel_reached_the_host(&w);
    Ok(())
}

/// A client that lost its end of the session's connection (a relay's death
/// in the middle of its handshake, say) connects again under the same
/// route: the host takes the new connection (and closes the old one),
/// rather than refusing the session for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_connection_under_a_route_replaces_the_first() -> Result<()> {
    use latchkey_client::user::remote::connect_to_host;
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut session = w.alice.login("mypc", OWNER_CODE).await?;
    let (handshaker, leg) = w.alice.handshaker(&mut session, "mypc").await?;
    // The first is left behind, as a client that lost it would (its route
    // leads to the second now).
    let _first = connect_to_host(&handshaker, &session.control.relay, leg).await?;
    let second = connect_to_host(&handshaker, &session.control.relay, leg).await?;
    let exec = ChannelKind::Exec {
        argv: vec!["echo".into(), "on-the-second".into()],
    };
    let (_send, mut recv) = latchkey_tests::open_channel(&second, &exec).await?;
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), recv.recv()).await? {
        out.extend_from_slice(&chunk);
    }
    assert!(
        String::from_utf8_lossy(&out).contains("on-the-second"),
        "{out:?}"
    );
    Ok(())
}
