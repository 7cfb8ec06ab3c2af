//! The `latchkey` command line: help on every subcommand and clear errors.
//! (Also makes `cargo test` build the binary the end-to-end tests spawn.)

use std::process::Command;

fn latchkey() -> Command {
    Command::new(env!("CARGO_BIN_EXE_latchkey"))
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["enroll", "--help"],
        vec!["hosts", "--help"],
        vec!["host", "--help"],
        vec!["host", "enroll", "--help"],
        vec!["host", "set-code", "--help"],
        vec!["host", "reset-code", "--help"],
        vec!["host", "run", "--help"],
    ] {
        let out = latchkey().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn commands_before_enrolment_say_how_to_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let out = latchkey()
        .arg("--home")
        .arg(dir.path())
        .arg("hosts")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("latchkey enroll TOKEN"));
    let out = latchkey()
        .arg("--home")
        .arg(dir.path())
        .args(["host", "run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("latchkey host enroll TOKEN"));
}

#[test]
fn a_damaged_token_is_refused_without_contacting_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let out = latchkey()
        .arg("--home")
        .arg(dir.path())
        .args(["enroll", "lk1-garbage"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invite token"));
}
