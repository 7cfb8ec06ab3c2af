//! What every figure needs: medians and percentiles, CPU and memory of a
//! process from /proc, and the JSON line per figure.

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

/// CPU seconds (user + system) a process has used, from /proc.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of a process in KiB, from /proc.
pub(crate) fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Bytes per GiB, for CPU-per-GiB figures.
pub(crate) const GIB: f64 = (1u64 << 30) as f64;
