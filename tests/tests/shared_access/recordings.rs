//! Recordings on the host: a shared user's shell replays the bytes its
//! client was shown (checked with Latchkey's replay and with asciinema's
//! own parser), a command keeps its command line and exit status, a copy
//! its line; the files are owner-only and pruned past their days; the
//! user is told; `record` says whose sessions. Real relay, agent and
//! client binaries on loopback.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context, Result};
use latchkey_tests::{World, OWNER_CODE};

const TOLD: &str = "records this session";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn recordings(w: &World) -> Result<Vec<serde_json::Value>> {
    let text = w.mypc.run(&["host", "recordings", "--json"])?;
    Ok(serde_json::from_str::<serde_json::Value>(&text)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Waits for the agent to finish writing the recording of `kind` (with
/// `detail`, if given; its channel ends just after the client's does).
fn ended(w: &World, kind: &str, detail: Option<&str>) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = recordings(w)?;
        let found = all.iter().rev().find(|r| {
            r["kind"] == kind && !r["outcome"].is_null() && detail.is_none_or(|d| r["detail"] == d)
        });
        if let Some(r) = found {
            return Ok(r.clone());
        }
        if Instant::now() > deadline {
            bail!("no ended {kind} recording: {all:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn file_of(w: &World, id: &str, ext: &str) -> PathBuf {
    w.mypc.home.join("recordings").join(format!("{id}.{ext}"))
}

/// What asciinema's own parser reads as the recording's output (as
/// `asciinema cat` prints it, without needing a terminal). Outside CI,
/// `None` with the reason printed when Debian's asciinema is missing.
fn asciinema_output(path: &Path) -> Result<Option<String>> {
    if !Path::new("/usr/bin/asciinema").exists() && std::env::var_os("CI").is_none() {
        eprintln!("skipping asciinema's check: `apt-get install asciinema` (CI installs it)");
        return Ok(None);
    }
    let script = "import sys\nfrom asciinema import asciicast\nwith asciicast.open_from_url(sys.argv[1]) as a:\n    for _, _, text in a.stdout_events():\n        sys.stdout.write(text)\n";
    // The interpreter asciinema itself runs with (Debian's python3).
    let launcher = std::fs::read_to_string("/usr/bin/asciinema")
        .context("asciinema (Debian's package) is not installed")?;
    let python = launcher
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .context("asciinema has no interpreter line")?
        .trim()
        .to_owned();
    let out = Command::new(python)
        .args(["-c", script])
        .arg(path)
        .output()
        .context("asciinema's interpreter")?;
    ensure!(
        out.status.success(),
        "asciinema could not read {}: {}",
        path.display(),
        stderr(&out)
    );
    Ok(Some(String::from_utf8(out.stdout)?))
}

#[cfg(unix)]
fn mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_users_shell_replays_the_bytes_its_client_was_shown() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let shell = w.bob.run_with_input_env(
        &["connect", "mypc"],
        "printf 'h\\303\\251llo %s\\n' $((6*7))\nexit 3\n",
        OWNER_CODE,
    )?;
    assert_eq!(shell.status.code(), Some(3), "{}", stderr(&shell));
    assert!(String::from_utf8_lossy(&shell.stdout).contains("héllo 42"));
    assert!(stderr(&shell).contains(TOLD), "{}", stderr(&shell));

    let rec = ended(&w, "shell", None)?;
    assert_eq!(rec["user"], "bob");
    assert_eq!(rec["outcome"], "exit 3");
    let id = rec["id"].as_str().context("id")?;
    let file = file_of(&w, id, "cast");
    // Replayed at once (standard output is a pipe): the very bytes.
    let replay = w.mypc.cmd().args(["host", "replay", id]).output()?;
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert_eq!(replay.stdout, shell.stdout);
    assert!(
        stderr(&replay).contains("bob on mypc: shell"),
        "{}",
        stderr(&replay)
    );
    assert!(stderr(&replay).contains("exit 3"));
    // asciinema reads the same output from it.
    if let Some(output) = asciinema_output(&file)? {
        assert_eq!(output.as_bytes(), shell.stdout);
    }
    #[cfg(unix)]
    {
        assert_eq!(mode(&file)?, 0o600);
        assert_eq!(mode(&w.mypc.home.join("recordings"))?, 0o700);
    }
    // The channel log names the recording.
    let log = std::fs::read_to_string(w.mypc.home.join("channels.log"))?;
    assert!(log.contains(&format!("\"recording\":\"{id}\"")), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_keeps_its_command_line_and_status_and_a_copy_its_line() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let exec = w.bob.with_code(
        OWNER_CODE,
        &[
            "exec",
            "mypc",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 4",
        ],
    )?;
    assert_eq!(exec.status.code(), Some(4), "{}", stderr(&exec));
    assert!(stderr(&exec).contains(TOLD));
    let rec = ended(&w, "exec", Some("sh -c 'echo out; echo err >&2; exit 4'"))?;
    assert_eq!(rec["outcome"], "exit 4");
    let id = rec["id"].as_str().context("id")?;
    let replay = w.mypc.cmd().args(["host", "replay", id]).output()?;
    assert_eq!(String::from_utf8_lossy(&replay.stdout), "out\nerr\n");

    // A command's standard input is kept: it may be the whole program.
    let piped = w.bob.run_with_input_env(
        &["exec", "mypc", "--", "sh"],
        "echo from-stdin\n",
        OWNER_CODE,
    )?;
    assert!(piped.status.success(), "{}", stderr(&piped));
    let rec = ended(&w, "exec", Some("sh"))?;
    let id = rec["id"].as_str().context("id")?;
    let replay = w
        .mypc
        .cmd()
        .args(["host", "replay", "--input", id])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&replay.stdout), "from-stdin\n");
    assert!(
        stderr(&replay).contains("latchkey: sent: echo from-stdin\\n"),
        "{}",
        stderr(&replay)
    );

    let src = w.dir.path().join("report.txt");
    std::fs::write(&src, "twelve bytes")?;
    let dst = w.dir.path().join("on-host.txt");
    let up = w.bob.copy_to(OWNER_CODE, &src, "mypc", &dst)?;
    assert!(up.status.success(), "{}", stderr(&up));
    let copy = ended(&w, "copy-to", None)?;
    assert_eq!(copy["outcome"], "done");
    assert!(copy["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("report.txt (12 bytes)"));
    let id = copy["id"].as_str().context("id")?;
    let said = w.mypc.cmd().args(["host", "replay", id]).output()?;
    assert!(
        stderr(&said).contains("bob copy-to report.txt (12 bytes)"),
        "{}",
        stderr(&said)
    );

    // A command on a kept session is told as well: the holder passes the
    // host's word on.
    let kept = || w.bob.keeping_sessions("10s");
    let first = kept()
        .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
        .args(["exec", "mypc", "--", "true"])
        .output()?;
    assert!(first.status.success(), "{}", stderr(&first));
    let reused = kept().args(["exec", "mypc", "--", "true"]).output()?;
    assert!(reused.status.success(), "{}", stderr(&reused));
    assert!(stderr(&reused).contains(TOLD), "{}", stderr(&reused));
    w.bob.run(&["disconnect", "mypc"])?;

    // The owner's own work is not recorded by default, and not told so.
    let before = recordings(&w)?.len();
    let owner = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(owner.status.success(), "{}", stderr(&owner));
    assert!(!stderr(&owner).contains(TOLD));
    assert_eq!(recordings(&w)?.len(), before);
    // Nor a replay of nothing.
    let missing = w.mypc.cmd().args(["host", "replay", "../host"]).output()?;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no recording '../host'"),
        "{}",
        stderr(&missing)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn record_says_whose_sessions_all_or_none() -> Result<()> {
    let w = World::new()?;
    w.mypc.set_host_value("record", "all")?;
    let mut agent = w.start_agent()?;
    let owner = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(stderr(&owner).contains(TOLD), "{}", stderr(&owner));
    assert_eq!(ended(&w, "exec", None)?["user"], "alice");
    agent.terminate()?;

    w.mypc.set_host_value("record", "off")?;
    let _agent = w.start_agent()?;
    let before = recordings(&w)?.len();
    let shared = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(shared.status.success(), "{}", stderr(&shared));
    assert!(!stderr(&shared).contains(TOLD));
    assert_eq!(recordings(&w)?.len(), before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn recordings_past_their_days_are_pruned() -> Result<()> {
    let w = World::new()?;
    w.mypc.set_host_value("record_keep_days", 1)?;
    let dir = w.mypc.home.join("recordings");
    std::fs::create_dir_all(&dir)?;
    let old = dir.join("20200101-000000-abcd.json");
    let recent = dir.join("20200101-000000-abce.json");
    for path in [&old, &recent] {
        std::fs::write(path, "{}\n")?;
    }
    std::fs::File::options()
        .write(true)
        .open(&old)?
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 86_400))?;
    let _agent = w.start_agent()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while old.exists() {
        ensure!(
            Instant::now() < deadline,
            "the expired recording is still there"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(recent.exists());
    Ok(())
}
