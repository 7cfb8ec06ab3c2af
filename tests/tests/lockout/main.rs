//! Lockout, and every attempt settling (SPEC A3, S4, S6, S7, S7a, S11, B2):
//! the threshold and whose failures count, exact counts under concurrency
//! and crashes, attempts abandoned or cut off counted as failures, and
//! logins that race a revoke. Real relay and client binaries on loopback.

mod concurrency;
mod settling;
mod threshold;

use anyhow::Result;
use latchkey_tests::World;

/// mypc's failure count and whether it is locked, from `admin status`.
fn failures(world: &World) -> Result<(u64, bool)> {
    let s = world.relay.status("mypc")?;
    Ok((
        s["failures"].as_u64().unwrap_or(99),
        s["locked"].as_bool().unwrap_or(false),
    ))
}

/// Runs futures concurrently (a tiny join_all, to avoid a dependency).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task panicked"));
    }
    out
}
