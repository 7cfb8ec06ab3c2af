//! Streams on an authenticated connection (SPEC B1, X3, X5): ten thousand
//! channel requests with a hostile length are rejected with memory flat,
//! stalled streams cost no more than the limits allow, and one user's 300
//! channels leave room for another user's copy.

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
    // Batches of 50: below a user's share of the host's channels (96), so
    // every stream reaches the request decoder.
    for _ in 0..n / 50 {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let conn = remote.conn();
            batch.push(tokio::spawn(async move {
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(&[0xFF; 4]).await?;
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
    println!("10,000 channel requests with a u32::MAX length: {rejected} rejected; relay RSS {before} KiB -> {after} KiB");
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

#[tokio::test(flavor = "multi_thread")]
async fn many_stalled_streams_on_one_connection_cost_no_more_than_the_limits_allow() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let (remote, pid) = alice_session(&w).await?;
    let before = rss_kib(pid);
    // 254 streams (with the control stream and the end-to-end handshake's,
    // the relay's concurrency limit of 256: quinn returns a closed stream's
    // place in batches of 32), each announcing a 60,000 byte channel
    // request and sending half of it, then stalling.
    let mut streams = Vec::new();
    for _ in 0..254 {
        let (mut send, recv) = tokio::time::timeout(WAIT, remote.conn().open_bi()).await??;
        let mut partial = 60_000u32.to_be_bytes().to_vec();
        partial.extend_from_slice(&[0x41; 30_000]);
        send.write_all(&partial).await?;
        streams.push((send, recv));
    }
    // One more stream waits for a free place instead of growing the relay.
    let extra = tokio::time::timeout(Duration::from_millis(500), remote.conn().open_bi()).await;
    assert!(
        extra.is_err(),
        "the relay allowed more than 256 concurrent streams"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    println!("254 stalled 60 KB channel requests: relay RSS {before} KiB -> {after} KiB");
    // Bound: 256 x 64 KiB frame buffers + the 16 MiB connection window + slack.
    assert!(
        after < before + 40 * 1024,
        "relay RSS grew from {before} KiB to {after} KiB"
    );
    // The session is still usable for a real channel once those go away.
    drop(streams);
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "fine"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n");
    Ok(())
}

/// One user holds 300 channels open on a host (forwards to a service that
/// keeps its connections); another user's copy still works, because each
/// user's sessions may hold only their share of the host link's streams.
#[tokio::test(flavor = "multi_thread")]
async fn one_user_holding_300_channels_does_not_stop_anothers_copy() -> Result<()> {
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
    // Two sessions of bob's, 150 channels each. Both agree their keys
    // first: a handshake's stream counts against bob's share too, so once
    // his channels fill it, he can start no more.
    let mut sessions = Vec::new();
    let mut channels = Vec::new();
    let mut refused = 0;
    let mut keyed = Vec::new();
    for _ in 0..2 {
        let mut session = w.bob.login("mypc", latchkey_tests::OWNER_CODE).await?;
        let epoch = w.bob.session_keys(&mut session, "mypc").await?;
        keyed.push((session.control.relay.conn.clone(), epoch));
        sessions.push(session);
    }
    for (conn, epoch) in &keyed {
        let kind = ChannelKind::Forward {
            target: target.clone(),
        };
        for _ in 0..150 {
            let opened = tokio::time::timeout(
                Duration::from_secs(2),
                latchkey_tests::open_channel(conn, epoch, &kind),
            )
            .await;
            match opened {
                Ok(Ok(channel)) => channels.push(channel),
                // Beyond bob's share the relay refuses at once, and may stop
                // the stream before the sealed request is written.
                Ok(Err(_)) => refused += 1,
                Err(_) => break,
            }
        }
    }
    assert_eq!(channels.len() + refused, 300);
    // Give the relay time to hand them to the host.
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
