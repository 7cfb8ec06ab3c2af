//! `latchkey-relay admin audit` as an admin reads it (SPEC S9): local time
//! (ISO 8601 in `--json`), a note when older events were left out,
//! `--since`, and a quiet exit when the reader of its output goes away.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use latchkey_tests::{bin, World, OWNER_CODE};

/// A fixed zone five and a half hours east of UTC, so the test does not
/// depend on the machine's (POSIX TZ syntax: the sign is inverted).
const ZONE: &str = "<+0530>-5:30";

fn audit(w: &World, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(bin("latchkey-relay"))
        .arg("--data-dir")
        .arg(&w.relay.data_dir)
        .env("TZ", ZONE)
        .args(["admin", "audit"])
        .args(args)
        .output()?)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_prints_local_time_says_when_it_cuts_and_filters_by_since() -> Result<()> {
    let w = World::new()?;
    let _agent = w.start_agent()?;
    let out = w
        .alice
        .with_code(OWNER_CODE, &["exec", "mypc", "--", "true"])?;
    assert!(out.status.success());

    // JSON: ISO 8601 with the zone's offset, and the Unix time beside it.
    let out = audit(&w, &["--json", "--limit", "100000"])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rows = rows.as_array().context("a list")?;
    assert!(rows.len() > 5, "{rows:?}");
    for row in rows {
        let at = row["at"].as_str().context("at is a string")?;
        assert_eq!(at.len(), "2026-11-29T07:57:10+05:30".len(), "{at}");
        assert!(at.ends_with("+05:30"), "{at}");
        assert_eq!(&at[10..11], "T", "{at}");
        assert!(row["at_unix"].as_i64().is_some(), "{row}");
    }
    assert!(
        !text(&out.stderr).contains("left out"),
        "nothing was cut: {}",
        text(&out.stderr)
    );

    // Text: local time, no raw epoch seconds (invites' expiry included).
    let out = audit(&w, &["--limit", "100000"])?;
    let table = text(&out.stdout);
    let first = table.lines().nth(1).context("a row")?;
    let at: Vec<&str> = first.split_whitespace().skip(1).take(3).collect();
    assert_eq!(at.len(), 3, "{first}");
    assert_eq!(at[0].len(), "2026-11-29".len(), "{first}");
    assert_eq!(at[1].len(), "07:57:10".len(), "{first}");
    assert_eq!(at[2], "+0530", "{first}");
    assert!(
        !table
            .split_whitespace()
            .any(|w| w.len() == 10 && w.starts_with('1') && w.chars().all(|c| c.is_ascii_digit())),
        "raw epoch seconds in:\n{table}"
    );
    assert!(!table.contains("left out"), "{table}");

    // Cut: said so, with how to see more.
    let out = audit(&w, &["--limit", "3"])?;
    let table = text(&out.stdout);
    assert_eq!(table.lines().count(), 1 + 3 + 1, "{table}");
    assert!(table.contains("the newest 3 events"), "{table}");
    assert!(table.contains("--since"), "{table}");

    // --since: an age, a date in the future, a timestamp in the past.
    let all = rows.len();
    for (since, want) in [
        ("1h", all),
        ("2000-01-01T00:00:00Z", all),
        ("2999-01-01", 0),
    ] {
        let out = audit(&w, &["--json", "--limit", "100000", "--since", since])?;
        assert!(out.status.success(), "{since}: {}", text(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        // The relay may add events (presence) meanwhile: at least as many.
        let got = rows.as_array().context("a list")?.len();
        assert!(
            if want == 0 { got == 0 } else { got >= want },
            "--since {since}: {got} rows, want {want}"
        );
    }
    let out = audit(&w, &["--since", "yesterday-ish"])?;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not a time"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_into_a_closed_pipe_exits_quietly() -> Result<()> {
    let w = World::new()?;
    for json in [false, true] {
        let mut cmd = Command::new(bin("latchkey-relay"));
        cmd.arg("--data-dir")
            .arg(&w.relay.data_dir)
            .args(["admin", "audit", "--limit", "100000"]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        // The reader goes away before the first line, as `| head -0` does.
        drop(child.stdout.take());
        let out = child.wait_with_output()?;
        let err = text(&out.stderr);
        assert!(out.status.success(), "json={json}: {:?} {err}", out.status);
        assert!(!err.contains("Broken pipe"), "json={json}: {err}");
        assert!(!err.contains("error"), "json={json}: {err}");
    }
    Ok(())
}
