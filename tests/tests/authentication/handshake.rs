//! The login handshake (SPEC I1, A1, A2): the right code lets the owner and
//! a secondary user in; a relay that does not match the pin, or that holds
//! the certificate but not the Noise key, gets nothing past message 1; a
//! recorded message 1 does not work on another connection.

use std::time::Duration;

use anyhow::Result;
use latchkey_client::{config::Home, net, wire};
use latchkey_protocol::{handshake::InitiatorReply, ids::AccessCode};
use latchkey_tests::{count, World, OWNER_CODE, WAIT};

use crate::{failures, first_two, identity};

#[tokio::test(flavor = "multi_thread")]
async fn the_right_code_authenticates_owner_and_secondary_user() -> Result<()> {
    let w = World::new()?;
    w.alice.login("mypc", OWNER_CODE).await?;
    w.bob.login("mypc", OWNER_CODE).await?;
    assert_eq!(failures(&w)?, (0, false));
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "login-ok"), 2, "{events:?}");
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
