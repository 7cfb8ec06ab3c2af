//! What every figure needs: medians and percentiles, CPU and memory of a
//! process (from /proc, shared with the tests), and the JSON line per
//! figure.

/// The median (upper middle) of some samples.
pub(crate) fn median(v: Vec<f64>) -> f64 {
    percentile(v, 50)
}

/// The `p`th percentile (nearest rank) of some samples.
pub(crate) fn percentile(mut v: Vec<f64>, p: usize) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Prints one figure as a JSON line, for machines.
pub(crate) fn report(figure: &str, fields: serde_json::Value) {
    println!(
        "{}",
        serde_json::json!({ "figure": figure, "results": fields })
    );
}

pub(crate) use latchkey_tests::{cpu_secs, rss_kib};

/// Bytes per GiB, for CPU-per-GiB figures.
pub(crate) const GIB: f64 = (1u64 << 30) as f64;
