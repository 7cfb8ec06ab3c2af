//! The `latchkey-relay` command line: help on every subcommand, first-start
//! set-up of the data directory, and clear errors with non-zero status.
//! (Also makes `cargo test` build the binary the end-to-end tests spawn.)

use std::process::Command;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_latchkey-relay"))
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["info", "--help"],
        vec!["admin", "--help"],
        vec!["admin", "invite-user", "--help"],
        vec!["admin", "invite-host", "--help"],
        vec!["admin", "grant", "--help"],
        vec!["admin", "revoke", "--help"],
        vec!["admin", "unlock", "--help"],
        vec!["admin", "status", "--help"],
        vec!["admin", "audit", "--help"],
    ] {
        let out = relay().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn admin_and_info_make_no_relay_where_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for args in [
        vec!["info"],
        vec!["admin", "users"],
        vec!["admin", "invite-user", "alice"],
    ] {
        let out = relay()
            .arg("--data-dir")
            .arg(&data)
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no relay data in") && stderr.contains("--data-dir"),
            "{args:?}: {stderr}"
        );
        assert!(!data.exists(), "{args:?} created {}", data.display());
    }
}

#[test]
fn info_prints_the_pin_of_a_private_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // What `serve` makes on its first start.
    let made = latchkey_server::datadir::DataDir::open_or_create(&data).unwrap();
    latchkey_server::store::SqliteStore::open(&made.db_path()).unwrap();
    let out = relay()
        .arg("--data-dir")
        .arg(&data)
        .arg("info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("fingerprint:") && text.contains("pin:"),
        "{text}"
    );
    assert!(text.contains(&made.pin().to_text()), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let mode = std::fs::metadata(data.join("relay.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The same pin on every run.
    let again = relay()
        .arg("--data-dir")
        .arg(&data)
        .arg("info")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap(), text);
}

#[test]
fn admin_errors_say_what_to_do_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let made = latchkey_server::datadir::DataDir::open_or_create(&data).unwrap();
    latchkey_server::store::SqliteStore::open(&made.db_path()).unwrap();
    let run = |args: &[&str]| {
        relay()
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    let out = relay()
        .arg("--data-dir")
        .arg(&data)
        .env("LATCHKEY_RELAY_LISTEN", "127.0.0.1:0")
        .args(["admin", "invite-user", "alice"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("start it once"));
    // With a configured port, invites work before the relay listens.
    let out = run(&["admin", "invite-user", "alice"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("lk1-"));
    let out = run(&["admin", "unlock", "nohost"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no host named 'nohost'"));
    let out = run(&["admin", "grant", "bad name", "bob"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid name"));
}
