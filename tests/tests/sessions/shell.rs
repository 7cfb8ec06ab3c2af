//! `latchkey connect` (SPEC X2, R1): a real PTY on the host and its exit
//! status, window resizes, and goodbyes on lines of their own (`~.`, a
//! reboot that never comes back, a relay gone for good).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use latchkey_protocol::session::{ChannelKind, ShellIn, ShellOut};
use latchkey_tests::{World, OWNER_CODE, WAIT};

use crate::{remote, text};

#[tokio::test(flavor = "multi_thread")]
async fn connect_drives_a_real_pty_and_returns_the_exit_status() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let out =
        w.alice
            .run_with_input_env(&["connect", "mypc"], "tty\nstty size\nexit 7", OWNER_CODE)?;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("/dev/pts/"), "{stdout}");
    assert!(stdout.contains("24 80"), "{stdout}");
    assert_eq!(out.status.code(), Some(7), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_window_resize_reaches_the_pty() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let remote = remote(&w).await?;
    let kind = ChannelKind::Shell {
        term: "xterm".into(),
        cols: 80,
        rows: 24,
    };
    let (mut send, mut recv, _) = remote.channel(kind).await?;
    send.write_frame(&ShellIn::Resize {
        cols: 100,
        rows: 40,
    })
    .await?;
    send.write_frame(&ShellIn::Data(b"stty size; exit 0\n".to_vec()))
        .await?;
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline.into(), recv.read_frame::<ShellOut>()).await?;
        match frame {
            Ok(Some(ShellOut::Data(b))) => seen.push_str(&text(&b)),
            Ok(Some(ShellOut::Exit(code))) => {
                assert_eq!(code, 0);
                break;
            }
            other => bail!("shell ended without exit: {other:?} after {seen:?}"),
        }
    }
    assert!(seen.contains("40 100"), "{seen}");
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
