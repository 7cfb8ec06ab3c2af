//! Adversarial tests (issue 7, SPEC A4, A5, S7, S8): replays, per-source
//! limits, and outsiders that must look exactly like a wrong code.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use latchkey_client::{config::Home, net, wire};
use latchkey_protocol::{
    handshake::{Initiator, InitiatorReply, Keypair},
    ids::{AccessCode, RelayPin, UserName},
};
use latchkey_tests::{World, OWNER_CODE, WAIT};
use rand::rngs::OsRng;

fn identity(home: &std::path::Path) -> Result<(String, RelayPin, Keypair)> {
    let (cfg, key) = Home::locate(Some(home.to_owned())).user()?;
    let pin = cfg.pin()?;
    Ok((cfg.relay, pin, key))
}

/// Runs message 1 and 2 of a login by hand; returns the connection, the
/// length of message 2, the time it took, and what the client made of it.
async fn first_two(
    relay: &str,
    pin: &RelayPin,
    key: &Keypair,
    user: &str,
    code: &str,
) -> Result<(net::RelayConn, Vec<u8>, usize, Duration, InitiatorReply)> {
    let rc = net::connect(relay, pin).await?;
    let binding = net::channel_binding(&rc.conn)?;
    let (mut send, mut recv) = rc.conn.open_bi().await?;
    let code = AccessCode::for_login(code.into())?;
    let user: UserName = user.parse()?;
    let (init, msg1) = Initiator::start_login(
        &mut OsRng,
        key,
        &pin.noise_key,
        &binding,
        user,
        "mypc".parse()?,
        &code,
    )?;
    let t = Instant::now();
    wire::write_message(&mut send, &msg1).await?;
    let msg2 = wire::read_message(&mut recv).await?;
    let took = t.elapsed();
    let reply = init.read_msg2(&mut OsRng, &msg2, Some(&code))?;
    Ok((rc, msg1, msg2.len(), took, reply))
}

#[tokio::test(flavor = "multi_thread")]
async fn outsiders_get_the_same_message_sizes_as_a_wrong_code_and_move_nothing() -> Result<()> {
    let w = World::with_env(vec![(
        "LATCHKEY_RELAY_PER_SOURCE_BURST".into(),
        "100000".into(),
    )])?;
    let (relay, pin, bob) = identity(&w.bob.home)?;
    let (_, _, carol) = identity(&w.carol.home)?;
    let cases = [
        ("wrong code", &bob, "bob", "not the code"),
        ("unknown user", &carol, "nobody", OWNER_CODE),
        (
            "device key that is not the user's",
            &carol,
            "bob",
            OWNER_CODE,
        ),
        ("user without a grant", &carol, "carol", OWNER_CODE),
    ];
    let mut sizes = Vec::new();
    for (what, key, user, code) in cases {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..if what == "wrong code" { 2 } else { 20 } {
            let (rc, _, len, took, reply) = first_two(&relay, &pin, key, user, code).await?;
            assert!(
                matches!(reply, InitiatorReply::WrongCode { .. }),
                "{what}: {reply:?}"
            );
            rc.conn.close(0u32.into(), b"");
            size = len;
            times.push(took);
        }
        times.sort();
        println!(
            "{what}: message 2 is {size} bytes, median {:?}",
            times[times.len() / 2]
        );
        sizes.push((what, size));
    }
    assert!(sizes.iter().all(|(_, s)| *s == sizes[0].1), "{sizes:?}");
    // Only bob's two attempts count (he holds a grant).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = w.relay.status("mypc")?;
    assert_eq!(status["failures"], 2);
    assert_eq!(status["locked"], false);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_message_1_replayed_on_a_new_connection_is_refused_and_counts_nothing(
) -> Result<()> {
    let w = World::new()?;
    let (relay, pin, alice) = identity(&w.alice.home)?;
    // A genuine login, recorded.
    let (rc, msg1, _, _, reply) = first_two(&relay, &pin, &alice, "alice", OWNER_CODE).await?;
    assert!(matches!(reply, InitiatorReply::SendKe3 { .. }));
    rc.conn.close(0u32.into(), b"");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = w.relay.status("mypc")?["failures"].clone();
    let events_before = w.relay.audit_events("mypc")?.len();
    // Replayed on a new connection: the TLS exporter differs, so the Noise
    // prologue differs and message 1 does not even decrypt.
    let rc = net::connect(&relay, &pin).await?;
    let (mut send, mut recv) = rc.conn.open_bi().await?;
    wire::write_message(&mut send, &msg1).await?;
    let answer = tokio::time::timeout(WAIT, wire::read_message(&mut recv)).await?;
    assert!(answer.is_err(), "the relay answered a replayed message 1");
    let closed = tokio::time::timeout(WAIT, rc.conn.closed()).await?;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );
    assert_eq!(w.relay.status("mypc")?["failures"], before);
    assert_eq!(
        w.relay.audit_events("mypc")?.len(),
        events_before,
        "the replay left a trace in the counter's log"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_from_one_source_is_limited_and_another_source_is_not_affected() -> Result<()> {
    let w = World::with_env(vec![
        ("LATCHKEY_RELAY_PER_SOURCE_BURST".into(), "12".into()),
        ("LATCHKEY_RELAY_PER_SOURCE_PER_SEC".into(), "0.5".into()),
    ])?;
    let (relay, pin, _) = identity(&w.alice.home)?;
    let mut refused = 0;
    for _ in 0..20 {
        match net::connect(&relay, &pin).await {
            Ok(rc) => rc.conn.close(0u32.into(), b""),
            Err(_) => refused += 1,
        }
    }
    assert!(refused >= 8, "only {refused} of 20 refused");
    // 127.0.0.2 is another source (all of 127/8 is loopback on Linux).
    let (cfg, key) = Home::locate(Some(w.alice.home.clone())).user()?;
    let session = net::login_from(
        Some("127.0.0.2:0".parse()?),
        &relay,
        &pin,
        &key,
        &cfg.user,
        &"mypc".parse()?,
        AccessCode::for_login(OWNER_CODE.into())?,
    )
    .await
    .context("login from another source")?;
    session.control.relay.conn.close(0u32.into(), b"");
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn hostile_streams(
    remote: &latchkey_client::user::remote::Remote,
    n: usize,
) -> Result<usize> {
    let mut rejected = 0;
    for _ in 0..n / 100 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let conn = remote.conn.clone();
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
    let home = Home::locate(Some(w.alice.home.clone()));
    let remote = latchkey_client::user::remote::Remote::open(
        &home,
        &"mypc".parse()?,
        AccessCode::for_login(OWNER_CODE.into())?,
    )
    .await?;
    let pid = w.relay.proc.as_ref().context("relay")?.pid();
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
async fn slowloris_connections_are_closed_at_the_deadline_the_cap_holds_and_users_still_get_in(
) -> Result<()> {
    let w = World::with_env(vec![
        ("LATCHKEY_RELAY_HANDSHAKE_TIMEOUT_MS".into(), "3000".into()),
        ("LATCHKEY_RELAY_MAX_UNAUTHENTICATED".into(), "520".into()),
        ("LATCHKEY_RELAY_PER_SOURCE_BURST".into(), "100000".into()),
    ])?;
    let (relay, pin, _) = identity(&w.alice.home)?;
    // 500 connections that send half of a message 1 and stall.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let (relay, pin) = (relay.clone(), pin);
            batch.push(tokio::spawn(async move {
                let rc = net::connect(&relay, &pin).await?;
                let (mut send, recv) = rc.conn.open_bi().await?;
                let mut partial = 213u32.to_be_bytes().to_vec();
                partial.extend_from_slice(&[0u8; 50]);
                send.write_all(&partial).await?;
                Ok::<_, anyhow::Error>((rc, send, recv, Instant::now()))
            }));
        }
        for b in batch {
            stalled.push(b.await??);
        }
    }
    // A user from another address gets in meanwhile.
    let (cfg, key) = Home::locate(Some(w.alice.home.clone())).user()?;
    let t = Instant::now();
    let session = net::login_from(
        Some("127.0.0.2:0".parse()?),
        &relay,
        &pin,
        &key,
        &cfg.user,
        &"mypc".parse()?,
        AccessCode::for_login(OWNER_CODE.into())?,
    )
    .await?;
    println!("login while 500 handshakes stall: {:?}", t.elapsed());
    session.control.relay.conn.close(0u32.into(), b"");
    // The cap holds: of 60 more stalled handshakes, at most the 20 free
    // places are taken.
    let mut extra_ok = 0;
    let mut extra = Vec::new();
    for _ in 0..60 {
        if let Ok(rc) = net::connect(&relay, &pin).await {
            if let Ok((mut send, recv)) = rc.conn.open_bi().await {
                let _ = send.write_all(&[0, 0]).await;
                extra_ok += 1;
                extra.push((rc, send, recv));
            }
        }
    }
    println!("{extra_ok} of 60 further handshakes admitted (20 places were free)");
    assert!(
        extra_ok <= 21,
        "{extra_ok} handshakes admitted past the cap"
    );
    // Every stalled connection is closed at the deadline (3 s), not later.
    for (rc, _send, _recv, opened) in stalled {
        let closed = tokio::time::timeout(WAIT, rc.conn.closed()).await?;
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
            "{closed:?}"
        );
        assert!(
            opened.elapsed() < Duration::from_secs(10),
            "closed after {:?}",
            opened.elapsed()
        );
    }
    Ok(())
}
