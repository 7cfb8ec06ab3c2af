//! The Windows builds of `latchkey` (the host agent and the user commands)
//! and of `latchkey-relay` run under wine, Debian's `wine64`, beside the
//! Linux ones: the seed's own platform, on the machine the tests have. wine 8 lacks
//! `ProcessPrng`, which Rust's standard library takes its randomness from
//! on Windows, so the test builds a stand-in `bcryptprimitives.dll` from
//! `src/wine/bcryptprimitives.c` with mingw, beside the binary.
//!
//! The binaries are `latchkey.exe` and `latchkey-relay.exe` in
//! `target/x86_64-pc-windows-gnu/debug`, which CI builds before the tests.
//! Where one, wine or mingw is missing, a test
//! is skipped with the reason printed, unless `LATCHKEY_WINE_TESTS` is set
//! (CI sets it once it has built the binary): then that is a failure. A
//! prefix of its own per test, and every wine process in it killed when
//! dropped.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::{bin, relay::Runner, Proc, WAIT};

/// Set when the Windows binaries are built and wine installed: the wine
/// tests must run.
pub const REQUIRED_VAR: &str = "LATCHKEY_WINE_TESTS";

/// A wine prefix with the Windows `latchkey.exe` and `latchkey-relay.exe`
/// ready to run.
pub struct Wine {
    dir: TempDir,
    exe: PathBuf,
    relay_exe: PathBuf,
}

/// A path as the Windows binary names it: wine maps `/` to drive `Z:`.
pub fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

impl Wine {
    /// A new prefix, or `None` (with why) where wine tests cannot run and
    /// need not.
    pub fn start_or_skip(test: &str) -> Result<Option<Self>> {
        let built_dir = bin("latchkey")
            .parent()
            .and_then(Path::parent)
            .map(|target| target.join("x86_64-pc-windows-gnu/debug"))
            .context("no target directory")?;
        let (built, built_relay) = (
            built_dir.join("latchkey.exe"),
            built_dir.join("latchkey-relay.exe"),
        );
        let missing = if let Some(absent) = [&built, &built_relay].into_iter().find(|b| !b.exists())
        {
            Some(format!(
                "{} is not built (`cargo build --target x86_64-pc-windows-gnu -p latchkey-client -p latchkey-server`)",
                absent.display()
            ))
        } else if !on_path("wine") {
            Some("wine is not installed (`apt-get install wine64`)".into())
        } else if !on_path("x86_64-w64-mingw32-gcc") {
            Some("mingw is not installed (`apt-get install gcc-mingw-w64-x86-64`)".into())
        } else {
            None
        };
        if let Some(why) = missing {
            ensure!(
                std::env::var_os(REQUIRED_VAR).is_none(),
                "{REQUIRED_VAR} is set, but {why}"
            );
            eprintln!("skipping {test}: {why}");
            return Ok(None);
        }
        let dir = tempfile::tempdir()?;
        let (exe, relay_exe) = (
            dir.path().join("latchkey.exe"),
            dir.path().join("latchkey-relay.exe"),
        );
        std::fs::copy(&built, &exe)?;
        std::fs::copy(&built_relay, &relay_exe)?;
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/src/wine/bcryptprimitives.c");
        let built_dll = Command::new("x86_64-w64-mingw32-gcc")
            .args(["-shared", "-O2", "-o"])
            .arg(dir.path().join("bcryptprimitives.dll"))
            .arg(source)
            .arg("-ladvapi32")
            .output()?;
        ensure!(
            built_dll.status.success(),
            "building the ProcessPrng stand-in: {}",
            String::from_utf8_lossy(&built_dll.stderr)
        );
        let wine = Self {
            dir,
            exe,
            relay_exe,
        };
        let boot = wine
            .env(Command::new("wineboot"))
            .arg("--init")
            .output()
            .context("wineboot")?;
        ensure!(
            boot.status.success(),
            "wineboot: {}",
            String::from_utf8_lossy(&boot.stderr)
        );
        Ok(Some(wine))
    }

    /// What every wine command of this prefix runs with.
    fn vars(&self) -> [(OsString, OsString); 3] {
        [
            ("WINEPREFIX".into(), self.dir.path().join("prefix").into()),
            ("WINEDEBUG".into(), "-all".into()),
            // The stand-in beside the binary, not wine's own.
            ("WINEDLLOVERRIDES".into(), "bcryptprimitives=n".into()),
        ]
    }

    fn env(&self, mut cmd: Command) -> Command {
        cmd.envs(self.vars());
        cmd
    }

    /// What runs `latchkey-relay.exe` in this prefix, for
    /// [`crate::relay::Relay::start_by`].
    pub fn relay_runner(&self) -> Runner {
        Runner {
            prefix: vec!["wine".into(), self.relay_exe.clone().into()],
            env: self.vars().into(),
            path: Some(windows_path),
        }
    }

    /// `latchkey.exe` for the device whose home is `home` (a Unix path).
    /// Sessions are not kept: that needs Unix sockets.
    pub fn latchkey(&self, home: &Path) -> Command {
        let mut cmd = self.env(Command::new("wine"));
        cmd.arg(&self.exe)
            .env("LATCHKEY_HOME", windows_path(home))
            .env("LATCHKEY_PERSIST", "0");
        cmd
    }

    /// Runs `latchkey.exe ARGS` as the device in `home`; fails unless it
    /// succeeds, with its standard error.
    pub fn run(&self, home: &Path, args: &[&str]) -> Result<String> {
        let out = finished(self.latchkey(home).args(args), None)?;
        if !out.status.success() {
            bail!(
                "latchkey.exe {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs `latchkey.exe ARGS` with `input` on its standard input.
    pub fn run_with_input(
        &self,
        home: &Path,
        args: &[&str],
        input: &str,
    ) -> Result<std::process::Output> {
        finished(self.latchkey(home).args(args), Some(input))
    }

    /// Starts `latchkey.exe ARGS` in the background.
    pub fn spawn(&self, home: &Path, args: &[&str]) -> Result<Proc> {
        Proc::spawn(self.latchkey(home).args(args))
    }

    /// Starts `latchkey.exe ARGS` in the background with the access code
    /// in its environment.
    pub fn spawn_with_code(&self, home: &Path, code: &str, args: &[&str]) -> Result<Proc> {
        Proc::spawn(
            self.latchkey(home)
                .env("LATCHKEY_ACCESS_CODE", code)
                .args(args),
        )
    }
}

impl Wine {
    /// Runs a Windows system tool (`sc`, `icacls`) in this prefix.
    pub fn tool(&self, program: &str, args: &[&str]) -> Result<std::process::Output> {
        finished(self.env(Command::new("wine")).arg(program).args(args), None)
    }

    /// A program that waits on its standard input for as long as it is
    /// kept: wine ends a prefix's services when its last other program
    /// ends, as Windows would at shutdown.
    pub fn keep_services_running(&self) -> Result<(Proc, std::process::ChildStdin)> {
        Proc::spawn_interactive(self.env(Command::new("wine")).args(["cmd", "/c", "pause"]))
    }
}

impl Drop for Wine {
    /// Every process of the prefix ends with it (the agent, a forward).
    fn drop(&mut self) {
        if let Ok(mut kill) = self.env(Command::new("wineserver")).arg("-k").spawn() {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while matches!(kill.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill.kill();
        }
    }
}

/// Runs `cmd` to its end (within [`WAIT`] × 4), with `input` and a line
/// end on its standard input, and its output in files rather than pipes:
/// a process wine starts on the side (the desktop, for a service manager
/// call) inherits the handles of the program that needed it and would hold
/// pipes open long after that program ended.
fn finished(cmd: &mut Command, input: Option<&str>) -> Result<std::process::Output> {
    use std::{
        io::{Read, Seek, Write},
        process::Stdio,
    };
    let (mut out, mut err) = (tempfile::tempfile()?, tempfile::tempfile()?);
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(format!("{input}\n").as_bytes())?;
    }
    let deadline = std::time::Instant::now() + WAIT * 4;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            bail!("{cmd:?} did not end within {:?}", WAIT * 4);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |file: &mut std::fs::File| -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        file.rewind()?;
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    Ok(std::process::Output {
        status,
        stdout: read(&mut out)?,
        stderr: read(&mut err)?,
    })
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
