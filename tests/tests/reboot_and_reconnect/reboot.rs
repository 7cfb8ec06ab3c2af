//! In-session reboot (SPEC R1-R4, R6, S4): the session resumes when the host
//! is back, without the code; tickets are single-use and bound to their
//! host; reboots are rate-limited and a failed reboot command is reported;
//! a revoke or a relay restart during the reboot leaves no stuck state.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use anyhow::Result;
use latchkey_tests::{count, wait_until, Device, Proc, World, OWNER_CODE};

use crate::world;

/// Waits for the agent to exit after a reboot request, then starts it again.
fn supervise(w: &World, agent: &mut Proc) -> Result<Proc> {
    let status = agent.wait_exit()?;
    assert!(status.success(), "agent exited with {status}");
    w.start_agent()
}

#[tokio::test(flavor = "multi_thread")]
async fn reboot_during_connect_resumes_and_a_command_typed_after_runs_on_the_host() -> Result<()> {
    let w = world(Vec::new())?;
    let mut agent = w.start_agent()?;
    let (mut shell, mut keys) = w.alice.spawn_shell("mypc")?;
    keys.write_all(b"echo before-$((1+1))\n")?;
    shell.expect_line("before-2")?;
    keys.write_all(b"~R")?;
    let _agent = supervise(&w, &mut agent)?;
    let back = Instant::now();
    keys.write_all(b"echo after-$((2+3))\n")?;
    shell.expect_line("after-5")?;
    println!(
        "agent online -> command ran in the resumed shell: {:?}",
        back.elapsed()
    );
    keys.write_all(b"exit 4\n")?;
    assert_eq!(shell.wait_exit()?.code(), Some(4));
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "reboot"), 1, "{events:?}");
    assert_eq!(count(&events, "resume"), 1, "{events:?}");
    assert!(
        !w.mypc.home.join("resume.ticket").exists(),
        "ticket left behind"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reboot_during_forward_connections_after_the_resume_reach_the_target() -> Result<()> {
    let target = latchkey_tests::hello_target().await?;
    let w = world(Vec::new())?;
    w.mypc.allow_forward(&[target.to_string()])?;
    let mut agent = w.start_agent()?;
    let (_forward, local) = w.start_forward(&target.to_string())?;
    assert!(latchkey_tests::fetch(local.clone())
        .await?
        .contains("hello"));
    let mut reboot = w.bob.spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?;
    let _agent = supervise(&w, &mut agent)?;
    assert!(reboot.wait_exit()?.success());
    latchkey_tests::wait_until_forwarding(&local)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_never_returns_ends_the_session_with_a_clear_message() -> Result<()> {
    let w = world(vec![(
        "LATCHKEY_RELAY_REBOOT_DEADLINE_SECS".into(),
        "2".into(),
    )])?;
    let mut agent = w.start_agent()?;
    let out = w.alice.with_code(OWNER_CODE, &["reboot", "mypc"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not come back within 2 s"), "{err}");
    // When it does come back, its ticket has expired: refused, and audited.
    assert!(agent.wait_exit()?.success());
    let _agent = w.start_agent()?;
    wait_until("the refusal in the audit log", || {
        w.relay
            .audit_events("mypc")
            .map(|e| e.iter().any(|x| x == "resume-refused"))
            .unwrap_or(false)
    })?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "fine"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_forged_and_foreign_tickets_are_refused_and_reboots_are_rate_limited() -> Result<()>
{
    let w = world(Vec::new())?;
    let other = Device {
        home: w.dir.path().join("otherpc"),
    };
    other.enroll_host(&w.relay.invite_host("otherpc", "alice")?)?;
    let mut agent = w.start_agent()?;
    let mut reboot = w.alice.spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?;
    assert!(agent.wait_exit()?.success());
    let ticket = std::fs::read(w.mypc.home.join("resume.ticket"))?;
    // Presented by another host first: refused, and it stays usable.
    std::fs::write(other.home.join("resume.ticket"), &ticket)?;
    let mut other_agent = other.start_agent()?;
    wait_until("the foreign ticket's refusal", || {
        w.relay
            .audit_events("otherpc")
            .map(|e| e.iter().any(|x| x == "resume-refused"))
            .unwrap_or(false)
    })?;
    other_agent.kill9();
    let mut agent = w.start_agent()?;
    assert!(reboot.wait_exit()?.success(), "the session did not resume");
    // A second reboot right away is refused by the rate limit.
    let out = w.alice.with_code(OWNER_CODE, &["reboot", "mypc"])?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("try again in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refusals = |n: usize| {
        wait_until("the ticket's refusal", || {
            w.relay
                .audit_events("mypc")
                .map(|e| count(&e, "resume-refused") == n && count(&e, "resume") == 1)
                .unwrap_or(false)
        })
    };
    // Replayed: the same ticket again.
    agent.kill9();
    std::fs::write(w.mypc.home.join("resume.ticket"), &ticket)?;
    let mut agent = w.start_agent()?;
    refusals(1)?;
    // Forged.
    agent.kill9();
    std::fs::write(w.mypc.home.join("resume.ticket"), [7u8; 32])?;
    let _agent = w.start_agent()?;
    refusals(2)?;
    let audit = w.relay.admin_json(&["audit", "--host", "mypc"])?;
    let details: Vec<String> = audit
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["event"] == "resume-refused")
        .filter_map(|r| r["detail"].as_str().map(String::from))
        .collect();
    assert_eq!(details, ["ticket already used", "unknown ticket"]);
    Ok(())
}

/// Six reboot requests at the same instant, from two users: the rate limit
/// is checked and claimed under one lock, so exactly one reboot is issued.
#[tokio::test(flavor = "multi_thread")]
async fn simultaneous_reboot_requests_issue_exactly_one_reboot() -> Result<()> {
    // The one reboot's client gives up soon (the host never comes back).
    let w = World::with_env(vec![(
        "LATCHKEY_RELAY_REBOOT_DEADLINE_SECS".into(),
        "4".into(),
    )])?;
    // A "reboot" that keeps the agent connected for a while.
    w.mypc.set_reboot_command(&["sleep", "3"])?;
    let _agent = w.start_agent()?;
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(w.alice.spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?);
        procs.push(w.bob.spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?);
    }
    let refused = procs
        .iter_mut()
        .filter_map(|p| p.wait_exit().ok())
        .filter(|s| !s.success())
        .count();
    assert!(refused >= 5, "{refused} of 6 refused");
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "reboot"), 1, "{events:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_reboot_command_is_reported_within_2_s_with_its_cause() -> Result<()> {
    let w = World::new()?;
    w.mypc.set_reboot_command(&[
        "sh",
        "-c",
        "echo 'Failed to reboot: access denied' >&2; echo more >&2; exit 3",
    ])?;
    let mut agent = w.start_agent()?;
    let started = Instant::now();
    let out = w.alice.with_code(OWNER_CODE, &["reboot", "mypc"])?;
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(
        took < std::time::Duration::from_secs(2),
        "took {took:?}: {err}"
    );
    assert!(err.contains("did not reboot"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(err.contains("Failed to reboot: access denied"), "{err}");
    assert!(!err.contains("more"), "only the first line: {err}");
    // The host stays up, and the rate limit was given back: a second try
    // is not told to wait. `false` fails without a word.
    assert!(agent.running());
    w.mypc.set_reboot_command(&["false"])?;
    agent.kill9();
    let _agent = w.start_agent()?;
    let out = w.alice.with_code(OWNER_CODE, &["reboot", "mypc"])?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("try again in"), "{err}");
    assert!(err.contains("exit status: 1"), "{err}");
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "reboot-failed"), 2, "{events:?}");
    // Sessions go on as before.
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "still-up"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-up\n");
    Ok(())
}

/// While the host runs its reboot command (still connected, about to go),
/// a new connection through a forward is refused at once instead of
/// hanging until the host goes down.
#[tokio::test(flavor = "multi_thread")]
async fn connections_through_a_forward_are_refused_at_once_while_the_reboot_command_runs(
) -> Result<()> {
    let target = latchkey_tests::hello_target().await?;
    let w = World::new()?;
    // A reboot command that takes its time: the agent stays connected.
    w.mypc.set_reboot_command(&["sleep", "5"])?;
    w.mypc.allow_forward(&[target.to_string()])?;
    let _agent = w.start_agent()?;
    let (_forward, local) = w.start_forward(&target.to_string())?;
    assert!(latchkey_tests::fetch(local.clone())
        .await?
        .contains("hello"));
    let _reboot = w.bob.spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?;
    wait_until("the reboot request", || {
        w.relay
            .audit_events("mypc")
            .map(|e| count(&e, "reboot") == 1)
            .unwrap_or(false)
    })?;
    let started = Instant::now();
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(4),
        latchkey_tests::fetch(local),
    )
    .await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(2),
        "the connection hung for {took:?} ({got:?})"
    );
    assert!(!matches!(got, Ok(Ok(ref s)) if s.contains("hello")));
    Ok(())
}

/// The requester of a reboot is revoked while the host is down; the host
/// comes back with the reboot's ticket, and the owner's parked forward
/// resumes.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_during_a_reboot_does_not_strand_the_others_sessions() -> Result<()> {
    let target = latchkey_tests::hello_target().await?;
    let w = World::with_env(vec![(
        "LATCHKEY_RELAY_REBOOT_DEADLINE_SECS".into(),
        "120".into(),
    )])?;
    w.mypc.set_reboot_command(&["true"])?;
    w.mypc.allow_forward(&[target.to_string()])?;
    let mut agent = w.start_agent()?;
    let (_forward, local) = w.start_forward(&target.to_string())?;
    assert!(latchkey_tests::fetch(local.clone())
        .await?
        .contains("hello"));
    let mut reboot: Proc = w.bob.spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?;
    assert!(agent.wait_exit()?.success());
    w.relay.admin(&["revoke", "mypc", "bob"])?;
    let _ = reboot.wait_exit();
    let _agent = w.start_agent()?;
    let back = Instant::now();
    let mut worked = false;
    while back.elapsed() < Duration::from_secs(15) {
        let got =
            tokio::time::timeout(Duration::from_secs(2), latchkey_tests::fetch(local.clone()))
                .await;
        if matches!(got, Ok(Ok(ref s)) if s.contains("hello")) {
            worked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let events = w.relay.audit_events("mypc")?;
    println!("audit: {events:?}");
    assert!(
        worked,
        "the owner's forward did not resume within 15 s of the host's return"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_restart_while_the_host_reboots_leaves_no_stuck_state() -> Result<()> {
    let mut w = world(Vec::new())?;
    let mut agent = w.start_agent()?;
    let mut reboot = w.alice.spawn_with_code(OWNER_CODE, &["reboot", "mypc"])?;
    assert!(agent.wait_exit()?.success());
    w.relay.kill9();
    w.relay.restart()?;
    // The host comes back with its (durable, still valid) reboot ticket:
    // nothing waits for it on the restarted relay, and it simply goes
    // online; the waiting client resumes its session with its own ticket
    // (SPEC R6, no code asked) and sees the host back.
    let _agent = w.start_agent()?;
    assert!(reboot.wait_exit()?.success());
    assert_eq!(count(&w.relay.audit_events("mypc")?, "session-resume"), 1);
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "fine"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n");
    assert!(!w.mypc.home.join("resume.ticket").exists());
    // Spent, but nothing resumed: neither the audit nor the agent says so.
    wait_until("the ticket's refusal in the audit log", || {
        w.relay
            .audit_events("mypc")
            .map(|e| count(&e, "resume-refused") == 1)
            .unwrap_or(false)
    })?;
    assert_eq!(count(&w.relay.audit_events("mypc")?, "resume"), 0);
    let log = std::fs::read_to_string(w.dir.path().join("mypc-agent.log"))?;
    assert!(!log.contains("sessions resumed"), "{log}");
    assert!(log.contains("resume refused"), "{log}");
    Ok(())
}

/// What `connect` shows in a terminal while the host reboots, read from a
/// terminal emulator's screen: the status line is redrawn in place at the
/// left margin (the terminal is in raw mode, so every line must start with
/// a carriage return), not a staircase of lines.
#[tokio::test(flavor = "multi_thread")]
async fn reboot_status_lines_stay_in_place_on_the_screen() -> Result<()> {
    use std::sync::{Arc, Mutex};

    use portable_pty::{native_pty_system, CommandBuilder, PtySize};
    const COLS: u16 = 100;
    let w = world(Vec::new())?;
    let mut agent = w.start_agent()?;
    let pty = native_pty_system()
        .openpty(PtySize {
            rows: 30,
            cols: COLS,
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cmd = CommandBuilder::new(latchkey_tests::bin("latchkey"));
    let home = w
        .alice
        .home
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("path"))?;
    cmd.args(["--home", home, "connect", "mypc"]);
    cmd.env("LATCHKEY_ACCESS_CODE", OWNER_CODE);
    cmd.env("LATCHKEY_LOG", "warn");
    cmd.env("LATCHKEY_PERSIST", "0");
    cmd.env("XDG_RUNTIME_DIR", home);
    cmd.env("PS1", "$ ");
    let mut child = pty
        .slave
        .spawn_command(cmd)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    drop(pty.slave);
    let terminal = Arc::new(Mutex::new(vt100::Parser::new(30, COLS, 0)));
    let mut reader = pty
        .master
        .try_clone_reader()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let drawing = terminal.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut reader, &mut buf) {
            if let Ok(mut t) = drawing.lock() {
                t.process(&buf[..n]);
            }
        }
    });
    let mut keys = pty
        .master
        .take_writer()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let screen = || {
        terminal
            .lock()
            .map(|t| t.screen().rows(0, COLS).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let shows = |text: &str| screen().iter().any(|row| row.contains(text));
    keys.write_all(b"echo ready-$((1+1))\r")?;
    wait_until("the shell", || shows("ready-2"))?;
    keys.write_all(b"~R")?;
    let status = agent.wait_exit()?;
    assert!(status.success(), "agent exited with {status}");
    // Several redraws of the waiting line.
    wait_until("a few seconds of waiting", || shows("rebooting… 3 s"))?;
    let _agent = w.start_agent()?;
    wait_until("the shell back", || shows("is back after"))?;
    keys.write_all(b"echo after-$((2+3))\r")?;
    wait_until("a command after the reboot", || shows("after-5"))?;

    let rows = screen();
    let drawn = rows.join("\n");
    for row in rows.iter().filter(|r| r.contains("[latchkey:")) {
        assert!(
            row.starts_with("[latchkey:"),
            "a status line off the left margin: {row:?}\n{drawn}"
        );
    }
    let waiting = rows.iter().filter(|r| r.contains("rebooting…")).count();
    assert_eq!(
        waiting, 1,
        "the waiting line was not redrawn in place:\n{drawn}"
    );
    keys.write_all(b"exit\r")?;
    let started = Instant::now();
    while child.try_wait()?.is_none() {
        anyhow::ensure!(
            started.elapsed() < latchkey_tests::WAIT,
            "connect did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `reboot` on a kept session (`--persist`) asks no code, and the session
/// it rebooted stays kept for the next command, with one login in all.
#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_on_a_kept_session_leaves_it_kept_for_the_next_command() -> Result<()> {
    let w = world(Vec::new())?;
    let mut agent = w.start_agent()?;
    let kept = || {
        let mut cmd = w.alice.keeping_sessions("60s");
        cmd.stdin(std::process::Stdio::null());
        cmd
    };
    let out = kept()
        .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
        .args(["exec", "mypc", "--", "true"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reboot = Proc::spawn_logged(
        kept().args(["reboot", "mypc"]),
        std::fs::File::create(w.dir.path().join("kept-reboot.log"))?,
    )?;
    let _agent = supervise(&w, &mut agent)?;
    assert!(reboot.wait_exit()?.success());
    let out = kept()
        .args(["exec", "mypc", "--", "echo", "after"])
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "after\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = w.relay.audit_events("mypc")?;
    assert_eq!(count(&events, "login-ok"), 1, "{events:?}");
    assert_eq!(count(&events, "reboot"), 1, "{events:?}");
    w.alice.run(&["disconnect", "mypc"])?;
    Ok(())
}
