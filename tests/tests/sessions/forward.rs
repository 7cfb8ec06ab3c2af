//! `latchkey forward` (SPEC X2, X3): 64 MiB each way intact and twenty
//! connections at once, and a target the host does not allow refused at
//! once, saying which targets it allows.

use std::{sync::Arc, time::Instant};

use anyhow::{bail, Result};
use latchkey_protocol::session::ChannelKind;
use latchkey_tests::{Proc, World, OWNER_CODE, WAIT};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::remote;

/// A TCP service on the "host side": sends `data` to whoever connects,
/// or, if the peer speaks first, answers with the SHA-256 of all it sent.
async fn bulk_service(
    data: Arc<Vec<u8>>,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let mut mode = [0u8; 1];
                if tcp.read_exact(&mut mode).await.is_err() {
                    return;
                }
                if mode[0] == b'D' {
                    let _ = tcp.write_all(&data).await;
                    let _ = tcp.shutdown().await;
                } else if mode[0] == b'U' {
                    let mut hasher = Sha256::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = tcp.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                    }
                    let _ = tcp.write_all(&hasher.finalize()).await;
                } else {
                    // Echo.
                    let _ = tcp.write_all(&mode).await;
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    Ok((addr, task))
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_moves_64_mib_each_way_intact_and_carries_20_parallel_connections() -> Result<()> {
    let w = World::new()?;
    let mut data = vec![0u8; 64 << 20];
    StdRng::seed_from_u64(64).fill_bytes(&mut data);
    let data = Arc::new(data);
    let (service, _task) = bulk_service(data.clone()).await?;
    w.mypc.allow_forward(&[service.to_string()])?;
    let _agent = w.start_agent()?;
    let (_forward, local) = w.start_forward(&service.to_string())?;

    // Host to client.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(&local).await?;
    tcp.write_all(b"D").await?;
    let mut got = Vec::with_capacity(data.len());
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut got)).await??;
    let down = started.elapsed();
    assert_eq!(got.len(), data.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&*data));

    // Client to host.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(&local).await?;
    tcp.write_all(b"U").await?;
    tcp.write_all(&data).await?;
    tcp.shutdown().await?;
    let mut digest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut digest)).await??;
    let up = started.elapsed();
    let mut expected = Sha256::new();
    expected.update(&data[..]);
    assert_eq!(digest, expected.finalize().to_vec());
    let mib = (data.len() >> 20) as f64;
    println!(
        "forward through the relay: down {:.0} MiB/s, up {:.0} MiB/s (64 MiB, debug client, release deps)",
        mib / down.as_secs_f64(),
        mib / up.as_secs_f64()
    );

    // Twenty connections at once, each echoing its own data.
    let tasks: Vec<_> = (0..20u64)
        .map(|i| {
            let local = local.clone();
            tokio::spawn(async move {
                let mut mine = vec![0u8; 256 * 1024];
                StdRng::seed_from_u64(i).fill_bytes(&mut mine);
                mine[0] = b'E';
                let tcp = TcpStream::connect(&local).await?;
                let (mut r, mut wr) = tcp.into_split();
                let payload = mine.clone();
                let writer = tokio::spawn(async move {
                    wr.write_all(&payload).await?;
                    wr.shutdown().await
                });
                let mut back = Vec::new();
                tokio::time::timeout(WAIT, r.read_to_end(&mut back)).await??;
                writer.await??;
                anyhow::ensure!(back == mine, "connection {i} got other bytes back");
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forward_target_outside_the_allow_list_is_refused() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let remote = remote(&w).await?;
    let Err(err) = remote
        .channel(ChannelKind::Forward {
            target: "127.0.0.1:9".into(),
        })
        .await
    else {
        bail!("forward outside the allow-list was accepted");
    };
    assert!(
        err.to_string().contains("not allowed on this host"),
        "{err}"
    );
    // The binary refuses such a target before it listens:
    // `forward_to_a_target_the_host_does_not_allow_ends_at_once_with_the_allowed_list`.
    Ok(())
}

/// `latchkey forward` to a target the host does not allow ends at once,
/// saying which targets it allows, instead of printing `forwarding…` and
/// then resetting every connection.
#[tokio::test(flavor = "multi_thread")]
async fn forward_to_a_target_the_host_does_not_allow_ends_at_once_with_the_allowed_list(
) -> Result<()> {
    let w = World::new()?;
    let service = std::net::TcpListener::bind("127.0.0.1:0")?;
    let allowed = service.local_addr()?.to_string();
    w.mypc
        .allow_forward(&[allowed.clone(), "127.0.0.1:22".into()])?;
    let _agent = w.start_agent()?;

    let log = w.dir.path().join("refused-forward.log");
    let started = Instant::now();
    let mut refused = Proc::spawn_logged(
        w.alice.cmd().env("LATCHKEY_ACCESS_CODE", OWNER_CODE).args([
            "forward",
            "mypc",
            "0:127.0.0.1:8080",
        ]),
        std::fs::File::create(&log)?,
    )?;
    let status = refused.wait_exit()?;
    let took = started.elapsed();
    let stderr = std::fs::read_to_string(&log)?;
    // The process has exited, so its stdout is at its end.
    let stdout: Vec<String> = refused.stdout.iter().collect();
    assert!(!status.success(), "a refused forward exited with {status}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "a refused forward took {took:?} to end"
    );
    let wanted = format!(
        "host 'mypc': forwarding to 127.0.0.1:8080 is not allowed on this host; \
         it allows: {allowed}, 127.0.0.1:22"
    );
    assert!(stderr.contains(&wanted), "{stderr}");
    assert!(
        stdout.iter().all(|l| !l.contains("forwarding")),
        "{stdout:?}"
    );

    // An allowed target forwards as before, and checking it did not
    // connect to it: the host's answer came before `forwarding` was
    // printed, so a connection would already be waiting here.
    let (_forward, local) = w.start_forward(&allowed)?;
    service.set_nonblocking(true)?;
    assert_eq!(
        service.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "checking the target connected to it"
    );
    let service = TcpListener::from_std(service)?;
    let echo = tokio::spawn(async move {
        let (mut tcp, _) = service.accept().await?;
        let (mut r, mut w) = tcp.split();
        tokio::io::copy(&mut r, &mut w).await?;
        Ok::<_, std::io::Error>(())
    });
    let mut tcp = TcpStream::connect(&local).await?;
    tcp.write_all(b"through the forward").await?;
    tcp.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut back)).await??;
    assert_eq!(back, b"through the forward");
    echo.await??;
    Ok(())
}
