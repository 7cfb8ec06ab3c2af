//! The direct-QUIC baseline: `latchkey-bench quinn-peer CERT [IP]` runs as
//! its own process (listening on IP, 127.0.0.1 by default), a quinn server with the very transport settings of Latchkey
//! connections, and the bench talks to it without a relay. Each stream
//! starts with one byte saying what it is for: `S` sink (read to the end,
//! answer the byte count), `G` + u64 generate (send that many bytes), `E`
//! echo (one byte back for every byte).
//!
//! `latchkey-bench quinn-idle-peer CERT` is the idle-memory baseline: a
//! bare quinn server with the relay's own transport settings that holds
//! each connection and its one stream (as the relay holds a host's
//! control stream) and nothing else.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use latchkey_protocol::quic::transport_config;
use quinn::{Connection, Endpoint, RecvStream, SendStream};

use crate::netns::Place;

/// A baseline peer process (`latchkey-bench MODE CERT_PATH`, killed when
/// dropped), where it listens and the certificate it wrote.
pub(crate) struct PeerProc {
    pub(crate) proc: latchkey_tests::Proc,
    pub(crate) addr: SocketAddr,
    pub(crate) cert: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts this binary as a peer in `mode` (`quinn-peer` or
/// `quinn-idle-peer`) on 127.0.0.1 and waits until it listens.
pub(crate) fn spawn(mode: &str) -> Result<PeerProc> {
    spawn_at(mode, &Place::loopback())
}

/// [`spawn`] at `at`, listening on its address.
pub(crate) fn spawn_at(mode: &str, at: &Place) -> Result<PeerProc> {
    let dir = tempfile::tempdir()?;
    let cert = dir.path().join("peer.der");
    let log = std::fs::File::create(dir.path().join("peer.log"))?;
    let proc = latchkey_tests::Proc::spawn_logged(
        at.command(std::env::current_exe()?)
            .arg(mode)
            .arg(&cert)
            .arg(at.ip.to_string()),
        log,
    )?;
    let line = proc.expect_line("listening")?;
    let addr = line.trim_start_matches("listening ").parse()?;
    Ok(PeerProc {
        proc,
        addr,
        cert,
        _dir: dir,
    })
}

/// Settings of both ends of the baseline: Latchkey's peers' settings.
fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(transport_config(
        Duration::from_secs(30),
        Duration::from_secs(5),
    ))
}

/// Runs the peer on `ip` until killed: writes its certificate to
/// `cert_path` and prints `listening ADDR`.
pub(crate) async fn serve(cert_path: &Path, ip: IpAddr) -> Result<()> {
    let (mut server, cert) = latchkey_tests::self_signed_server()?;
    std::fs::write(cert_path, cert)?;
    server.transport_config(transport());
    let endpoint = Endpoint::server(server, SocketAddr::new(ip, 0))?;
    println!("listening {}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(stream(send, recv));
            }
        });
    }
    Ok(())
}

/// Serves one stream as its first byte says (see the module doc).
pub(crate) async fn stream(mut send: SendStream, mut recv: RecvStream) -> Result<()> {
    let mut op = [0u8; 1];
    recv.read_exact(&mut op).await?;
    match op[0] {
        b'S' => {
            let mut got = 0u64;
            while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
                got += chunk.bytes.len() as u64;
            }
            send.write_all(&got.to_be_bytes()).await?;
        }
        b'G' => {
            let mut n = [0u8; 8];
            recv.read_exact(&mut n).await?;
            send_bytes(&mut send, u64::from_be_bytes(n)).await?;
        }
        _ => {
            let mut b = [0u8; 1];
            while recv.read_exact(&mut b).await.is_ok() {
                send.write_all(&b).await?;
            }
        }
    }
    send.finish()?;
    Ok(())
}

/// Writes `n` bytes in 1 MiB chunks without copying them.
pub(crate) async fn send_bytes(send: &mut SendStream, n: u64) -> Result<()> {
    let chunk = bytes_of(1 << 20);
    let mut left = n;
    while left > 0 {
        let take = left.min(chunk.len() as u64) as usize;
        send.write_chunk(chunk.slice(..take)).await?;
        left -= take as u64;
    }
    Ok(())
}

fn bytes_of(n: usize) -> bytes::Bytes {
    bytes::Bytes::from(vec![0x5a; n])
}

/// A client connection to the peer at `addr` whose certificate is at `cert`.
pub(crate) async fn connect(addr: SocketAddr, cert: &Path) -> Result<(Endpoint, Connection)> {
    let mut client = latchkey_tests::client_trusting(&std::fs::read(cert)?)?;
    client.transport_config(transport());
    let bind: SocketAddr = if addr.ip().is_loopback() {
        "127.0.0.1:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let mut endpoint = Endpoint::client(bind)?;
    endpoint.set_default_client_config(client);
    let conn = endpoint
        .connect(addr, "localhost")?
        .await
        .context("connecting to the quinn peer")?;
    Ok((endpoint, conn))
}

/// The idle baseline (see the module doc): accepts connections, answers
/// one byte on the first stream, and holds both until the peer goes.
pub(crate) async fn serve_idle(cert_path: &Path) -> Result<()> {
    let (mut server, cert) = latchkey_tests::self_signed_server()?;
    std::fs::write(cert_path, cert)?;
    let relay = latchkey_server::config::Config::default();
    server.transport_config(Arc::new(latchkey_server::endpoint::transport_config(
        &relay,
    )));
    let endpoint = Endpoint::server(server, "127.0.0.1:0".parse()?)?;
    println!("listening {}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            conn.set_receive_window(latchkey_server::endpoint::AUTHENTICATED_RECEIVE_WINDOW.into());
            let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                return;
            };
            let mut b = [0u8; 1];
            if recv.read_exact(&mut b).await.is_err() || send.write_all(&b).await.is_err() {
                return;
            }
            conn.closed().await;
        });
    }
    Ok(())
}

/// Connects `n` idle clients to the idle peer at `addr` (250 to a UDP
/// socket, as the fleets do), each with one stream that has moved a byte
/// each way; they stay until the returned set is dropped.
pub(crate) async fn idle_clients(
    addr: SocketAddr,
    cert: &Path,
    n: usize,
) -> Result<Vec<(Endpoint, Connection, SendStream, RecvStream)>> {
    let mut client = latchkey_tests::client_trusting(&std::fs::read(cert)?)?;
    client.transport_config(transport());
    let mut out = Vec::with_capacity(n);
    let mut endpoint = None;
    for i in 0..n {
        if i % 250 == 0 {
            let mut e = Endpoint::client("127.0.0.1:0".parse()?)?;
            e.set_default_client_config(client.clone());
            endpoint = Some(e);
        }
        let e = endpoint.clone().context("endpoint")?;
        let conn = e.connect(addr, "localhost")?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"x").await?;
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await?;
        out.push((e, conn, send, recv));
    }
    Ok(out)
}
