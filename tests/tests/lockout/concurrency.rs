//! Attempts at the same time (SPEC S7, S11): of fifty wrong codes at once
//! exactly the threshold is evaluated; right codes beyond the budget wait
//! their turn instead of failing; and a grant holder who keeps attempts in
//! flight holds one place of the budget, so the owner still gets in.

use std::time::{Duration, Instant};

use anyhow::Result;
use latchkey_client::{net::NetError, wire};
use latchkey_protocol::{frame::LoginOutcome, handshake::InitiatorReply};
use latchkey_tests::{count, unlimited, World, OWNER_CODE};
use rand::rngs::OsRng;

use crate::{failures, futures_join_all};

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_wrong_codes_evaluate_exactly_three() -> Result<()> {
    let w = World::with_env(unlimited())?;
    let attempts = (0..50).map(|_| w.bob.login("mypc", "not the code"));
    let results = futures_join_all(attempts).await;
    let wrong = results
        .iter()
        .filter(|r| matches!(r, Err(NetError::WrongCode(_))))
        .count();
    // The others were refused without evaluating a code: the host was
    // locked, or the three attempts in flight had used up the budget.
    let refused = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(NetError::Locked(_))
                    | Err(NetError::Refused(latchkey_protocol::frame::Refusal::Busy))
            )
        })
        .count();
    assert_eq!(wrong, 3, "{results:?}");
    assert_eq!(refused, 47, "{results:?}");
    assert_eq!(failures(&w)?, (3, true));
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "login-failed"), 3, "{events:?}");
    assert_eq!(count(&events, "host-locked"), 1);
    // Each of the 47 was refused at least once (a "busy" one is tried
    // again by the client, which spends nothing).
    assert!(count(&events, "login-locked") + count(&events, "login-busy") >= 47);
    // Nothing was evaluated after the lock.
    let lock_at = events.iter().position(|e| e == "host-locked").unwrap_or(0);
    assert!(events[lock_at..]
        .iter()
        .all(|e| e != "login-failed" && e != "login-ok"));
    Ok(())
}

/// Logins beyond the budget wait their turn on the relay (and a "busy"
/// answer is tried again by the client) instead of failing (SPEC S11).
#[tokio::test(flavor = "multi_thread")]
async fn eight_parallel_logins_with_the_right_code_all_get_in() -> Result<()> {
    let w = World::with_env(unlimited())?;
    for round in 0..3 {
        let logins = (0..8).map(|i| {
            let device = if i % 2 == 0 { &w.alice } else { &w.bob };
            device.login("mypc", OWNER_CODE)
        });
        for (i, result) in futures_join_all(logins).await.into_iter().enumerate() {
            if let Err(e) = result {
                panic!("round {round}, login {i}: {e}");
            }
        }
    }
    assert_eq!(failures(&w)?, (0, false));
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "login-ok"), 24, "{events:?}");
    Ok(())
}

/// One grant holder who keeps attempts in flight (right code, KE3 just
/// before the deadline) holds at most one attempt of the budget, so the
/// owner still gets in.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_holder_who_keeps_attempts_in_flight_does_not_keep_the_owner_out() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut slots = Vec::new();
    for _ in 0..3 {
        let d = latchkey_tests::Device {
            home: w.bob.home.clone(),
        };
        let stop = stop.clone();
        slots.push(tokio::spawn(async move {
            let mut ok = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut login) = d.send_msg1("mypc", OWNER_CODE).await else {
                    continue;
                };
                let Ok(msg2) = wire::read_message(&mut login.recv).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let code = login.code.clone();
                let Ok(InitiatorReply::SendKe3 { msg3, awaiting }) =
                    login.init.read_msg2(&mut OsRng, &msg2, Some(&code))
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::time::sleep(Duration::from_secs(4)).await;
                if wire::write_message(&mut login.send, &msg3).await.is_ok() {
                    if let Ok(m4) = wire::read_message(&mut login.recv).await {
                        if let Ok((LoginOutcome::Accepted { .. }, _)) = awaiting.read_outcome(&m4) {
                            ok += 1;
                        }
                    }
                }
            }
            ok
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut busy, mut tries) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        tries += 1;
        match w.alice.login("mypc", OWNER_CODE).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("busy") || format!("{e:?}").contains("Busy") => {
                busy += 1
            }
            Err(e) => println!("alice: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut bob_ok = 0;
    for s in slots {
        bob_ok += tokio::time::timeout(Duration::from_secs(15), s).await??;
    }
    let status = w.relay.status("mypc")?;
    let events = w.relay.audit_events("mypc")?;
    println!(
        "owner refused busy {busy}/{tries} over 8 s; bob's logins ok {bob_ok}; status {status}; login-failed {}, host-locked {}, login-busy {}",
        count(&events, "login-failed"),
        count(&events, "host-locked"),
        count(&events, "login-busy")
    );
    assert!(
        busy * 2 < tries,
        "a grant holder with a right code kept the owner out ({busy}/{tries} busy) with no failure and no lock"
    );
    Ok(())
}
