//! Streams on authenticated connections (SPEC B1, X3, X5): ten thousand
//! streams a client opens on its relay connection (where no channel goes)
//! are refused with memory flat, stalled channel requests cost the host no
//! more than a session's limits allow, and one user's channels held open
//! leave room for another user's copy.

use std::time::Duration;

use anyhow::{Context, Result};
use latchkey_client::config::Home;
use latchkey_protocol::ids::AccessCode;
use latchkey_tests::{rss_kib, unlimited, World, OWNER_CODE, WAIT};

/// Alice's session on mypc, and the relay's process id.
async fn alice_session(w: &World) -> Result<(latchkey_client::user::remote::Remote, u32)> {
    let home = Home::locate(Some(w.alice.home.clone()));
    let code = AccessCode::for_login(OWNER_CODE.into())?;
    let remote = latchkey_client::user::remote::Remote::open(&home, &"mypc".parse()?, code).await?;
    Ok((remote, w.relay.proc.as_ref().context("relay")?.pid()))
}

async fn hostile_streams(
    remote: &latchkey_client::user::remote::Remote,
    n: usize,
) -> Result<usize> {
    let mut rejected = 0;
    for _ in 0..n / 50 {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let conn = remote.relay_conn().context("a session of our own")?;
            batch.push(tokio::spawn(async move {
                let (mut send, mut recv) = conn.open_bi().await?;
                if send.write_all(&[0xFF; 4]).await.is_err() {
                    // Stopped before the prefix was even written.
                    return Ok(true);
                }
                let _ = send.finish();
                // The relay answers nothing and resets the stream.
                let mut buf = [0u8; 16];
                let got = tokio::time::timeout(WAIT, recv.read(&mut buf)).await?;
                Ok::<_, anyhow::Error>(!matches!(got, Ok(Some(n)) if n > 0))
            }));
        }
        for b in batch {
            if b.await?? {
                rejected += 1;
            }
        }
    }
    Ok(rejected)
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_u32_max_length_prefixes_are_rejected_and_memory_stays_flat() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let (remote, pid) = alice_session(&w).await?;
    hostile_streams(&remote, 1000).await?;
    let before = rss_kib(pid);
    let rejected = hostile_streams(&remote, 10_000).await?;
    let after = rss_kib(pid);
    println!("10,000 streams with a u32::MAX length on the relay connection: {rejected} refused; relay RSS {before} KiB -> {after} KiB");
    assert_eq!(rejected, 10_000);
    assert!(
        after < before + 8 * 1024,
        "relay RSS grew from {before} KiB to {after} KiB"
    );
    // The session still works.
    let (_, _, _) = remote
        .channel(latchkey_protocol::session::ChannelKind::Exec {
            argv: vec!["true".into()],
        })
        .await?;
    Ok(())
}

/// A session's connection to the host takes as many channels at once as
/// its stream limit allows: stalled channel requests (half of a 60,000
/// byte request each) fill it, one more waits for a place instead of
/// growing the host, and the host's memory grows by no more than the
/// limits allow.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_channel_requests_cost_the_host_no_more_than_the_limits_allow() -> Result<()> {
    let w = World::new()?;
    let agent = w.start_agent()?;
    let pid = agent.pid();
    let mut session = w.bob.login("mypc", OWNER_CODE).await?;
    let host = w.bob.host_connection(&mut session, "mypc").await?;
    let before = rss_kib(pid);
    let places = latchkey_client::net::peer::MAX_STREAMS as usize - 1;
    let mut streams = Vec::new();
    for _ in 0..places {
        let (mut send, recv) = tokio::time::timeout(WAIT, host.conn().open_bi()).await??;
        let mut partial = 60_000u32.to_be_bytes().to_vec();
        partial.extend_from_slice(&[0x41; 30_000]);
        send.write_all(&partial).await?;
        streams.push((send, recv));
    }
    let extra = tokio::time::timeout(Duration::from_millis(500), host.conn().open_bi()).await;
    assert!(
        extra.is_err(),
        "the host took more than {} concurrent streams of one session",
        places + 1
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    println!("{places} stalled 60 KB channel requests: host agent RSS {before} KiB -> {after} KiB");
    // Bound: a frame buffer per stream and the connection's 4 MiB window.
    assert!(
        after < before + 16 * 1024,
        "host agent RSS grew from {before} KiB to {after} KiB"
    );
    // The host is still usable once those go away.
    drop(streams);
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "fine"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n");
    drop(host);
    Ok(())
}

/// One user holds every channel their sessions may hold open on a host
/// (forwards to a service that keeps its connections); another user's copy
/// still works, because each session's connection takes only so many
/// channels at once and each user only so many sessions.
#[tokio::test(flavor = "multi_thread")]
async fn one_user_holding_all_the_channels_they_may_does_not_stop_anothers_copy() -> Result<()> {
    use latchkey_protocol::session::ChannelKind;
    let holder = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = holder.local_addr()?.to_string();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((tcp, _)) = holder.accept().await {
            kept.push(tcp);
        }
    });
    let w = World::with_env(unlimited())?;
    w.mypc.allow_forward(std::slice::from_ref(&target))?;
    let _agent = w.start_agent()?;
    // Four sessions of bob's, each filled with forwards until its
    // connection takes no more.
    let mut sessions = Vec::new();
    let mut channels = Vec::new();
    let per_session = latchkey_client::net::peer::MAX_STREAMS as usize;
    for _ in 0..4 {
        let mut session = w.bob.login("mypc", OWNER_CODE).await?;
        let host = w.bob.host_connection(&mut session, "mypc").await?;
        let kind = ChannelKind::Forward {
            target: target.clone(),
        };
        let mut opened_here = 0;
        for _ in 0..per_session + 10 {
            let opened = tokio::time::timeout(
                Duration::from_secs(2),
                latchkey_tests::open_channel(&host, &kind),
            )
            .await;
            match opened {
                Ok(Ok(channel)) => {
                    channels.push(channel);
                    opened_here += 1;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        assert!(
            opened_here <= per_session,
            "one session held {opened_here} channels at once"
        );
        sessions.push((session, host));
    }
    println!(
        "bob holds {} channels in {} sessions",
        channels.len(),
        sessions.len()
    );
    // Give the host time to start them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let file = w.dir.path().join("report.txt");
    std::fs::write(&file, b"quarterly figures\n")?;
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(60), async {
        w.alice.with_code(
            latchkey_tests::OWNER_CODE,
            &[
                "cp",
                &file.to_string_lossy(),
                "mypc:/tmp/latchkey-fairness-copy.txt",
            ],
        )
    })
    .await??;
    println!("alice's copy took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "alice's copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file("/tmp/latchkey-fairness-copy.txt");
    drop(channels);
    drop(sessions);
    held.abort();
    Ok(())
}
