//! Resource bounds an unauthenticated peer cannot break (issue 16, SPEC
//! A5, B1): what a connection can make the relay buffer before it has
//! proven anything.

use std::time::Duration;

use anyhow::{Context, Result};
use latchkey_client::net;
use latchkey_tests::{rss_kib, unlimited, World};

/// 50 connections from 7 loopback addresses each send half a message 1 on
/// one stream and 2 MiB on a second stream the relay never reads. Before
/// authentication a connection may have only a small window of data in
/// flight to the relay (72 KiB across its streams), so the relay grows by a
/// few MiB, not the 100 MiB that 2 MiB stream windows allowed. (Fewer than
/// the review's 200, so a debug build on two cores moves it all in time.)
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_connections_cannot_make_the_relay_buffer_much() -> Result<()> {
    let mut env = unlimited();
    env.push((
        "LATCHKEY_RELAY_FIRST_MESSAGE_TIMEOUT_MS".into(),
        "9000".into(),
    ));
    let w = World::with_env(env)?;
    let pid = w.relay.proc.as_ref().map(|p| p.pid()).context("relay")?;
    let (cfg, _) = latchkey_client::config::Home::locate(Some(w.alice.home.clone())).user()?;
    let pin = cfg.pin()?;
    let before = rss_kib(pid);
    let junk = vec![0x5au8; 2 << 20];
    let mut attackers = Vec::new();
    for i in 0..50u32 {
        let (relay, pin, junk) = (cfg.relay.clone(), pin, junk.clone());
        attackers.push(tokio::spawn(async move {
            let local = net::Local::Bind(format!("127.0.0.{}:0", 1 + i % 7).parse()?);
            let rc = net::connect_from(&local, &relay, &pin).await?;
            let (mut first, _r1) = rc.conn.open_bi().await?;
            // Half of a message 1: a length prefix of 206 and 100 bytes.
            first.write_all(&206u32.to_be_bytes()).await?;
            first.write_all(&[7u8; 100]).await?;
            let (mut second, _r2) = rc.conn.open_bi().await?;
            // As much as the relay will take (quinn queues what does not
            // fit yet on this side).
            let _ = tokio::time::timeout(Duration::from_secs(2), second.write_all(&junk)).await;
            anyhow::Ok((rc, first, second))
        }));
    }
    let mut held = Vec::new();
    for a in attackers {
        if let Ok(Ok(conn)) = a.await {
            held.push(conn);
        }
    }
    // Measured while they are all still open (the first-message deadline
    // is 9 s here), for long enough that what the peers buffered on their
    // side has reached the relay: the highest of 3 s of readings.
    let mut during = 0;
    for _ in 0..15 {
        during = during.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let grew_mib = during.saturating_sub(before) as f64 / 1024.0;
    println!(
        "{} connections held; relay RSS {} -> {} KiB (+{grew_mib:.1} MiB)",
        held.len(),
        before,
        during
    );
    assert!(held.len() >= 45, "only {} connections got in", held.len());
    assert!(
        grew_mib < 32.0,
        "50 unauthenticated connections grew the relay by {grew_mib:.1} MiB"
    );
    drop(held);
    // And the relay still serves.
    w.alice.login("mypc", latchkey_tests::OWNER_CODE).await?;
    Ok(())
}
