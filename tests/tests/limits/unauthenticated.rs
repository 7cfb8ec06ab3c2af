//! What a peer that has proven nothing can do (SPEC A5, B1): per-source rate
//! limits, the first-message and handshake deadlines, the cap on handshakes
//! in progress (a line to wait in, not a refusal), a flood of handshakes
//! that never complete, and how much the relay buffers for such peers.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use latchkey_client::net;
use latchkey_protocol::{frame::Intent, ids::UserName};
use latchkey_tests::{rss_kib, unlimited, World, OWNER_CODE, WAIT};

use crate::identity;

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
    let session = w
        .alice
        .login_from(net::Local::Bind("127.0.0.2:0".parse()?), "mypc", OWNER_CODE)
        .await
        .context("login from another source")?;
    session.control.relay.conn.close(0u32.into(), b"");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_without_message_1_is_closed_at_the_first_message_deadline() -> Result<()> {
    let w = World::with_env(vec![(
        "LATCHKEY_RELAY_FIRST_MESSAGE_TIMEOUT_MS".into(),
        "1000".into(),
    )])?;
    let (relay, pin, _) = identity(&w.alice.home)?;
    // QUIC is up, a stream is open, message 1 never comes (half of it does).
    let t = Instant::now();
    let rc = net::connect(&relay, &pin).await?;
    let (mut send, _recv) = rc.conn.open_bi().await?;
    send.write_all(&213u32.to_be_bytes()).await?;
    let closed = tokio::time::timeout(WAIT, rc.conn.closed()).await?;
    let took = t.elapsed();
    println!("closed after {took:?} (first-message deadline 1 s, whole handshake 10 s)");
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    // A real client is not affected.
    w.alice.login("mypc", OWNER_CODE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connections_are_closed_at_the_deadline_the_cap_holds_and_users_still_get_in(
) -> Result<()> {
    // The deadline leaves room for the 500 handshakes below (ten waves of
    // at most a second each) before the first of them is closed.
    const DEADLINE: Duration = Duration::from_secs(20);
    let deadline_ms = DEADLINE.as_millis().to_string();
    let w = World::with_env(vec![
        (
            "LATCHKEY_RELAY_HANDSHAKE_TIMEOUT_MS".into(),
            deadline_ms.clone(),
        ),
        (
            "LATCHKEY_RELAY_FIRST_MESSAGE_TIMEOUT_MS".into(),
            deadline_ms,
        ),
        ("LATCHKEY_RELAY_MAX_UNAUTHENTICATED".into(), "520".into()),
        ("LATCHKEY_RELAY_PER_SOURCE_BURST".into(), "100000".into()),
    ])?;
    let (relay, pin, _) = identity(&w.alice.home)?;
    // 500 connections that send half of a message 1 and stall.
    let ramp = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let (relay, pin) = (relay.clone(), pin);
            batch.push(tokio::spawn(tokio::time::timeout(
                Duration::from_secs(1),
                async move {
                    let rc = net::connect(&relay, &pin).await?;
                    let (mut send, recv) = rc.conn.open_bi().await?;
                    let mut partial = 213u32.to_be_bytes().to_vec();
                    partial.extend_from_slice(&[0u8; 50]);
                    send.write_all(&partial).await?;
                    Ok::<_, anyhow::Error>((rc, send, recv, Instant::now()))
                },
            )));
        }
        // An odd QUIC handshake gets no answer for seconds (see
        // CONNECT_TIMEOUT in client/src/net/dial.rs; two of them once made
        // the 500 take 22 s). The attack does not need every one: each
        // gets a second, and `still_open` below checks that most got in.
        for b in batch {
            if let Ok(Ok(stalled_conn)) = b.await? {
                stalled.push(stalled_conn);
            }
        }
    }
    println!(
        "{} of 500 stalled handshakes made in {:?}",
        stalled.len(),
        ramp.elapsed()
    );
    // A user from another address gets in meanwhile.
    let t = Instant::now();
    let session = w
        .alice
        .login_from(net::Local::Bind("127.0.0.2:0".parse()?), "mypc", OWNER_CODE)
        .await?;
    println!("login while 500 handshakes stall: {:?}", t.elapsed());
    session.control.relay.conn.close(0u32.into(), b"");
    // The cap holds: of 60 more stalled handshakes started at once, only
    // the places left free by the 500 (those still open hold theirs) are
    // taken within a second; the rest wait in line (or are refused).
    let still_open = stalled
        .iter()
        .filter(|(rc, ..)| rc.conn.close_reason().is_none())
        .count();
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..60 {
        let (relay, pin) = (relay.clone(), pin);
        attempts.spawn(tokio::time::timeout(Duration::from_secs(1), async move {
            let rc = net::connect(&relay, &pin).await?;
            let (mut send, recv) = rc.conn.open_bi().await?;
            send.write_all(&[0, 0]).await?;
            Ok::<_, anyhow::Error>((rc, send, recv))
        }));
    }
    let mut extra = Vec::new();
    while let Some(attempt) = attempts.join_next().await {
        if let Ok(Ok(admitted)) = attempt? {
            extra.push(admitted);
        }
    }
    let extra_ok = extra.len();
    let free = 520 - still_open;
    println!("{extra_ok} of 60 further handshakes admitted ({free} places were free)");
    assert!(
        still_open > 400,
        "the stalled handshakes did not stay open ({still_open})"
    );
    assert!(
        extra_ok <= free,
        "{extra_ok} handshakes admitted with {free} places free"
    );
    // Every stalled connection is closed at the deadline, not later.
    for (rc, _send, _recv, opened) in stalled {
        let closed = tokio::time::timeout(WAIT, rc.conn.closed()).await?;
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
            "{closed:?}"
        );
        assert!(
            opened.elapsed() < DEADLINE + Duration::from_secs(2),
            "closed after {:?}",
            opened.elapsed()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_beyond_the_handshake_cap_waits_in_line_instead_of_being_refused() -> Result<()> {
    let mut env = unlimited();
    env.push(("LATCHKEY_RELAY_MAX_UNAUTHENTICATED".into(), "4".into()));
    let w = World::with_env(env)?;
    let (relay, pin, key) = identity(&w.alice.home)?;
    let user: UserName = "alice".parse()?;
    // Seven times the cap at once, as hosts do after a relay restart (the
    // line holds eight times the cap).
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..28 {
        let (relay, key, user) = (relay.clone(), key.clone(), user.clone());
        burst.spawn(async move {
            let control = net::welcome(&[relay], &pin, &key, Intent::User { user }).await?;
            control.relay.conn.close(0u32.into(), b"");
            Ok::<_, net::NetError>(())
        });
    }
    let mut refused = Vec::new();
    while let Some(r) = burst.join_next().await {
        if let Err(e) = r? {
            refused.push(e.to_string());
        }
    }
    assert!(
        refused.is_empty(),
        "{} of 28 refused: {:?}",
        refused.len(),
        refused.first()
    );
    Ok(())
}

/// 50 connections from 7 loopback addresses each send half a message 1 on
/// one stream and 2 MiB on a second stream the relay never reads. Before
/// authentication a connection may have only a small window of data in
/// flight to the relay (72 KiB across its streams), so the relay grows by a
/// few MiB, not the 100 MiB that 2 MiB stream windows allowed. (50 rather
/// than 200 connections, so a debug build on two cores moves it all in
/// time.)
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

/// A QUIC Initial that a client with the relay's certificate and ALPN would
/// send: the relay answers it and waits for the rest of a handshake that
/// never comes, as it would for a spoofed source.
fn initial_packet(relay: std::net::SocketAddr, cert: &[u8]) -> Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(cert.to_vec()))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![latchkey_server::endpoint::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let config = quinn_proto::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut endpoint = quinn_proto::Endpoint::new(
        std::sync::Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let now = std::time::Instant::now();
    let (_, mut conn) =
        endpoint.connect(now, config, relay, latchkey_server::datadir::SERVER_NAME)?;
    let mut buf = Vec::with_capacity(1500);
    let transmit = conn
        .poll_transmit(now, 1, &mut buf)
        .context("no Initial to send")?;
    buf.truncate(transmit.size);
    Ok(buf)
}

/// A flood of handshakes that never complete, from many loopback sources
/// (as spoofed ones would be), with only 8 handshake places: under load the
/// relay answers unproven addresses with a stateless Retry instead of a
/// place, so a real host still connects at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_handshakes_that_never_complete_cannot_keep_a_host_out() -> Result<()> {
    let mut env = unlimited();
    env.push(("LATCHKEY_RELAY_MAX_UNAUTHENTICATED".into(), "8".into()));
    let w = World::with_env(env)?;
    let cert = std::fs::read(w.relay.data_dir.join("tls.crt"))?;
    let relay = w.relay.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<u64> {
            let mut sent = 0u64;
            let until = std::time::Instant::now() + Duration::from_secs(8);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < until
            {
                for i in 2..10u8 {
                    // A new socket each time: a new source the relay must
                    // answer, and one that never answers back.
                    let socket =
                        std::net::UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, i), 0))?;
                    socket.send_to(&initial_packet(relay, &cert)?, relay)?;
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(sent)
        })
    };
    // Let the flood fill the places, then a real host connects.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let agent = w.start_agent();
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread"))??;
    println!("{sent} handshakes that never complete; the host got in after {took:?}");
    let _agent = agent?;
    assert!(sent > 500, "only {sent} flood packets");
    assert!(
        took < Duration::from_secs(3),
        "the host took {took:?} to get in"
    );
    Ok(())
}
