//! A root agent runs sessions as its unprivileged `session_user`: a
//! session can no longer read the host's keys and pass for the host.
//! These run only where the tests run as root (CI does).

use anyhow::Result;
use latchkey_tests::{current_account, World, OWNER_CODE};

/// Whether the tests run as root; prints why a test is skipped if not.
fn as_root(test: &str) -> Result<bool> {
    let root = current_account()? == "root";
    if !root {
        println!(
            "skipping {test}: the tests do not run as root, so the agent cannot change account"
        );
    }
    Ok(root)
}

fn set_session_user(w: &World, account: &str) -> Result<()> {
    let path = w.mypc.home.join("host.toml");
    let mut cfg: toml::Table = std::fs::read_to_string(&path)?.parse()?;
    cfg.insert("session_user".into(), toml::Value::String(account.into()));
    std::fs::write(&path, cfg.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_as_session_user_cannot_read_the_hosts_keys() -> Result<()> {
    if !as_root("a_session_as_session_user_cannot_read_the_hosts_keys")? {
        return Ok(());
    }
    let w = World::new()?;
    set_session_user(&w, "nobody")?;
    let _agent = w.start_agent()?;
    let key = w.mypc.home.join("host.key");
    let key = key.to_string_lossy();

    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "id", "-un"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nobody");
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "cat", &key])?;
    assert!(!out.status.success(), "nobody read host.key");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // Copies run as the account too: the key does not come out that way,
    // and what arrives belongs to the account.
    let dest = w.dir.path().join("stolen.key");
    let out = w.alice.with_code(
        OWNER_CODE,
        &["cp", &format!("mypc:{key}"), &dest.to_string_lossy()],
    )?;
    assert!(!out.status.success(), "the key was copied out");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(!dest.exists());
    let src = w.dir.path().join("note.txt");
    std::fs::write(&src, b"for nobody\n")?;
    let landed = std::path::PathBuf::from(format!(
        "/tmp/latchkey-session-user-{}.txt",
        std::process::id()
    ));
    let out = w.alice.with_code(
        OWNER_CODE,
        &[
            "cp",
            &src.to_string_lossy(),
            &format!("mypc:{}", landed.display()),
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&landed)?);
    let _ = std::fs::remove_file(&landed);
    let nobody = std::process::Command::new("id")
        .args(["-u", "nobody"])
        .output()?;
    assert_eq!(
        owner.to_string(),
        String::from_utf8_lossy(&nobody.stdout).trim()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_agent_without_session_user_refuses_to_start_and_says_why() -> Result<()> {
    if !as_root("a_root_agent_without_session_user_refuses_to_start_and_says_why")? {
        return Ok(());
    }
    let w = World::new()?;
    let path = w.mypc.home.join("host.toml");
    let mut cfg: toml::Table = std::fs::read_to_string(&path)?.parse()?;
    cfg.remove("session_user");
    std::fs::write(&path, cfg.to_string())?;
    let out = w.mypc.cmd().args(["host", "run"]).output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("session_user") && stderr.contains("root"),
        "{stderr}"
    );
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
