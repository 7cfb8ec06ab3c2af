//! Hostile bytes at the relay's handshake (SPEC A5, B1): every case closes
//! the connection cleanly, the relay stays up, the counter does not move,
//! and the next good client is served.

use anyhow::Result;
use latchkey_client::net;
use latchkey_tests::{World, OWNER_CODE, WAIT};
use rand::RngCore;

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
async fn a_relay_with_another_certificate_is_refused_before_anything_is_sent() -> Result<()> {
    let w = World::new()?;
    let mut pin = w.relay.pin()?;
    pin.cert_sha256[0] ^= 1;
    let err = net::connect(&w.relay.addr.to_string(), &pin)
        .await
        .expect_err("connected to an unpinned relay");
    assert!(matches!(err, net::NetError::PinMismatch(_)), "{err}");
    Ok(())
}
