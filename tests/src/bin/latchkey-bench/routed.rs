//! The forwarding data path on its own: an end-to-end QUIC connection
//! between two device sockets, carried as routed datagrams by a relay's
//! forwarding socket, against the direct quinn baseline in the same run.
//! Three processes, as a session has them: `latchkey-bench forwarder` (the
//! relay's endpoint and socket layer, `latchkey_server::routes`),
//! `latchkey-bench routed-peer CERT` (a host's device socket serving the
//! baseline peer's streams), and the bench itself as the client. The
//! forwarder's CPU per GiB is the relay's share of a relayed transfer.

use std::{
    io::{BufRead, Write},
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use latchkey_client::net::socket::{self, DeviceSocket};
use latchkey_protocol::{quic::transport_config, route::LegId};
use latchkey_server::{
    metrics::Metrics,
    routes::{socket::ForwardingSocket, RouteTable, LEG_BUDGET},
};
use latchkey_tests::{cpu_secs, Proc};

use crate::{
    measure::{median, report, GIB},
    peer,
    transfer::{quinn_pull, quinn_push, SIZE},
};

/// Transfers per path and direction.
const RUNS: usize = 3;

fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config(
        Duration::from_secs(30),
        Duration::from_secs(5),
    ))
}

/// `latchkey-bench forwarder`: a relay's endpoint on a forwarding socket.
/// Prints `listening ADDR`; for each line `open CLIENT HOST` on standard
/// input it opens a route and prints `route CLIENT_LEG HOST_LEG`.
pub(crate) async fn serve_forwarder() -> Result<()> {
    let (server, _) = latchkey_tests::self_signed_server()?;
    let metrics = Metrics::new()?;
    let table = RouteTable::new(LEG_BUDGET, metrics.forwarding());
    let std = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let socket = ForwardingSocket::new(latchkey_protocol::udp::async_socket(std)?, table.clone());
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    println!("listening {}", endpoint.local_addr()?);
    // One route is all the bench asks for; read it, then serve until
    // killed.
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let mut words = line.split_whitespace().skip(1);
    let client: SocketAddr = words.next().context("client")?.parse()?;
    let host: SocketAddr = words.next().context("host")?.parse()?;
    let route = table.open(client, host);
    println!(
        "route {} {}",
        route.legs().client.get(),
        route.legs().host.get()
    );
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    drop((route, endpoint));
    Ok(())
}

/// `latchkey-bench routed-peer CERT`: a host's device socket serving the
/// baseline peer's streams to its one virtual peer. Prints `listening
/// ADDR`; then reads `path RELAY LEG` and routes its peer through it.
pub(crate) async fn serve_routed_peer(cert_path: &Path) -> Result<()> {
    let (mut server, cert) = latchkey_tests::self_signed_server()?;
    std::fs::write(cert_path, cert)?;
    server.transport_config(transport());
    let (socket, peers) = DeviceSocket::bind("127.0.0.1:0".parse()?, None)?;
    let endpoint = socket::endpoint(socket, Some(server))?;
    println!("listening 127.0.0.1:{}", endpoint.local_addr()?.port());
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let mut words = line.split_whitespace().skip(1);
    let relay: SocketAddr = words.next().context("relay")?.parse()?;
    let leg = LegId::from_u64(words.next().context("leg")?.parse()?).context("leg id")?;
    peers.set(peers.allocate(), relay, leg)?;
    println!("routed");
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(peer::stream(send, recv));
            }
        });
    }
    Ok(())
}

/// Bulk transfer both ways through the forwarder, and directly.
pub(crate) async fn routed() -> Result<()> {
    let exe = std::env::current_exe()?;
    let (forwarder, mut to_forwarder) =
        Proc::spawn_interactive(std::process::Command::new(&exe).arg("forwarder"))?;
    let relay: SocketAddr = forwarder
        .expect_line("listening")?
        .trim_start_matches("listening ")
        .parse()?;
    let dir = tempfile::tempdir()?;
    let cert = dir.path().join("host.der");
    let (host, mut to_host) = Proc::spawn_interactive(
        std::process::Command::new(&exe)
            .arg("routed-peer")
            .arg(&cert),
    )?;
    let host_addr: SocketAddr = host
        .expect_line("listening")?
        .trim_start_matches("listening ")
        .parse()?;
    let (socket, peers) = DeviceSocket::bind("127.0.0.1:0".parse()?, None)?;
    let port = quinn::AsyncUdpSocket::local_addr(&*socket)?.port();
    let client_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let endpoint = socket::endpoint(socket, None)?;
    writeln!(to_forwarder, "open {client_addr} {host_addr}")?;
    let legs = forwarder.expect_line("route")?;
    let mut legs = legs.split_whitespace().skip(1).map(str::parse::<u64>);
    let client_leg = LegId::from_u64(legs.next().context("leg")??).context("leg")?;
    let host_leg = legs.next().context("leg")??;
    writeln!(to_host, "path {relay} {host_leg}")?;
    host.expect_line("routed")?;
    let virtual_host = peers.allocate();
    peers.set(virtual_host, relay, client_leg)?;
    let mut client = latchkey_tests::client_trusting(&std::fs::read(&cert)?)?;
    client.transport_config(transport());
    let conn = endpoint
        .connect_with(client, virtual_host, "localhost")?
        .await
        .context("connecting through the forwarder")?;
    let direct = peer::spawn("quinn-peer")?;
    let (_direct_endpoint, direct_conn) = peer::connect(direct.addr, &direct.cert).await?;
    let me = std::process::id();
    // Per path and direction: MB/s and CPU seconds per GiB of each run.
    let mut figures: std::collections::BTreeMap<String, (Vec<f64>, Vec<f64>)> = Default::default();
    for _ in 0..RUNS {
        for (name, conn, pids) in [
            ("routed", &conn, vec![forwarder.pid()]),
            ("direct", &direct_conn, vec![direct.proc.pid(), me]),
        ] {
            for (dir, push) in [("client_to_host", true), ("host_to_client", false)] {
                let before: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
                let mb_s = if push {
                    quinn_push(conn).await?
                } else {
                    quinn_pull(conn).await?
                };
                let cpu =
                    (pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - before) / (SIZE as f64 / GIB);
                let entry = figures.entry(format!("{name}_{dir}")).or_default();
                entry.0.push(mb_s);
                entry.1.push(cpu);
            }
        }
    }
    let med = |k: &str| median(figures[k].0.clone());
    let cpu = |k: &str| median(figures[k].1.clone());
    for dir in ["client_to_host", "host_to_client"] {
        let (r, d) = (med(&format!("routed_{dir}")), med(&format!("direct_{dir}")));
        let (rc, dc) = (cpu(&format!("routed_{dir}")), cpu(&format!("direct_{dir}")));
        println!(
            "routed {dir}: through the forwarder {r:.0} MB/s, direct quinn {d:.0} MB/s (ratio {:.2}); \
             forwarder CPU {rc:.3} s/GiB vs direct quinn sender+receiver {dc:.2} s/GiB (ratio {:.3})",
            r / d,
            rc / dc
        );
    }
    report(
        "routed",
        serde_json::json!({
            "runs": RUNS,
            "bytes": SIZE,
            "mb_s_median": figures.keys().map(|k| (k.clone(), serde_json::json!(med(k)))).collect::<serde_json::Map<_, _>>(),
            "cpu_s_per_gib_median": figures.keys().map(|k| (k.clone(), serde_json::json!(cpu(k)))).collect::<serde_json::Map<_, _>>(),
        }),
    );
    drop((forwarder, host, direct));
    Ok(())
}
