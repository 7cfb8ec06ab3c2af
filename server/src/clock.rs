//! The relay's one clock for the store: Unix seconds. Store methods never
//! read a clock themselves; callers read this one and pass `now`, so the
//! store's rules can be tested at any time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
