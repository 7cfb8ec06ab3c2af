//! `latchkey exec` (SPEC X2, R5, B4): output, exit status and standard
//! input; a missing program named, with the status a shell gives; the
//! remote command ends when the client goes (SIGHUP, then SIGKILL); a
//! command that keeps no session (`--persist 0`, as the test devices run)
//! ends its session when it exits; an offline host is said so; a
//! session's environment is only what docs/host.md lists.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result};
use latchkey_tests::{Proc, World, OWNER_CODE};

use crate::{path_str, signal, text, within};

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
async fn a_missing_program_exits_127_and_is_named() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "nosuch-program-17"])?;
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("nosuch-program-17"), "{err}");
    assert!(err.contains("command not found"), "{err}");
    // A file that is not executable: 126, as sh gives.
    let plain = w.dir.path().join("not-executable");
    std::fs::write(&plain, "echo hi\n")?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", path_str(&plain)?])?;
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    Ok(())
}

/// Whether a process is gone (a zombie counts as gone: it runs nothing).
pub(crate) fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

pub(crate) fn agent_log(w: &World) -> String {
    std::fs::read_to_string(w.dir.path().join("mypc-agent.log")).unwrap_or_default()
}

/// Starts `exec mypc -- sh -c SCRIPT` (SCRIPT prints its pid, then execs
/// a long sleep); returns the client and the remote command's pid.
fn remote_sleep(w: &World, script: &str) -> Result<(Proc, u32)> {
    let client = w
        .alice
        .spawn_with_code(OWNER_CODE, &["exec", "mypc", "--", "sh", "-c", script])?;
    let line = client.expect_line("pid ")?;
    let pid: u32 = line
        .trim()
        .strip_prefix("pid ")
        .context("pid line")?
        .parse()?;
    assert!(!gone(pid), "the remote command is not running");
    Ok((client, pid))
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_client_ends_the_remote_process_with_sighup_then_sigkill() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    // Ends on SIGHUP, as a command whose terminal hung up.
    let (mut client, pid) = remote_sleep(&w, "echo pid $$; exec sleep 30")?;
    assert_eq!(client.terminate()?.code(), Some(143));
    // Generous bounds: these run beside other tests on two shared cores.
    let took = within(Duration::from_secs(5), "the remote sleep ending", || {
        gone(pid)
    })
    .with_context(|| agent_log(&w))?;
    println!("SIGTERM on the client -> remote command gone: {took:?}");
    // Ignores SIGHUP: killed after the grace.
    let (mut client, pid) = remote_sleep(&w, "trap '' HUP; echo pid $$; exec sleep 30")?;
    assert_eq!(client.terminate()?.code(), Some(143));
    let took = within(
        Duration::from_secs(6),
        "the remote sleep being killed",
        || gone(pid),
    )?;
    println!("SIGHUP ignored -> killed after {took:?}");
    assert!(
        took >= Duration::from_secs(1),
        "killed before the grace: {took:?}"
    );
    // A shell: the client's terminal closes (SIGHUP) or it is stopped.
    for signal_name in ["HUP", "TERM"] {
        let (mut shell, mut keys) = w.alice.spawn_shell("mypc")?;
        std::io::Write::write_all(&mut keys, b"echo pid-$((1000+17)) $$; exec sleep 60\n")?;
        let line = shell.expect_line("pid-1017 ")?;
        let pid: u32 = line
            .split("pid-1017 ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .context("shell pid")?
            .parse()?;
        assert!(!gone(pid), "the remote shell is not running");
        signal(&shell, signal_name)?;
        assert!(!shell.wait_exit()?.success());
        let took = within(Duration::from_secs(8), "the remote shell ending", || {
            gone(pid)
        })
        .with_context(|| agent_log(&w))?;
        println!("SIG{signal_name} on connect -> remote shell gone: {took:?}");
    }
    // A client killed outright (no goodbye): the relay notices at its idle
    // timeout, and the command still ends.
    let (mut client, pid) = remote_sleep(&w, "echo pid $$; exec sleep 60")?;
    client.kill9();
    within(Duration::from_secs(45), "the remote sleep ending", || {
        gone(pid)
    })?;
    Ok(())
}

fn session_ends(w: &World) -> usize {
    w.relay
        .audit_events("mypc")
        .map(|e| e.iter().filter(|e| *e == "session-end").count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_ends_its_session_when_it_exits() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let src = w.dir.path().join("a.txt");
    std::fs::write(&src, "a")?;
    let to_host = format!("mypc:{}", w.dir.path().join("b.txt").display());
    let missing = "mypc:/nonexistent/file".to_string();
    let back = w.dir.path().join("c.txt").display().to_string();
    let commands: Vec<(&str, Vec<&str>)> = vec![
        ("exec", vec!["exec", "mypc", "--", "true"]),
        ("cp up", vec!["cp", path_str(&src)?, &to_host]),
        ("cp error", vec!["cp", &missing, &back]),
    ];
    let check = |what: &str, args: &[&str]| -> Result<()> {
        let before = session_ends(&w);
        w.alice.with_code(OWNER_CODE, args)?;
        let took = within(
            Duration::from_secs(2),
            &format!("{what}'s session-end"),
            || session_ends(&w) > before,
        )?;
        println!("{what}: session-end {took:?} after the command exited");
        Ok(())
    };
    for (what, args) in &commands {
        check(what, args)?;
    }
    // A refused reboot.
    w.relay
        .admin(&["policy", "mypc", "--shared-access", "disabled"])?;
    let out = w.alice.with_code(OWNER_CODE, &["reboot", "mypc"])?;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("shared access"));
    check("refused reboot", &["reboot", "mypc"])?;
    Ok(())
}

#[test]
fn exec_usage_does_not_show_home_as_required() -> Result<()> {
    let w_dir = tempfile::tempdir()?;
    let device = latchkey_tests::Device {
        home: w_dir.path().join("home"),
    };
    // `--home` after the subcommand, as a user with a custom home types it:
    // clap's error usage lists the options given as if they were required.
    let out = Command::new(latchkey_tests::bin("latchkey"))
        .args(["exec", "--home", path_str(&device.home)?, "mypc"])
        .output()?;
    let err = text(&out.stderr);
    assert!(err.contains("Usage: latchkey exec"), "{err}");
    assert!(!err.contains("--home <HOME>"), "{err}");
    let out = device.cmd().args(["exec", "--help"]).output()?;
    let help = text(&out.stdout);
    let usage = help
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .context("usage line")?;
    assert!(!usage.contains("--home"), "{usage}");
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

/// A session's environment is fresh whatever account it runs as: only
/// what docs/host.md lists, nothing of the agent's own.
#[tokio::test(flavor = "multi_thread")]
async fn a_sessions_environment_holds_only_what_the_docs_list() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "env"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    for name in &names {
        assert!(
            ["HOME", "USER", "LOGNAME", "SHELL", "PATH"].contains(name),
            "{name} leaked into a session:\n{env}"
        );
    }
    assert!(names.contains(&"HOME") && names.contains(&"PATH"), "{env}");
    Ok(())
}

/// A typo in a host's name is told as one, naming the user's hosts, not
/// as a wrong code; a wrong code for one of them is still a wrong code,
/// and neither counts a failure against mypc.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_name_with_a_typo_is_said_to_be_no_host_of_yours() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypcc", "--", "true"])?;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no host 'mypcc' among yours: mypc"), "{err}");
    assert!(!err.contains("wrong access code"), "{err}");
    let out = w
        .alice
        .with_code("not-the-code", &["exec", "mypc", "--", "true"])?;
    let err = text(&out.stderr);
    assert!(err.contains("wrong access code for host 'mypc'"), "{err}");
    assert!(!err.contains("among yours"), "{err}");
    let status = w.relay.status("mypc")?;
    assert_eq!(status["failures"], 1, "{status}");
    Ok(())
}

/// Latchkey's own failures exit 255, as ssh's do, each with its own
/// message; the remote command's statuses stay its own.
#[tokio::test(flavor = "multi_thread")]
async fn latchkeys_own_failures_exit_255_each_said_apart() -> Result<()> {
    let w = World::new()?;
    let failed = |args: &[&str], code: &str, said: &str| -> Result<()> {
        let out = w.alice.with_code(code, args)?;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{args:?}: {err}");
        assert!(err.contains(said), "{args:?}: {said:?} not in {err}");
        Ok(())
    };
    let exec = ["exec", "mypc", "--", "true"];
    failed(&exec, OWNER_CODE, "host 'mypc' is offline")?;
    let _agent = w.start_agent()?;
    failed(
        &["exec", "mypcc", "--", "true"],
        OWNER_CODE,
        "no host 'mypcc'",
    )?;
    failed(
        &["cp", "mypc:/no/such/file", "here"],
        OWNER_CODE,
        "/no/such/file",
    )?;
    for _ in 0..3 {
        failed(&exec, "not-the-code", "wrong access code for host 'mypc'")?;
    }
    failed(&exec, OWNER_CODE, "host 'mypc' is locked")?;
    w.relay.admin(&["unlock", "mypc"])?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "sh", "-c", "exit 7"])?;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    // A relay that does not answer: a port with nothing behind it.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = silent.local_addr()?.to_string();
    w.alice.set_relays(std::slice::from_ref(&addr))?;
    failed(&exec, OWNER_CODE, &format!("the relay at {addr}"))?;
    Ok(())
}
