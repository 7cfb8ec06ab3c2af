//! `latchkey-bench [FIGURE|all]`: measures the relay with real processes
//! on loopback (and, in `forward-netns`, in network namespaces) and prints
//! a table plus one JSON line per figure. Medians
//! and ratios against a baseline measured in the same run, because these
//! machines are shared and noisy. Build with `--release`; see
//! docs/benchmarks.md.

mod cluster;
mod ends;
mod fleet;
mod login;
mod measure;
mod netns;
mod peer;
mod rathole;
mod reuse;
mod routed;
mod ssh;
mod transfer;

use anyhow::{Context, Result};

/// The figures, in the order `all` runs them.
const FIGURES: &[&str] = &[
    "handshake",
    "logins",
    "forward",
    "forward-netns",
    "routed",
    "latency",
    "idle",
    "storm",
    "cluster",
    "failover",
    "reuse",
];

async fn run(figure: &str, sizes: &[usize]) -> Result<()> {
    match figure {
        "handshake" => tokio::task::spawn_blocking(login::handshake).await?,
        "logins" => login::logins().await,
        "forward" => tokio::task::spawn_blocking(transfer::forward).await?,
        "forward-netns" => tokio::task::spawn_blocking(netns::forward).await?,
        "routed" => routed::routed().await,
        "latency" => transfer::latency().await,
        "idle" => fleet::idle(sizes).await,
        "storm" => fleet::storm().await,
        "cluster" => cluster::logins().await,
        "failover" => cluster::failover().await,
        "reuse" => tokio::task::spawn_blocking(reuse::exec).await?,
        other => anyhow::bail!("unknown figure {other}: use {} or all", FIGURES.join(", ")),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    // The agents' and clients' own warnings (retries, say), when asked for.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "all".into());
    if which == "quinn-peer" {
        let cert = args
            .next()
            .context("usage: latchkey-bench quinn-peer CERT_PATH [IP]")?;
        let ip = match args.next() {
            Some(ip) => ip.parse()?,
            None => std::net::Ipv4Addr::LOCALHOST.into(),
        };
        return peer::serve(cert.as_ref(), ip).await;
    }
    if which == "quinn-client" {
        let (Some(addr), Some(cert)) = (args.next(), args.next()) else {
            anyhow::bail!("usage: latchkey-bench quinn-client ADDR CERT_PATH");
        };
        return ends::serve_quinn(addr.parse()?, cert.as_ref()).await;
    }
    if which == "tcp-ends" {
        return ends::serve_tcp().await;
    }
    if which == netns::INSIDE {
        let (Some(tag), Some(offloads)) = (args.next(), args.next()) else {
            anyhow::bail!("usage: latchkey-bench {} TAG on|off", netns::INSIDE);
        };
        let at = netns::Layout::netns(&tag, offloads == "on");
        return tokio::task::spawn_blocking(move || transfer::forward_at(&at, "forward-netns"))
            .await?;
    }
    if which == "forwarder" {
        return routed::serve_forwarder().await;
    }
    if which == "routed-peer" {
        let cert = args
            .next()
            .context("usage: latchkey-bench routed-peer CERT_PATH")?;
        return routed::serve_routed_peer(cert.as_ref()).await;
    }
    if which == "quinn-idle-peer" {
        let cert = args
            .next()
            .context("usage: latchkey-bench quinn-idle-peer CERT_PATH")?;
        return peer::serve_idle(cert.as_ref()).await;
    }
    // The relays', agents' and clients' logs go to files, not between the
    // figures; their directory is kept and named on failure.
    let logs = tempfile::Builder::new()
        .prefix("latchkey-bench-logs-")
        .tempdir()?
        .keep();
    std::env::set_var(latchkey_tests::LOG_DIR_VAR, &logs);
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
    // `latchkey-bench idle 1000 5000`: other fleet sizes.
    let sizes = args.map(|a| a.parse()).collect::<Result<Vec<usize>, _>>()?;
    let figures: Vec<&str> = if which == "all" {
        FIGURES.to_vec()
    } else {
        vec![which.as_str()]
    };
    let mut failed = Vec::new();
    for figure in figures {
        if let Err(e) = run(figure, &sizes).await {
            println!(
                "{figure}: FAILED: {e:#} (the processes' logs are in {})",
                logs.display()
            );
            failed.push(figure);
        }
    }
    anyhow::ensure!(failed.is_empty(), "figures failed: {}", failed.join(", "));
    let _ = std::fs::remove_dir_all(&logs);
    Ok(())
}
