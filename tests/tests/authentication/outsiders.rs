//! Outsiders (SPEC A4, A6, S8): an unknown user, a device key that is not
//! the user's, and a user without a grant get the answer a wrong code gets,
//! in size and in time, and never move the host's counter.

use std::time::Duration;

use anyhow::Result;
use latchkey_client::net::{self, NetError};
use latchkey_protocol::handshake::InitiatorReply;
use latchkey_tests::{count, unlimited, World, OWNER_CODE};

use crate::{failures, first_two, identity};

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
