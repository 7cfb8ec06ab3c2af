//! One relay on PostgreSQL (SPEC M1, M4): the real binaries keep the
//! promises they keep on the embedded store (lockout, unlock, a revoke that
//! ends a live session at once), and nothing goes to an embedded database.

use std::time::{Duration, Instant};

use anyhow::Result;
use latchkey_server::testing::postgres::{start_or_skip, TestPostgres};
use latchkey_tests::{wait_until, Device, World, OWNER_CODE};

fn store_env(url: &str) -> Vec<(String, String)> {
    vec![("LATCHKEY_RELAY_STORE".into(), url.into())]
}

/// The test world with its relay (and every admin command) on a fresh
/// database of `pg`.
fn world_on(pg: &TestPostgres) -> Result<World> {
    World::with_env(store_env(&pg.fresh_database()))
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_three_failures_lock_every_user_and_an_admin_unlock_frees_them() -> Result<()> {
    let Some(pg) = start_or_skip("on_postgres_three_failures_lock_every_user") else {
        return Ok(());
    };
    let w = world_on(&pg)?;
    let dave = Device {
        home: w.dir.path().join("dave"),
    };
    dave.run(&["enroll", &w.relay.invite_user("dave")?])?;
    w.relay.admin(&["grant", "mypc", "dave"])?;
    let _agent = w.start_agent()?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "on-pg"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "on-pg");
    w.bob_locks_mypc_for(&[&w.alice, &w.bob, &dave]).await?;
    let status = w.relay.status("mypc")?;
    assert_eq!(status["locked"], true, "{status}");
    assert_eq!(status["failures"], 3, "{status}");
    w.relay.admin(&["unlock", "mypc"])?;
    for user in [&w.alice, &w.bob, &dave] {
        user.login("mypc", OWNER_CODE).await?;
    }
    // Nothing went to an embedded database beside the PostgreSQL one.
    assert!(!w.relay.data_dir.join("relay.db").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_revoke_from_the_admin_cli_ends_the_live_session_at_once() -> Result<()> {
    let Some(pg) = start_or_skip("on_postgres_a_revoke_ends_the_live_session") else {
        return Ok(());
    };
    let mut w = world_on(&pg)?;
    let _agent = w.start_agent()?;
    let mut command = w.bob_sleeping_on_mypc(30)?;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    // From the commit (the admin command has returned): the relay hears of
    // it through LISTEN/NOTIFY, not by polling.
    let revoked = Instant::now();
    wait_until("the session to end", || !command.running())?;
    let took = revoked.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the session outlived the revoke by {took:?}"
    );
    // A graceful stop ends cleanly (the store's connections close off the
    // async threads).
    let status = w.relay.proc.take().expect("running").terminate()?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

/// The readiness probe follows the store: ready while PostgreSQL answers,
/// not ready (saying only that the store is unreachable) once it is gone,
/// while the liveness probe still answers.
#[test]
fn on_postgres_the_readiness_probe_follows_the_store() -> Result<()> {
    let Some(pg) = start_or_skip("on_postgres_the_readiness_probe") else {
        return Ok(());
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let probes = format!("127.0.0.1:{port}");
    let mut env = store_env(&pg.fresh_database());
    env.push(("LATCHKEY_RELAY_METRICS_LISTEN".into(), probes.clone()));
    let _w = World::with_env(env)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let probe = |path: &str| -> Result<(u16, String)> {
        let mut response = agent.get(&format!("http://{probes}{path}")).call()?;
        Ok((
            response.status().as_u16(),
            response.body_mut().read_to_string()?,
        ))
    };
    assert_eq!(probe("/readyz")?, (200, "ready\n".into()));
    drop(pg);
    wait_until("the relay not ready", || {
        probe("/readyz")
            .is_ok_and(|(status, said)| status == 503 && said == "not ready: store unreachable\n")
    })?;
    assert_eq!(probe("/healthz")?, (200, "ok\n".into()));
    Ok(())
}
