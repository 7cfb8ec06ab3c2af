//! What one grant holder can hold on a host (SPEC X5, X6): at most 16
//! sessions on it, each with one end-to-end connection whose streams and
//! unread bytes the host caps, and under each session's route one pending
//! connection at a time, however many Initials he sends. However bob uses
//! what he may hold, the host stays reachable for alice.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use latchkey_tests::{count, fetch, hello_target, unlimited, wait_until, World, OWNER_CODE};

/// alice's `exec` on mypc runs and answers (`beside` says what bob is doing).
fn alices_exec_works(w: &World, beside: &str) -> Result<()> {
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "still mine"])?;
    assert!(
        out.status.success(),
        "alice's command failed {beside}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "still mine");
    Ok(())
}

/// bob holds every session he may on mypc, each with its end-to-end
/// connection up and its handshake left hanging (message 1 sent, the
/// answer never read): the next right code starts no session and counts
/// nothing, and alice's exec, forward and shell all work as usual meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_holder_holding_all_he_may_leaves_the_host_to_the_others() -> Result<()> {
    let w = World::with_env(unlimited())?;
    let target = hello_target().await?;
    w.mypc.allow_forward(&[target.to_string()])?;
    let _agent = w.start_agent()?;
    let mut held = Vec::new();
    for n in 0..latchkey_server::rules::session_cap::PER_HOST {
        let mut session = w.bob.login("mypc", OWNER_CODE).await?;
        let conn = w.bob.raw_host_connection(&mut session, "mypc").await?;
        // Message 1 sent, and nothing after: the host's answer is never
        // read, the stream never finished.
        let (mut send, recv) = conn.open_bi().await?;
        let request = latchkey_protocol::session::HandshakeRequest {
            msg1: vec![n as u8; 48],
        };
        latchkey_client::wire::write_frame(&mut send, &request).await?;
        held.push((session, conn, send, recv));
    }
    match w.bob.login("mypc", OWNER_CODE).await {
        Ok(_) => bail!("bob started a 17th session on mypc"),
        Err(e) => {
            let why = e.to_string();
            assert!(why.contains("16 sessions open on 'mypc'"), "{why}");
        }
    }
    let status = w.relay.status("mypc")?;
    assert_eq!(status["failures"], 0, "{status}");
    assert_eq!(status["locked"], false, "{status}");
    assert!(w
        .relay
        .audit_events("mypc")?
        .iter()
        .any(|e| e == "login-refused"));

    let started = Instant::now();
    alices_exec_works(&w, "beside bob's full share of sessions")?;
    let (_forward, local) = w.start_forward(&target.to_string())?;
    assert!(fetch(local).await?.contains("hello"));
    let (shell, mut stdin) = w.alice.spawn_shell("mypc")?;
    std::io::Write::write_all(&mut stdin, b"echo shell-works; exit\n")?;
    shell.expect_line("shell-works")?;
    println!(
        "alice's exec, forward and shell beside bob's {} sessions: {:?}",
        held.len(),
        started.elapsed()
    );
    // A session that ends gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match w.bob.login("mypc", OWNER_CODE).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("bob's freed place was not given back: {e}"),
        }
    }
    Ok(())
}

/// Kills the processes it holds when dropped.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// bob runs as many commands as he may, each pouring out output that his
/// client never reads: what piles up for him stays within his share of the
/// link's flow control, and alice's command goes through as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_holder_who_never_reads_leaves_the_hosts_link_to_the_others() -> Result<()> {
    let w = World::with_env(unlimited())?;
    let _agent = w.start_agent()?;
    let sessions = latchkey_server::rules::session_cap::PER_HOST as usize;
    let mut stalled = Children(Vec::new());
    for _ in 0..sessions {
        let child = w
            .bob
            .cmd()
            .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
            .args(["exec", "mypc", "--", "cat", "/dev/zero"])
            .stdin(std::process::Stdio::null())
            // Piped and never read: the client stops reading the stream.
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        stalled.0.push(child);
    }
    wait_until("bob's sessions", || {
        w.relay
            .audit_events("mypc")
            .is_ok_and(|e| count(&e, "session-start") >= sessions)
    })?;
    // Long enough for each stalled stream to fill its window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    alices_exec_works(&w, "beside bob's stalled ones")?;
    println!(
        "alice's exec beside {sessions} stalled ones of bob's: {:?}",
        started.elapsed()
    );
    drop(stalled);
    Ok(())
}

/// bob sends QUIC Initials with fresh connection ids under his own route,
/// from his own relay connection's address, and finishes none: the host
/// takes one pending connection for his session at a time and refuses the
/// rest at once, so its memory stays flat and alice's exec still works.
#[tokio::test(flavor = "multi_thread")]
async fn initials_flooded_under_ones_own_route_hold_one_pending_connection() -> Result<()> {
    use latchkey_client::net;
    use std::{net::UdpSocket, sync::Arc};
    let w = World::with_env(unlimited())?;
    let agent = w.start_agent()?;
    let pid = agent.pid();
    // bob's session on a socket the test keeps a second handle to, so its
    // datagrams come from his relay connection's address.
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let raw = socket.try_clone()?;
    let (device, peers) = net::socket::DeviceSocket::new(socket)?;
    let endpoint = net::socket::endpoint(device, None)?;
    let local = net::Local::Shared(net::DeviceEndpoint { endpoint, peers });
    let mut session = w.bob.login_from(local, "mypc", OWNER_CODE).await?;
    let (_, leg) = w.bob.handshaker(&mut session, "mypc").await?;
    let relay = match session.control.relay.conn.remote_address() {
        std::net::SocketAddr::V6(a) => a
            .ip()
            .to_ipv4_mapped()
            .map_or(a.into(), |v4| (v4, a.port()).into()),
        v4 => v4,
    };
    // 6,000 client Initials, each a new connection, as quinn builds them.
    let config = net::peer::client_config()?;
    let mut maker = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let now = Instant::now();
    let mut initials = Vec::new();
    for _ in 0..6_000 {
        let (_, mut conn) = maker.connect(
            now,
            config.clone(),
            ([127, 0, 0, 1], 9).into(),
            net::peer::PEER_NAME,
        )?;
        let mut buf = latchkey_protocol::route::header(leg).to_vec();
        let mut packet = Vec::new();
        let sent = conn.poll_transmit(now, 1, &mut packet).expect("an Initial");
        buf.extend_from_slice(&packet[..sent.size]);
        initials.push(buf);
    }
    let before = latchkey_tests::rss_kib(pid);
    let flood = std::thread::spawn(move || {
        // 2,000 a second for 3 s.
        let started = Instant::now();
        for (i, datagram) in initials.iter().enumerate() {
            while raw.send_to(datagram, relay).is_err() {
                std::thread::sleep(Duration::from_micros(200));
            }
            let due = started + Duration::from_micros(i as u64 * 500);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    alices_exec_works(&w, "while bob floods his route with Initials")?;
    flood
        .join()
        .map_err(|_| anyhow::anyhow!("the flood panicked"))?;
    let after = latchkey_tests::rss_kib(pid);
    println!("6,000 Initials under bob's route: host agent RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 32 * 1024,
        "the host agent grew from {before} KiB to {after} KiB"
    );
    alices_exec_works(&w, "after bob's flood")?;
    Ok(())
}

/// bob starts connection after connection under his route and abandons
/// each once the host has made its TLS flight (his client refuses the
/// host's certificate): the host takes a few per announcement of his
/// session and refuses the rest at once, so he cannot spend its CPU on
/// handshake after handshake.
#[tokio::test(flavor = "multi_thread")]
async fn connections_abandoned_under_ones_own_route_are_taken_a_few_times_only() -> Result<()> {
    use std::sync::Arc;
    let w = World::with_env(unlimited())?;
    let _agent = w.start_agent()?;
    let mut session = w.bob.login("mypc", OWNER_CODE).await?;
    let (_, leg) = w.bob.handshaker(&mut session, "mypc").await?;
    let relay = &session.control.relay;
    let at = relay.peers.allocate();
    relay.peers.set(at, relay.conn.remote_address(), leg)?;
    // The host's protocol, and a root that is not the host's certificate.
    let stranger = rcgen::generate_simple_self_signed(vec!["elsewhere".into()])?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(stranger.cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"latchkey-e2e/3".to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    let (mut flights, mut refused) = (0, 0);
    for _ in 0..10 {
        let connecting = relay.endpoint.connect_with(
            config.clone(),
            at,
            latchkey_client::net::peer::PEER_NAME,
        )?;
        match tokio::time::timeout(Duration::from_secs(5), connecting).await {
            Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                refused += 1
            }
            Ok(Err(_)) => flights += 1,
            other => bail!("unexpected: {other:?}"),
        }
    }
    println!("10 abandoned connections: {flights} taken by the host, {refused} refused");
    assert!(flights <= 3, "the host took {flights}");
    assert!(refused >= 7, "refused {refused}");
    alices_exec_works(&w, "after bob's abandoned connections")?;
    Ok(())
}
