//! Hostile bytes at the relay's handshake (SPEC A3, A5, B1): garbage,
//! truncated and oversized messages 1 and 3 close the connection cleanly,
//! the relay stays up and serves the next client, and the counter moves
//! only for a grant holder's attempt, which was spent when KE2 left. A
//! peer's words reach the host's log escaped (SPEC X7).

use std::time::{Duration, Instant};

use anyhow::Result;
use latchkey_client::{net, wire};
use latchkey_protocol::session::ChannelKind;
use latchkey_protocol::{handshake::Initiator, ids::AccessCode};
use latchkey_tests::{open_channel, unlimited, World, OWNER_CODE, WAIT};
use rand::{rngs::OsRng, RngCore};

use crate::identity;

/// Sends `bytes` on a fresh connection's first stream (finishing it if
/// `finish`), and returns how the relay closed the connection.
async fn send_raw(w: &World, bytes: Vec<u8>, finish: bool) -> Result<quinn::ConnectionError> {
    let pin = w.relay.pin()?;
    let rc = net::connect(&w.relay.addr.to_string(), &pin).await?;
    let (mut send, _recv) = rc.conn.open_bi().await?;
    send.write_all(&bytes).await?;
    if finish {
        send.finish()?;
    }
    Ok(tokio::time::timeout(WAIT, rc.conn.closed()).await?)
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_truncated_and_oversized_handshakes_close_cleanly_and_the_relay_serves_the_next_client(
) -> Result<()> {
    let mut w = World::with_env(vec![
        ("LATCHKEY_RELAY_HANDSHAKE_TIMEOUT_MS".into(), "1500".into()),
        ("LATCHKEY_RELAY_PER_SOURCE_BURST".into(), "1000".into()),
    ])?;
    let mut random = vec![0u8; 213];
    rand::thread_rng().fill_bytes(&mut random);
    let mut huge = vec![0u8; 70_000];
    rand::thread_rng().fill_bytes(&mut huge);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("empty message", framed(&[]), true),
        ("random message 1", framed(&random), true),
        ("truncated message 1", framed(&random)[..100].to_vec(), true),
        ("truncated length prefix", vec![0, 0], true),
        ("length prefix u32::MAX", vec![0xFF; 4], false),
        ("message over 64 KiB", framed(&huge), false),
        ("nothing, then silence", Vec::new(), false),
        (
            "half a message, then silence",
            framed(&random)[..50].to_vec(),
            false,
        ),
    ];
    for (what, bytes, finish) in cases {
        let closed = send_raw(&w, bytes, finish).await?;
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
            "{what}: {closed:?}"
        );
        assert!(
            w.relay.proc.as_mut().is_some_and(|p| p.running()),
            "{what}: the relay died"
        );
    }
    let status = w.relay.status("mypc")?;
    assert_eq!(status["failures"], 0);
    w.alice.login("mypc", OWNER_CODE).await?;
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

/// A forward target sent by a client, refused by the host, reaches the
/// agent's log with its control characters escaped: a peer cannot write a
/// line of its choosing into the host's log (or the journal).
#[tokio::test(flavor = "multi_thread")]
async fn a_peers_words_reach_the_hosts_log_escaped() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut session = w.bob.login("mypc", OWNER_CODE).await?;
    let host = w.bob.host_connection(&mut session, "mypc").await?;
    let forged = "127.0.0.1:1\nINFO latchkey: host mypc handed over to mallory\u{1b}[2J";
    let kind = ChannelKind::Forward {
        target: forged.into(),
    };
    let (_send, mut recv) = open_channel(&host, &kind).await?;
    // The host's answer (a refusal) arrives; by then it has logged it.
    let _ = tokio::time::timeout(Duration::from_secs(10), recv.recv()).await;
    let log = w.dir.path().join("mypc-agent.log");
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log)?;
        if text.contains("handed over") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("\\nINFO latchkey: host mypc handed over to mallory\\u{1b}[2J"),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("INFO latchkey: host mypc handed over")),
        "a forged line reached the host's log:\n{text}"
    );
    Ok(())
}
