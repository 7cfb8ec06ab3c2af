//! The relay's enrolment, authentication and lockout (issue 3, SPEC I2,
//! A1-A5, S6-S8), against the real `latchkey-relay` binary on loopback.

use std::time::Duration;

use anyhow::Result;
use latchkey_client::net::{self, NetError};
use latchkey_tests::{count, unlimited, Device, Relay, World, OWNER_CODE};

fn failures(world: &World) -> Result<(u64, bool)> {
    let s = world.relay.status("mypc")?;
    Ok((
        s["failures"].as_u64().unwrap_or(99),
        s["locked"].as_bool().unwrap_or(false),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_works_once_and_reused_or_expired_tokens_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(dir.path())?;
    let token = relay.invite_user("dave")?;
    let dave = Device {
        home: dir.path().join("dave"),
    };
    assert!(dave
        .run(&["enroll", &token])?
        .contains("enrolled as user 'dave'"));

    // The same token again, from another device: refused, clearly.
    let eve = Device {
        home: dir.path().join("eve"),
    };
    let out = eve.cmd().args(["enroll", &token]).output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown, already used or expired"), "{err}");

    // An expired token.
    let mut expired_env = relay.env.clone();
    expired_env.push(("LATCHKEY_RELAY_INVITE_TTL_SECS".into(), "0".into()));
    let expired = Relay {
        proc: None,
        addr: relay.addr,
        data_dir: relay.data_dir.clone(),
        env: expired_env,
    };
    let token = expired.invite_user("frank")?;
    let frank = Device {
        home: dir.path().join("frank"),
    };
    assert!(!frank
        .cmd()
        .args(["enroll", &token])
        .output()?
        .status
        .success());

    // A host token is refused by `latchkey enroll` before it is spent.
    let token = relay.invite_host("box", "dave")?;
    let out = eve.cmd().args(["enroll", &token]).output()?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("latchkey host enroll"));
    let boxd = Device {
        home: dir.path().join("box"),
    };
    assert!(boxd.enroll_host(&token)?.contains("enrolled as host 'box'"));
    let status = relay.status("box")?;
    assert_eq!(status["enrolled"], true);
    assert_eq!(status["platform"], "linux");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_racing_redeemers_of_one_token_exactly_one_wins() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(dir.path())?;
    let token = relay.invite_user("dave")?;
    let children: Vec<_> = (0..4)
        .map(|i| {
            Device {
                home: dir.path().join(format!("d{i}")),
            }
            .cmd()
            .args(["enroll", &token])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        })
        .collect::<Result<_, _>>()?;
    let wins = children
        .into_iter()
        .map(|c| c.wait_with_output().map(|o| o.status.success()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|ok| *ok)
        .count();
    assert_eq!(wins, 1);
    Ok(())
}

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
async fn three_wrong_codes_by_a_secondary_user_lock_out_the_owner_until_unlock() -> Result<()> {
    let w = World::new()?;
    for i in 1..=3 {
        let err = w
            .bob
            .login("mypc", "not the code")
            .await
            .expect_err("wrong code accepted");
        assert!(matches!(err, NetError::WrongCode(_)), "attempt {i}: {err}");
    }
    assert_eq!(failures(&w)?, (3, true));
    // Every user, owner included, right code included, is refused.
    for dev in [&w.alice, &w.bob] {
        let err = dev
            .login("mypc", OWNER_CODE)
            .await
            .expect_err("locked host let a user in");
        assert!(matches!(err, NetError::Locked(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "host 'mypc' is locked: ask your admin to unlock it"
        );
    }
    assert_eq!(failures(&w)?, (3, true), "a locked host evaluated a code");
    w.relay.admin(&["unlock", "mypc"])?;
    w.alice.login("mypc", OWNER_CODE).await?;
    assert_eq!(failures(&w)?, (0, false));
    let events = w.relay.audit_events("mypc")?;
    for e in [
        "login-failed",
        "host-locked",
        "login-locked",
        "unlock",
        "login-ok",
    ] {
        assert!(events.iter().any(|x| x == e), "no {e} in {events:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_success_clears_only_the_succeeding_users_own_failures() -> Result<()> {
    let w = World::new()?;
    for _ in 0..2 {
        assert!(w.bob.login("mypc", "not the code").await.is_err());
    }
    assert_eq!(failures(&w)?, (2, false));
    // The owner's success does not clear bob's guesses (SPEC S6)...
    w.alice.login("mypc", OWNER_CODE).await?;
    assert_eq!(failures(&w)?, (2, false));
    // ...bob's own does.
    w.bob.login("mypc", OWNER_CODE).await?;
    assert_eq!(failures(&w)?, (0, false));
    Ok(())
}

/// Issue 12, finding 3: someone who holds the owner's device key and a
/// grant of their own alternates guesses at the owner's code with correct
/// logins of their own. Their successes clear only their own failures, so
/// the third wrong code locks the host.
#[tokio::test(flavor = "multi_thread")]
async fn alternating_guesses_with_own_successes_lock_at_the_third_wrong_code() -> Result<()> {
    let w = World::new()?;
    for round in 0..3 {
        assert!(
            w.alice.login("mypc", "a guess at alice").await.is_err(),
            "guess {round}"
        );
        if round < 2 {
            assert_eq!(failures(&w)?, (round + 1, false));
            w.bob.login("mypc", OWNER_CODE).await?;
            assert_eq!(failures(&w)?, (round + 1, false));
        }
    }
    assert_eq!(failures(&w)?, (3, true));
    let err = w.bob.login("mypc", OWNER_CODE).await.unwrap_err();
    assert!(matches!(err, NetError::Locked(_)), "{err}");
    Ok(())
}

/// Issue 17, item 0: logins beyond the budget wait their turn on the relay
/// (and a "busy" answer is tried again by the client) instead of failing.
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

#[tokio::test(flavor = "multi_thread")]
async fn outsiders_cannot_move_the_counter_whatever_they_send() -> Result<()> {
    let w = World::new()?;
    // Carol is enrolled but has no grant; she guesses the real code too.
    for code in ["not the code", OWNER_CODE, OWNER_CODE] {
        let err = w
            .carol
            .login("mypc", code)
            .await
            .expect_err("outsider got in");
        assert!(matches!(err, NetError::WrongCode(_)), "{err}");
    }
    // A device that claims to be bob but holds carol's key; and a name
    // nobody has.
    let home = latchkey_client::config::Home::locate(Some(w.carol.home.clone()));
    let (cfg, carol_key) = home.user()?;
    let pin = cfg.pin()?;
    for user in ["bob", "nobody"] {
        let err = net::login(
            &cfg.relays(),
            &pin,
            &carol_key,
            &user.parse()?,
            &"mypc".parse()?,
            latchkey_protocol::ids::AccessCode::for_login(OWNER_CODE.into())?,
        )
        .await
        .expect_err("impostor got in");
        assert!(matches!(err, NetError::WrongCode(_)), "{user}: {err}");
    }
    assert_eq!(failures(&w)?, (0, false));
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "login-refused"), 5, "{events:?}");
    w.alice.login("mypc", OWNER_CODE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_attempts_keeps_counters_and_locks_as_committed() -> Result<()> {
    let mut w = World::with_env(unlimited())?;
    // Two failures committed.
    for _ in 0..2 {
        assert!(w.bob.login("mypc", "not the code").await.is_err());
    }
    // Attempts in flight when the relay dies.
    let attempts = tokio::spawn({
        let bob = Device {
            home: w.bob.home.clone(),
        };
        async move {
            let all = (0..20).map(|_| bob.login("mypc", "not the code"));
            futures_join_all(all).await
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    w.relay.kill9();
    let _ = attempts.await;
    w.relay.restart()?;
    let (fails, locked) = failures(&w)?;
    let events = w.relay.audit_events("mypc")?;
    // At most the threshold was ever counted, the lock matches the count,
    // and every counted attempt has its failure in the audit log (those cut
    // off by the crash are recorded at restart).
    assert!(fails <= 3, "{fails} failures counted");
    assert_eq!(locked, fails == 3);
    assert_eq!(count(&events, "login-failed") as u64, fails, "{events:?}");
    if locked {
        let err = w
            .alice
            .login("mypc", OWNER_CODE)
            .await
            .expect_err("locked host let owner in");
        assert!(matches!(err, NetError::Locked(_)));
    } else {
        w.alice.login("mypc", OWNER_CODE).await?;
    }
    Ok(())
}

/// Runs futures concurrently (a tiny join_all, to avoid a dependency).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task panicked"));
    }
    out
}
