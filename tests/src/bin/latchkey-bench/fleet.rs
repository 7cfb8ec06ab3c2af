//! Fleets of host agents: relay memory with 1,000 and 10,000 idle hosts
//! online, and a reconnect storm of 5,000 hosts after a relay restart.
//! The agents are lightweight (all in this process, one QUIC connection
//! each) but authenticate and reconnect exactly as `latchkey host run`
//! does ([`latchkey_client::host::dial`]); the relay is the real binary.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use latchkey_client::{
    config::Home,
    host::{dial, RelayRing},
    net::{Local, NetError},
};
use latchkey_protocol::{
    handshake::Keypair,
    ids::{HostName, Platform, RelayPin},
};
use latchkey_server::{
    datadir::DB_FILE,
    store::{Actor, InviteKind, Location},
};
use latchkey_tests::{unlimited, World};
use rand::{rngs::OsRng, RngCore};
use tokio::task::JoinSet;

use crate::measure::{median, report, rss_kib};

/// Enrols `n` hosts owned by alice straight into the relay's store (as
/// `invite-host` + `host enroll` would, without 2n processes), all with
/// one device key.
pub(crate) fn enrol(w: &World, n: usize, key: &Keypair) -> Result<Vec<HostName>> {
    // The relay's own store: SQLite in its data directory, or the
    // PostgreSQL database its environment names.
    let setting = w
        .relay
        .env
        .iter()
        .find(|(k, _)| k == "LATCHKEY_RELAY_STORE")
        .map(|(_, v)| v.as_str());
    let store = Location::parse(setting)?.open(&w.relay.data_dir.join(DB_FILE))?;
    let now = latchkey_server::now_unix();
    let owner = w.alice.user()?;
    (0..n)
        .map(|i| {
            let name = format!("fleet{i}");
            let mut digest = [0u8; 32];
            OsRng.fill_bytes(&mut digest);
            let kind = InviteKind::Host {
                owner: owner.clone(),
                lockout_threshold: 3,
            };
            store.create_invite(&name, &kind, digest, now + 3600, &Actor::cli(), now)?;
            store.redeem_invite(
                digest,
                key.public,
                Platform::Linux,
                [127, 0, 0, 1].into(),
                now,
            )?;
            Ok(name.parse()?)
        })
        .collect()
}

/// Hosts brought online at a time when measuring idle memory.
const BATCH: usize = 250;

/// Hosts currently connected, and how many connections they have made.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) online: AtomicUsize,
    pub(crate) connections: AtomicUsize,
    /// How the relay's restart reached the agents: a close frame, a
    /// stateless reset at their next packet, or anything else.
    closed: AtomicUsize,
    reset: AtomicUsize,
    other: AtomicUsize,
}

/// One agent: dials, stays until the relay drops it, dials again.
async fn agent(
    local: Local,
    relays: Arc<Vec<String>>,
    pin: RelayPin,
    key: Arc<Keypair>,
    host: HostName,
    counters: Arc<Counters>,
) -> Result<(), NetError> {
    let ring = RelayRing::new(relays.to_vec(), &host);
    loop {
        let control = dial(&local, &ring, &pin, &key, &host, None).await?;
        counters.connections.fetch_add(1, Ordering::SeqCst);
        counters.online.fetch_add(1, Ordering::SeqCst);
        let why = control.relay.conn.closed().await;
        counters.online.fetch_sub(1, Ordering::SeqCst);
        let kind = match why {
            quinn::ConnectionError::ApplicationClosed(_) => &counters.closed,
            quinn::ConnectionError::Reset => &counters.reset,
            _ => &counters.other,
        };
        kind.fetch_add(1, Ordering::SeqCst);
        // As the agent does: the next relay of the cluster first.
        ring.advance();
    }
}

pub(crate) struct Fleet {
    pub(crate) w: World,
    pub(crate) tasks: JoinSet<Result<(), NetError>>,
    pub(crate) counters: Arc<Counters>,
    relay_pid: u32,
}

pub(crate) async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<Duration> {
    let t = Instant::now();
    while !done() {
        anyhow::ensure!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(t.elapsed())
}

/// A relay with `n` enrolled hosts, none connected yet.
fn fleet(n: usize) -> Result<(Fleet, Vec<HostName>, Arc<Keypair>)> {
    let mut env = unlimited();
    // Keep the terminal readable: 2 log lines per host connection.
    env.push(("LATCHKEY_LOG".into(), "warn".into()));
    let w = World::with_env(env)?;
    let key = Arc::new(Keypair::generate(&mut OsRng));
    let t = Instant::now();
    let names = enrol(&w, n, &key)?;
    eprintln!(
        "fleet: enrolled {n} hosts in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok((Fleet::new(w)?, names, key))
}

impl Fleet {
    /// No agent running yet.
    pub(crate) fn new(w: World) -> Result<Self> {
        let relay_pid = w.relay.proc.as_ref().context("relay")?.pid();
        Ok(Fleet {
            w,
            tasks: JoinSet::new(),
            counters: Arc::default(),
            relay_pid,
        })
    }

    fn launch(&mut self, names: Vec<HostName>, key: &Arc<Keypair>) -> Result<()> {
        let home = Home::locate(Some(self.w.alice.home.clone()));
        let (cfg, _) = home.user()?;
        self.launch_on(names, key, Arc::new(cfg.relays()))
    }

    /// Starts an agent for each of `names`, dialling `relays` as agents do.
    pub(crate) fn launch_on(
        &mut self,
        names: Vec<HostName>,
        key: &Arc<Keypair>,
        relay: Arc<Vec<String>>,
    ) -> Result<()> {
        let home = Home::locate(Some(self.w.alice.home.clone()));
        let (cfg, _) = home.user()?;
        let pin = cfg.pin()?;
        // One UDP socket per 250 agents (an endpoint's buffers are sized
        // for one busy connection, not for thousands of idle ones).
        let mut local = Local::Any;
        for (i, host) in names.into_iter().enumerate() {
            if i % 250 == 0 {
                local = Local::Shared(latchkey_client::net::udp_endpoint("127.0.0.1:0".parse()?)?);
            }
            self.tasks.spawn(agent(
                local.clone(),
                relay.clone(),
                pin,
                key.clone(),
                host,
                self.counters.clone(),
            ));
        }
        Ok(())
    }

    pub(crate) fn online(&self) -> usize {
        self.counters.online.load(Ordering::SeqCst)
    }
}

/// Relay memory with fleets of idle hosts online (1,000 and 10,000 unless
/// `sizes` says otherwise).
pub(crate) async fn idle(sizes: &[usize]) -> Result<()> {
    let mut rows = Vec::new();
    let sizes = if sizes.is_empty() {
        &[1_000, 10_000][..]
    } else {
        sizes
    };
    for &n in sizes {
        let (mut f, names, key) = fleet(n)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(f.relay_pid) as f64;
        let t = Instant::now();
        // In batches, so the figure is what idle hosts cost rather than
        // what a burst of handshakes left behind (the storm measures that).
        for batch in names.chunks(BATCH) {
            f.launch(batch.to_vec(), &key)?;
            let want = f.tasks.len();
            wait_for("a batch online", Duration::from_secs(120), || {
                f.online() == want
            })
            .await?;
        }
        wait_for("the fleet online", Duration::from_secs(300), || {
            f.online() == n
        })
        .await?;
        let up = t.elapsed();
        // Let allocations settle (handshake buffers freed, keep-alives run).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rss_kib(f.relay_pid) as f64;
        let per = (after - before) / n as f64;
        f.tasks.abort_all();
        drop(f);
        let bare = bare_quinn_per_connection(n).await?;
        println!(
            "idle hosts: {n} online in {:.1} s; relay RSS {before:.0} KiB -> {after:.0} KiB: {per:.1} KiB per idle host connection; \
             bare quinn with the relay's settings {bare:.1} KiB per connection: Latchkey adds {:.1} KiB",
            up.as_secs_f64(),
            per - bare
        );
        rows.push(serde_json::json!({"hosts": n, "rss_before_kib": before, "rss_after_kib": after, "kib_per_connection": per, "bare_quinn_kib_per_connection": bare, "added_kib_per_connection": per - bare, "seconds_to_online": up.as_secs_f64()}));
    }
    report("idle", serde_json::json!({ "fleets": rows }));
    Ok(())
}

/// The baseline in the same run: RSS per connection of a bare quinn
/// server (its own process, the relay's transport settings) holding `n`
/// connections with one idle stream each (see `peer::serve_idle`).
async fn bare_quinn_per_connection(n: usize) -> Result<f64> {
    let peer = crate::peer::spawn("quinn-idle-peer")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(peer.proc.pid()) as f64;
    let clients = crate::peer::idle_clients(peer.addr, &peer.cert, n).await?;
    // As for the relay: let allocations settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(peer.proc.pid()) as f64;
    drop(clients);
    Ok((after - before) / n as f64)
}

/// 5,000 hosts online; the relay restarts (SIGTERM, then started again);
/// time until all are back, while alice logs in again and again.
pub(crate) async fn storm() -> Result<()> {
    let n = 5_000;
    let (mut f, names, key) = fleet(n)?;
    f.launch(names, &key)?;
    wait_for("the fleet online", Duration::from_secs(300), || {
        f.online() == n
    })
    .await?;
    let before = f.counters.connections.load(Ordering::SeqCst);
    let stopping = Instant::now();
    f.w.relay.restart_graceful()?;
    let restarted = Instant::now();
    let restart_secs = (restarted - stopping).as_secs_f64();
    // A legitimate user keeps logging in through the storm.
    let login = f.w.alice.login_factory();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let user = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut refused, mut latency_ms) = (0, Vec::new(), Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                match login().await {
                    Ok(s) => {
                        ok += 1;
                        latency_ms.push(t.elapsed().as_secs_f64() * 1e3);
                        s.control.relay.conn.close(0u32.into(), b"");
                    }
                    Err(e) => refused.push(e.to_string()),
                }
            }
            (ok, refused, latency_ms)
        })
    };
    let counters = f.counters.clone();
    // When half, 90 % and all of the fleet were back.
    let mut marks = Vec::new();
    let all_back = wait_for("the fleet back online", Duration::from_secs(120), || {
        let back = counters.connections.load(Ordering::SeqCst) - before;
        for (i, share) in [0.5, 0.9].iter().enumerate() {
            if marks.len() == i && back as f64 >= share * n as f64 {
                marks.push(restarted.elapsed().as_secs_f64());
            }
        }
        back >= n && counters.online.load(Ordering::SeqCst) == n
    })
    .await;
    let secs = restarted.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let (ok, refused, latency_ms) = user.await?;
    let back = f.online();
    let load = |c: &AtomicUsize| c.load(Ordering::SeqCst);
    println!(
        "storm: the relay took {restart_secs:.2} s to stop and start; hosts learnt of it by a close frame {}, a stateless reset {}, otherwise {}; half were back after {:.2} s, 90 % after {:.2} s",
        load(&f.counters.closed),
        load(&f.counters.reset),
        load(&f.counters.other),
        marks.first().copied().unwrap_or(f64::NAN),
        marks.get(1).copied().unwrap_or(f64::NAN)
    );
    println!(
        "storm: {back} of {n} hosts back {:.2} s after the relay restarted; meanwhile alice logged in {ok} times (median {:.0} ms), refused {} times{}",
        secs,
        median(latency_ms.clone()),
        refused.len(),
        refused.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    report(
        "storm",
        serde_json::json!({"hosts": n, "back": back, "seconds": secs, "restart_seconds": restart_secs, "half_back_seconds": marks.first(), "ninety_percent_back_seconds": marks.get(1), "user_logins_ok": ok, "user_login_median_ms": median(latency_ms), "user_refusals": refused.len()}),
    );
    f.tasks.abort_all();
    all_back.map(drop)
}
