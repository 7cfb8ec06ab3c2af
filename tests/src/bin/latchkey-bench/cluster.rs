//! Several relays on one PostgreSQL (SPEC M1, M2, M5): logins per second on one
//! SQLite relay (the baseline), one PostgreSQL relay and three, in the same
//! run; then 5,000 hosts spread over three relays when one of them is killed.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use latchkey_server::testing::postgres::{start_or_skip, TestPostgres};
use latchkey_tests::{unlimited, Relay, World};

use crate::{
    fleet::{enrol, wait_for, Fleet},
    measure::{median, report},
};

/// Logins per measurement, and users logging in at once.
const LOGINS: usize = 640;
const USERS: usize = 16;
/// Measurements of each set-up, taken in turn.
const ROUNDS: usize = 3;

/// A world on a fresh database of `pg`, and `extra` more relays joined to it.
fn cluster_on(pg: &TestPostgres, extra: usize, log: &str) -> Result<(World, Vec<Relay>)> {
    let mut env = unlimited();
    env.push(("LATCHKEY_RELAY_STORE".into(), pg.fresh_database()));
    env.push(("LATCHKEY_LOG".into(), log.into()));
    let w = World::with_env(env)?;
    let more = (0..extra)
        .map(|i| w.relay.join(w.dir.path().join(format!("relay-{i}"))))
        .collect::<Result<Vec<_>>>()?;
    Ok((w, more))
}

/// Users who log in to mypc (lockout off, so logins in flight are never
/// "busy"), each dialling the cluster's relays from another place.
fn users(w: &World, relays: &[String]) -> Result<Vec<latchkey_tests::Device>> {
    w.without_lockout()?;
    (0..USERS)
        .map(|i| {
            let user = w.granted_user(&format!("user{i}"))?;
            if relays.len() > 1 {
                let mut order = relays.to_vec();
                order.rotate_left(i % relays.len());
                user.set_relays(&order)?;
            }
            Ok(user)
        })
        .collect()
}

/// Logins per second: [`LOGINS`] by [`USERS`] users at once.
async fn rate(users: &[latchkey_tests::Device]) -> Result<f64> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for user in users {
        let login = user.login_factory();
        tasks.push(tokio::spawn(async move {
            for _ in 0..LOGINS / USERS {
                let s = login().await?;
                s.control.relay.conn.close(0u32.into(), b"");
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((LOGINS / USERS * USERS) as f64 / t.elapsed().as_secs_f64())
}

fn postgres(figure: &str) -> Result<TestPostgres> {
    start_or_skip(&format!("latchkey-bench {figure}")).with_context(|| {
        format!("the {figure} figure needs PostgreSQL (Debian's postgresql package)")
    })
}

/// Logins per second on one SQLite relay, one PostgreSQL relay and three.
pub(crate) async fn logins() -> Result<()> {
    let pg = postgres("cluster")?;
    let pg = &pg;
    let sqlite = World::with_env(unlimited())?;
    let sqlite_users = users(&sqlite, &[])?;
    let (one, _) = cluster_on(pg, 0, "warn")?;
    let one_users = users(&one, &[])?;
    let (three, more) = cluster_on(pg, 2, "warn")?;
    let mut addrs = vec![three.relay.addr.to_string()];
    addrs.extend(more.iter().map(|r| r.addr.to_string()));
    let three_users = users(&three, &addrs)?;
    let (mut s, mut p1, mut p3) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        s.push(rate(&sqlite_users).await?);
        p1.push(rate(&one_users).await?);
        p3.push(rate(&three_users).await?);
    }
    let (s, p1, p3) = (median(s), median(p1), median(p3));
    println!(
        "cluster logins: one SQLite relay {s:.0}/s; one PostgreSQL relay {p1:.0}/s (ratio {:.2}); \
         three PostgreSQL relays {p3:.0}/s (ratio {:.2} to one PostgreSQL relay, {:.2} to SQLite); \
         medians of {ROUNDS} runs of {LOGINS} logins by {USERS} users, all on this machine's cores",
        p1 / s,
        p3 / p1,
        p3 / s
    );
    report(
        "cluster-logins",
        serde_json::json!({"sqlite_per_sec": s, "postgres_one_relay_per_sec": p1, "postgres_three_relays_per_sec": p3,
            "ratio_one_postgres_to_sqlite": p1 / s, "ratio_three_to_one_postgres": p3 / p1, "rounds": ROUNDS, "logins": LOGINS}),
    );
    Ok(())
}

/// 5,000 hosts on three relays; one relay is killed (SIGKILL): how long
/// until its hosts are back on the other two.
pub(crate) async fn failover() -> Result<()> {
    let pg = postgres("failover")?;
    let pg = &pg;
    let n = 5_000;
    let (w, mut more) = cluster_on(pg, 2, "warn")?;
    let mut addrs = vec![w.relay.addr.to_string()];
    addrs.extend(more.iter().map(|r| r.addr.to_string()));
    let key = Arc::new(latchkey_protocol::handshake::Keypair::generate(
        &mut rand::rngs::OsRng,
    ));
    let t = Instant::now();
    // The store's client blocks: off the async threads.
    let names = tokio::task::block_in_place(|| enrol(&w, n, &key))?;
    eprintln!(
        "cluster: enrolled {n} hosts in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut f = Fleet::new(w)?;
    f.launch_on(names, &key, Arc::new(addrs.clone()))?;
    wait_for("the fleet online", Duration::from_secs(300), || {
        f.online() == n
    })
    .await?;
    // Which relay holds how many, as the store says.
    let victim = addrs[2].clone();
    let on_victim = wait_for_placement(&f.w, &victim, n).await?;
    let before = f.counters.connections.load(Ordering::SeqCst);
    let killed = Instant::now();
    more[1].kill9();
    let counters = f.counters.clone();
    let mut marks = Vec::new();
    let all_back = wait_for("the victim's hosts back", Duration::from_secs(120), || {
        let back = counters.connections.load(Ordering::SeqCst) - before;
        for (i, share) in [0.5, 0.9].iter().enumerate() {
            if marks.len() == i && back as f64 >= share * on_victim as f64 {
                marks.push(killed.elapsed().as_secs_f64());
            }
        }
        back >= on_victim && counters.online.load(Ordering::SeqCst) == n
    })
    .await;
    let secs = killed.elapsed().as_secs_f64();
    println!(
        "cluster failover: {n} hosts over 3 relays, {on_victim} on the one killed (SIGKILL); half of those were back on the \
         other two after {:.2} s, 90 % after {:.2} s, all after {secs:.2} s (agents notice a silent relay after 10 s)",
        marks.first().copied().unwrap_or(f64::NAN),
        marks.get(1).copied().unwrap_or(f64::NAN),
    );
    report(
        "cluster-failover",
        serde_json::json!({"hosts": n, "on_killed_relay": on_victim, "half_back_seconds": marks.first(),
            "ninety_percent_back_seconds": marks.get(1), "all_back_seconds": secs}),
    );
    f.tasks.abort_all();
    all_back.map(drop)
}

/// Waits until the store places all `n` hosts; returns how many are on
/// the relay at `victim`.
async fn wait_for_placement(w: &World, victim: &str, n: usize) -> Result<usize> {
    let t = Instant::now();
    loop {
        let hosts = w.relay.admin_json(&["hosts"])?;
        let rows = hosts.as_array().context("hosts is not a list")?;
        let placed = rows
            .iter()
            .filter(|h| h["online"] == true && h["relay"].is_string())
            .count();
        if placed >= n {
            return Ok(rows.iter().filter(|h| h["relay"] == victim).count());
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "hosts not placed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
