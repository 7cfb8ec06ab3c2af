//! `latchkey-bench [handshake|logins|idle|forward|latency|all]`: measures the
//! relay with real processes on loopback and prints a table plus one JSON
//! line per figure. Medians and ratios against a baseline measured in the
//! same run, because these machines are shared and noisy. Build with
//! `--release`; see docs/benchmarks.md.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use latchkey_client::net;
use latchkey_protocol::{
    frame::Intent,
    handshake::{
        registration_response, validate_upload, CodeRecord, CodeRegistration, Initiator,
        InitiatorReply, Keypair, LoginAuthority, LoginReply, Msg1, RelayIdentity, Reservation,
        Responder,
    },
    ids::{AccessCode, HostName, PublicKey, RecordId, UserName},
    ksf::KsfProfile,
};
use latchkey_tests::{unlimited, World, OWNER_CODE};
use rand::rngs::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn report(figure: &str, fields: serde_json::Value) {
    println!(
        "{}",
        serde_json::json!({ "figure": figure, "results": fields })
    );
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of a process in KiB, from /proc.
fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

struct OneRecord(PublicKey, CodeRecord);

impl LoginAuthority for OneRecord {
    type Attempt = ();
    fn device_key(&mut self, _: &UserName) -> Option<PublicKey> {
        Some(self.0)
    }
    fn code_record(&mut self, _: &UserName, _: &HostName) -> Option<CodeRecord> {
        Some(self.1.clone())
    }
    fn reserve_attempt(&mut self, _: &UserName, _: &HostName, _: &CodeRecord) -> Reservation<()> {
        Reservation::Reserved(())
    }
}

/// The relay's cryptographic work per login, in process, and the client's
/// key stretching with the production profile.
fn handshake() -> Result<()> {
    let relay = RelayIdentity::generate(&mut OsRng);
    let device = Keypair::generate(&mut OsRng);
    let code = AccessCode::new(OWNER_CODE.into())?;
    let ksf = KsfProfile::InsecureFastForTests;
    let (reg, req) = CodeRegistration::start(&mut OsRng, &code, ksf)?;
    let id = RecordId([1; 16]);
    let upload = reg.finish(&mut OsRng, &code, &registration_response(&relay, &req, id)?)?;
    let record = CodeRecord {
        id,
        ksf,
        record: validate_upload(&upload)?,
    };
    let mut authority = OneRecord(device.public, record);
    let (mut relay_us, mut baseline_us) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        let (init, msg1) = Initiator::start_login(
            &mut OsRng,
            &device,
            &relay.public_key(),
            b"b",
            "u".parse()?,
            "h".parse()?,
            &code,
        )?;
        let t = Instant::now();
        let Msg1::Login(req) = Responder::read_msg1(&relay, b"b", &msg1, &mut OsRng)? else {
            anyhow::bail!("not a login")
        };
        let LoginReply { msg2, awaiting, .. } = req.respond(&relay, &mut authority, &mut OsRng)?;
        let mut spent = t.elapsed();
        let InitiatorReply::SendKe3 { msg3, .. } =
            init.read_msg2(&mut OsRng, &msg2, Some(&code))?
        else {
            anyhow::bail!("rejected")
        };
        let t = Instant::now();
        let result = awaiting
            .context("no KE3 state")?
            .read_msg3(&msg3)
            .map_err(|(e, _)| e)?;
        spent += t.elapsed();
        anyhow::ensure!(result.verified);
        relay_us.push(spent.as_secs_f64() * 1e6);
        // Baseline: a bare Noise IK handshake (no OPAQUE), same keys.
        let (_, m1) = Initiator::start(
            &mut OsRng,
            &device,
            &relay.public_key(),
            b"b",
            Intent::User { user: "u".parse()? },
        )?;
        let t = Instant::now();
        let Msg1::Device(d) = Responder::read_msg1(&relay, b"b", &m1, &mut OsRng)? else {
            anyhow::bail!("not a device")
        };
        let _ = d.reply(&latchkey_protocol::frame::HelloReply::Welcome)?;
        baseline_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut argon_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut out = [0u8; 64];
        KsfProfile::DEFAULT
            .argon2()
            .hash_password_into(OWNER_CODE.as_bytes(), b"latchkey-bench-salt", &mut out)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        argon_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (relay_med, base_med) = (median(relay_us), median(baseline_us));
    println!("handshake: relay work per login {relay_med:.0} us (the relay's side of a Noise IK handshake alone {base_med:.0} us, ratio {:.2}); client Argon2id m=64MiB t=3 {:.0} ms", relay_med / base_med, median(argon_ms.clone()));
    report(
        "handshake",
        serde_json::json!({
            "relay_us_per_login_median": relay_med, "noise_ik_only_us_median": base_med,
            "ratio": relay_med / base_med, "client_argon2_ms_median": median(argon_ms), "samples": 500,
        }),
    );
    Ok(())
}

/// Full logins (QUIC + TLS + Noise IK + OPAQUE + store write) per second
/// against the relay binary, with the client's key stretching at the
/// insecure test profile; and the relay's CPU per login.
async fn logins() -> Result<()> {
    let w = World::with_env(unlimited())?;
    // Many logins in flight at once would otherwise be refused as "busy"
    // by the lockout budget (SPEC S7).
    w.without_lockout()?;
    let pid = w.relay.proc.as_ref().context("relay")?.pid();
    let (total, concurrency) = (1000, 16);
    let cpu0 = cpu_secs(pid);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let login = w.alice.login_factory();
        tasks.push(tokio::spawn(async move {
            for _ in 0..total / concurrency {
                let s = login().await?;
                s.control.relay.conn.close(0u32.into(), b"");
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let done = (total / concurrency) * concurrency;
    let cpu = cpu_secs(pid) - cpu0;
    println!("logins: {:.0} per second end to end ({done} logins, {concurrency} at a time); relay CPU {:.2} ms per login", done as f64 / secs, cpu * 1e3 / done as f64);
    report(
        "logins",
        serde_json::json!({"logins_per_sec": done as f64 / secs, "relay_cpu_ms_per_login": cpu * 1e3 / done as f64, "logins": done}),
    );
    Ok(())
}

/// Relay memory with many idle authenticated connections.
async fn idle() -> Result<()> {
    let w = World::with_env(unlimited())?;
    let pid = w.relay.proc.as_ref().context("relay")?.pid();
    let home = latchkey_client::config::Home::locate(Some(w.alice.home.clone()));
    let (cfg, key) = home.user()?;
    let pin = cfg.pin()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let n = 1000;
    let mut conns = Vec::new();
    for chunk in 0..n / 50 {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let (relay, pin, key, user) = (cfg.relay.clone(), pin, key.clone(), cfg.user.clone());
            batch.push(tokio::spawn(async move {
                net::welcome(&relay, &pin, &key, Intent::User { user }).await
            }));
        }
        for b in batch {
            conns.push(b.await?.with_context(|| format!("batch {chunk}"))?);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after - before) / n as f64;
    println!("idle: relay RSS {before:.0} KiB -> {after:.0} KiB with {n} idle authenticated connections: {per:.1} KiB each");
    report(
        "idle",
        serde_json::json!({"connections": n, "rss_before_kib": before, "rss_after_kib": after, "kib_per_connection": per}),
    );
    drop(conns);
    Ok(())
}

/// Bulk transfer through `latchkey forward` and the relay, against the same
/// transfer over a direct loopback TCP connection in the same run.
async fn forward() -> Result<()> {
    let size: usize = 512 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    let chunk = Arc::new(vec![0x5au8; 1 << 20]);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                for _ in 0..size >> 20 {
                    if tcp.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let pull = |addr: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut buf = vec![0u8; 1 << 16];
        let (t, mut got) = (Instant::now(), 0usize);
        loop {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        anyhow::ensure!(got == size, "got {got} bytes");
        Ok::<_, anyhow::Error>(size as f64 / 1e6 / t.elapsed().as_secs_f64())
    };
    let w = World::new()?;
    w.mypc.allow_forward(&[target.to_string()])?;
    let _agent = w.start_agent()?;
    let (_forward, local) = w.start_forward(&target.to_string())?;
    let relay_pid = w.relay.proc.as_ref().context("relay")?.pid();
    let (mut relayed, mut direct, mut cpu_per_gib) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        direct.push(pull(target.to_string()).await?);
        let cpu0 = cpu_secs(relay_pid);
        relayed.push(pull(local.clone()).await?);
        cpu_per_gib.push((cpu_secs(relay_pid) - cpu0) / (size as f64 / (1u64 << 30) as f64));
    }
    let (r, d) = (median(relayed), median(direct));
    println!("forward: {r:.0} MB/s through the relay vs {d:.0} MB/s direct TCP (ratio {:.3}); relay CPU {:.2} s per GiB", r / d, median(cpu_per_gib.clone()));
    report(
        "forward",
        serde_json::json!({"relayed_mb_s_median": r, "direct_tcp_mb_s_median": d, "ratio": r / d, "relay_cpu_s_per_gib": median(cpu_per_gib), "bytes": size, "runs": 3}),
    );
    Ok(())
}

/// Round trips of one byte through an open forward, against the same over
/// a direct loopback TCP connection: p50 and p99 of 10,000 each.
async fn latency() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let mut b = [0u8; 1];
                while tcp.read_exact(&mut b).await.is_ok() {
                    if tcp.write_all(&b).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let rtts = |addr: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut b = [7u8; 1];
        // Warm up the path (the forward opens its channel on connect).
        for _ in 0..100 {
            tcp.write_all(&b).await?;
            tcp.read_exact(&mut b).await?;
        }
        let mut out = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            let t = Instant::now();
            tcp.write_all(&b).await?;
            tcp.read_exact(&mut b).await?;
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
        out.sort_by(|a, b| a.total_cmp(b));
        Ok::<_, anyhow::Error>((out[out.len() / 2], out[out.len() * 99 / 100]))
    };
    let w = World::new()?;
    w.mypc.allow_forward(&[target.to_string()])?;
    let _agent = w.start_agent()?;
    let (_forward, local) = w.start_forward(&target.to_string())?;
    let (d50, d99) = rtts(target.to_string()).await?;
    let (r50, r99) = rtts(local).await?;
    println!(
        "latency: 1-byte round trip through the relay p50 {r50:.0} us, p99 {r99:.0} us; direct TCP p50 {d50:.0} us, p99 {d99:.0} us; added p50 {:.0} us",
        r50 - d50
    );
    report(
        "latency",
        serde_json::json!({"relayed_p50_us": r50, "relayed_p99_us": r99, "direct_tcp_p50_us": d50, "direct_tcp_p99_us": d99, "added_p50_us": r50 - d50, "round_trips": 10_000}),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    println!(
        "# latchkey-bench {which} on {cpu}, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let all = which == "all";
    let mut ran = HashMap::new();
    if all || which == "handshake" {
        ran.insert("handshake", tokio::task::spawn_blocking(handshake).await?);
    }
    if all || which == "logins" {
        ran.insert("logins", logins().await);
    }
    if all || which == "idle" {
        ran.insert("idle", idle().await);
    }
    if all || which == "forward" {
        ran.insert("forward", forward().await);
    }
    if all || which == "latency" {
        ran.insert("latency", latency().await);
    }
    anyhow::ensure!(
        !ran.is_empty(),
        "unknown figure {which}: use handshake, logins, idle, forward, latency or all"
    );
    for (figure, result) in ran {
        result.with_context(|| format!("figure {figure}"))?;
    }
    Ok(())
}
