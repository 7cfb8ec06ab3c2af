//! Grants (SPEC S1, S4, S5): a grant inherits the owner's code as it is
//! when granted, a grant made again inherits the current one, a reset at the
//! host changes one user's code only, and a host with shared access
//! disabled takes no grant. Where a test quotes GoToMyPC's help, it proves
//! that sentence.

use anyhow::Result;
use latchkey_client::net::NetError;
use latchkey_tests::{Device, World, OWNER_CODE};

const NEW_CODE: &str = "owner code 2";

#[tokio::test(flavor = "multi_thread")]
async fn secondary_user_keeps_inherited_code_after_owner_changes_it() -> Result<()> {
    // "This access code will remain the same for the secondary user, even if
    // you change the access code afterwards."
    let w = World::new()?;
    w.mypc.set_code(NEW_CODE, None)?;
    w.alice.login("mypc", NEW_CODE).await?;
    w.bob.login("mypc", OWNER_CODE).await?;
    let err = w
        .alice
        .login("mypc", OWNER_CODE)
        .await
        .expect_err("owner's old code still works");
    assert!(matches!(err, NetError::WrongCode(_)));
    let err = w
        .bob
        .login("mypc", NEW_CODE)
        .await
        .expect_err("secondary user got the new code");
    assert!(matches!(err, NetError::WrongCode(_)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn regrant_after_revoke_inherits_current_code() -> Result<()> {
    // "If the original access code is forgotten by both you and the
    // secondary user, then the admin will need to revoke the original shared
    // access invitation and grant a new one."
    let w = World::new()?;
    w.mypc.set_code(NEW_CODE, None)?;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    let err = w
        .bob
        .login("mypc", OWNER_CODE)
        .await
        .expect_err("revoked user got in");
    assert!(matches!(err, NetError::WrongCode(_)));
    w.relay.admin(&["grant", "mypc", "bob"])?;
    w.bob.login("mypc", NEW_CODE).await?;
    assert!(w.bob.login("mypc", OWNER_CODE).await.is_err());
    // Granting twice is refused with what to do instead.
    let out = w.relay.admin_output(&["grant", "mypc", "bob"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoke and grant again"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_code_at_host_changes_only_that_users_code() -> Result<()> {
    // "If the secondary user has physical access to your host computer, they
    // can change the access code by following the Forgot Your Access Code steps."
    let w = World::new()?;
    let dave = Device {
        home: w.dir.path().join("dave"),
    };
    dave.run(&["enroll", &w.relay.invite_user("dave")?])?;
    w.relay.admin(&["grant", "mypc", "dave"])?;
    w.mypc.set_code("bob's own code", Some("bob"))?;
    w.bob.login("mypc", "bob's own code").await?;
    assert!(w.bob.login("mypc", OWNER_CODE).await.is_err());
    w.alice.login("mypc", OWNER_CODE).await?;
    dave.login("mypc", OWNER_CODE).await?;
    // Only users with a grant can be reset.
    let out = w.mypc.set_code("whatever code", Some("carol"));
    assert!(out.is_err());
    assert!(out.unwrap_err().to_string().contains("no shared access"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn granting_on_a_host_with_shared_access_disabled_is_refused() -> Result<()> {
    let w = World::new()?;
    w.relay
        .admin(&["policy", "mypc", "--shared-access", "disabled"])?;
    let out = w.relay.admin_output(&["grant", "mypc", "carol"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shared access is disabled on host 'mypc'")
    );
    w.relay.admin(&[
        "policy",
        "mypc",
        "--shared-access",
        "enabled",
        "--lockout-threshold",
        "5",
    ])?;
    w.relay.admin(&["grant", "mypc", "carol"])?;
    for _ in 0..4 {
        let _ = w.carol.login("mypc", "wrong").await;
    }
    assert_eq!(w.relay.status("mypc")?["locked"], false);
    let _ = w.carol.login("mypc", "wrong").await;
    assert_eq!(w.relay.status("mypc")?["locked"], true);
    let events = w.relay.audit_events("mypc")?;
    for e in ["grant", "policy", "host-locked", "login-failed"] {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }
    Ok(())
}
