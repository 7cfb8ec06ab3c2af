//! Sessions through the relay (issue 4, SPEC X1-X3): exec, a real PTY
//! shell, TCP forwarding, file copy, and an agent that survives a relay
//! restart. Real binaries on loopback; the TCP services are in this process.

use std::{sync::Arc, time::Instant};

use anyhow::{bail, Context, Result};
use latchkey_client::{config::Home, user::remote::Remote};
use latchkey_protocol::{
    ids::AccessCode,
    session::{ChannelKind, ShellIn, ShellOut},
};
use latchkey_tests::{Proc, World, OWNER_CODE, WAIT};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn remote(world: &World) -> Result<Remote> {
    let home = Home::locate(Some(world.alice.home.clone()));
    Ok(Remote::open(
        &home,
        &"mypc".parse()?,
        AccessCode::for_login(OWNER_CODE.into())?,
    )
    .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_returns_output_and_exit_status() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let out = w.alice.with_code(
        OWNER_CODE,
        &[
            "exec",
            "mypc",
            "--",
            "sh",
            "-c",
            "echo hi; echo oops >&2; exit 3",
        ],
    )?;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(text(&out.stderr).contains("oops"));
    // Standard input reaches the command.
    let mut child = w
        .alice
        .cmd()
        .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
        .args(["exec", "mypc", "--", "wc", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all_sync(&[b'x'; 100_000])?;
    let out = child.wait_with_output()?;
    assert_eq!(text(&out.stdout).trim(), "100000");
    // A secondary user too, and a clear error for a command that does not exist.
    let out = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "no-such-command-xyz"])?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot run 'no-such-command-xyz'"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

trait WriteAllSync {
    fn write_all_sync(self, b: &[u8]) -> std::io::Result<()>;
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, b: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(&mut self, b)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_drives_a_real_pty_and_returns_the_exit_status() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let out =
        w.alice
            .run_with_input_env(&["connect", "mypc"], "tty\nstty size\nexit 7", OWNER_CODE)?;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    assert!(stdout.contains("24 80"), "{stdout}");
    assert_eq!(out.status.code(), Some(7), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_resize_reaches_the_pty() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let remote = remote(&w).await?;
    let kind = ChannelKind::Shell {
        term: "xterm".into(),
        cols: 80,
        rows: 24,
    };
    let (mut send, mut recv, _) = remote.channel(kind).await?;
    send.write_frame(&ShellIn::Resize {
        cols: 100,
        rows: 40,
    })
    .await?;
    send.write_frame(&ShellIn::Data(b"stty size; exit 0\n".to_vec()))
        .await?;
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline.into(), recv.read_frame::<ShellOut>()).await?;
        match frame {
            Ok(Some(ShellOut::Data(b))) => seen.push_str(&text(&b)),
            Ok(Some(ShellOut::Exit(code))) => {
                assert_eq!(code, 0);
                break;
            }
            other => bail!("shell ended without exit: {other:?} after {seen:?}"),
        }
    }
    assert!(seen.contains("40 100"), "{seen}");
    Ok(())
}

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

/// Issue 17, item 8: `latchkey forward` used to print `forwarding…` for a
/// target the host does not allow, and then reset every connection.
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

#[tokio::test(flavor = "multi_thread")]
async fn cp_copies_both_ways_with_matching_checksums() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut data = vec![0u8; 3 << 20];
    StdRng::seed_from_u64(3).fill_bytes(&mut data);
    let local = w.dir.path().join("local.bin");
    std::fs::write(&local, &data)?;
    let on_host = w.dir.path().join("on-host.bin");
    let out = w.alice.with_code(
        OWNER_CODE,
        &[
            "cp",
            local.to_str().context("path")?,
            &format!("mypc:{}", on_host.display()),
        ],
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        Sha256::digest(std::fs::read(&on_host)?),
        Sha256::digest(&data)
    );
    let back = w.dir.path().join("back.bin");
    let out = w.alice.with_code(
        OWNER_CODE,
        &[
            "cp",
            &format!("mypc:{}", on_host.display()),
            back.to_str().context("path")?,
        ],
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(Sha256::digest(std::fs::read(&back)?), Sha256::digest(&data));
    // A missing file is a clear error and leaves nothing behind.
    let out = w.alice.with_code(
        OWNER_CODE,
        &[
            "cp",
            "mypc:/nonexistent/file",
            back.to_str().context("path")?,
        ],
    )?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot read /nonexistent/file"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_reconnects_after_a_relay_restart_and_a_new_session_works() -> Result<()> {
    let mut w = World::new()?;
    let mut agent = w.start_agent()?;
    w.relay.kill9();
    w.relay.restart()?;
    w.wait_online(true)?;
    assert!(agent.running());
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "back"])?;
    assert_eq!(text(&out.stdout), "back\n", "{}", text(&out.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_host_gets_a_clear_error() -> Result<()> {
    let w = World::new()?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("host 'mypc' is offline"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

/// Issue 14, M5, on the embedded store: a relay that crashes and comes
/// back costs a forward a reconnect, not a login (its resume ticket); a
/// revoke made while the relay was down keeps a user's session from
/// coming back, and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_crash_costs_a_forward_a_reconnect_but_a_revoke_meanwhile_ends_it() -> Result<()> {
    let target = latchkey_tests::hello_target().await?.to_string();
    let mut w = World::new()?;
    w.mypc.allow_forward(std::slice::from_ref(&target))?;
    let _agent = w.start_agent()?;
    let (mut alices, alice_local) = w.start_forward(&target)?;
    let bob_log = w.dir.path().join("bob-forward.log");
    let mut bobs = Proc::spawn_logged(
        w.bob.cmd().env("LATCHKEY_ACCESS_CODE", OWNER_CODE).args([
            "forward",
            "mypc",
            &format!("0:{target}"),
        ]),
        std::fs::File::create(&bob_log)?,
    )?;
    let line = bobs.expect_line("forwarding")?;
    let bob_local = line
        .strip_prefix("forwarding ")
        .and_then(|l| l.split(' ').next())
        .context("bob's forward address")?
        .to_string();
    latchkey_tests::wait_until_forwarding(&alice_local)?;
    latchkey_tests::wait_until_forwarding(&bob_local)?;
    let logins = latchkey_tests::count(&w.relay.audit_events("mypc")?, "login-ok");
    w.relay.kill9();
    // While the relay is down, the admin CLI revokes bob.
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    w.relay.restart()?;
    latchkey_tests::wait_until_forwarding(&alice_local)?;
    assert!(alices.running());
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(latchkey_tests::count(&events, "login-ok"), logins);
    assert_eq!(latchkey_tests::count(&events, "session-resume"), 1);
    let status = bobs.wait_exit()?;
    assert!(!status.success());
    let out = std::fs::read_to_string(&bob_log)?;
    assert!(out.contains("could not be resumed"), "{out}");
    assert!(out.contains("revoked"), "{out}");
    Ok(())
}
