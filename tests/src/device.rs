//! A user's or host's device: its home directory, and the `latchkey`
//! binary run as it (enrol, set a code, edit its config, run the host
//! agent, run client commands with or without the access code).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{bail, Context, Result};
use latchkey_protocol::ids::UserName;

use crate::{
    process::{bin, current_account, feed, Proc},
    world::OWNER_CODE,
};

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
        // Each command logs in on its own, as most tests count logins;
        // the tests of kept sessions turn it on (`keeping_sessions`).
        // Kept sessions' sockets live in the device's home.
        cmd.env("LATCHKEY_PERSIST", "0");
        cmd.env("XDG_RUNTIME_DIR", &self.home);
        cmd
    }

    /// A `latchkey` command for this device whose sessions stay for the
    /// commands that follow, `persist` long after the last.
    pub fn keeping_sessions(&self, persist: &str) -> Command {
        let mut cmd = self.cmd();
        cmd.env("LATCHKEY_PERSIST", persist);
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

    /// Sets the most a shared user may do on this host (`shared_rights`).
    pub fn set_shared_rights(&self, rights: &str) -> Result<()> {
        self.edit_config("host.toml", |cfg| {
            cfg.insert("shared_rights".into(), toml::Value::String(rights.into()));
        })
    }

    /// Sets one key of host.toml (`record`, `record_keep_days`...).
    pub fn set_host_value(&self, key: &str, value: impl Into<toml::Value>) -> Result<()> {
        let value = value.into();
        self.edit_config("host.toml", |cfg| {
            cfg.insert(key.into(), value);
        })
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
            cfg.insert("relay".into(), toml::Value::String(first.clone()));
            let others = others.iter().cloned().map(toml::Value::String);
            cfg.insert("other_relays".into(), toml::Value::Array(others.collect()));
        })
    }

    fn edit_config(&self, file: &str, edit: impl FnOnce(&mut toml::Table)) -> Result<()> {
        let path = self.home.join(file);
        let mut cfg: toml::Table = std::fs::read_to_string(&path)?.parse()?;
        edit(&mut cfg);
        std::fs::write(&path, cfg.to_string())?;
        Ok(())
    }

    fn set_host_list(&self, key: &str, values: &[String]) -> Result<()> {
        let list = values.iter().cloned().map(toml::Value::String);
        self.edit_config("host.toml", |cfg| {
            cfg.insert(key.into(), toml::Value::Array(list.collect()));
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

    /// `latchkey cp LOCAL HOST:REMOTE` with the access code set.
    pub fn copy_to(&self, code: &str, local: &Path, host: &str, remote: &Path) -> Result<Output> {
        let local = local.display().to_string();
        self.with_code(
            code,
            &["cp", &local, &format!("{host}:{}", remote.display())],
        )
    }

    /// Starts `latchkey ARGS` in the background with the access code set.
    pub fn spawn_with_code(&self, code: &str, args: &[&str]) -> Result<Proc> {
        Proc::spawn(self.cmd().env("LATCHKEY_ACCESS_CODE", code).args(args))
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
