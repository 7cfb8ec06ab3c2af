//! A command on a kept session against one that logs in: `latchkey exec
//! mypc -- true` cold (a login each time, with the production key
//! stretching) and warm (on the session an earlier command kept), over
//! the floor both stand on, starting the binary (`latchkey --version`);
//! and what the holder's hop costs a copy (`latchkey cp` of 64 MiB to the
//! host, on a session of its own and on a kept one).

use std::{process::Command, time::Instant};

use anyhow::{ensure, Result};
use latchkey_tests::{bin, World, OWNER_CODE};

use crate::measure::{median, report};

/// The copy's size.
const COPY_BYTES: u32 = 64 << 20;

fn mib_per_s(ms: f64) -> f64 {
    f64::from(COPY_BYTES) / f64::from(1u32 << 20) / (ms / 1e3)
}

/// Milliseconds `cmd` takes to run to its end, which must be a success.
fn time(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let out = cmd.stdin(std::process::Stdio::null()).output()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(ms)
}

pub(crate) fn exec() -> Result<()> {
    let w = World::new()?;
    // The code as a user sets it: Argon2id at 64 MiB, not the tests' profile.
    let set = w
        .mypc
        .run_with_input(&["host", "set-code", "--code-stdin"], OWNER_CODE)?;
    ensure!(set.status.success(), "set-code failed");
    let _agent = w.start_agent()?;
    let exec_true = ["exec", "mypc", "--", "true"];
    let floor: Vec<f64> = (0..20)
        .map(|_| time(Command::new(bin("latchkey")).arg("--version")))
        .collect::<Result<_>>()?;
    let cold: Vec<f64> = (0..10)
        .map(|_| {
            time(
                w.alice
                    .cmd()
                    .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
                    .args(exec_true),
            )
        })
        .collect::<Result<_>>()?;
    let first = time(
        w.alice
            .keeping_sessions("60s")
            .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
            .args(exec_true),
    )?;
    let warm: Vec<f64> = (0..30)
        .map(|_| time(w.alice.keeping_sessions("60s").args(exec_true)))
        .collect::<Result<_>>()?;
    w.alice.run(&["disconnect", "mypc"])?;
    // A copy's throughput, on its own session and on a kept one. (A
    // command that keeps no session would use and end a kept one: the
    // own-session copies come first.)
    let src = w.dir.path().join("copy.bin");
    let data: Vec<u8> = (0..COPY_BYTES).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, data)?;
    let to = format!("mypc:{}", w.dir.path().join("copied.bin").display());
    let src = src.to_string_lossy().into_owned();
    // The login an own session adds is taken off: the cold exec's median.
    let login_ms = median(cold.clone());
    let mut own_mibs = Vec::new();
    for _ in 0..3 {
        let own = time(
            w.alice
                .cmd()
                .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
                .args(["cp", &src, &to]),
        )?;
        own_mibs.push(mib_per_s(own - login_ms));
    }
    time(
        w.alice
            .keeping_sessions("60s")
            .env("LATCHKEY_ACCESS_CODE", OWNER_CODE)
            .args(exec_true),
    )?;
    let mut kept_mibs = Vec::new();
    for _ in 0..3 {
        let kept = time(w.alice.keeping_sessions("60s").args(["cp", &src, &to]))?;
        kept_mibs.push(mib_per_s(kept));
    }
    w.alice.run(&["disconnect", "mypc"])?;
    let (own_mibs, kept_mibs) = (median(own_mibs), median(kept_mibs));
    let (floor, cold, warm) = (median(floor), median(cold), median(warm));
    println!("exec HOST true (median ms)      value   goal");
    println!("  cold: a login each time   {cold:8.1}");
    println!("  first, keeping it         {first:8.1}");
    println!("  warm: on the kept session {warm:8.1}   ≤ 30");
    println!("  warm / cold               {:8.3}   ≤ 0.1", warm / cold);
    println!("  floor: latchkey --version {floor:8.1}");
    println!(
        "cp 64 MiB to the host (median MiB/s; the cold exec's time taken off its own session's)"
    );
    println!("  on its own session        {own_mibs:8.1}");
    println!(
        "  on the kept session       {kept_mibs:8.1}   ratio {:.2}",
        kept_mibs / own_mibs
    );
    report(
        "reuse",
        serde_json::json!({
            "cold_ms": cold, "first_kept_ms": first, "warm_ms": warm,
            "floor_ms": floor, "warm_over_cold": warm / cold,
            "cp_own_mib_s": own_mibs, "cp_kept_mib_s": kept_mibs,
        }),
    );
    Ok(())
}
