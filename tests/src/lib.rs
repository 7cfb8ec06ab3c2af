//! Test harness: starts the built `latchkey-relay` and `latchkey` binaries
//! on loopback with temporary directories, and cleans them up on drop.
//! Every wait has a deadline.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use latchkey_client::{
    net,
    user::e2e::{Epoch, Handshaker},
    wire::SealedSend,
};
use latchkey_protocol::{
    frame::{LoginOutcome, RelayToClient},
    handshake::{Initiator, InitiatorReply, Keypair},
    ids::{AccessCode, HostName, RelayPin, UserName},
    record::Opener,
    session::{ChannelKind, ChannelRequest},
};
pub use tempfile::TempDir;

pub mod smtp;
use toml as toml_edit_free;

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// The code the owner sets in [`World`].
pub const OWNER_CODE: &str = "owner code 1";

/// Path of a binary built by this workspace (`target/<profile>/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, the bench from target/<profile>/.
    let deps = exe.parent().expect("executable dir");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("target dir")
    } else {
        deps
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Polls `cond` until it holds or `WAIT` passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {what}")
}

/// A child process that is killed when dropped.
pub struct Proc {
    child: Child,
    /// Lines the process printed on stdout, as they come.
    pub stdout: mpsc::Receiver<String>,
}

/// When set, the directory where spawned relays, agents and clients write
/// their logs (standard error), one file each, instead of sharing the
/// caller's: `latchkey-bench` sets it so they do not interleave with its
/// figures.
pub const LOG_DIR_VAR: &str = "LATCHKEY_TEST_LOG_DIR";

/// A fresh log file under [`LOG_DIR_VAR`], if it is set.
fn child_log(cmd: &Command) -> Result<Option<std::fs::File>> {
    let Some(dir) = std::env::var_os(LOG_DIR_VAR) else {
        return Ok(None);
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let program = Path::new(cmd.get_program())
        .file_name()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = Path::new(&dir).join(format!("{n:04}-{program}.log"));
    Ok(Some(std::fs::File::create(path)?))
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Result<Self> {
        match child_log(cmd)? {
            Some(log) => Self::spawn_with(cmd, Stdio::from(log)),
            None => Self::spawn_with(cmd, Stdio::inherit()),
        }
    }

    /// Spawns with stderr going to `log`.
    pub fn spawn_logged(cmd: &mut Command, log: std::fs::File) -> Result<Self> {
        Self::spawn_with(cmd, Stdio::from(log))
    }

    fn spawn_with(cmd: &mut Command, stderr: Stdio) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning")?;
        let rx = lines(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        Ok(Self { child, stdout: rx })
    }

    /// Spawns with standard input kept open for the test to write.
    pub fn spawn_interactive(cmd: &mut Command) -> Result<(Self, std::process::ChildStdin)> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let rx = lines(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        Ok((Self { child, stdout: rx }, stdin))
    }

    /// Waits for a line of output containing `needle`.
    pub fn expect_line(&self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .with_context(|| format!("no output line with {needle:?}"))?;
            if line.contains(needle) {
                return Ok(line);
            }
        }
    }

    /// Waits for the process to exit; returns its status.
    pub fn wait_exit(&mut self) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("process did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL and reaps.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!("process ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A relay process with its data directory.
pub struct Relay {
    /// The process (None while stopped).
    pub proc: Option<Proc>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Extra environment for every relay command.
    pub env: Vec<(String, String)>,
}

impl Relay {
    /// Starts a relay on 127.0.0.1 (port 0) that accepts the fast test
    /// key-stretching profile.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, Vec::new())
    }

    /// Starts a relay with extra `LATCHKEY_RELAY_*` settings.
    pub fn start_with(dir: &Path, env: Vec<(String, String)>) -> Result<Self> {
        Self::start_on(dir, "127.0.0.1:0".parse()?, env)
    }

    /// Starts a relay listening on `listen` (port 0 picks one).
    pub fn start_on(
        dir: &Path,
        listen: SocketAddr,
        mut env: Vec<(String, String)>,
    ) -> Result<Self> {
        env.push(("LATCHKEY_RELAY_ALLOW_INSECURE_KSF".into(), "true".into()));
        let mut relay = Self {
            proc: None,
            addr: listen,
            data_dir: dir.join("relay"),
            env,
        };
        relay.launch()?;
        Ok(relay)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(bin("latchkey-relay"));
        cmd.arg("--data-dir").arg(&self.data_dir);
        cmd.env("LATCHKEY_LOG", "info,quinn=warn");
        // Tests run many relays at once: no console unless a test asks.
        cmd.env("LATCHKEY_RELAY_ADMIN_LISTEN", "off");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn launch(&mut self) -> Result<()> {
        let proc = Proc::spawn(
            self.command()
                .args(["serve", "--listen", &self.addr.to_string()]),
        )?;
        let line = proc
            .stdout
            .recv_timeout(WAIT)
            .context("relay did not start")?;
        let addr = line
            .rsplit(' ')
            .next()
            .ok_or_else(|| anyhow!("unexpected relay output {line:?}"))?;
        self.addr = addr
            .parse()
            .with_context(|| format!("relay said {line:?}"))?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Starts another relay of this relay's cluster, as docs/relay.md tells
    /// an admin to: its own data directory `data_dir` with this relay's
    /// identity copied in (`relay.key`, `tls.crt`, `tls.key`), the same
    /// settings and so the same store, on another port of 127.0.0.1.
    pub fn join(&self, data_dir: PathBuf) -> Result<Relay> {
        std::fs::create_dir_all(&data_dir)?;
        for file in ["relay.key", "tls.crt", "tls.key"] {
            std::fs::copy(self.data_dir.join(file), data_dir.join(file))
                .with_context(|| format!("copying {file}"))?;
        }
        let mut relay = Relay {
            proc: None,
            addr: "127.0.0.1:0".parse()?,
            data_dir,
            env: self.env.clone(),
        };
        relay.launch()?;
        Ok(relay)
    }

    /// Kills the relay with SIGKILL (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts the relay again on the same address.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.launch()
    }

    /// Stops the relay with SIGTERM (an upgrade) and starts it again on the
    /// same address.
    pub fn restart_graceful(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.terminate()?;
        }
        self.launch()
    }

    /// Runs `latchkey-relay admin ARGS`; fails unless it succeeds.
    pub fn admin(&self, args: &[&str]) -> Result<String> {
        let out = self.admin_output(args)?;
        if !out.status.success() {
            bail!(
                "admin {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs `latchkey-relay admin ARGS` and returns whatever happened.
    pub fn admin_output(&self, args: &[&str]) -> Result<Output> {
        Ok(self.command().arg("admin").args(args).output()?)
    }

    /// `admin ARGS --json`, parsed.
    pub fn admin_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("--json");
        Ok(serde_json::from_str(&self.admin(&all)?)?)
    }

    /// A one-time invite for a new user.
    pub fn invite_user(&self, name: &str) -> Result<String> {
        last_line(&self.admin(&["invite-user", name])?)
    }

    /// A one-time invite for a new host owned by `owner`.
    pub fn invite_host(&self, name: &str, owner: &str) -> Result<String> {
        last_line(&self.admin(&["invite-host", name, "--owner", owner])?)
    }

    /// The pin clients check, from `latchkey-relay info`.
    pub fn pin(&self) -> Result<RelayPin> {
        let out = self.command().arg("info").output()?;
        let text = String::from_utf8(out.stdout)?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("pin:"))
            .ok_or_else(|| anyhow!("no pin in {text:?}"))?;
        Ok(RelayPin::from_text(line.trim())?)
    }

    /// `admin status HOST --json`.
    pub fn status(&self, host: &str) -> Result<serde_json::Value> {
        self.admin_json(&["status", host])
    }

    /// Events of the audit log for `host`, oldest first.
    pub fn audit_events(&self, host: &str) -> Result<Vec<String>> {
        let rows = self.admin_json(&["audit", "--host", host, "--limit", "100000"])?;
        Ok(rows
            .as_array()
            .ok_or_else(|| anyhow!("audit is not a list"))?
            .iter()
            .filter_map(|r| r["event"].as_str().map(String::from))
            .collect())
    }
}

/// Hands a child's output over a channel, line by line, from a thread.
fn lines(out: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs `cmd` with one line of `input` on its standard input.
fn feed(cmd: &mut Command, input: &str) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(format!("{input}\n").as_bytes())?;
    Ok(child.wait_with_output()?)
}

fn last_line(s: &str) -> Result<String> {
    s.lines()
        .last()
        .map(|l| l.trim().to_string())
        .ok_or_else(|| anyhow!("no output"))
}

/// A device's home directory, for running `latchkey` as it.
pub struct Device {
    /// The home directory.
    pub home: PathBuf,
}

impl Device {
    /// A `latchkey` command for this device.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(bin("latchkey"));
        cmd.arg("--home").arg(&self.home);
        cmd.env("LATCHKEY_LOG", "info,quinn=warn");
        cmd.env_remove("LATCHKEY_ACCESS_CODE");
        cmd
    }

    /// Runs `latchkey ARGS`; fails unless it succeeds.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd().args(args).output()?;
        if !out.status.success() {
            bail!(
                "latchkey {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs `latchkey ARGS` with `input` on standard input.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Result<Output> {
        feed(self.cmd().args(args), input)
    }

    /// Runs `latchkey ARGS` with `input` on stdin and the code in the environment.
    pub fn run_with_input_env(&self, args: &[&str], input: &str, code: &str) -> Result<Output> {
        feed(
            self.cmd().env("LATCHKEY_ACCESS_CODE", code).args(args),
            input,
        )
    }

    /// Sets a code on this host (fast test profile); fails unless accepted.
    pub fn set_code(&self, code: &str, user: Option<&str>) -> Result<()> {
        let mut args = match user {
            None => vec!["host", "set-code"],
            Some(u) => vec!["host", "reset-code", "--user", u],
        };
        args.extend(["--code-stdin", "--insecure-fast-ksf"]);
        let out = self.run_with_input(&args, code)?;
        if !out.status.success() {
            bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Enrolls this device as a host with `token`, its sessions running as
    /// the account the tests run as (root in CI, which must be chosen
    /// explicitly).
    pub fn enroll_host(&self, token: &str) -> Result<String> {
        self.run(&[
            "host",
            "enroll",
            token,
            "--session-user",
            &current_account()?,
        ])
    }

    /// Sets the TCP targets this host lets `latchkey forward` reach.
    pub fn allow_forward(&self, targets: &[String]) -> Result<()> {
        self.set_host_list("forward_allow", targets)
    }

    /// Sets the command an in-session reboot runs (tests: one that just
    /// succeeds, so the agent exits and the test restarts it).
    pub fn set_reboot_command(&self, words: &[&str]) -> Result<()> {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        self.set_host_list("reboot_command", &words)
    }

    /// Sets the relays this device dials (user or host): `relays[0]`
    /// first, then the others of the cluster.
    pub fn set_relays(&self, relays: &[String]) -> Result<()> {
        let file = if self.home.join("host.toml").exists() {
            "host.toml"
        } else {
            "user.toml"
        };
        let (first, others) = relays.split_first().context("no relay")?;
        self.edit_config(file, |cfg| {
            cfg.insert("relay".into(), toml_edit_free::Value::String(first.clone()));
            let others = others.iter().cloned().map(toml_edit_free::Value::String);
            cfg.insert(
                "other_relays".into(),
                toml_edit_free::Value::Array(others.collect()),
            );
        })
    }

    fn edit_config(&self, file: &str, edit: impl FnOnce(&mut toml_edit_free::Table)) -> Result<()> {
        let path = self.home.join(file);
        let mut cfg: toml_edit_free::Table = std::fs::read_to_string(&path)?.parse()?;
        edit(&mut cfg);
        std::fs::write(&path, cfg.to_string())?;
        Ok(())
    }

    fn set_host_list(&self, key: &str, values: &[String]) -> Result<()> {
        let list = values.iter().cloned().map(toml_edit_free::Value::String);
        self.edit_config("host.toml", |cfg| {
            cfg.insert(key.into(), toml_edit_free::Value::Array(list.collect()));
        })
    }

    /// Starts `latchkey host run` on this device.
    pub fn start_agent(&self) -> Result<Proc> {
        Proc::spawn(self.cmd().args(["host", "run"]))
    }

    /// Runs `latchkey ARGS` with the access code in the environment.
    pub fn with_code(&self, code: &str, args: &[&str]) -> Result<Output> {
        Ok(self
            .cmd()
            .env("LATCHKEY_ACCESS_CODE", code)
            .args(args)
            .output()?)
    }

    /// Starts `latchkey ARGS` in the background with the access code set.
    pub fn spawn_with_code(&self, code: &str, args: &[&str]) -> Result<Proc> {
        Proc::spawn(self.cmd().env("LATCHKEY_ACCESS_CODE", code).args(args))
    }

    /// Logs in in-process (the library the binary uses), so tests can run
    /// many attempts at once. The future owns what it needs.
    pub fn login(
        &self,
        host: &str,
        code: &str,
    ) -> impl std::future::Future<Output = Result<net::Session, net::NetError>> + Send + 'static
    {
        self.login_from(net::Local::Any, host, code)
    }

    /// [`Device::login`] from a chosen local socket (another loopback
    /// address plays another source).
    pub fn login_from(
        &self,
        local: net::Local,
        host: &str,
        code: &str,
    ) -> impl std::future::Future<Output = Result<net::Session, net::NetError>> + Send + 'static
    {
        let home = latchkey_client::config::Home::locate(Some(self.home.clone()));
        let (host, code) = (host.to_string(), code.to_string());
        async move {
            let failed = |e: String| net::NetError::Local(e);
            let (cfg, key) = home.user().map_err(|e| failed(e.to_string()))?;
            let pin = cfg.pin().map_err(|e| failed(e.to_string()))?;
            let host: HostName = host.parse().map_err(|_| failed("bad host".into()))?;
            let code = AccessCode::for_login(code).map_err(|e| failed(e.to_string()))?;
            net::login_from(&local, &cfg.relays(), &pin, &key, &cfg.user, &host, code).await
        }
    }

    /// A function that logs in again each time it is called (for benchmarks).
    pub fn login_factory(
        &self,
    ) -> impl Fn() -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<net::Session, net::NetError>> + Send>,
    > + Send
           + 'static {
        let home = self.home.clone();
        move || {
            let d = Device { home: home.clone() };
            Box::pin(d.login("mypc", OWNER_CODE))
        }
    }

    /// The relay address, pin and device key this device logs in with.
    pub fn identity(&self) -> Result<(String, RelayPin, Keypair)> {
        let (cfg, key) = latchkey_client::config::Home::locate(Some(self.home.clone())).user()?;
        let pin = cfg.pin()?;
        Ok((cfg.relay, pin, key))
    }

    /// A logged-in session's end-to-end keys, for tests that open channels
    /// by hand ([`open_channel`]): reads the relay's `SessionReady` and runs
    /// the handshake with the host, as `latchkey` does (without pinning).
    pub async fn session_keys(&self, session: &mut net::Session, host: &str) -> Result<Epoch> {
        let handshaker = self.handshaker(session, host).await?;
        Ok(handshaker.run(&session.control.relay.conn).await?)
    }

    /// What [`Device::session_keys`] runs the handshake with (it can run it
    /// again, as after the host came back).
    pub async fn handshaker(&self, session: &mut net::Session, host: &str) -> Result<Handshaker> {
        let (_, _, device) = self.identity()?;
        let ready: Option<RelayToClient> =
            latchkey_client::wire::read_frame(&mut session.control.recv).await?;
        let Some(RelayToClient::SessionReady { host_key, record }) = ready else {
            bail!("no session: {ready:?}");
        };
        Ok(Handshaker::new(
            host.parse()?,
            device,
            host_key,
            &session.export_key,
            session.id,
            record,
        ))
    }

    /// Starts a login by hand: connects and sends message 1, so a test can
    /// act between the steps the relay takes.
    pub async fn send_msg1(&self, host: &str, code: &str) -> Result<RawLogin> {
        let (relay, _, _) = self.identity()?;
        self.send_msg1_at(&relay, host, code).await
    }

    /// [`Device::send_msg1`] to the relay at `relay`.
    pub async fn send_msg1_at(&self, relay: &str, host: &str, code: &str) -> Result<RawLogin> {
        let (_, pin, key) = self.identity()?;
        let rc = net::connect(relay, &pin).await?;
        let binding = net::channel_binding(&rc.conn)?;
        let (mut send, recv) = rc.conn.open_bi().await?;
        let code = AccessCode::for_login(code.into())?;
        let (init, msg1) = Initiator::start_login(
            &mut rand::rngs::OsRng,
            &key,
            &pin.noise_key,
            &binding,
            self.user()?,
            host.parse()?,
            &code,
        )?;
        latchkey_client::wire::write_message(&mut send, &msg1).await?;
        Ok(RawLogin {
            relay: rc,
            send,
            recv,
            init,
            code,
        })
    }

    /// `latchkey connect HOST` with the owner's code, typed into by the test.
    pub fn spawn_shell(&self, host: &str) -> Result<(Proc, std::process::ChildStdin)> {
        Proc::spawn_interactive(
            self.cmd()
                .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
                .args(["connect", host]),
        )
    }

    /// The user name this device enrolled as.
    pub fn user(&self) -> Result<UserName> {
        let home = latchkey_client::config::Home::locate(Some(self.home.clone()));
        Ok(home.user()?.0.user)
    }
}

/// How many of `events` (audit event names) are `name`.
pub fn count(events: &[String], name: &str) -> usize {
    events.iter().filter(|e| *e == name).count()
}

/// A TCP service on the test's side of a forward: it greets every
/// connection with "hello from the host side" and closes it.
pub async fn hello_target() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ =
                    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"hello from the host side\n")
                        .await;
            });
        }
    });
    Ok(target)
}

/// Connects to `local` (a forward's listening address) and reads all it says.
pub async fn fetch(local: String) -> Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(&local).await?;
    let mut got = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut got).await?;
    Ok(got)
}

/// Waits until a connection through the forward at `local` reaches
/// [`hello_target`] again.
pub fn wait_until_forwarding(local: &str) -> Result<()> {
    wait_until("the forward to work again", || {
        let local = local.to_string();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .ok()
                .and_then(|rt| rt.block_on(fetch(local)).ok())
                .is_some_and(|got| got.contains("hello"))
        })
        .join()
        .unwrap_or(false)
    })
}

/// Opens a channel by hand on a session whose keys are `epoch` ([`Device::session_keys`]):
/// sends the request and the sealed kind, and returns the streams without
/// waiting for the host's answer.
pub async fn open_channel(
    conn: &quinn::Connection,
    epoch: &Epoch,
    kind: &ChannelKind,
) -> Result<(SealedSend, quinn::RecvStream, Opener)> {
    let (number, sealer, opener) = epoch.next_channel();
    let (mut send, recv) = conn.open_bi().await?;
    let request = ChannelRequest::Channel {
        number,
        bulk: false,
    };
    latchkey_client::wire::write_frame(&mut send, &request).await?;
    let mut send = SealedSend::new(send, sealer);
    send.write_frame_padded(kind).await?;
    Ok((send, recv, opener))
}

/// A login in progress, driven step by step ([`Device::send_msg1`]).
pub struct RawLogin {
    /// The connection.
    pub relay: net::RelayConn,
    /// The handshake stream, our side.
    pub send: quinn::SendStream,
    /// The handshake stream, the relay's side.
    pub recv: quinn::RecvStream,
    /// Reads message 2.
    pub init: Initiator,
    /// The code it was started with.
    pub code: AccessCode,
}

impl RawLogin {
    /// Reads message 2.
    pub async fn read_msg2(&mut self) -> Result<Vec<u8>> {
        Ok(latchkey_client::wire::read_message(&mut self.recv).await?)
    }

    /// Finishes a login whose code checks out against `msg2`: sends KE3 and
    /// returns the relay's verdict, the connection and its control stream.
    pub async fn finish(self, msg2: &[u8]) -> Result<(LoginOutcome, net::Control)> {
        let Self {
            relay,
            mut send,
            mut recv,
            init,
            code,
        } = self;
        let reply = init.read_msg2(&mut rand::rngs::OsRng, msg2, Some(&code))?;
        let InitiatorReply::SendKe3 { msg3, awaiting } = reply else {
            bail!("the code did not check out");
        };
        latchkey_client::wire::write_message(&mut send, &msg3).await?;
        let msg4 = latchkey_client::wire::read_message(&mut recv).await?;
        let (outcome, _export_key) = awaiting.read_outcome(&msg4)?;
        Ok((outcome, net::Control { relay, send, recv }))
    }
}

/// The account the tests run as (`id -un`).
pub fn current_account() -> Result<String> {
    let out = Command::new("id").arg("-un").output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Resident memory of a process in KiB, from /proc (0 if unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are the 12th and 13th, in clock ticks.
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

/// A quinn server configuration with a fresh self-signed certificate for
/// `localhost`, and that certificate (DER) for clients to trust: plain
/// QUIC without the relay, for the wire tests and the bench's direct
/// baseline.
pub fn self_signed_server() -> Result<(quinn::ServerConfig, Vec<u8>)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let der = cert.cert.der().to_vec();
    let config = quinn::ServerConfig::with_single_cert(vec![cert.cert.der().clone()], key.into())?;
    Ok((config, der))
}

/// A quinn client configuration that trusts only `cert` (DER), as
/// `localhost`.
pub fn client_trusting(cert: &[u8]) -> Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(cert.to_vec()))?;
    Ok(quinn::ClientConfig::with_root_certificates(
        std::sync::Arc::new(roots),
    )?)
}

/// Relay settings that lift the per-source rate limit, for tests and
/// benchmarks that open many connections from 127.0.0.1 on purpose.
pub fn unlimited() -> Vec<(String, String)> {
    vec![
        ("LATCHKEY_RELAY_PER_SOURCE_BURST".into(), "1000000".into()),
        ("LATCHKEY_RELAY_PER_SOURCE_PER_SEC".into(), "1000000".into()),
    ]
}

/// A relay with an owner (alice), a secondary user (bob, granted), an
/// outsider (carol, enrolled, no grant) and a host (mypc) with a code set.
pub struct World {
    /// Temporary directory holding everything.
    pub dir: TempDir,
    /// The relay.
    pub relay: Relay,
    /// The owner's device.
    pub alice: Device,
    /// The secondary user's device.
    pub bob: Device,
    /// An enrolled user without a grant.
    pub carol: Device,
    /// The host.
    pub mypc: Device,
}

impl World {
    /// Starts the host agent (its log goes to `mypc-agent.log` in the
    /// world's directory) and waits until the relay sees it online.
    pub fn start_agent(&self) -> Result<Proc> {
        let log = std::fs::File::create(self.dir.path().join("mypc-agent.log"))?;
        let agent = Proc::spawn_logged(self.mypc.cmd().args(["host", "run"]), log)?;
        self.wait_online(true)?;
        Ok(agent)
    }

    /// Starts `latchkey forward mypc 0:TARGET` as alice; returns the process
    /// and the local address it listens on.
    pub fn start_forward(&self, target: &str) -> Result<(Proc, String)> {
        let forward = self
            .alice
            .spawn_with_code(OWNER_CODE, &["forward", "mypc", &format!("0:{target}")])?;
        let line = forward.expect_line("forwarding")?;
        let local = line
            .strip_prefix("forwarding ")
            .and_then(|l| l.split(' ').next())
            .ok_or_else(|| anyhow!("unexpected forward output {line:?}"))?
            .to_string();
        Ok((forward, local))
    }

    /// Raises mypc's lockout threshold to the highest allowed (1,000), for
    /// tests that make many attempts without meaning to lock the host.
    pub fn without_lockout(&self) -> Result<()> {
        let highest = latchkey_server::rules::lockout::THRESHOLDS
            .end()
            .to_string();
        self.relay
            .admin(&["policy", "mypc", "--lockout-threshold", &highest])
            .map(drop)
    }

    /// Enrols one more user, `name`, and grants them mypc (they inherit
    /// the owner's code, as bob does).
    pub fn granted_user(&self, name: &str) -> Result<Device> {
        let device = Device {
            home: self.dir.path().join(name),
        };
        device.run(&["enroll", &self.relay.invite_user(name)?])?;
        self.relay.admin(&["grant", "mypc", name])?;
        Ok(device)
    }

    /// Bob runs `sleep SECS` on mypc; returns once the relay has started
    /// his session.
    pub fn bob_sleeping_on_mypc(&self, secs: u32) -> Result<Proc> {
        let started = |w: &Self| -> Result<usize> {
            Ok(count(&w.relay.audit_events("mypc")?, "session-start"))
        };
        let before = started(self)?;
        let command = self.bob.spawn_with_code(
            OWNER_CODE,
            &["exec", "mypc", "--", "sleep", &secs.to_string()],
        )?;
        wait_until("bob's session", || started(self).is_ok_and(|n| n > before))?;
        Ok(command)
    }

    /// Bob fails three times on mypc, and then every one of `users` is
    /// refused as locked out, even with the right code (SPEC S6).
    pub async fn bob_locks_mypc_for(&self, users: &[&Device]) -> Result<()> {
        for _ in 0..3 {
            match self.bob.login("mypc", "forgotten").await {
                Err(net::NetError::WrongCode(_)) => {}
                Err(e) => bail!("a wrong code was answered with {e}"),
                Ok(_) => bail!("a wrong code let bob in"),
            }
        }
        for user in users {
            match user.login("mypc", OWNER_CODE).await {
                Err(net::NetError::Locked(_)) => {}
                Err(e) => bail!("a locked host refused a user with {e}"),
                Ok(_) => bail!("a locked host let a user in"),
            }
        }
        Ok(())
    }

    /// Waits until the relay reports the host online (or offline).
    pub fn wait_online(&self, online: bool) -> Result<()> {
        wait_until("host presence", || {
            self.relay
                .status("mypc")
                .map(|s| s["online"] == online)
                .unwrap_or(false)
        })
    }

    /// Builds the world through the real binaries.
    pub fn new() -> Result<Self> {
        Self::with_env(Vec::new())
    }

    /// Builds the world with extra relay settings.
    pub fn with_env(env: Vec<(String, String)>) -> Result<Self> {
        Self::listening_on("127.0.0.1:0".parse()?, env)
    }

    /// Builds the world with its relay listening on `listen`.
    pub fn listening_on(listen: SocketAddr, env: Vec<(String, String)>) -> Result<Self> {
        let w = Self::ungranted(listen, env)?;
        w.relay.admin(&["grant", "mypc", "bob"])?;
        Ok(w)
    }

    /// Builds the world with extra relay settings, but bob has no grant on
    /// mypc yet (a test grants it, from the admin console say).
    pub fn without_grant(env: Vec<(String, String)>) -> Result<Self> {
        Self::ungranted("127.0.0.1:0".parse()?, env)
    }

    fn ungranted(listen: SocketAddr, env: Vec<(String, String)>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let relay = Relay::start_on(dir.path(), listen, env)?;
        let device = |name: &str| Device {
            home: dir.path().join(name),
        };
        let (alice, bob, carol, mypc) = (
            device("alice"),
            device("bob"),
            device("carol"),
            device("mypc"),
        );
        for (d, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
            d.run(&["enroll", &relay.invite_user(name)?])?;
        }
        mypc.enroll_host(&relay.invite_host("mypc", "alice")?)?;
        mypc.set_code(OWNER_CODE, None)?;
        Ok(Self {
            dir,
            relay,
            alice,
            bob,
            carol,
            mypc,
        })
    }
}
