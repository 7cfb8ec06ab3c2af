//! A relay process: started on loopback with its own data directory (or
//! joined to another's cluster), crashed, restarted, and its admin CLI run
//! against the same data directory.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{anyhow, bail, Context, Result};
use latchkey_protocol::ids::RelayPin;

use crate::process::{bin, Proc, WAIT};

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
    /// What runs the relay binary: this platform's, unless a test says.
    pub runner: Runner,
}

/// How a relay command is started: the binary built for this platform,
/// or another (the Windows build under wine, see `crate::wine`).
#[derive(Clone, Debug, Default)]
pub struct Runner {
    /// The program and its first arguments (empty: `latchkey-relay`).
    pub prefix: Vec<OsString>,
    /// Environment the program needs.
    pub env: Vec<(OsString, OsString)>,
    /// Turns a path into the form the relay binary takes.
    pub path: Option<fn(&Path) -> String>,
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
    pub fn start_on(dir: &Path, listen: SocketAddr, env: Vec<(String, String)>) -> Result<Self> {
        Self::start_by(Runner::default(), dir, listen, env)
    }

    /// Starts a relay that `runner` runs, listening on `listen`.
    pub fn start_by(
        runner: Runner,
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
            runner,
        };
        relay.launch()?;
        Ok(relay)
    }

    fn command(&self) -> Command {
        let mut cmd = match self.runner.prefix.split_first() {
            None => Command::new(bin("latchkey-relay")),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).envs(self.runner.env.iter().cloned());
                cmd
            }
        };
        match self.runner.path {
            None => cmd.arg("--data-dir").arg(&self.data_dir),
            Some(path) => cmd.arg("--data-dir").arg(path(&self.data_dir)),
        };
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
            runner: self.runner.clone(),
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
                "admin {args:?} failed ({}): {}",
                out.status,
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

fn last_line(s: &str) -> Result<String> {
    s.lines()
        .last()
        .map(|l| l.trim().to_string())
        .ok_or_else(|| anyhow!("no output"))
}

/// How many of `events` (audit event names) are `name`.
pub fn count(events: &[String], name: &str) -> usize {
    events.iter().filter(|e| *e == name).count()
}

/// Relay settings that lift the per-source rate limit, for tests and
/// benchmarks that open many connections from 127.0.0.1 on purpose.
pub fn unlimited() -> Vec<(String, String)> {
    vec![
        ("LATCHKEY_RELAY_PER_SOURCE_BURST".into(), "1000000".into()),
        ("LATCHKEY_RELAY_PER_SOURCE_PER_SEC".into(), "1000000".into()),
    ]
}
