//! Adversarial tests (issue 7, SPEC A4, A5, S7, S8): replays, per-source
//! limits, and outsiders that must look exactly like a wrong code.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use latchkey_client::{config::Home, net, wire};
use latchkey_protocol::{
    frame::Intent,
    handshake::{Initiator, InitiatorReply, Keypair},
    ids::{AccessCode, RelayPin, UserName},
};
use latchkey_tests::{rss_kib, unlimited, World, OWNER_CODE, WAIT};
use rand::rngs::OsRng;

fn identity(home: &std::path::Path) -> Result<(String, RelayPin, Keypair)> {
    latchkey_tests::Device {
        home: home.to_owned(),
    }
    .identity()
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
    let w = World::with_env(unlimited())?;
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
    let session = w
        .alice
        .login_from(net::Local::Bind("127.0.0.2:0".parse()?), "mypc", OWNER_CODE)
        .await
        .context("login from another source")?;
    session.control.relay.conn.close(0u32.into(), b"");
    Ok(())
}

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
async fn slowloris_connections_are_closed_at_the_deadline_the_cap_holds_and_users_still_get_in(
) -> Result<()> {
    let w = World::with_env(vec![
        ("LATCHKEY_RELAY_HANDSHAKE_TIMEOUT_MS".into(), "8000".into()),
        (
            "LATCHKEY_RELAY_FIRST_MESSAGE_TIMEOUT_MS".into(),
            "8000".into(),
        ),
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
        // Under a loaded test machine an odd QUIC handshake gets no
        // answer in time (see CONNECT_TIMEOUT in client/src/net.rs); the
        // attack does not need every one, and `still_open` below checks
        // that most got in.
        for b in batch {
            if let Ok(stalled_conn) = b.await? {
                stalled.push(stalled_conn);
            }
        }
    }
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
    // Every stalled connection is closed at the deadline (8 s), not later.
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

#[tokio::test(flavor = "multi_thread")]
async fn a_fake_relay_with_the_certificate_but_not_the_noise_key_gets_message_1_and_nothing_else(
) -> Result<()> {
    use quinn::rustls::{self, pki_types};
    use std::sync::{Arc, Mutex};
    let w = World::new()?;
    // The impostor stole the TLS certificate and key, not the Noise key.
    let cert = std::fs::read(w.relay.data_dir.join("tls.crt"))?;
    let key = std::fs::read(w.relay.data_dir.join("tls.key"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(
        vec![pki_types::CertificateDer::from(cert)],
        pki_types::PrivateKeyDer::Pkcs8(pki_types::PrivatePkcs8KeyDer::from(key)),
    )?;
    tls.alpn_protocols = vec![b"latchkey/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse()?,
    )?;
    let fake = endpoint.local_addr()?;
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let log = received.clone();
    tokio::spawn(async move {
        let Some(incoming) = endpoint.accept().await else {
            return;
        };
        let Ok(conn) = incoming.await else { return };
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let mut buf = vec![0u8; 65_536];
        // Answer the first message with a plausible message 2 of random bytes.
        let mut answered = false;
        while let Ok(Ok(Some(n))) =
            tokio::time::timeout(Duration::from_secs(5), recv.read(&mut buf)).await
        {
            if let Ok(mut l) = log.lock() {
                l.extend_from_slice(&buf[..n]);
            }
            if !answered {
                answered = true;
                let mut msg2 = 373u32.to_be_bytes().to_vec();
                msg2.extend((0..373).map(|i| (i * 7 % 251) as u8));
                let _ = send.write_all(&msg2).await;
            }
        }
    });
    let (_, pin, alice) = identity(&w.alice.home)?;
    let (cfg, _) = Home::locate(Some(w.alice.home.clone())).user()?;
    let err = net::login(
        &[fake.to_string()],
        &pin,
        &alice,
        &cfg.user,
        &"mypc".parse()?,
        AccessCode::for_login(OWNER_CODE.into())?,
    )
    .await
    .expect_err("logged in to an impostor");
    assert!(matches!(err, net::NetError::Handshake(_)), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = received.lock().map(|r| r.clone()).unwrap_or_default();
    // Exactly one length-prefixed message 1, encrypted to the real relay's
    // key: no KE3, nothing derived from the code after it.
    let len = u32::from_be_bytes([sent[0], sent[1], sent[2], sent[3]]) as usize;
    assert_eq!(sent.len(), 4 + len, "the client sent more than message 1");
    assert!((190..260).contains(&len), "message 1 of {len} bytes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_nothing_that_was_answered() -> Result<()> {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    let mut w = World::with_env(unlimited())?;
    w.without_lockout()?;
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for i in 0..6 {
        let (dev, ok, failed) = (
            if i % 2 == 0 { &w.alice } else { &w.bob },
            ok.clone(),
            failed.clone(),
        );
        let login = dev.login_factory();
        let wrong = latchkey_tests::Device {
            home: dev.home.clone(),
        };
        load.push(tokio::spawn(async move {
            for n in 0.. {
                let result = if n % 3 == 0 {
                    wrong.login("mypc", "not the code").await
                } else {
                    login().await
                };
                match result {
                    Ok(s) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        s.control.relay.conn.close(0u32.into(), b"");
                    }
                    Err(net::NetError::WrongCode(_)) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.relay.kill9();
    let (answered_ok, answered_failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    for l in load {
        l.abort();
    }
    w.relay.restart()?;
    let events = w.relay.audit_events("mypc")?;
    let count = |e: &str| events.iter().filter(|x| *x == e).count();
    println!("answered before the kill: {answered_ok} ok, {answered_failed} wrong; in the store after the restart: {} ok, {} failed", count("login-ok"), count("login-failed"));
    assert!(answered_ok > 0 && answered_failed > 0, "no load ran");
    assert!(count("login-ok") >= answered_ok);
    assert!(count("login-failed") >= answered_failed);
    let status = w.relay.status("mypc")?;
    assert_eq!(status["grants"], serde_json::json!(["bob"]));
    assert_eq!(status["code_set"], true);
    assert_eq!(status["locked"], false);
    w.alice.login("mypc", OWNER_CODE).await?;
    Ok(())
}

/// Two-sample Kolmogorov-Smirnov statistic: the largest gap between the
/// two empirical distribution functions.
fn ks_statistic(a: &mut [f64], b: &mut [f64]) -> f64 {
    a.sort_by(|x, y| x.total_cmp(y));
    b.sort_by(|x, y| x.total_cmp(y));
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            i += 1;
        } else {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_code_and_an_unknown_user_take_indistinguishable_time() -> Result<()> {
    let w = World::with_env(unlimited())?;
    // Bob's wrong codes must not lock the host during the measurement.
    w.without_lockout()?;
    let (relay, pin, bob) = identity(&w.bob.home)?;
    let (_, _, carol) = identity(&w.carol.home)?;
    let n = 150;
    let (mut wrong, mut unknown) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Interleaved, so drift in the machine's load hits both alike.
    for _ in 0..n {
        let (rc, _, _, took, _) = first_two(&relay, &pin, &bob, "bob", "not the code").await?;
        rc.conn.close(0u32.into(), b"");
        wrong.push(took.as_secs_f64());
        let (rc, _, _, took, _) = first_two(&relay, &pin, &carol, "nobody", OWNER_CODE).await?;
        rc.conn.close(0u32.into(), b"");
        unknown.push(took.as_secs_f64());
    }
    let d = ks_statistic(&mut wrong, &mut unknown);
    // Critical value of the two-sample KS test at alpha = 0.001.
    let critical = 1.95 * ((2 * n) as f64 / (n * n) as f64).sqrt();
    println!(
        "time to message 2: wrong code median {:.2} ms, unknown user median {:.2} ms; KS D = {d:.3} (critical {critical:.3} at alpha 0.001, n = {n} each)",
        wrong[n / 2] * 1e3,
        unknown[n / 2] * 1e3
    );
    assert!(
        d < critical,
        "response times differ: KS D = {d:.3} >= {critical:.3}"
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn hostile_message_3s_close_cleanly_and_only_a_grant_holders_spent_attempt_counts(
) -> Result<()> {
    let w = World::with_env(unlimited())?;
    w.without_lockout()?;
    let (relay, pin, bob) = identity(&w.bob.home)?;
    let (_, _, carol) = identity(&w.carol.home)?;
    let mut big = vec![0u8; 70_000];
    rand::RngCore::fill_bytes(&mut OsRng, &mut big);
    let hostile: Vec<Vec<u8>> = vec![
        vec![0, 0, 0, 0],
        vec![0, 0, 0, 50, 1, 2, 3],
        vec![0xFF; 4],
        [&70_000u32.to_be_bytes()[..], &big[..]].concat(),
        [&82u32.to_be_bytes()[..], &big[..82]].concat(),
    ];
    let failures = || -> Result<u64> {
        Ok(w.relay.status("mypc")?["failures"]
            .as_u64()
            .unwrap_or(u64::MAX))
    };
    for (key, user, counts) in [(&carol, "nobody", false), (&bob, "bob", true)] {
        for bytes in &hostile {
            let before = failures()?;
            // A real message 1 and 2, then garbage where KE3 belongs.
            let rc = net::connect(&relay, &pin).await?;
            let binding = net::channel_binding(&rc.conn)?;
            let (mut send, mut recv) = rc.conn.open_bi().await?;
            let code = AccessCode::for_login(OWNER_CODE.into())?;
            let (init, msg1) = Initiator::start_login(
                &mut OsRng,
                key,
                &pin.noise_key,
                &binding,
                user.parse()?,
                "mypc".parse()?,
                &code,
            )?;
            wire::write_message(&mut send, &msg1).await?;
            let msg2 = wire::read_message(&mut recv).await?;
            drop(init.read_msg2(&mut OsRng, &msg2, Some(&code))?);
            send.write_all(bytes).await?;
            let _ = send.finish();
            let t = Instant::now();
            let closed = tokio::time::timeout(WAIT, rc.conn.closed()).await?;
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{user}: closed only after {:?}",
                t.elapsed()
            );
            assert!(
                matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
                "{user}: {closed:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            // An outsider never moves the counter; a grant holder's attempt
            // was spent when KE2 left (SPEC A3), whatever comes after.
            assert_eq!(
                failures()?,
                before + u64::from(counts),
                "{user} with {} bytes",
                bytes.len()
            );
        }
    }
    w.alice.login("mypc", OWNER_CODE).await?;
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
