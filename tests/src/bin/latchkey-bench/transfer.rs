//! Bulk transfer and round trips through an open forward: relayed by the
//! relay, against a direct quinn stream with the same transport settings
//! (a peer process, see `peer`), plain TCP, an OpenSSH `ssh -L` forward
//! and a rathole tunnel (see `rathole`), all in the same run. The bulk
//! transfer runs on loopback (`forward`) or between network namespaces
//! (`forward-netns`, see `netns`) by one implementation, [`forward_at`].

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use latchkey_tests::{Proc, World};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use crate::{
    ends::{Ends, TcpEnds},
    measure::{cpu_secs, median, percentile, report, GIB},
    netns::Layout,
    peer, rathole, ssh,
};

/// Bytes moved per run, each way.
pub(crate) const SIZE: u64 = 1 << 30;
/// Runs per path and direction.
const RUNS: usize = 3;
/// Round trips per latency figure.
const ROUND_TRIPS: usize = 10_000;

/// The targets the host connects to: one that sends `SIZE` bytes to every
/// connection, one that counts what it gets and reports each connection's
/// total, and one that echoes.
pub(crate) struct Targets {
    pub(crate) source: String,
    pub(crate) sink: String,
    pub(crate) echo: String,
    pub(crate) sunk: mpsc::UnboundedReceiver<u64>,
}

/// The targets, listening on `ip`.
pub(crate) async fn targets(ip: IpAddr) -> Result<Targets> {
    let source = TcpListener::bind((ip, 0)).await?;
    let sink = TcpListener::bind((ip, 0)).await?;
    let echo = TcpListener::bind((ip, 0)).await?;
    let addrs = (
        source.local_addr()?.to_string(),
        sink.local_addr()?.to_string(),
        echo.local_addr()?.to_string(),
    );
    let chunk = Arc::new(vec![0x5au8; 1 << 20]);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = source.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                for _ in 0..SIZE >> 20 {
                    if tcp.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (tx, sunk) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = sink.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut buf, mut got) = (vec![0u8; 1 << 16], 0u64);
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                    if got == SIZE {
                        let _ = tx.send(got);
                    }
                }
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = echo.accept().await {
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
    Ok(Targets {
        source: addrs.0,
        sink: addrs.1,
        echo: addrs.2,
        sunk,
    })
}

/// MB/s pulling `SIZE` bytes from a TCP address (a forward of the source).
pub(crate) async fn tcp_pull(addr: &str) -> Result<f64> {
    let mut tcp = TcpStream::connect(addr).await?;
    let mut buf = vec![0u8; 1 << 16];
    let (t, mut got) = (Instant::now(), 0u64);
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    anyhow::ensure!(got == SIZE, "pulled {got} bytes");
    Ok(SIZE as f64 / 1e6 / t.elapsed().as_secs_f64())
}

/// Pushes [`SIZE`] bytes to a baseline peer's sink; MB/s.
pub(crate) async fn quinn_push(conn: &quinn::Connection) -> Result<f64> {
    let t = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"S").await?;
    peer::send_bytes(&mut send, SIZE).await?;
    send.finish()?;
    let mut n = [0u8; 8];
    recv.read_exact(&mut n).await?;
    anyhow::ensure!(u64::from_be_bytes(n) == SIZE, "the peer got fewer bytes");
    Ok(SIZE as f64 / 1e6 / t.elapsed().as_secs_f64())
}

/// Pulls [`SIZE`] bytes from a baseline peer; MB/s.
pub(crate) async fn quinn_pull(conn: &quinn::Connection) -> Result<f64> {
    let t = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"G").await?;
    send.write_all(&SIZE.to_be_bytes()).await?;
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
        got += chunk.bytes.len() as u64;
    }
    anyhow::ensure!(got == SIZE, "pulled {got} bytes");
    Ok(SIZE as f64 / 1e6 / t.elapsed().as_secs_f64())
}

/// A direct quinn peer process and our connection to it.
struct Peer {
    _server: peer::PeerProc,
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

async fn start_peer() -> Result<Peer> {
    let server = peer::spawn("quinn-peer")?;
    let (endpoint, conn) = peer::connect(server.addr, &server.cert).await?;
    Ok(Peer {
        _server: server,
        conn,
        _endpoint: endpoint,
    })
}

/// Per path and direction: MB/s of each run, and CPU seconds per GiB of
/// the processes that matter (the relay, or rathole's server; or the
/// direct sender + receiver) and of all the tunnel's processes.
#[derive(Default)]
struct Samples {
    mb_s: Vec<f64>,
    cpu_per_gib: Vec<f64>,
    all_cpu_per_gib: Vec<f64>,
}

impl Samples {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mb_s_median": median(self.mb_s.clone()),
            "cpu_s_per_gib_median": median(self.cpu_per_gib.clone()),
            "all_tunnel_cpu_s_per_gib_median": median(self.all_cpu_per_gib.clone()),
            "runs": self.mb_s.len(),
        })
    }
}

/// Times `f` and charges the CPU that `pids` (and all of `tunnel`) spent
/// meanwhile to it.
fn sample(
    into: &mut Samples,
    pids: &[u32],
    tunnel: &[u32],
    f: impl FnOnce() -> Result<f64>,
) -> Result<()> {
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
    let (before, all_before) = (cpu(pids), cpu(tunnel));
    into.mb_s.push(f()?);
    let gib = SIZE as f64 / GIB;
    into.cpu_per_gib.push((cpu(pids) - before) / gib);
    into.all_cpu_per_gib.push((cpu(tunnel) - all_before) / gib);
    Ok(())
}

/// `forward`: bulk transfer both ways on loopback.
pub(crate) fn forward() -> Result<()> {
    forward_at(&Layout::loopback(), "forward")
}

/// Bulk transfer both ways between the client's and the host's places of
/// `at` (see `netns`): relayed, direct quinn, direct TCP, ssh -L and
/// rathole; reported as `figure`. The bench runs at the relay's place. The
/// TCP and quinn ends are processes at the client's and the host's places
/// (see `ends`), the host's TCP targets on the host's address.
pub(crate) fn forward_at(at: &Layout, figure: &str) -> Result<()> {
    let mut t = TcpEnds::start(&at.client, &at.host)?;
    let w = World::listening_on(SocketAddr::new(at.relay.ip, 0), Vec::new())?;
    w.mypc.allow_forward(&[t.source.clone(), t.sink.clone()])?;
    let agent = w.start_agent_through(&at.host.prefix)?;
    let (f1, relayed_source) = w.start_forward_through(&at.client.prefix, &t.source)?;
    let (f2, relayed_sink) = w.start_forward_through(&at.client.prefix, &t.sink)?;
    let (source, sink) = (t.source.clone(), t.sink.clone());
    let ssh_source = ssh::start(&source, at, &mut t)?;
    let ssh_sink = ssh::start(&sink, at, &mut t)?;
    let rathole_source = rathole::start(&source, at)?;
    let rathole_sink = rathole::start(&sink, at)?;
    let peer = peer::spawn_at("quinn-peer", &at.host)?;
    let mut quinn = Ends::quinn(&at.client, peer.addr, &peer.cert)?;
    let relay = w.relay.proc.as_ref().context("relay")?.pid();
    // The relay, the agent and the forward: the tunnel's three processes.
    let tunnel = |forward: &Proc| [relay, agent.pid(), forward.pid()];
    let direct = [peer.proc.pid(), quinn.proc.pid()];
    let mut s: std::collections::BTreeMap<&str, Samples> = Default::default();
    for _ in 0..RUNS {
        sample(
            s.entry("relayed_host_to_client").or_default(),
            &[relay],
            &tunnel(&f1),
            || t.pull(&relayed_source),
        )?;
        sample(
            s.entry("relayed_client_to_host").or_default(),
            &[relay],
            &tunnel(&f2),
            || t.push(&relayed_sink),
        )?;
        sample(
            s.entry("direct_quinn_host_to_client").or_default(),
            &direct,
            &direct,
            || quinn.mb_s("pull"),
        )?;
        sample(
            s.entry("direct_quinn_client_to_host").or_default(),
            &direct,
            &direct,
            || quinn.mb_s("push"),
        )?;
        sample(
            s.entry("direct_tcp_host_to_client").or_default(),
            &[],
            &[],
            || t.pull(&source),
        )?;
        sample(
            s.entry("direct_tcp_client_to_host").or_default(),
            &[],
            &[],
            || t.push(&sink),
        )?;
        if let (Ok(a), Ok(b)) = (&ssh_source, &ssh_sink) {
            sample(
                s.entry("ssh_l_host_to_client").or_default(),
                &[],
                &[],
                || t.pull(&a.local),
            )?;
            sample(
                s.entry("ssh_l_client_to_host").or_default(),
                &[],
                &[],
                || t.push(&b.local),
            )?;
        }
        if let (Ok(a), Ok(b)) = (&rathole_source, &rathole_sink) {
            sample(
                s.entry("rathole_host_to_client").or_default(),
                &[a.server.pid()],
                &[a.server.pid(), a.client.pid()],
                || t.pull(&a.local),
            )?;
            sample(
                s.entry("rathole_client_to_host").or_default(),
                &[b.server.pid()],
                &[b.server.pid(), b.client.pid()],
                || t.push(&b.local),
            )?;
        }
    }
    if let Some(line) = at.describe(figure) {
        println!("{line}");
    }
    if let Err(why) = &rathole_source {
        println!("{figure}: no rathole baseline: {why}");
    }
    if let Err(why) = &ssh_source {
        println!("{figure}: no ssh -L baseline: {why}");
    }
    let med = |k: &str| s.get(k).map(|v| median(v.mb_s.clone())).unwrap_or(f64::NAN);
    let cpu = |k: &str| {
        s.get(k)
            .map(|v| median(v.cpu_per_gib.clone()))
            .unwrap_or(f64::NAN)
    };
    for dir in ["host_to_client", "client_to_host"] {
        let (r, q, tcp, ssh) = (
            med(&format!("relayed_{dir}")),
            med(&format!("direct_quinn_{dir}")),
            med(&format!("direct_tcp_{dir}")),
            med(&format!("ssh_l_{dir}")),
        );
        let (rc, qc) = (
            cpu(&format!("relayed_{dir}")),
            cpu(&format!("direct_quinn_{dir}")),
        );
        println!(
            "{figure} {dir}: relayed {r:.0} MB/s, direct quinn {q:.0} MB/s (ratio {:.2}), ssh -L {ssh:.0} MB/s (relayed/ssh {:.2}), direct TCP {tcp:.0} MB/s; \
             relay CPU {rc:.2} s/GiB vs direct quinn sender+receiver {qc:.2} s/GiB (ratio {:.2})",
            r / q,
            r / ssh,
            rc / qc
        );
        let rh = med(&format!("rathole_{dir}"));
        if rh.is_finite() {
            let all = |k: &str| {
                s.get(k)
                    .map(|v| median(v.all_cpu_per_gib.clone()))
                    .unwrap_or(f64::NAN)
            };
            let (rhc, ra, rha) = (
                cpu(&format!("rathole_{dir}")),
                all(&format!("relayed_{dir}")),
                all(&format!("rathole_{dir}")),
            );
            println!(
                "{figure} {dir} against rathole (Noise): relayed {r:.0} MB/s, rathole {rh:.0} MB/s (ratio {:.2}); \
                 relay CPU {rc:.2} s/GiB vs rathole server {rhc:.2} s/GiB (ratio {:.2}); all tunnel processes {ra:.2} vs {rha:.2} s/GiB (ratio {:.2})",
                r / rh,
                rc / rhc,
                ra / rha
            );
        }
    }
    report(
        figure,
        serde_json::json!({
            "bytes_per_run": SIZE,
            "network": at.network(),
            "paths": s.iter().map(|(k, v)| (k.to_string(), v.json())).collect::<serde_json::Map<_, _>>(),
            "ratio_relayed_to_direct_quinn": {
                "host_to_client": med("relayed_host_to_client") / med("direct_quinn_host_to_client"),
                "client_to_host": med("relayed_client_to_host") / med("direct_quinn_client_to_host"),
            },
            "ratio_relayed_to_rathole": {
                "host_to_client": med("relayed_host_to_client") / med("rathole_host_to_client"),
                "client_to_host": med("relayed_client_to_host") / med("rathole_client_to_host"),
            },
            "ratio_relay_cpu_to_direct_sender_receiver_cpu": {
                "host_to_client": cpu("relayed_host_to_client") / cpu("direct_quinn_host_to_client"),
                "client_to_host": cpu("relayed_client_to_host") / cpu("direct_quinn_client_to_host"),
            },
        }),
    );
    Ok(())
}

async fn rtts<S: AsyncReadExt + AsyncWriteExt + Unpin>(mut s: S) -> Result<Vec<f64>> {
    let mut b = [7u8; 1];
    // Warm up the path (a forward opens its channel on connect).
    for _ in 0..100 {
        s.write_all(&b).await?;
        s.read_exact(&mut b).await?;
    }
    let mut out = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        s.write_all(&b).await?;
        s.read_exact(&mut b).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

async fn tcp_rtts(addr: &str) -> Result<Vec<f64>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    rtts(tcp).await
}

async fn quinn_rtts(conn: &quinn::Connection) -> Result<Vec<f64>> {
    let (mut send, recv) = conn.open_bi().await?;
    send.write_all(b"E").await?;
    rtts(tokio::io::join(recv, send)).await
}

/// One-byte round trips through an open forward, p50/p99: relayed idle,
/// relayed while another session saturates the relay, direct quinn and
/// direct TCP.
pub(crate) async fn latency() -> Result<()> {
    let t = targets(Ipv4Addr::LOCALHOST.into()).await?;
    let w = World::new()?;
    w.mypc.allow_forward(&[t.echo.clone(), t.source.clone()])?;
    let _agent = w.start_agent()?;
    let (_f1, relayed_echo) = w.start_forward(&t.echo)?;
    let (_f2, relayed_source) = w.start_forward(&t.source)?;
    let peer = start_peer().await?;
    let rathole_echo = rathole::start(&t.echo, &Layout::loopback())?;
    let direct_tcp = tcp_rtts(&t.echo).await?;
    let direct_quinn = quinn_rtts(&peer.conn).await?;
    let relayed = tcp_rtts(&relayed_echo).await?;
    let rathole = match &rathole_echo {
        Ok(r) => tcp_rtts(&r.local).await?,
        Err(why) => {
            println!("latency: no rathole baseline: {why}");
            Vec::new()
        }
    };
    // Another session pulls bulk data through the relay meanwhile.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hog = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut moved = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut tcp) = TcpStream::connect(&relayed_source).await else {
                    break;
                };
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    moved += n as u64;
                }
            }
            moved
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let saturated = tcp_rtts(&relayed_echo).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let hog_mb_s = hog.await? as f64 / 1e6 / (started.elapsed().as_secs_f64() + 0.3);
    let p = |v: &Vec<f64>| (percentile(v.clone(), 50), percentile(v.clone(), 99));
    let ((r50, r99), (s50, s99), (q50, q99), (t50, t99)) =
        (p(&relayed), p(&saturated), p(&direct_quinn), p(&direct_tcp));
    println!(
        "latency (1-byte round trips, p50/p99 us): relayed {r50:.0}/{r99:.0}; relayed while another session moves {hog_mb_s:.0} MB/s {s50:.0}/{s99:.0}; \
         direct quinn {q50:.0}/{q99:.0}; direct TCP {t50:.0}/{t99:.0}; added by the relay path over direct quinn: p50 {:.0}, p99 {:.0}",
        r50 - q50,
        r99 - q99
    );
    if !rathole.is_empty() {
        let (h50, h99) = p(&rathole);
        println!(
            "latency against rathole (Noise), p50/p99 us: relayed {r50:.0}/{r99:.0}, rathole {h50:.0}/{h99:.0}; added over direct TCP: relayed {:.0}, rathole {:.0} (ratio {:.2})",
            r50 - t50,
            h50 - t50,
            (r50 - t50) / (h50 - t50)
        );
    }
    let rathole_p = |q: usize| (!rathole.is_empty()).then(|| percentile(rathole.clone(), q));
    report(
        "latency",
        serde_json::json!({
            "rathole_p50_us": rathole_p(50), "rathole_p99_us": rathole_p(99),
            "round_trips": ROUND_TRIPS,
            "relayed_p50_us": r50, "relayed_p99_us": r99,
            "relayed_saturated_p50_us": s50, "relayed_saturated_p99_us": s99, "saturating_mb_s": hog_mb_s,
            "direct_quinn_p50_us": q50, "direct_quinn_p99_us": q99,
            "direct_tcp_p50_us": t50, "direct_tcp_p99_us": t99,
            "added_p50_us": r50 - q50, "added_p99_us": r99 - q99,
        }),
    );
    Ok(())
}
