//! The lockout threshold (SPEC S6): wrong codes by a secondary user lock
//! every user out, the owner and a right code included, until an admin
//! unlocks; a success clears only its own user's failures; lowering the
//! threshold to the failures already counted locks the host at once.

use anyhow::{bail, Result};
use latchkey_client::net::NetError;
use latchkey_tests::{Device, World, OWNER_CODE};

use crate::failures;

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
async fn three_failures_by_secondary_lock_every_user_until_admin_unlock() -> Result<()> {
    // "Note that if the secondary user fails to log in after three attempts,
    // all users who have access to your computer will be locked out. In that
    // case, you will need to contact your admin to unlock your computer."
    let w = World::new()?;
    let dave = Device {
        home: w.dir.path().join("dave"),
    };
    dave.run(&["enroll", &w.relay.invite_user("dave")?])?;
    w.relay.admin(&["grant", "mypc", "dave"])?;
    w.bob_locks_mypc_for(&[&w.alice, &w.bob, &dave]).await?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("host 'mypc' is locked: ask your admin to unlock it"));
    assert!(!out.status.success());
    w.relay.admin(&["unlock", "mypc"])?;
    for user in [&w.alice, &w.bob, &dave] {
        user.login("mypc", OWNER_CODE).await?;
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

/// Someone who holds the owner's device key and a grant of their own
/// alternates guesses at the owner's code with correct logins of their
/// own. Their successes clear only their own failures, so the third wrong
/// code locks the host.
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

/// Lowering the threshold to the failures already counted locks the host
/// at once, instead of leaving it "busy" and unlocked.
#[tokio::test(flavor = "multi_thread")]
async fn lowering_the_threshold_to_the_failures_counted_locks_the_host() -> Result<()> {
    let w = World::with_env(vec![(
        "LATCHKEY_RELAY_HANDSHAKE_TIMEOUT_MS".into(),
        "2000".into(),
    )])?;
    w.relay
        .admin(&["policy", "mypc", "--lockout-threshold", "5"])?;
    for _ in 0..2 {
        assert!(w.bob.login("mypc", "wrong code").await.is_err());
    }
    assert_eq!(w.relay.status("mypc")?["failures"], 2);
    w.relay
        .admin(&["policy", "mypc", "--lockout-threshold", "2"])?;
    let r = w.alice.login("mypc", OWNER_CODE).await;
    let status = w.relay.status("mypc")?;
    println!(
        "owner's right code: {:?}; status: {status}",
        r.as_ref().err()
    );
    let events = w.relay.audit_events("mypc")?;
    println!("audit: {events:?}");
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("locked") && status["locked"] == true => Ok(()),
        Err(e) => bail!(
            "host at its threshold is neither locked nor usable: owner got {e:?}, locked = {}, failures = {}",
            status["locked"],
            status["failures"]
        ),
    }
}
