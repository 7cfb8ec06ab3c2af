//! Services as systemd expects (`Type=notify`): the relay and the host
//! agent say READY=1 once serving, their status, WATCHDOG=1 at half the
//! interval asked for, and STOPPING=1 when they stop. systemd is played
//! by a datagram socket named in `NOTIFY_SOCKET`.

use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use latchkey_tests::{Relay, World, WAIT};

/// A service manager's notify socket, and what the service sent to it.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path, name: &str) -> Result<Self> {
        let path = dir.join(name);
        let socket = UnixDatagram::bind(&path)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Self { socket, path })
    }

    /// The environment that asks for notifications and a 400 ms watchdog.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("NOTIFY_SOCKET".into(), self.path.display().to_string()),
            ("WATCHDOG_USEC".into(), "400000".into()),
        ]
    }

    /// Waits for a message with the line `line`; returns the message.
    fn expect(&self, line: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if message.lines().any(|l| l == line || l.starts_with(line)) {
                    return Ok(message);
                }
                seen.push(message);
            }
        }
        anyhow::bail!("no {line:?} among {seen:?}")
    }
}

#[test]
fn the_relay_says_when_it_is_ready_alive_and_stopping() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let notify = NotifySocket::bind(dir.path(), "relay.notify")?;
    let mut relay = Relay::start_with(dir.path(), notify.env())?;
    let ready = notify.expect("READY=1")?;
    assert!(
        ready.contains(&format!("STATUS=listening on {}", relay.addr)),
        "{ready}"
    );
    notify.expect("WATCHDOG=1")?;
    notify.expect("WATCHDOG=1").context("a second ping")?;
    // A graceful restart (SIGTERM, start): stopping, then ready again.
    relay.restart_graceful()?;
    notify.expect("STOPPING=1")?;
    notify.expect("READY=1")?;
    Ok(())
}

#[test]
fn the_agent_says_when_it_is_ready_online_and_stopping() -> Result<()> {
    let w = World::new()?;
    let notify = NotifySocket::bind(w.dir.path(), "agent.notify")?;
    let mut cmd = w.mypc.cmd();
    for (k, v) in notify.env() {
        cmd.env(k, v);
    }
    let mut agent = latchkey_tests::Proc::spawn_logged(
        cmd.args(["host", "run"]),
        std::fs::File::create(w.dir.path().join("agent-notify.log"))?,
    )?;
    notify.expect("READY=1")?;
    let online = notify.expect("STATUS=online through")?;
    assert!(online.contains(&w.relay.addr.to_string()), "{online}");
    notify.expect("WATCHDOG=1")?;
    agent.terminate()?;
    notify.expect("STOPPING=1")?;
    Ok(())
}
