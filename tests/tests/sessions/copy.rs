//! `latchkey cp` (SPEC X2, E5): checksummed both ways, no partial file left
//! on either side after Ctrl-C or a failure, directory destinations as `cp`
//! has them, procfs and sysfs files, a progress bar that fits 80 columns, a
//! path that looks like an option, and the source's permissions kept.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use latchkey_tests::{wait_until, World, OWNER_CODE};
use rand::{rngs::StdRng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::{path_str, signal, text, within};

#[tokio::test(flavor = "multi_thread")]
async fn cp_copies_both_ways_with_matching_checksums() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let mut data = vec![0u8; 3 << 20];
    StdRng::seed_from_u64(3).fill_bytes(&mut data);
    let local = w.dir.path().join("local.bin");
    std::fs::write(&local, &data)?;
    let on_host = w.dir.path().join("on-host.bin");
    let out = w.alice.with_code(
        OWNER_CODE,
        &[
            "cp",
            local.to_str().context("path")?,
            &format!("mypc:{}", on_host.display()),
        ],
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        Sha256::digest(std::fs::read(&on_host)?),
        Sha256::digest(&data)
    );
    let back = w.dir.path().join("back.bin");
    let out = w.alice.with_code(
        OWNER_CODE,
        &[
            "cp",
            &format!("mypc:{}", on_host.display()),
            back.to_str().context("path")?,
        ],
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(Sha256::digest(std::fs::read(&back)?), Sha256::digest(&data));
    // A missing file is a clear error and leaves nothing behind.
    let out = w.alice.with_code(
        OWNER_CODE,
        &[
            "cp",
            "mypc:/nonexistent/file",
            back.to_str().context("path")?,
        ],
    )?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot read /nonexistent/file"),
        "{}",
        text(&out.stderr)
    );
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
    cmd.env("LATCHKEY_PERSIST", "0");
    cmd.env("XDG_RUNTIME_DIR", &w.alice.home);
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

/// Copies run through the agent's file helper: a path that looks like an
/// option is still a path.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_path_that_looks_like_an_option_is_a_path() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let dest = w.dir.path().join("help.txt");
    let out = w
        .alice
        .with_code(OWNER_CODE, &["cp", "mypc:--help", &dest.to_string_lossy()])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read") && stderr.contains("--help"),
        "{stderr}"
    );
    assert!(!dest.exists());
    Ok(())
}

/// An upload keeps the source's permission bits without group and other
/// write (a private key stays private), and its partial file is created
/// anew: a file someone left under a partial name is never written into.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_keeps_the_sources_permissions_and_never_reuses_a_file() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let dir = w.dir.path().join("landing");
    std::fs::create_dir(&dir)?;
    for (mode, expected) in [(0o600, 0o600), (0o777, 0o755), (0o664, 0o644)] {
        let src = w.dir.path().join(format!("src-{mode:o}"));
        std::fs::write(&src, b"bits\n")?;
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(mode))?;
        // A trap where an old, fixed partial name would be.
        let trap = dir.join(format!(".src-{mode:o}.latchkey-partial"));
        std::fs::write(&trap, b"")?;
        let out = w.alice.with_code(
            OWNER_CODE,
            &[
                "cp",
                &src.to_string_lossy(),
                &format!("mypc:{}/", dir.display()),
            ],
        )?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let landed = std::fs::metadata(dir.join(format!("src-{mode:o}")))?;
        assert_eq!(
            landed.permissions().mode() & 0o777,
            expected,
            "from {mode:o}"
        );
        assert_eq!(std::fs::read(&trap)?, b"", "the trap was written into");
    }
    Ok(())
}
