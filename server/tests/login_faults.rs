//! Fault injection on the login path (SPEC S4, S6, S7a): at each
//! step after the reservation, the relay's step fails every way it can (an
//! error, a stall until the deadline, the task cancelled) and the peer
//! walks away every way it can (stops reading, closes, goes silent); after
//! each case nothing stays pending, every reservation was settled and
//! audited once, the count equals the model's, and no session is left open.
//!
//! The relay runs in this process (the fault hooks are process-global, so
//! the tests take turns), the client speaks the real protocol over QUIC.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use latchkey_client::{net, wire};
use latchkey_protocol::{
    frame::{CodeTarget, LoginOutcome, Refusal},
    handshake::{
        registration_response, validate_upload, CodeRecord, CodeRegistration, Initiator,
        InitiatorReply, Keypair,
    },
    ids::{AccessCode, HostName, Platform, RecordId, RelayPin, UserName},
    ksf::KsfProfile,
};
use latchkey_server::{
    config::Config,
    datadir::DataDir,
    store::{Actor, InviteKind, SqliteStore, Store},
    testing::fault::{self, Fault, Step},
    Relay, RelayHandle,
};
use rand::rngs::OsRng;
use tokio::time::{timeout, Instant};

const CODE: &str = "correct horse battery";
const WRONG: &str = "not the code at all";
/// Short, so stalls and silent peers cost little time.
const HANDSHAKE_MS: u64 = 1_500;
/// The fault hooks are process-global: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Harness {
    _dir: tempfile::TempDir,
    db: PathBuf,
    relay: Option<RelayHandle>,
    addr: SocketAddr,
    pin: RelayPin,
    store: SqliteStore,
    host: HostName,
    alice: Keypair,
    bob: Keypair,
}

impl Harness {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("relay");
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            data_dir: Some(data.clone()),
            handshake_timeout_ms: HANDSHAKE_MS,
            first_message_timeout_ms: HANDSHAKE_MS,
            allow_insecure_ksf: true,
            per_source_burst: 1_000_000,
            per_source_per_sec: 1_000_000.0,
            login_reply_floor_ms: 0,
            admin_listen: "off".into(),
            ..Config::default()
        };
        let relay = Relay::spawn(config).await?;
        let addr = relay.addr;
        let keys = DataDir::open_or_create(&data)?;
        let db = keys.db_path();
        let store = SqliteStore::open(&db)?;
        let (alice, bob) = (Keypair::generate(&mut OsRng), Keypair::generate(&mut OsRng));
        let host: HostName = "mypc".parse()?;
        let source = "127.0.0.1".parse()?;
        let users = [("alice", &alice, 1u8), ("bob", &bob, 2)];
        for (name, key, n) in users {
            let kind = InviteKind::User { email: None };
            store.create_invite(name, &kind, [n; 32], i64::MAX / 2, &Actor::cli(), 0)?;
            store.redeem_invite([n; 32], key.public, Platform::Linux, source, 0)?;
        }
        let kind = InviteKind::Host {
            owner: "alice".parse()?,
            lockout_threshold: 1_000,
        };
        store.create_invite("mypc", &kind, [3; 32], i64::MAX / 2, &Actor::cli(), 0)?;
        let host_key = Keypair::generate(&mut OsRng);
        store.redeem_invite([3; 32], host_key.public, Platform::Linux, source, 0)?;
        // The host's side of OPAQUE registration, against the relay's keys.
        let code = AccessCode::new(CODE.into())?;
        let (registration, request) =
            CodeRegistration::start(&mut OsRng, &code, KsfProfile::InsecureFastForTests)?;
        let id = RecordId([7; 16]);
        let response = registration_response(&keys.identity, &request, id)?;
        let (upload, _export_key) = registration.finish(&mut OsRng, &code, &response)?;
        let record = CodeRecord {
            id,
            ksf: KsfProfile::InsecureFastForTests,
            record: validate_upload(&upload)?,
        };
        store.set_code(&host, &host_key.public, &CodeTarget::Owner, &record, 0)?;
        store.grant(
            &host,
            &"bob".parse()?,
            &latchkey_server::store::GrantTerms::default(),
            &Actor::cli(),
            0,
        )?;
        Ok(Self {
            pin: keys.pin(),
            _dir: dir,
            db,
            relay: Some(relay),
            addr,
            store,
            host,
            alice,
            bob,
        })
    }

    fn count(&self, sql: &str) -> Result<i64> {
        let db = rusqlite::Connection::open(&self.db)?;
        Ok(db.query_row(sql, [], |r| r.get(0))?)
    }

    fn failures(&self) -> Result<u32> {
        Ok(self.store.host_status(&self.host)?.failures)
    }

    /// The invariants of SPEC S7a, once the deadline and the sweep's grace
    /// have had time to pass.
    async fn settled(&self, case: &str) -> Result<()> {
        // Settled by the paths themselves, at the deadline at the latest: the
        // sweep (5 s past it) is only a backstop and must find nothing.
        let give_up =
            Instant::now() + Duration::from_millis(HANDSHAKE_MS) + Duration::from_millis(1_500);
        loop {
            let pending = self.count("SELECT COUNT(*) FROM attempts WHERE state = 'pending'")?;
            let open = self.count("SELECT COUNT(*) FROM sessions WHERE ended_at IS NULL")?;
            if pending == 0 && open == 0 {
                break;
            }
            if Instant::now() > give_up {
                bail!("{case}: {pending} attempts pending, {open} sessions open");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Every reservation ended in exactly one audited verdict.
        let reserved = self.count("SELECT COUNT(*) FROM attempts")?;
        let verdicts = self.count(
            "SELECT COUNT(*) FROM audit WHERE event IN ('login-ok', 'login-failed')
             OR (event = 'login-refused' AND detail LIKE 'right code%')",
        )?;
        if reserved != verdicts {
            bail!("{case}: {reserved} reservations but {verdicts} verdicts");
        }
        let swept = self.count("SELECT COUNT(*) FROM audit WHERE detail LIKE '%sweeper%'")?;
        if swept != 0 {
            bail!("{case}: {swept} attempts were left for the sweeper");
        }
        let starts = self.count("SELECT COUNT(*) FROM audit WHERE event = 'session-start'")?;
        let ends = self.count("SELECT COUNT(*) FROM audit WHERE event = 'session-end'")?;
        if starts != ends {
            bail!("{case}: {starts} sessions started, {ends} ended");
        }
        Ok(())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown();
        }
    }
}

/// How the client behaves after message 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// A whole login.
    Proper,
    /// Sends message 1, then stops reading (QUIC STOP_SENDING).
    StopsReadingAfterMsg1,
    /// Sends message 1, then closes the connection.
    ClosesAfterMsg1,
    /// Reads message 2, then says nothing until the deadline.
    SilentAfterMsg2,
    /// Sends a right KE3, then stops reading before the verdict.
    StopsReadingBeforeVerdict,
}

/// One login by `user` with `code`, behaving as `peer`; the relay's
/// verdict if the client got one.
async fn login(
    h: &Harness,
    user: &str,
    key: &Keypair,
    code: &str,
    peer: Peer,
) -> Result<Option<LoginOutcome>> {
    let rc = net::connect(&h.addr.to_string(), &h.pin).await?;
    let binding = net::channel_binding(&rc.conn)?;
    let (mut send, mut recv) = rc.conn.open_bi().await?;
    let code = AccessCode::for_login(code.into())?;
    let user: UserName = user.parse()?;
    let (init, msg1) = Initiator::start_login(
        &mut OsRng,
        key,
        &h.pin.noise_key,
        &binding,
        user,
        h.host.clone(),
        &code,
    )?;
    let reserved = h.count("SELECT COUNT(*) FROM attempts")?;
    wire::write_message(&mut send, &msg1).await?;
    match peer {
        Peer::StopsReadingAfterMsg1 => {
            recv.stop(0u32.into())?;
            // Keep the connection until the relay gives up on it.
            let _ = timeout(Duration::from_secs(5), rc.conn.closed()).await;
            return Ok(None);
        }
        Peer::ClosesAfterMsg1 => {
            // Once the attempt is reserved (before, nothing was spent).
            let give_up = Instant::now() + Duration::from_secs(5);
            while h.count("SELECT COUNT(*) FROM attempts")? == reserved {
                if Instant::now() > give_up {
                    bail!("no attempt was reserved");
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            rc.conn.close(0u32.into(), b"gone");
            return Ok(None);
        }
        _ => {}
    }
    let msg2 = wire::read_message(&mut recv).await?;
    if peer == Peer::SilentAfterMsg2 {
        let _ = timeout(Duration::from_secs(5), rc.conn.closed()).await;
        return Ok(None);
    }
    let msg3 = match init.read_msg2(&mut OsRng, &msg2, Some(&code))? {
        InitiatorReply::SendKe3 { msg3, awaiting } => {
            wire::write_message(&mut send, &msg3).await?;
            if peer == Peer::StopsReadingBeforeVerdict {
                recv.stop(0u32.into())?;
                let _ = timeout(Duration::from_secs(5), rc.conn.closed()).await;
                return Ok(None);
            }
            (msg3, awaiting)
        }
        InitiatorReply::WrongCode { abort, awaiting } => {
            wire::write_message(&mut send, &abort).await?;
            (abort, awaiting)
        }
        other => bail!("unexpected reply: {}", describe(&other)),
    };
    let msg4 = wire::read_message(&mut recv).await?;
    let (outcome, _) = msg3.1.read_outcome(&msg4)?;
    rc.conn.close(0u32.into(), b"done");
    Ok(Some(outcome))
}

fn describe(reply: &InitiatorReply) -> &'static str {
    match reply {
        InitiatorReply::Locked => "locked",
        InitiatorReply::Refused(Refusal::Busy) => "busy",
        InitiatorReply::Refused(_) => "refused",
        _ => "other",
    }
}

/// A login that may fail on the client's side (the relay closed on it).
async fn attempt(h: &Harness, user: &str, key: &Keypair, code: &str, peer: Peer) -> String {
    match timeout(Duration::from_secs(10), login(h, user, key, code, peer)).await {
        Ok(Ok(Some(outcome))) => format!("{outcome:?}"),
        Ok(Ok(None)) => "walked away".into(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "client timed out".into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_relay_fault_after_the_reservation_ends_in_one_recorded_verdict() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await?;
    let steps = [
        Step::Ke2Write,
        Step::AwaitKe3,
        Step::Ke3Check,
        Step::VerdictCommit,
        Step::VerdictWrite,
        Step::SessionRegistration,
    ];
    // Alice's failures since her last success (the model; nobody else tries).
    let mut model = 0u32;
    for step in steps {
        for fault in [Fault::Error, Fault::Stall, Fault::Cancel] {
            let case = format!("{fault:?} at {step:?}");
            fault::inject(step, fault);
            let got = attempt(&h, "alice", &h.alice, CODE, Peer::Proper).await;
            if fault::armed() {
                bail!("{case}: the login never reached the step ({got})");
            }
            // Once the verdict committed, the right code is a success even if
            // the client never hears it; before, it is a failure.
            let committed = matches!(step, Step::VerdictWrite | Step::SessionRegistration);
            model = if committed { 0 } else { model + 1 };
            h.settled(&case).await?;
            assert_eq!(h.failures()?, model, "{case}: count (client saw {got})");
            assert!(
                !got.starts_with("Accepted") || committed,
                "{case}: accepted without a committed verdict"
            );
        }
    }
    // And a clean login still works, and clears alice's count.
    let got = attempt(&h, "alice", &h.alice, CODE, Peer::Proper).await;
    assert!(got.starts_with("Accepted"), "{got}");
    h.settled("clean login").await?;
    assert_eq!(h.failures()?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_that_walk_away_after_the_reservation_are_counted_and_nothing_stays_pending(
) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await?;
    let cases = [
        (Peer::StopsReadingAfterMsg1, CODE, false),
        (Peer::ClosesAfterMsg1, CODE, false),
        (Peer::SilentAfterMsg2, CODE, false),
        (Peer::Proper, WRONG, false),
        // The verdict commits before it is written: a success stands.
        (Peer::StopsReadingBeforeVerdict, CODE, true),
    ];
    let mut model = 0u32;
    for (peer, code, success) in cases {
        let case = format!("{peer:?}");
        let got = attempt(&h, "bob", &h.bob, code, peer).await;
        model = if success { 0 } else { model + 1 };
        h.settled(&case).await?;
        assert_eq!(h.failures()?, model, "{case}: count (client saw {got})");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_before_the_verdict_refuses_a_right_code_counts_nothing_and_starts_no_session(
) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await?;
    let rc = net::connect(&h.addr.to_string(), &h.pin).await?;
    let binding = net::channel_binding(&rc.conn)?;
    let (mut send, mut recv) = rc.conn.open_bi().await?;
    let code = AccessCode::for_login(CODE.into())?;
    let (init, msg1) = Initiator::start_login(
        &mut OsRng,
        &h.bob,
        &h.pin.noise_key,
        &binding,
        "bob".parse()?,
        h.host.clone(),
        &code,
    )?;
    wire::write_message(&mut send, &msg1).await?;
    let msg2 = wire::read_message(&mut recv).await?;
    // The admin revokes while bob's attempt is pending.
    h.store.revoke(&h.host, &"bob".parse()?, &Actor::cli(), 1)?;
    let InitiatorReply::SendKe3 { msg3, awaiting } =
        init.read_msg2(&mut OsRng, &msg2, Some(&code))?
    else {
        return Err(anyhow!("the right code did not check out"));
    };
    wire::write_message(&mut send, &msg3).await?;
    let msg4 = wire::read_message(&mut recv).await?;
    match awaiting.read_outcome(&msg4)?.0 {
        LoginOutcome::Refused(Refusal::NotAllowed(why)) => {
            assert!(why.contains("revoked"), "{why}")
        }
        other => bail!("a revoked grant got {other:?}"),
    }
    // No channel opens: the relay closes the connection.
    let closed = timeout(Duration::from_secs(5), rc.conn.closed())
        .await
        .context("the connection stayed open")?;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed:?}"
    );
    h.settled("revoked").await?;
    assert_eq!(h.failures()?, 0, "a right code refused by a revoke counted");
    assert_eq!(
        h.count("SELECT COUNT(*) FROM audit WHERE event = 'session-start'")?,
        0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_attempts_lock_the_host_and_after_an_unlock_the_owner_gets_in() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let h = Harness::start().await?;
    h.store
        .set_policy(&h.host, None, Some(3), &Actor::cli(), 1)
        .context("policy")?;
    for peer in [
        Peer::StopsReadingAfterMsg1,
        Peer::ClosesAfterMsg1,
        Peer::SilentAfterMsg2,
    ] {
        attempt(&h, "bob", &h.bob, CODE, peer).await;
        h.settled(&format!("{peer:?}")).await?;
    }
    let status = h.store.host_status(&h.host)?;
    assert!(status.locked && status.failures == 3, "{status:?}");
    let got = attempt(&h, "alice", &h.alice, CODE, Peer::Proper).await;
    assert!(
        got.contains("ocked"),
        "a locked host let the owner in: {got}"
    );
    assert_eq!(
        h.store.unlock(&h.host, &Actor::cli(), 2)?,
        latchkey_server::store::Unlock::Done {
            was_locked: true,
            still_counted: 0
        }
    );
    let got = attempt(&h, "alice", &h.alice, CODE, Peer::Proper).await;
    assert!(got.starts_with("Accepted"), "{got}");
    h.settled("after unlock").await?;
    Ok(())
}
