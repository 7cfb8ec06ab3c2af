//! Sessions and their channels (SPEC X1-X4, E1-E3, E5, R5, B4): exec, an
//! interactive shell, TCP forwarding, the host's desktop and file copy
//! through the relay, end-to-end encrypted between client and host, with
//! the host's key pinned by clients and out of a session's reach. Real
//! binaries on loopback; the TCP services are in this process (the desktop
//! is a real Xvfb and x11vnc).

mod copy;
mod desktop;
mod encryption;
mod exec;
mod forward;
mod host_key;
mod reuse;
mod shell;
mod ssh;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use latchkey_client::{config::Home, user::remote::Remote};
use latchkey_protocol::ids::AccessCode;
use latchkey_tests::{Proc, World, OWNER_CODE};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// Polls `cond` every 20 ms for at most `limit`; fails with `what` after.
fn within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not happen within {limit:?}")
}

fn signal(proc: &Proc, name: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &proc.pid().to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill -{name} failed");
    Ok(())
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

/// `latchkey exec mypc -- ARGV` as alice.
fn alice_exec(w: &World, argv: &[&str]) -> Result<std::process::Output> {
    let mut args = vec!["exec", "mypc", "--"];
    args.extend_from_slice(argv);
    w.alice.with_code(OWNER_CODE, &args)
}

/// Fails with the command's standard error unless it succeeded.
fn succeeded(out: &std::process::Output) -> Result<()> {
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
