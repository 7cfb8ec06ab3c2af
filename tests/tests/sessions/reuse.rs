//! Kept sessions, as ssh's ControlPersist: the first command to a host
//! leaves a process of the user's holding the session; the next commands
//! reach it over a private Unix socket, ask no code, log in no more,
//! carry data both ways with the remote command's status; `disconnect`,
//! `--persist 0`, the persist time and a revoke end it, and a command
//! interrupted while using it hangs up its remote command.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use latchkey_tests::{count, Device, Proc, World, OWNER_CODE};

use crate::{
    exec::{agent_log, gone},
    path_str, text, within,
};

/// The kept session's socket on `device`, if one is bound.
fn socket(device: &Device) -> Option<PathBuf> {
    std::fs::read_dir(device.home.join("latchkey"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "sock"))
}

/// Waits up to `secs` for `device`'s kept session to be gone (its socket
/// removed), failing with `what`.
fn holder_gone(device: &Device, what: &str, secs: u64) -> Result<Duration> {
    within(Duration::from_secs(secs), what, || socket(device).is_none())
}

fn logins(w: &World) -> Result<usize> {
    Ok(count(&w.relay.audit_events("mypc")?, "login-ok"))
}

/// A command on mypc that says its pid, then sleeps for 30 s.
const SLEEPING: [&str; 6] = [
    "exec",
    "mypc",
    "--",
    "sh",
    "-c",
    "echo pid $$; exec sleep 30",
];

/// Starts `cmd exec mypc -- sleep 30` (its log in `log`); returns it and
/// the remote command's pid, once it runs.
fn sleeping_on(cmd: &mut Command, w: &World, log: &str) -> Result<(Proc, u32)> {
    let proc = Proc::spawn_logged(
        cmd.args(SLEEPING),
        std::fs::File::create(w.dir.path().join(log))?,
    )?;
    let pid = remote_pid(&proc)?;
    Ok((proc, pid))
}

/// The remote pid a command started as `sh -c 'echo pid $$; ...'` prints.
fn remote_pid(proc: &Proc) -> Result<u32> {
    let line = proc.expect_line("pid ")?;
    Ok(line.trim().trim_start_matches("pid ").parse()?)
}

fn exec(cmd: &mut Command, argv: &[&str]) -> Result<std::process::Output> {
    Ok(cmd
        .args(["exec", "mypc", "--"])
        .args(argv)
        .stdin(Stdio::null())
        .output()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn later_commands_reuse_the_kept_session_without_the_code() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let kept = || w.alice.keeping_sessions("30s");
    // The first command logs in, and returns while the session stays:
    // the holder keeps none of its descriptors (`.output()` waits for all
    // of the pipe's holders; a test harness's or `$(…)`'s descriptor 3
    // too).
    let started = std::time::Instant::now();
    let mut first = kept();
    first.env("LATCHKEY_ACCESS_CODE", OWNER_CODE);
    let mut through_sh = Command::new("sh");
    through_sh
        .args(["-c", "exec 3>&1; exec \"$0\" \"$@\""])
        .arg(first.get_program())
        .args(first.get_args())
        .envs(first.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .args(["exec", "mypc", "--", "echo", "one"]);
    let out = through_sh.stdin(Stdio::null()).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the first command's output stayed open for {:?}",
        started.elapsed()
    );
    let sock = socket(&w.alice).context("no kept session")?;
    let mode = |p: &std::path::Path| -> Result<u32> {
        Ok(std::fs::symlink_metadata(p)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(sock.parent().context("dir")?)?, 0o700);
    assert_eq!(mode(&sock)?, 0o600);
    assert_eq!(logins(&w)?, 1);

    // No code now: standard input, both outputs and the exit status.
    let mut child = kept()
        .args([
            "exec",
            "mypc",
            "--",
            "sh",
            "-c",
            "wc -c; echo err >&2; exit 7",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(&[b'x'; 300_000])?;
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "300000");
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));

    // A copy each way, with a code line on standard input that is read
    // and not used.
    let here = w.dir.path().join("kept-up.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&here, &data)?;
    let there = w.dir.path().join("kept-there.bin");
    let up = kept()
        .args(["cp", "--code-stdin", path_str(&here)?])
        .arg(format!("mypc:{}", path_str(&there)?))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let up = {
        let mut up = up;
        up.stdin
            .take()
            .context("stdin")?
            .write_all(b"not the code\n")?;
        up.wait_with_output()?
    };
    assert!(up.status.success(), "{}", text(&up.stderr));
    assert_eq!(std::fs::read(&there)?, data);
    let back = w.dir.path().join("kept-back.bin");
    let down = kept()
        .arg("cp")
        .arg(format!("mypc:{}", path_str(&there)?))
        .arg(&back)
        .stdin(Stdio::null())
        .output()?;
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_eq!(std::fs::read(&back)?, data);

    // Many commands, one login, no attempt counted.
    for i in 0..5 {
        let out = exec(&mut kept(), &["echo", &i.to_string()])?;
        assert_eq!(text(&out.stdout), format!("{i}\n"));
    }
    assert_eq!(logins(&w)?, 1);
    let status = w.relay.status("mypc")?;
    assert_eq!(status["failures"], 0, "{status}");

    // `disconnect` ends it: the next command logs in again.
    let said = w.alice.run(&["disconnect", "mypc"])?;
    assert!(said.contains("disconnected from mypc"), "{said}");
    holder_gone(&w.alice, "the kept session ending", 5)?;
    let said = w.alice.run(&["disconnect", "mypc"])?;
    assert!(said.contains("no session to mypc was kept"), "{said}");
    let out = exec(
        kept().env("LATCHKEY_ACCESS_CODE", "wrong code 1"),
        &["true"],
    )?;
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("wrong"), "{}", text(&out.stderr));
    assert!(socket(&w.alice).is_none(), "a failed login keeps nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_session_ends_after_its_persist_time_with_persist_0_and_with_a_revoke() -> Result<()>
{
    let w = World::new()?;
    let _agent = w.start_agent()?;
    // Idle for its persist time.
    let out = exec(
        w.bob
            .keeping_sessions("2s")
            .env("LATCHKEY_ACCESS_CODE", OWNER_CODE),
        &["true"],
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(socket(&w.bob).is_some());
    holder_gone(&w.bob, "the idle session ending", 8)?;
    // `--persist 0` on a command that reuses it: ends once it is done.
    let kept = || w.bob.keeping_sessions("30s");
    exec(kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE), &["true"])?;
    assert!(socket(&w.bob).is_some());
    let out = exec(kept().args(["--persist", "0"]), &["echo", "last"])?;
    assert_eq!(text(&out.stdout), "last\n", "{}", text(&out.stderr));
    holder_gone(&w.bob, "the session ending after --persist 0", 5)?;
    // A revoke ends it, and a command using it.
    exec(kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE), &["true"])?;
    let (mut sleeping, pid) = sleeping_on(&mut kept(), &w, "kept-sleep.log")?;
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    let status = sleeping.wait_exit()?;
    assert_eq!(status.code(), Some(255));
    holder_gone(&w.bob, "the revoked session's holder ending", 5)?;
    within(Duration::from_secs(5), "the remote command ending", || {
        gone(pid)
    })
    .with_context(|| agent_log(&w))?;
    let out = exec(kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE), &["true"])?;
    assert_eq!(out.status.code(), Some(255));
    assert!(socket(&w.bob).is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupting_a_command_on_a_kept_session_hangs_up_its_remote_command() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let kept = || w.alice.keeping_sessions("30s");
    exec(kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE), &["true"])?;
    for kill in [false, true] {
        let (mut client, pid) = sleeping_on(&mut kept(), &w, "kept-int.log")?;
        if kill {
            client.kill9();
        } else {
            assert_eq!(client.terminate()?.code(), Some(143));
        }
        let took = within(Duration::from_secs(5), "the remote command ending", || {
            gone(pid)
        })
        .with_context(|| agent_log(&w))?;
        println!("kill -9 {kill}: remote command gone after {took:?}");
    }
    // The session stays for the next command.
    let out = exec(&mut kept(), &["echo", "still"])?;
    assert_eq!(text(&out.stdout), "still\n", "{}", text(&out.stderr));
    w.alice.run(&["disconnect", "mypc"])?;
    Ok(())
}

/// A command whose remote program never reads its input takes the
/// session's flow control as it sends; interrupted, it is hung up all the
/// same, and the session serves the next command (two such commands at
/// once used to hold the kept session for good).
#[tokio::test(flavor = "multi_thread")]
async fn interrupted_commands_whose_remote_program_reads_nothing_free_the_kept_session(
) -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let kept = || w.alice.keeping_sessions("30s");
    exec(kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE), &["true"])?;
    let mut flooding = Vec::new();
    for _ in 0..2 {
        let (client, mut stdin) = Proc::spawn_interactive(kept().args(SLEEPING))?;
        let pid = remote_pid(&client)?;
        std::thread::spawn(move || {
            let zeros = vec![0u8; 1 << 16];
            while stdin.write_all(&zeros).is_ok() {}
        });
        flooding.push((client, pid));
    }
    // Time for both to fill what the host takes from them.
    std::thread::sleep(Duration::from_secs(3));
    for (client, pid) in &mut flooding {
        assert_eq!(client.terminate()?.code(), Some(143));
        let took = within(
            Duration::from_secs(5),
            "the flooding command's remote end",
            || gone(*pid),
        )
        .with_context(|| agent_log(&w))?;
        println!("remote command gone after {took:?}");
    }
    let out = exec(&mut kept(), &["echo", "alive"])?;
    assert_eq!(text(&out.stdout), "alive\n", "{}", text(&out.stderr));
    w.alice.run(&["disconnect", "mypc"])?;
    Ok(())
}

/// A proxy killed mid-upload on a kept session: its target reads a reset
/// after what arrived, never a clean end that would pass a cut upload for
/// a complete one.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_on_a_kept_session_reaches_its_target_as_a_reset() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let w = World::new()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?.to_string();
    w.mypc.allow_forward(std::slice::from_ref(&target))?;
    let _agent = w.start_agent()?;
    let kept = || w.alice.keeping_sessions("30s");
    exec(kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE), &["true"])?;
    // The target reads nothing until the upload is cut, then all of it.
    let read = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut got = Vec::new();
        Ok::<_, std::io::Error>(tcp.read_to_end(&mut got).await)
    });
    let (mut proxy, mut stdin) = Proc::spawn_interactive(kept().args(["proxy", "mypc", &target]))?;
    std::thread::spawn(move || {
        let zeros = vec![0u8; 1 << 16];
        while stdin.write_all(&zeros).is_ok() {}
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.kill9();
    let ended = tokio::time::timeout(Duration::from_secs(30), read).await???;
    match ended {
        Err(e) => println!("the target read a cut: {e}"),
        Ok(n) => panic!("the cut upload ended cleanly after {n} bytes"),
    }
    w.alice.run(&["disconnect", "mypc"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_proxy_and_a_shell_run_on_the_kept_session() -> Result<()> {
    let w = World::new()?;
    let target = latchkey_tests::hello_target().await?.to_string();
    w.mypc.allow_forward(std::slice::from_ref(&target))?;
    let _agent = w.start_agent()?;
    let kept = || w.alice.keeping_sessions("30s");
    exec(kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE), &["true"])?;
    // A forward, several connections through it.
    let forward = Proc::spawn_logged(
        kept().args(["forward", "mypc", &format!("0:{target}")]),
        std::fs::File::create(w.dir.path().join("kept-forward.log"))?,
    )?;
    let local = latchkey_tests::world::forward_address(&forward)?;
    for _ in 0..3 {
        let got = latchkey_tests::fetch(local.clone()).await?;
        assert_eq!(got, "hello from the host side\n");
    }
    drop(forward);
    // ssh's ProxyCommand: standard input and output joined to the target.
    let out = kept()
        .args(["proxy", "mypc", &target])
        .stdin(Stdio::null())
        .output()?;
    assert_eq!(
        text(&out.stdout),
        "hello from the host side\n",
        "{}",
        text(&out.stderr)
    );
    // An interactive shell, with its exit status.
    let (mut shell, mut keys) = Proc::spawn_interactive(kept().args(["connect", "mypc"]))?;
    keys.write_all(b"echo kept-$((40+2))\n")?;
    shell.expect_line("kept-42")?;
    keys.write_all(b"exit 3\n")?;
    assert_eq!(shell.wait_exit()?.code(), Some(3));
    assert_eq!(logins(&w)?, 1);
    // `disconnect` ends a shell on it, which says so.
    let (mut shell, mut keys) = Proc::spawn_interactive_merged(kept().args(["connect", "mypc"]))?;
    keys.write_all(b"echo open-$((1+1))\n")?;
    shell.expect_line("open-2")?;
    w.alice.run(&["disconnect", "mypc"])?;
    let said = shell.lines_until("disconnect")?;
    assert!(
        said.iter()
            .any(|l| l.contains("kept for 'mypc' ended: disconnected")),
        "{said:?}"
    );
    assert_eq!(shell.wait_exit()?.code(), Some(255));
    Ok(())
}

/// A lock ends every live session on the host (SPEC X4): alice's kept one
/// and the command running on it, and bob's own, each told why; the next
/// command is refused as locked.
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_ends_kept_and_own_sessions_on_the_host() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let kept = || w.alice.keeping_sessions("60s");
    exec(kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE), &["true"])?;
    let (on_kept, _) = sleeping_on(&mut kept(), &w, "locked-kept.log")?;
    let own = w.bob_sleeping_on_mypc(30)?;
    w.bob_locks_mypc_for(&[]).await?;
    for mut proc in [on_kept, own] {
        assert_eq!(proc.wait_exit()?.code(), Some(255));
    }
    let said = std::fs::read_to_string(w.dir.path().join("locked-kept.log"))?;
    assert!(said.contains("locked"), "{said}");
    holder_gone(&w.alice, "the kept session's holder ending", 5)?;
    let out = exec(kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE), &["true"])?;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("locked"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

/// Two first commands at once, the earlier with a wrong code and a slow
/// login: the one with the right code waits for the other's holder while
/// it logs in, and starts its own once that one fails, at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_command_whose_login_fails_does_not_hold_up_another() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let relay = w.relay.proc.as_ref().context("relay")?.pid().to_string();
    let kept = |code: &str, word: &str, log: &str| -> Result<Proc> {
        Proc::spawn_logged(
            w.alice
                .keeping_sessions("30s")
                .env("LATCHKEY_ACCESS_CODE", code)
                .args(["exec", "mypc", "--", "echo", word]),
            std::fs::File::create(w.dir.path().join(log))?,
        )
    };
    // The relay stopped: the first login takes as long as it stays so.
    anyhow::ensure!(Command::new("kill")
        .args(["-STOP", &relay])
        .status()?
        .success());
    let mut wrong = kept("wrong code 1", "wrong", "first-wrong.log")?;
    std::thread::sleep(Duration::from_millis(300));
    let right = kept(OWNER_CODE, "right", "first-right.log")?;
    // Longer than a new holder waits for the lock: the right one is told
    // another holder is starting.
    std::thread::sleep(Duration::from_secs(2));
    anyhow::ensure!(Command::new("kill")
        .args(["-CONT", &relay])
        .status()?
        .success());
    let resumed = std::time::Instant::now();
    assert_eq!(wrong.wait_exit()?.code(), Some(255));
    right.expect_line("right")?;
    let took = resumed.elapsed();
    println!("the right command ran {took:?} after the relay went on");
    assert!(took < Duration::from_secs(10), "held up for {took:?}");
    assert!(socket(&w.alice).is_some());
    w.alice.run(&["disconnect", "mypc"])?;
    Ok(())
}

/// The pid of the process keeping `device`'s session to mypc.
fn holder_pid(device: &Device) -> Option<u32> {
    let home = device.home.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("hold-session") && cmdline.contains(&home)).then_some(pid)
    })
}

/// A holder that stopped answering (here: stopped with SIGSTOP) does not
/// hold up the next command, which logs in on its own within seconds.
#[tokio::test(flavor = "multi_thread")]
async fn a_holder_that_does_not_answer_is_passed_by() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let kept = || w.alice.keeping_sessions("30s");
    exec(kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE), &["true"])?;
    let pid = holder_pid(&w.alice).context("no holder")?.to_string();
    anyhow::ensure!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()?
        .success());
    let started = std::time::Instant::now();
    let out = exec(
        kept().env("LATCHKEY_ACCESS_CODE", OWNER_CODE),
        &["echo", "passed"],
    );
    let took = started.elapsed();
    anyhow::ensure!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()?
        .success());
    let out = out?;
    assert_eq!(text(&out.stdout), "passed\n", "{}", text(&out.stderr));
    println!("a command passed a stopped holder in {took:?}");
    assert!(took < Duration::from_secs(12), "held up for {took:?}");
    w.alice.run(&["disconnect", "mypc"])?;
    Ok(())
}
