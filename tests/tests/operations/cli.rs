//! The command lines as people and scripts meet them: shell completion
//! (run in a real bash) and man pages for both binaries, JSON from
//! `latchkey hosts` and `latchkey host info`, `host set-code` at a
//! terminal, the agent's word on who sessions run as, and admin commands
//! that change nothing (`policy` with no flag, `unlock` of an open host),
//! what disabling shared access does to grants already made, README's
//! regrant, and the help texts' grouping.

use std::{
    io::{Read, Write},
    path::Path,
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use latchkey_tests::{bin, count, current_account, World, OWNER_CODE, WAIT};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("a UTF-8 path")
}

/// What bash's completion offers for `line` (Tab at its end), with the
/// script `latchkey completions bash` prints sourced and the built
/// binaries first on the PATH.
fn bash_completion(line: &str, home: &Path) -> Result<Vec<String>> {
    completion_of("latchkey", line, home)
}

/// [`bash_completion`] for `binary`'s script.
fn completion_of(binary: &str, line: &str, home: &Path) -> Result<Vec<String>> {
    let bin_dir = bin("latchkey")
        .parent()
        .context("the binaries' directory")?
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // COMP_* as bash's own completion sets them for a Tab at the end.
    let script = r#"
        set -e
        source <("$BIN" completions bash)
        COMP_LINE="$LINE"; COMP_POINT=${#LINE}; COMP_TYPE=9
        read -ra COMP_WORDS <<< "$LINE"
        [[ "$LINE" == *" " ]] && COMP_WORDS+=("")
        COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
        "_clap_complete_${BIN//-/_}" "$BIN" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", script])
        .env("PATH", path)
        .env("LINE", line)
        .env("BIN", binary)
        .env("LATCHKEY_HOME", home)
        .output()?;
    if !out.status.success() {
        bail!("bash failed: {}", text(&out.stderr));
    }
    Ok(text(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_json_parses_and_bash_completes_the_hosts_it_listed() -> Result<()> {
    let w = World::new()?;
    // Nothing listed yet: a HOST argument is offered nothing.
    assert!(bash_completion("latchkey exec m", &w.alice.home)?.is_empty());

    let rows: serde_json::Value = serde_json::from_str(&w.alice.run(&["hosts", "--json"])?)?;
    let row = &rows.as_array().context("a list")?[0];
    assert_eq!(row["host"], "mypc", "{rows}");
    assert_eq!(row["owner"], "alice", "{rows}");
    assert_eq!(row["owner_access"], true, "{rows}");
    assert!(
        row["online"].is_boolean() && row["locked"] == false,
        "{rows}"
    );
    let rows: serde_json::Value = serde_json::from_str(&w.bob.run(&["hosts", "--json"])?)?;
    assert_eq!(rows[0]["owner_access"], false, "{rows}");

    // Listed once: offered at a Tab, for every command taking a HOST.
    assert_eq!(bash_completion("latchkey exec m", &w.alice.home)?, ["mypc"]);
    assert_eq!(
        bash_completion("latchkey connect my", &w.alice.home)?,
        ["mypc"]
    );
    assert!(bash_completion("latchkey exec x", &w.alice.home)?.is_empty());
    // cp offers `HOST:` (and local paths).
    assert!(bash_completion("latchkey cp myp", &w.alice.home)?.contains(&"mypc:".to_string()));
    // The home given on the line being completed is the one read.
    let elsewhere = w.dir.path().join("nobody");
    let line = format!("latchkey --home {} reboot m", w.alice.home.display());
    assert_eq!(bash_completion(&line, &elsewhere)?, ["mypc"]);

    // The relay's script completes its own commands.
    assert_eq!(
        completion_of("latchkey-relay", "latchkey-relay admin regr", &elsewhere)?,
        ["regrant"]
    );

    // zsh and fish get scripts of their own (not run here).
    for shell in ["zsh", "fish"] {
        let script = w.alice.run(&["completions", shell])?;
        assert!(script.contains("LATCHKEY_COMPLETE"), "{shell}: {script}");
    }
    Ok(())
}

/// Runs `BINARY man --dir DIR`; returns the pages written.
fn man_pages(binary: &str, dir: &Path) -> Result<Vec<String>> {
    let out = Command::new(bin(binary))
        .args(["man", "--dir", path_str(dir)?])
        .output()?;
    if !out.status.success() {
        bail!("{binary} man failed: {}", text(&out.stderr));
    }
    let mut pages: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    pages.sort();
    assert!(
        text(&out.stdout).contains(&format!("wrote {} man pages", pages.len())),
        "{}",
        text(&out.stdout)
    );
    Ok(pages)
}

#[test]
fn man_pages_are_written_for_each_command_of_both_binaries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let client = dir.path().join("client");
    let relay = dir.path().join("relay");
    let client_pages = man_pages("latchkey", &client)?;
    let relay_pages = man_pages("latchkey-relay", &relay)?;
    for page in [
        "latchkey.1",
        "latchkey-exec.1",
        "latchkey-host.1",
        "latchkey-host-set-code.1",
        "latchkey-completions.1",
    ] {
        assert!(client_pages.contains(&page.to_string()), "{client_pages:?}");
    }
    assert!(
        !client_pages.iter().any(|p| p.contains("file-helper")),
        "an internal command got a page: {client_pages:?}"
    );
    for page in [
        "latchkey-relay.1",
        "latchkey-relay-serve.1",
        "latchkey-relay-admin.1",
        "latchkey-relay-admin-grant.1",
        "latchkey-relay-admin-unlock.1",
    ] {
        assert!(relay_pages.contains(&page.to_string()), "{relay_pages:?}");
    }
    let groff = Command::new("groff").arg("--version").output().is_ok();
    if !groff {
        eprintln!("SKIPPED groff's check of the pages: no groff here (apt-get install groff-base)");
    }
    for path in client_pages
        .iter()
        .map(|p| client.join(p))
        .chain(relay_pages.iter().map(|p| relay.join(p)))
    {
        let page = std::fs::read_to_string(&path)?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("a page name")?;
        assert!(
            page.lines()
                .any(|l| l.starts_with(&format!(".TH {name} 1"))),
            "{}: no title line",
            path.display()
        );
        assert!(page.contains(".SH NAME") && page.contains(".SH SYNOPSIS"));
        if groff {
            let out = Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(&path)
                .output()?;
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "{}: {}",
                path.display(),
                text(&out.stderr)
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn host_info_prints_json_with_the_fingerprint_it_shows() -> Result<()> {
    let w = World::new()?;
    let info: serde_json::Value = serde_json::from_str(&w.mypc.run(&["host", "info", "--json"])?)?;
    assert_eq!(info["host"], "mypc", "{info}");
    let relays = info["relays"].as_array().context("relays: a list")?;
    assert_eq!(relays[0], w.relay.addr.to_string(), "{info}");
    let shown = w.mypc.run(&["host", "info"])?;
    let fingerprint = info["fingerprint"].as_str().context("a fingerprint")?;
    assert!(
        shown.contains(&format!("fingerprint: {fingerprint}")),
        "{shown} vs {info}"
    );
    Ok(())
}

/// A command at a terminal of its own, read as it prints and typed into
/// when it asks.
struct Terminal {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    input: Box<dyn Write + Send>,
    output: mpsc::Receiver<Vec<u8>>,
    seen: String,
    /// Where the next wait starts reading `seen`.
    cursor: usize,
    // Dropped last: the terminal the child reads.
    _master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Terminal {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        use portable_pty::{native_pty_system, CommandBuilder, PtySize};
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: 24,
                cols: 100,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut cmd = CommandBuilder::new(bin("latchkey"));
        cmd.args(args);
        // One login per command, as the test devices run.
        cmd.env("LATCHKEY_PERSIST", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env_remove("LATCHKEY_ACCESS_CODE");
        let child = pty
            .slave
            .spawn_command(cmd)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        drop(pty.slave);
        let mut reader = pty
            .master
            .try_clone_reader()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let input = pty
            .master
            .take_writer()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            input,
            output,
            seen: String::new(),
            cursor: 0,
            _master: pty.master,
        })
    }

    /// Waits until the output, past what earlier waits consumed, shows
    /// `needle`.
    fn wait_for(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(at) = self.seen[self.cursor..].find(needle) {
                self.cursor += at + needle.len();
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.push_str(&text(&bytes)),
                Err(_) => bail!("no {needle:?} in {:?}", self.seen),
            }
        }
    }

    fn type_line(&mut self, line: &str) -> Result<()> {
        self.input.write_all(format!("{line}\n").as_bytes())?;
        Ok(self.input.flush()?)
    }

    /// Waits for the exit; returns whether it succeeded and all it printed.
    fn finish(mut self) -> Result<(bool, String)> {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            anyhow::ensure!(Instant::now() < deadline, "did not exit: {:?}", self.seen);
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(bytes) = self.output.recv_timeout(Duration::from_millis(200)) {
            self.seen.push_str(&text(&bytes));
        }
        Ok((status.success(), self.seen))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn set_code_says_the_rule_first_and_asks_again_three_times() -> Result<()> {
    let w = World::new()?;
    let home = path_str(&w.mypc.home)?.to_owned();
    let args = ["--home", &home, "host", "set-code"];
    let env = [
        ("LATCHKEY_INSECURE_FAST_KSF", "1"),
        ("LATCHKEY_LOG", "warn"),
    ];
    let changes =
        |w: &World| -> Result<usize> { Ok(count(&w.relay.audit_events("mypc")?, "code-changed")) };
    let before = changes(&w)?;

    // The rule before the first prompt; a short code and a repeat that
    // differs are each asked again; the third try sets it.
    let mut t = Terminal::spawn(&args, &env)?;
    t.wait_for("8 to 256 bytes")?;
    t.wait_for("New access code: ")?;
    t.type_line("short")?;
    t.wait_for("access code must be 8 to 256 bytes long; try again.")?;
    t.wait_for("New access code: ")?;
    t.type_line("long enough 1")?;
    t.wait_for("Repeat the new access code: ")?;
    t.type_line("long enough 2")?;
    t.wait_for("the two codes differ; try again.")?;
    t.wait_for("New access code: ")?;
    t.type_line("long enough 3")?;
    t.wait_for("Repeat the new access code: ")?;
    t.type_line("long enough 3")?;
    let (ok, said) = t.finish()?;
    assert!(ok, "{said}");
    assert!(said.contains("access code set"), "{said}");
    assert_eq!(changes(&w)?, before + 1);

    // Three failed tries: a clear error, and nothing changed.
    let mut t = Terminal::spawn(&args, &env)?;
    for _ in 0..2 {
        t.wait_for("New access code: ")?;
        t.type_line("short")?;
    }
    t.wait_for("New access code: ")?;
    t.type_line("long enough 4")?;
    t.wait_for("Repeat the new access code: ")?;
    t.type_line("long enough 5")?;
    let (ok, said) = t.finish()?;
    assert!(!ok, "{said}");
    assert!(
        said.contains("no access code set after 3 tries (the last: the two codes differ)"),
        "{said}"
    );
    assert!(!said.contains("access code set;"), "{said}");
    assert_eq!(changes(&w)?, before + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_says_which_account_sessions_run_as() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let uid = text(&Command::new("id").arg("-u").output()?.stdout);
    let expected = format!(
        "sessions run as {} (uid {})",
        current_account()?,
        uid.trim()
    );
    let log = w.dir.path().join("mypc-agent.log");
    latchkey_tests::wait_until("the agent's account line", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(&expected))
    })
    .with_context(|| format!("{:?}", std::fs::read_to_string(&log)))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_without_a_flag_shows_it_and_disabling_keeps_existing_grants() -> Result<()> {
    let w = World::new()?;
    w.mypc.set_reboot_command(&["true"])?;
    let _agent = w.start_agent()?;
    let policies =
        |w: &World| -> Result<usize> { Ok(count(&w.relay.audit_events("mypc")?, "policy")) };
    let before = policies(&w)?;
    let shown = w.relay.admin(&["policy", "mypc"])?;
    assert!(
        shown.contains("shared access enabled, locks after 3 failed attempts"),
        "{shown}"
    );
    assert_eq!(policies(&w)?, before, "a look wrote an audit row");

    w.relay
        .admin(&["policy", "mypc", "--shared-access", "disabled"])?;
    assert_eq!(policies(&w)?, before + 1);
    // Bob's grant stays, and he logs in with the code he inherited.
    let out = w
        .bob
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "echo", "still-in"])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("still-in"));
    // New grants and regrants are refused; bob's grant is unchanged.
    let out = w.relay.admin_output(&["grant", "mypc", "carol"])?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("shared access is disabled"),
        "{}",
        text(&out.stderr)
    );
    let out = w.relay.admin_output(&["regrant", "mypc", "bob"])?;
    assert!(!out.status.success());
    assert_eq!(
        w.relay.status("mypc")?["grants"],
        serde_json::json!(["bob"])
    );
    // And in-session reboots, the owner's too.
    let out = w.alice.with_code(OWNER_CODE, &["reboot", "mypc"])?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("shared access"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_s_regrant_gives_the_owners_current_code() -> Result<()> {
    // README, "Forgotten by both": `admin regrant mypc bob`.
    let w = World::new()?;
    w.mypc.set_code("a code both forgot", None)?;
    w.relay.admin(&["regrant", "mypc", "bob"])?;
    w.bob.login("mypc", "a code both forgot").await?;
    // Without a grant it is refused, and nothing changes.
    let out = w.relay.admin_output(&["regrant", "mypc", "carol"])?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("'carol' has no shared access to 'mypc'"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        w.relay.status("mypc")?["grants"],
        serde_json::json!(["bob"])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unlocking_an_open_host_says_so_and_audits_nothing() -> Result<()> {
    let w = World::new()?;
    let unlocks =
        |w: &World| -> Result<usize> { Ok(count(&w.relay.audit_events("mypc")?, "unlock")) };
    let out = w.relay.admin_output(&["unlock", "mypc"])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("host 'mypc' is not locked"),
        "{}",
        text(&out.stdout)
    );
    let json = w.relay.admin_json(&["unlock", "mypc"])?;
    assert_eq!(json["changed"], false, "{json}");
    assert_eq!(json["was_locked"], false, "{json}");
    assert_eq!(unlocks(&w)?, 0);

    w.bob_locks_mypc_for(&[]).await?;
    let json = w.relay.admin_json(&["unlock", "mypc"])?;
    assert_eq!(json["changed"], true, "{json}");
    assert_eq!(json["was_locked"], true, "{json}");
    assert_eq!(json["failures"], 0, "{json}");
    assert_eq!(unlocks(&w)?, 1);
    Ok(())
}

#[test]
fn help_groups_admin_commands_and_keeps_resume_wait_off_host_commands() -> Result<()> {
    let out = Command::new(bin("latchkey-relay"))
        .args(["admin", "--help"])
        .output()?;
    assert!(out.status.success());
    let help = text(&out.stdout);
    let at = |needle: &str| {
        help.find(needle)
            .with_context(|| format!("no {needle:?} in:\n{help}"))
    };
    let headings = [
        "Users:",
        "Hosts:",
        "Shared access:",
        "Console admins:",
        "Logs:",
        "Options:",
    ];
    let places = headings.iter().map(|h| at(h)).collect::<Result<Vec<_>>>()?;
    assert!(places.windows(2).all(|p| p[0] < p[1]), "{help}");
    // Each command under its own group's heading.
    for (command, group) in [
        ("  invite-user ", 0),
        ("  set-email ", 0),
        ("  invite-host ", 1),
        ("  unlock ", 1),
        ("  regrant ", 2),
        ("  add-admin ", 3),
        ("  outbox ", 4),
    ] {
        let place = at(command)?;
        assert!(
            places[group] < place && place < places[group + 1],
            "{command:?} is not under {}:\n{help}",
            headings[group]
        );
    }

    let help = |args: &[&str]| -> Result<String> {
        Ok(text(
            &Command::new(bin("latchkey")).args(args).output()?.stdout,
        ))
    };
    assert!(help(&["--help"])?.contains("--resume-wait"));
    for args in [&["host", "--help"][..], &["host", "run", "--help"]] {
        let shown = help(args)?;
        assert!(!shown.contains("--resume-wait"), "{args:?}:\n{shown}");
    }
    Ok(())
}

/// A command run where there is no code and no terminal (a script, a
/// service) says how to give the code, once, rather than an OS error.
#[test]
fn without_a_code_or_a_terminal_the_client_says_how_to_give_one() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    // `setsid`: no controlling terminal to prompt on.
    let mut cmd = latchkey_tests::process::prefixed(
        &["setsid".into()],
        w.alice.cmd().args(["exec", "mypc", "--", "true"]),
    );
    let out = cmd.stdin(std::process::Stdio::null()).output()?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains(
            "no terminal to ask for the access code on: set LATCHKEY_ACCESS_CODE or pass \
             --code-stdin"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("os error"), "{stderr}");
    Ok(())
}
