//! The processes a test starts: the built binaries found, spawned with
//! their standard output read line by line (their standard error to a log
//! file of their own when [`LOG_DIR_VAR`] is set), killed when dropped, and
//! what /proc says about them. Every wait has a deadline ([`WAIT`]).

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(30);

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

/// `cmd` started through `prefix` (`ip netns exec NS`, say, to run it in
/// a network namespace): `PREFIX... PROGRAM ARGS...` with `cmd`'s
/// environment changes and working directory. An empty prefix gives an
/// equal command.
pub fn prefixed(prefix: &[String], cmd: &Command) -> Command {
    let (program, args) = match prefix.split_first() {
        Some((first, rest)) => (first.as_ref(), rest),
        None => (cmd.get_program(), &[][..]),
    };
    let mut out = Command::new(program);
    out.args(args);
    if !prefix.is_empty() {
        out.arg(cmd.get_program());
    }
    out.args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => out.env(key, value),
            None => out.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        out.current_dir(dir);
    }
    out
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
    /// Spawns with stderr going to a file under [`LOG_DIR_VAR`] when it is
    /// set, else to the caller's.
    pub(crate) fn spawn(cmd: &mut Command) -> Result<Self> {
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

    /// Spawns with standard input kept open for the test to write, and
    /// standard error's lines among standard output's (status lines, such as
    /// a shell's notices, go there).
    pub fn spawn_interactive_merged(cmd: &mut Command) -> Result<(Self, std::process::ChildStdin)> {
        Self::interactive(cmd, true)
    }

    /// Spawns with standard input kept open for the test to write.
    pub fn spawn_interactive(cmd: &mut Command) -> Result<(Self, std::process::ChildStdin)> {
        Self::interactive(cmd, false)
    }

    /// Standard input kept open; standard error read with standard output
    /// when `merged`, else shown as it comes.
    fn interactive(cmd: &mut Command, merged: bool) -> Result<(Self, std::process::ChildStdin)> {
        let stderr = if merged {
            Stdio::piped()
        } else {
            Stdio::inherit()
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            send_lines(stderr, tx.clone());
        }
        send_lines(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?, tx);
        Ok((Self { child, stdout: rx }, stdin))
    }

    /// Waits for a line of output containing `needle`.
    pub fn expect_line(&self, needle: &str) -> Result<String> {
        let mut lines = self.lines_until(needle)?;
        lines.pop().context("no line")
    }

    /// The lines of output up to the first containing `needle`, that one
    /// last.
    pub fn lines_until(&self, needle: &str) -> Result<Vec<String>> {
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .with_context(|| format!("no output line with {needle:?}"))?;
            let found = line.contains(needle);
            lines.push(line);
            if found {
                return Ok(lines);
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

/// Hands a child's output over a channel, line by line, from a thread.
fn lines(out: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    send_lines(out, tx);
    rx
}

/// Sends each line `out` prints to `tx`, from a thread of its own.
fn send_lines(out: impl std::io::Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// Runs `cmd` with one line of `input` on its standard input.
pub(crate) fn feed(cmd: &mut Command, input: &str) -> Result<Output> {
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
