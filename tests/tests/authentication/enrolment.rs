//! Enrolment with one-time invites (SPEC I2): a token works once, and not
//! after it expires or when it is of the other kind (user or host); a user
//! invited again is enrolled on the new device, and the old device's live
//! sessions end.

use std::time::{Duration, Instant};

use anyhow::Result;
use latchkey_tests::{Device, Relay, World, OWNER_CODE};

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
        runner: relay.runner.clone(),
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

/// A user invited again (a lost or replaced device): the earlier invite no
/// longer works, and when the new device enrolls, the old one's live
/// sessions end.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_invite_cancels_the_old_one_and_the_new_device_ends_the_old_ones_sessions(
) -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut old_session = w.bob_sleeping_on_mypc(20)?;
    let first = w.relay.invite_user("bob")?;
    let second = w.relay.invite_user("bob")?;
    let phone = latchkey_tests::Device {
        home: w.dir.path().join("bobs-phone"),
    };
    let out = phone.cmd().args(["enroll", &first]).output()?;
    assert!(!out.status.success(), "a cancelled invite enrolled");
    phone.run(&["enroll", &second])?;
    let ended = Instant::now();
    assert!(!old_session.wait_exit()?.success());
    assert!(ended.elapsed() < Duration::from_secs(5));
    // The new device is bob now.
    phone.login("mypc", OWNER_CODE).await?;
    Ok(())
}
