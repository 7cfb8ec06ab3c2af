//! The ends of a bulk transfer as processes of their own, so that a figure
//! puts them where the client and the host are (on loopback, or in their
//! network namespaces: see `netns`): `latchkey-bench tcp-ends` holds TCP
//! targets and TCP clients, `latchkey-bench quinn-client ADDR CERT` is the
//! client end of the direct quinn baseline. (The bench cannot move its own
//! sockets into a namespace: that takes `setns`, and unsafe code is
//! forbidden here.) Both read one command per line
//! on standard input and answer one line on standard output:
//!
//! - `targets IP` (tcp-ends): listens on IP with a source (sends
//!   [`SIZE`] bytes to every connection), a sink and an echo, and answers
//!   `targets SOURCE SINK ECHO`; from then on the sink prints `sunk N`
//!   whenever a connection has brought it [`SIZE`] bytes;
//! - `pull ADDR` (tcp-ends), `pull` (quinn-client): pulls [`SIZE`] bytes
//!   from the source at ADDR (or the peer); answers `mb_s X`;
//! - `push ADDR` (tcp-ends): writes [`SIZE`] bytes to ADDR and answers
//!   `pushed` (the bench times the push to the sink's `sunk`); `push`
//!   (quinn-client): until the peer has them all, answers `mb_s X`;
//! - `wait ADDR` (tcp-ends): answers `ready` once a TCP connection to
//!   ADDR succeeds.
//!
//! A failed command answers `error WHY`.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{ChildStdin, Command},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use latchkey_tests::{Proc, WAIT};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::{
    netns::Place,
    peer,
    transfer::{quinn_pull, quinn_push, targets, tcp_pull, SIZE},
};

/// How long one transfer of [`SIZE`] bytes may take.
pub(crate) const TRANSFER: Duration = Duration::from_secs(300);

/// Answers each command on standard input with `answer`.
async fn serve<F, Fut>(mut answer: F) -> Result<()>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words = line.split_whitespace().map(String::from).collect();
        let reply = answer(words)
            .await
            .unwrap_or_else(|e| format!("error {e:#}").replace('\n', " "));
        println!("{reply}");
    }
    Ok(())
}

/// `latchkey-bench tcp-ends` (see the module doc).
pub(crate) async fn serve_tcp() -> Result<()> {
    serve(|words| async move {
        match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["targets", ip] => {
                let mut t = targets(ip.parse()?).await?;
                tokio::spawn(async move {
                    while let Some(n) = t.sunk.recv().await {
                        println!("sunk {n}");
                    }
                });
                Ok(format!("targets {} {} {}", t.source, t.sink, t.echo))
            }
            ["pull", addr] => Ok(format!("mb_s {}", tcp_pull(addr).await?)),
            ["push", addr] => {
                let chunk = vec![0x5au8; 1 << 20];
                let mut tcp = TcpStream::connect(addr).await?;
                for _ in 0..SIZE >> 20 {
                    tcp.write_all(&chunk).await?;
                }
                tcp.shutdown().await?;
                Ok("pushed".into())
            }
            ["wait", addr] => {
                let deadline = Instant::now() + WAIT;
                while let Err(e) = TcpStream::connect(addr).await {
                    if Instant::now() > deadline {
                        bail!("{addr} never answered: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok("ready".into())
            }
            _ => bail!("unknown command {words:?}"),
        }
    })
    .await
}

/// `latchkey-bench quinn-client ADDR CERT` (see the module doc): prints
/// `connected` once connected to the peer at ADDR.
pub(crate) async fn serve_quinn(addr: SocketAddr, cert: &Path) -> Result<()> {
    let (_endpoint, conn) = peer::connect(addr, cert).await?;
    println!("connected");
    let conn = &conn;
    serve(|words| async move {
        match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["pull"] => Ok(format!("mb_s {}", quinn_pull(conn).await?)),
            ["push"] => Ok(format!("mb_s {}", quinn_push(conn).await?)),
            _ => bail!("unknown command {words:?}"),
        }
    })
    .await
}

/// One of these processes, started at a place, and its standard input.
pub(crate) struct Ends {
    pub(crate) proc: Proc,
    stdin: ChildStdin,
}

impl Ends {
    fn spawn(at: &Place, args: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(args);
        let (proc, stdin) = Proc::spawn_interactive(&mut at.through(&cmd))?;
        Ok(Self { proc, stdin })
    }

    /// `tcp-ends` at `at`.
    pub(crate) fn tcp(at: &Place) -> Result<Self> {
        Self::spawn(at, &["tcp-ends"])
    }

    /// `quinn-client` at `at`, connected to the peer at `addr` whose
    /// certificate is at `cert`.
    pub(crate) fn quinn(at: &Place, addr: SocketAddr, cert: &Path) -> Result<Self> {
        let cert = cert.to_str().context("certificate path")?;
        let ends = Self::spawn(at, &["quinn-client", &addr.to_string(), cert])?;
        ends.expect("connected", WAIT)?;
        Ok(ends)
    }

    /// Sends `command` and waits up to `within` for the answer starting
    /// with `answer`; returns the rest of that line.
    pub(crate) fn ask(&mut self, command: &str, answer: &str, within: Duration) -> Result<String> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        self.expect(answer, within)
            .with_context(|| format!("{command:?}"))
    }

    /// Waits up to `within` for a line starting with `word`; returns the
    /// rest of it.
    pub(crate) fn expect(&self, word: &str, within: Duration) -> Result<String> {
        let line = self
            .proc
            .stdout
            .recv_timeout(within)
            .map_err(|_| anyhow!("no {word:?} line within {within:?}"))?;
        match line.split_once(' ').unwrap_or((&line, "")) {
            (w, rest) if w == word => Ok(rest.to_string()),
            ("error", why) => bail!("{why}"),
            _ => bail!("expected {word:?}, got {line:?}"),
        }
    }

    /// Sends `command` and parses the `mb_s X` it answers.
    pub(crate) fn mb_s(&mut self, command: &str) -> Result<f64> {
        Ok(self.ask(command, "mb_s", TRANSFER)?.parse()?)
    }
}

/// The ends of the TCP paths: targets at the host, clients at the client.
pub(crate) struct TcpEnds {
    pub(crate) client: Ends,
    pub(crate) host: Ends,
    /// The targets' addresses, as anyone reaches them.
    pub(crate) source: String,
    pub(crate) sink: String,
}

impl TcpEnds {
    /// Starts both, the targets on the host's address.
    pub(crate) fn start(client: &Place, host: &Place) -> Result<Self> {
        let mut host_ends = Ends::tcp(host)?;
        let line = host_ends.ask(&format!("targets {}", host.ip), "targets", WAIT)?;
        let mut addrs = line.split_whitespace().map(String::from);
        let (Some(source), Some(sink)) = (addrs.next(), addrs.next()) else {
            bail!("unexpected targets {line:?}");
        };
        Ok(Self {
            client: Ends::tcp(client)?,
            host: host_ends,
            source,
            sink,
        })
    }

    /// MB/s pulling [`SIZE`] bytes from `addr` (a way to the source).
    pub(crate) fn pull(&mut self, addr: &str) -> Result<f64> {
        self.client.mb_s(&format!("pull {addr}"))
    }

    /// MB/s pushing [`SIZE`] bytes into `addr` (a way to the sink), timed
    /// until the sink has them all.
    pub(crate) fn push(&mut self, addr: &str) -> Result<f64> {
        let t = Instant::now();
        self.client
            .ask(&format!("push {addr}"), "pushed", TRANSFER)?;
        let got: u64 = self.host.expect("sunk", TRANSFER)?.parse()?;
        anyhow::ensure!(got == SIZE, "the sink got {got} bytes");
        Ok(SIZE as f64 / 1e6 / t.elapsed().as_secs_f64())
    }

    /// Waits until a TCP connection from the client to `ip`:`port` works.
    pub(crate) fn wait(&mut self, ip: IpAddr, port: u16) -> Result<()> {
        let addr = SocketAddr::new(ip, port);
        self.client
            .ask(
                &format!("wait {addr}"),
                "ready",
                WAIT + Duration::from_secs(5),
            )
            .map(drop)
    }
}
