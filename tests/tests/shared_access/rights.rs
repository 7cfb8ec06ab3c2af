//! Rights per grant: what a shared user may do on a host (shell, exec,
//! copy-from, copy-to, forward to some targets, reboot), set by the admin
//! and enforced by the host, the only place that sees what a channel is
//! for. The host's own config narrows them further; the owner is never
//! narrowed. Real relay, agent and client binaries on loopback.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use anyhow::Result;
use latchkey_tests::{fetch, hello_target, tcp::echo_target, World, OWNER_CODE};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_only_grant_opens_no_shell_and_runs_no_command() -> Result<()> {
    let w = World::new()?;
    w.relay
        .admin(&["rights", "mypc", "bob", "--allow", "copy-from,copy-to"])?;
    let _agent = w.start_agent()?;
    let exec = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "ran"])?;
    assert_eq!(exec.status.code(), Some(255), "{}", stderr(&exec));
    assert!(!String::from_utf8_lossy(&exec.stdout).contains("ran"));
    assert!(
        stderr(&exec)
            .contains("your grant on mypc does not allow running commands on it; ask your admin"),
        "{}",
        stderr(&exec)
    );
    let shell = w.bob.with_code(OWNER_CODE, &["connect", "mypc"])?;
    assert_eq!(shell.status.code(), Some(255));
    assert!(
        stderr(&shell).contains("does not allow opening a shell on it"),
        "{}",
        stderr(&shell)
    );
    // Copies both ways work.
    let src = w.dir.path().join("to-host.txt");
    std::fs::write(&src, "copied")?;
    let on_host = w.dir.path().join("on-host.txt");
    let up = w.bob.copy_to(OWNER_CODE, &src, "mypc", &on_host)?;
    assert!(up.status.success(), "{}", stderr(&up));
    let back = w.dir.path().join("back.txt");
    let down = w.bob.with_code(
        OWNER_CODE,
        &[
            "cp",
            &format!("mypc:{}", on_host.display()),
            &back.display().to_string(),
        ],
    )?;
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(std::fs::read_to_string(&back)?, "copied");
    // The owner is not narrowed.
    let owner = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "owner-ran"])?;
    assert!(String::from_utf8_lossy(&owner.stdout).contains("owner-ran"));
    // The host logged each refusal with the right it lacked.
    let log = std::fs::read_to_string(w.mypc.home.join("channels.log"))?;
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(refusals.len(), 2, "{log}");
    assert!(refusals[0].contains("\"kind\":\"exec\"") && refusals[0].contains("allow exec"));
    assert!(refusals[1].contains("\"kind\":\"shell\""));
    // The grant's rights are on record, with who set them.
    let status = w.relay.status("mypc")?;
    assert_eq!(status["rights"]["bob"], "copy-from,copy-to", "{status}");
    let events = w.relay.audit_events("mypc")?;
    assert!(events.iter().any(|e| e == "rights"), "{events:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forward_only_grant_reaches_only_its_targets() -> Result<()> {
    let w = World::new()?;
    let hello = hello_target().await?.to_string();
    let echo = echo_target().await?.to_string();
    w.mypc.allow_forward(&[hello.clone(), echo.clone()])?;
    w.relay.admin(&[
        "rights",
        "mypc",
        "bob",
        "--allow",
        "forward",
        "--forward-to",
        &hello,
    ])?;
    let _agent = w.start_agent()?;
    // The target outside the grant is refused when the forward starts.
    let refused = w
        .bob
        .with_code(OWNER_CODE, &["forward", "mypc", &format!("0:{echo}")])?;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(&format!(
            "does not allow forwarding to {echo}; it allows: {hello}"
        )),
        "{}",
        stderr(&refused)
    );
    // The one inside it works.
    let (mut forward, local) = World::start_forward_as(&w.bob, &[], &hello)?;
    assert!(fetch(local.clone())
        .await?
        .contains("hello from the host side"));
    let exec = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert_eq!(exec.status.code(), Some(255));
    // With the right taken away, a new connection to the running forward
    // is reset, never closed as if the target had answered nothing.
    w.relay
        .admin(&["rights", "mypc", "bob", "--allow", "exec"])?;
    let taken = Instant::now();
    loop {
        let answer = async {
            let mut tcp = tokio::net::TcpStream::connect(&local).await?;
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut got).await
        };
        match tokio::time::timeout(Duration::from_secs(20), answer).await? {
            Err(e) => {
                println!(
                    "refused {:?} after the right was taken: {e}",
                    taken.elapsed()
                );
                break;
            }
            Ok(0) => panic!("a refused connection ended cleanly, as an empty answer"),
            // Not yet at the host.
            Ok(_) => {
                assert!(taken.elapsed() < Duration::from_secs(10), "still forwarded");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    forward.terminate()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn taking_the_shell_away_ends_a_live_shell_at_once_and_leaves_the_owner_alone() -> Result<()>
{
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let (mut shell, mut keys) = w.bob.spawn_shell("mypc")?;
    keys.write_all(b"echo ready-$((1+1))\n")?;
    shell.expect_line("ready-2")?;
    let (mut owner, mut owner_keys) = w.alice.spawn_shell("mypc")?;
    owner_keys.write_all(b"echo owner-$((3+3))\n")?;
    owner.expect_line("owner-6")?;
    let taken = Instant::now();
    w.relay
        .admin(&["rights", "mypc", "bob", "--allow", "exec"])?;
    let status = shell.wait_exit()?;
    println!(
        "the shell ended {:?} after its right was taken",
        taken.elapsed()
    );
    assert!(taken.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(255));
    shell.lines_until("does not allow opening a shell on it")?;
    // What the grant still allows works, in a new command.
    let exec = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "still-exec"])?;
    assert!(String::from_utf8_lossy(&exec.stdout).contains("still-exec"));
    // The owner's shell went on.
    owner_keys.write_all(b"echo owner-$((4+4))\n")?;
    owner.expect_line("owner-8")?;
    owner_keys.write_all(b"exit\n")?;
    assert!(owner.wait_exit()?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hosts_config_narrows_a_wider_grant() -> Result<()> {
    let w = World::new()?;
    w.mypc.set_shared_rights("exec")?;
    w.mypc.set_reboot_command(&["true"])?;
    let mut agent = w.start_agent()?;
    let src = w.dir.path().join("up.txt");
    std::fs::write(&src, "x")?;
    let dest = format!("mypc:{}", w.dir.path().join("up-on-host.txt").display());
    let up = w
        .bob
        .with_code(OWNER_CODE, &["cp", &src.display().to_string(), &dest])?;
    assert_eq!(up.status.code(), Some(255));
    assert!(
        stderr(&up).contains("the owner of mypc allows no shared user copying files to it"),
        "{}",
        stderr(&up)
    );
    let exec = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "bob-ran"])?;
    assert!(String::from_utf8_lossy(&exec.stdout).contains("bob-ran"));
    // Nor may bob reboot it: the agent stays.
    let reboot = w.bob.with_code(OWNER_CODE, &["reboot", "mypc"])?;
    assert!(!reboot.status.success());
    assert!(
        stderr(&reboot).contains("the owner of mypc allows no shared user rebooting it"),
        "{}",
        stderr(&reboot)
    );
    assert!(agent.running());
    // The owner copies all the same.
    let owner_up = w
        .alice
        .with_code(OWNER_CODE, &["cp", &src.display().to_string(), &dest])?;
    assert!(owner_up.status.success(), "{}", stderr(&owner_up));
    Ok(())
}

/// A grant given an end (`--for`) ends by itself as a revoke does: the
/// live session goes within a second of the end, owner and user are
/// mailed, and the audit says why. Until then it is listed with its end.
#[tokio::test(flavor = "multi_thread")]
async fn a_grant_that_expires_ends_its_live_session_and_says_so() -> Result<()> {
    use latchkey_tests::{smtp::SmtpSink, wait_until};
    let sink = SmtpSink::start("127.0.0.1:0".parse()?).await?;
    let smtp = format!(
        "{{ host = \"127.0.0.1\", port = {}, from = \"Latchkey <relay@example.test>\", tls = \"none\" }}",
        sink.addr.port()
    );
    let w = World::without_grant(vec![("LATCHKEY_RELAY_SMTP".into(), smtp)])?;
    w.relay
        .admin(&["set-email", "alice", "alice@example.test"])?;
    w.relay.admin(&["set-email", "bob", "bob@example.test"])?;
    // A past or zero end is refused, changing nothing.
    let refused = w
        .relay
        .admin_output(&["grant", "mypc", "bob", "--until", "2020-01-01T00:00"])?;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("in the future"),
        "{}",
        stderr(&refused)
    );
    w.relay.admin(&["grant", "mypc", "bob", "--for", "6s"])?;
    let hosts = w.bob.run(&["hosts"])?;
    assert!(hosts.contains("shared until"), "{hosts}");
    let status = w.relay.status("mypc")?;
    let ends = status["expires"]["bob"]
        .as_u64()
        .map(|at| std::time::UNIX_EPOCH + Duration::from_secs(at))
        .ok_or_else(|| anyhow::anyhow!("no end in {status}"))?;
    let _agent = w.start_agent()?;
    let mut sleeping = w.bob_sleeping_on_mypc(60)?;
    assert!(
        std::time::SystemTime::now() < ends,
        "the session started after the grant's end"
    );
    wait_until("bob's session to end", || !sleeping.running())?;
    let late = std::time::SystemTime::now().duration_since(ends)?;
    println!("the session ended {late:?} after the grant's end");
    assert!(
        late < Duration::from_secs(1),
        "ended {late:?} after the grant's end"
    );
    let events = w.relay.audit_events("mypc")?;
    assert!(events.iter().any(|e| e == "grant-expired"), "{events:?}");
    wait_until("the mails", || {
        let mail = sink.received();
        mail.iter()
            .any(|m| m.contains("To: alice@example.test") && m.contains("expired"))
            && mail
                .iter()
                .any(|m| m.contains("To: bob@example.test") && m.contains("expired"))
    })?;
    // And bob is out: his code no longer opens mypc.
    let out = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(!out.status.success());
    Ok(())
}

/// A grant's idle limit (`--idle`): a session with no channel traffic for
/// that long ends, saying why; one whose command prints now and then does
/// not; the owner has no limit.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_ends_and_a_busy_one_does_not() -> Result<()> {
    let w = World::new()?;
    w.relay.admin(&["rights", "mypc", "bob", "--idle", "2s"])?;
    assert!(w
        .relay
        .admin(&["status", "mypc"])?
        .contains("idle limit 2s"));
    let _agent = w.start_agent()?;
    let started = Instant::now();
    let quiet = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "sleep", "20"])?;
    println!("the quiet session ended after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(quiet.status.code(), Some(255), "{}", stderr(&quiet));
    assert!(
        stderr(&quiet).contains("had no traffic for 2s, your grant's idle limit"),
        "{}",
        stderr(&quiet)
    );
    let busy = w.bob.with_code(
        OWNER_CODE,
        &[
            "exec",
            "mypc",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3 4; do echo tick; sleep 1; done",
        ],
    )?;
    assert!(busy.status.success(), "{}", stderr(&busy));
    assert_eq!(
        String::from_utf8_lossy(&busy.stdout)
            .matches("tick")
            .count(),
        4
    );
    let owner = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "sleep", "3"])?;
    assert!(owner.status.success(), "{}", stderr(&owner));
    Ok(())
}

/// An upload cut because copy-to was taken away leaves no partial file on
/// the host (the file helper is given time to remove it).
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_by_a_right_taken_away_leaves_no_partial_file() -> Result<()> {
    use latchkey_tests::wait_until;
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let big = w.dir.path().join("big.bin");
    std::fs::File::create(&big)?.set_len(2 << 30)?;
    let drop_dir = w.dir.path().join("drop");
    std::fs::create_dir(&drop_dir)?;
    let dest = format!("mypc:{}/", drop_dir.display());
    let mut cp = w
        .bob
        .spawn_with_code(OWNER_CODE, &["cp", &big.display().to_string(), &dest])?;
    let entries = || -> Vec<String> {
        std::fs::read_dir(&drop_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_until("the upload's partial file", || {
        entries().iter().any(|n| n.ends_with(".latchkey-partial"))
    })?;
    w.relay
        .admin(&["rights", "mypc", "bob", "--allow", "exec"])?;
    assert!(!cp.wait_exit()?.success());
    wait_until("the partial file to go", || entries().is_empty())?;
    Ok(())
}
