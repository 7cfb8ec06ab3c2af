//! What a new user tripped over (issue 17): exit statuses, remote work
//! that outlives its client, partial files, directory destinations,
//! confusing messages, sessions that linger after a command, and the
//! progress bar's width. Real binaries on loopback.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use latchkey_tests::{wait_until, Proc, World, OWNER_CODE};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

/// Whether a process is gone (a zombie counts as gone: it runs nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
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

fn agent_log(w: &World) -> String {
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

/// A sparse file of `len` bytes: a copy of it takes long enough to
/// interrupt, and it takes no disk space.
fn sparse(path: &Path, len: u64) -> Result<()> {
    std::fs::File::create(path)?.set_len(len)?;
    Ok(())
}

/// The partial files of a copy to `dest` (`.NAME.RANDOM.latchkey-partial`).
fn partials_of(dest: &Path) -> Vec<PathBuf> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let Some(dir) = dest.parent() else {
        return Vec::new();
    };
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
                    n.is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".latchkey-partial"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a copy to `dest` has a partial file with bytes in it.
fn growing(dest: &Path) -> bool {
    partials_of(dest)
        .iter()
        .any(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_or_a_failure_during_cp_leaves_no_partial_file_on_either_side() -> Result<()> {
    let w = World::new()?;
    let mut agent = w.start_agent()?;
    let big = w.dir.path().join("big.bin");
    sparse(&big, 16 << 30)?;

    // Upload, interrupted with Ctrl-C: the host's partial file goes away.
    let on_host = w.dir.path().join("on-host.bin");
    let mut cp = w.alice.spawn_with_code(
        OWNER_CODE,
        &[
            "cp",
            path_str(&big)?,
            &format!("mypc:{}", on_host.display()),
        ],
    )?;
    wait_until("the host's partial file", || growing(&on_host))?;
    signal(&cp, "INT")?;
    assert_eq!(cp.wait_exit()?.code(), Some(130));
    within(
        Duration::from_secs(15),
        "the host's partial file removed",
        || partials_of(&on_host).is_empty(),
    )?;
    assert!(!on_host.exists());

    // Download, interrupted: the local partial file goes away.
    let here = w.dir.path().join("here.bin");
    let mut cp = w.alice.spawn_with_code(
        OWNER_CODE,
        &["cp", &format!("mypc:{}", big.display()), path_str(&here)?],
    )?;
    wait_until("the local partial file", || growing(&here))?;
    signal(&cp, "TERM")?;
    assert_eq!(cp.wait_exit()?.code(), Some(143));
    assert!(partials_of(&here).is_empty(), "partial file left behind");
    assert!(!here.exists());

    // Download, failed: the host's agent dies mid-copy.
    let cp = w
        .alice
        .cmd()
        .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
        .args(["cp", &format!("mypc:{}", big.display()), path_str(&here)?])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    wait_until("the local partial file", || growing(&here))?;
    agent.kill9();
    let out = cp.wait_with_output()?;
    assert!(!out.status.success());
    assert!(partials_of(&here).is_empty(), "partial file left behind");
    assert!(!here.exists());
    assert!(!text(&out.stderr).contains("latchkey-partial"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_destinations_behave_like_cp_in_both_directions() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let src = w.dir.path().join("notes.txt");
    std::fs::write(&src, "seventeen\n")?;
    let host_dir = w.dir.path().join("host-dir");
    std::fs::create_dir(&host_dir)?;
    let cp = |from: &str, to: &str| w.alice.with_code(OWNER_CODE, &["cp", from, to]);

    // Upload into a directory, with and without the trailing slash.
    for to in [
        format!("mypc:{}/", host_dir.display()),
        format!("mypc:{}", host_dir.display()),
    ] {
        std::fs::remove_file(host_dir.join("notes.txt")).ok();
        let out = cp(path_str(&src)?, &to)?;
        assert!(out.status.success(), "{to}: {}", text(&out.stderr));
        assert_eq!(
            std::fs::read_to_string(host_dir.join("notes.txt"))?,
            "seventeen\n"
        );
    }
    // Download into a directory, with and without the trailing slash.
    let local_dir = w.dir.path().join("local-dir");
    std::fs::create_dir(&local_dir)?;
    let from = format!("mypc:{}", host_dir.join("notes.txt").display());
    for to in [
        format!("{}/", local_dir.display()),
        local_dir.display().to_string(),
    ] {
        std::fs::remove_file(local_dir.join("notes.txt")).ok();
        let out = cp(&from, &to)?;
        assert!(out.status.success(), "{to}: {}", text(&out.stderr));
        assert_eq!(
            std::fs::read_to_string(local_dir.join("notes.txt"))?,
            "seventeen\n"
        );
    }
    // Missing directories are named as such, both ways, and the internal
    // partial file's name never shows.
    let missing = w.dir.path().join("missing-dir");
    for (from, to) in [
        (from.clone(), format!("{}/", missing.display())),
        (from.clone(), format!("{}/y", missing.display())),
        (
            src.display().to_string(),
            format!("mypc:{}/", missing.display()),
        ),
        (
            src.display().to_string(),
            format!("mypc:{}/y", missing.display()),
        ),
    ] {
        let out = cp(&from, &to)?;
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{from} -> {to} succeeded");
        assert!(err.contains("no such directory"), "{from} -> {to}: {err}");
        assert!(!err.contains("latchkey-partial"), "{from} -> {to}: {err}");
        assert!(!err.contains("os error 20"), "{from} -> {to}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn proc_and_sysfs_files_copy_what_a_read_gives() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let cp = |from: &str, to: &str| w.alice.with_code(OWNER_CODE, &["cp", from, to]);
    // procfs reports 0 bytes, sysfs 4096: both give something else.
    for (file, dest) in [
        ("/proc/version", "version"),
        ("/sys/class/net/lo/address", "address"),
    ] {
        let want = std::fs::read(file)?;
        assert!(!want.is_empty());
        let here = w.dir.path().join(dest);
        let out = cp(&format!("mypc:{file}"), path_str(&here)?)?;
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        assert_eq!(std::fs::read(&here)?, want, "download of {file}");
        let there = w.dir.path().join(format!("up-{dest}"));
        let out = cp(file, &format!("mypc:{}", there.display()))?;
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        assert_eq!(std::fs::read(&there)?, want, "upload of {file}");
        assert!(text(&out.stderr).contains(&format!("copied {} bytes", want.len())));
    }
    // A procfs file that changes between reads: something, not 0 bytes.
    let here = w.dir.path().join("cpuinfo");
    let out = cp("mypc:/proc/cpuinfo", path_str(&here)?)?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read_to_string(&here)?.contains("processor"));
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

/// Removes ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_progress_bar_fits_an_80_column_terminal() -> Result<()> {
    use portable_pty::{native_pty_system, CommandBuilder, PtySize};
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let big = w.dir.path().join("big.bin");
    sparse(&big, 256 << 20)?;
    let dest = w.dir.path().join("copied.bin");
    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 24,
            cols: 80,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cmd = CommandBuilder::new(latchkey_tests::bin("latchkey"));
    cmd.args([
        "--home",
        path_str(&w.alice.home)?,
        "cp",
        path_str(&big)?,
        &format!("mypc:{}", dest.display()),
    ]);
    cmd.env("LATCHKEY_ACCESS_CODE", OWNER_CODE);
    cmd.env("LATCHKEY_LOG", "warn");
    let mut child = pty
        .slave
        .spawn_command(cmd)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    drop(pty.slave);
    let mut reader = pty
        .master
        .try_clone_reader()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let output = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = std::io::Read::read_to_end(&mut reader, &mut all);
        all
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        anyhow::ensure!(started.elapsed() < latchkey_tests::WAIT, "cp did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(pty.master);
    let output = text(&output.join().map_err(|_| anyhow::anyhow!("reader"))?);
    assert!(status.success(), "{output}");
    let screen = strip_ansi(&output);
    let segments: Vec<&str> = screen.split(['\r', '\n']).collect();
    assert!(
        segments.iter().any(|s| s.contains("MiB/")),
        "no progress bar drawn: {screen:?}"
    );
    for s in segments {
        assert!(
            s.chars().count() <= 80,
            "{} columns: {s:?}",
            s.chars().count()
        );
    }
    std::fs::remove_file(&dest)?;
    Ok(())
}

/// `latchkey connect mypc` with its three streams piped; returns the
/// process, its stdin, a channel of stdout lines and a thread collecting
/// stderr.
type Shell = (
    std::process::Child,
    std::process::ChildStdin,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
);

fn connect(w: &World) -> Result<Shell> {
    connect_with(w, &[])
}

/// [`connect`] with more arguments for `latchkey`.
fn connect_with(w: &World, more: &[&str]) -> Result<Shell> {
    use std::io::{BufRead, Read};
    let mut child = w
        .alice
        .cmd()
        .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
        .args(more)
        .args(["connect", "mypc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take().context("stdin")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Ok((child, stdin, lines, err))
}

fn expect(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> Result<()> {
    let deadline = Instant::now() + latchkey_tests::WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .with_context(|| format!("no line with {needle:?}"))?;
        if line.contains(needle) {
            return Ok(());
        }
    }
}

fn exit_of(child: &mut std::process::Child) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + latchkey_tests::WAIT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("connect did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_says_goodbye_and_which_side_went_away_on_lines_of_their_own() -> Result<()> {
    use std::io::Write;
    let mut w = World::with_env(vec![(
        "LATCHKEY_RELAY_REBOOT_DEADLINE_SECS".into(),
        "3".into(),
    )])?;
    w.mypc.set_reboot_command(&["true"])?;
    let mut agent = w.start_agent()?;

    // `~.`: like ssh, a word and a line end, so the next prompt starts clean.
    let (mut child, mut keys, lines, err) = connect(&w)?;
    keys.write_all(b"echo up-$((1+1))\n")?;
    expect(&lines, "up-2")?;
    keys.write_all(b"~.")?;
    assert_eq!(exit_of(&mut child)?.code(), Some(255));
    let err = err.join().map_err(|_| anyhow::anyhow!("stderr"))?;
    assert!(err.contains("disconnected from mypc]\r\n"), "{err:?}");

    // A reboot that never comes back: the error starts a line of its own
    // after the waiting status line.
    let (mut child, mut keys, lines, err) = connect(&w)?;
    keys.write_all(b"echo up-$((2+2))\n")?;
    expect(&lines, "up-4")?;
    keys.write_all(b"~R")?;
    assert!(agent.wait_exit()?.success());
    assert!(!exit_of(&mut child)?.success());
    let err = err.join().map_err(|_| anyhow::anyhow!("stderr"))?;
    let status_at = err.rfind(" s]").context("no waiting status line")?;
    let error_at = err.rfind("error:").context("no error")?;
    assert!(status_at < error_at, "{err:?}");
    assert!(
        err[status_at..error_at].contains('\n'),
        "the error sticks to the status line: {err:?}"
    );
    assert!(err.contains("did not come back"), "{err:?}");

    // The relay goes away for good (the client tries to resume for 3 s):
    // the message says so, cause first.
    let _agent = w.start_agent()?;
    let (mut child, mut keys, lines, err) = connect_with(&w, &["--resume-wait", "3"])?;
    keys.write_all(b"echo up-$((3+3))\n")?;
    expect(&lines, "up-6")?;
    w.relay.kill9();
    assert!(!exit_of(&mut child)?.success());
    let err = err.join().map_err(|_| anyhow::anyhow!("stderr"))?;
    let last = err
        .lines()
        .last()
        .unwrap_or_default()
        .trim_start_matches('\r');
    assert!(last.starts_with("error: session ended:"), "{err:?}");
    assert!(last.contains("relay"), "{err:?}");
    Ok(())
}
