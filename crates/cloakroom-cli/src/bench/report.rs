//! Results: latency percentiles, one result per (library, backend, mode,
//! policy, concurrency), printed as a table, JSON lines, or a side-by-side
//! comparison with the anchor.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latency samples in whole microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Samples(pub Vec<u32>);

impl Samples {
    /// Record one duration.
    pub fn push(&mut self, d: Duration) {
        self.0.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    /// Add every sample of `other`.
    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// The `q` quantile (0..=1) by the nearest-rank method; 0 when empty.
    pub fn quantile(&mut self, q: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.sort_unstable();
        let rank = (q * self.0.len() as f64).ceil() as usize;
        u64::from(self.0[rank.clamp(1, self.0.len()) - 1])
    }
}

/// One line of results.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BenchResult {
    /// `cloakroom`, `tower-sessions`, `redis-rs (raw GET+SET)`.
    pub library: String,
    /// Backend name (`sqlite`, `postgres`, …).
    pub backend: String,
    /// `spread`, `burst`, `contention`, `processes` or `handoff`.
    pub mode: String,
    /// Concurrency policy (`serialized`, `optimistic`, `lossy`, `unlocked`).
    pub policy: String,
    /// Concurrent tasks in all (processes × tasks per process).
    pub concurrency: usize,
    /// OS processes.
    pub processes: usize,
    /// Concurrent cycles each virtual user fires at one session (B, burst
    /// mode; 0 in the other modes).
    #[serde(default)]
    pub burst: usize,
    /// Sessions the cycles were spread over.
    pub sessions: usize,
    /// Cycles completed in the measured window (handoff mode: hand-offs measured).
    pub cycles: u64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Cycles (handoff mode: hand-offs) per second.
    pub cycles_per_sec: f64,
    /// The mode's headline latency, median: the whole cycle in spread mode,
    /// the whole cycle from the burst's start (retries included) in burst
    /// mode, the lock wait (the open) in contention and processes modes,
    /// the hand-off (holder's commit start to waiter's open return) in
    /// handoff mode.
    pub p50_us: u64,
    /// The headline latency, 99th percentile.
    pub p99_us: u64,
    /// Whole-cycle latency, median.
    pub cycle_p50_us: u64,
    /// Whole-cycle latency, 99th percentile.
    pub cycle_p99_us: u64,
    /// Open (lock wait + load) latency, median.
    pub wait_p50_us: u64,
    /// Open latency, 99th percentile.
    pub wait_p99_us: u64,
    /// Attempts refused with a retryable error (lock timeout, conflict) and retried.
    pub retries: u64,
    /// Successful cycles whose increment is missing from the final `hits`.
    pub lost_updates: u64,
}

const HEADER: [&str; 10] = [
    "library", "backend", "mode", "policy", "C", "cycles/s", "p50 µs", "p99 µs", "lost", "retries",
];

/// A plain-text table of results.
pub fn table(results: &[BenchResult]) -> String {
    render(&HEADER.map(String::from), results, |r| {
        vec![
            r.library.clone(),
            r.backend.clone(),
            r.mode.clone(),
            r.policy.clone(),
            concurrency_label(r),
            format!("{:.0}", r.cycles_per_sec),
            r.p50_us.to_string(),
            r.p99_us.to_string(),
            r.lost_updates.to_string(),
            r.retries.to_string(),
        ]
    })
}

/// The `C` column: tasks, `processes×tasks` for the processes mode (and
/// the cross-process handoff), `users (×B)` for the burst mode.
pub fn concurrency_label(r: &BenchResult) -> String {
    if r.processes > 1 {
        format!("{}×{}", r.processes, r.concurrency / r.processes.max(1))
    } else if r.burst > 0 {
        format!("{} (×{})", r.concurrency, r.burst)
    } else {
        r.concurrency.to_string()
    }
}

/// cloakroom beside the anchor: per backend, mode and concurrency, the
/// cycles/s of each, their ratio, both latencies and both lost-update counts.
/// `baseline` names a library shown in an extra column (the raw floor).
pub fn comparison(results: &[BenchResult], anchor: &str, baseline: &str) -> String {
    // Backend by name, then modes in the workload's order (below), then concurrency by number.
    type Key = (String, u8, usize, usize);
    let mode_rank = |m: &str| match m {
        "spread" => 0,
        "burst" => 1,
        "contention" => 2,
        "processes" => 3,
        "handoff" => 4,
        _ => 5,
    };
    let mut by_key: BTreeMap<Key, BTreeMap<String, &BenchResult>> = BTreeMap::new();
    for r in results {
        let key = (r.backend.clone(), mode_rank(&r.mode), r.processes, r.concurrency);
        by_key.entry(key).or_default().insert(r.library.clone(), r);
    }
    let header = [
        "backend",
        "mode",
        "C",
        "cloakroom/s",
        &format!("{anchor}/s"),
        "ratio",
        "cloakroom p50/p99 µs",
        "anchor p50/p99 µs",
        "lost cloakroom",
        "lost anchor",
        &format!("{baseline}/s"),
    ]
    .map(|s| s.to_string());
    let fmt_lat = |r: Option<&&BenchResult>| r.map_or("-".into(), |r| format!("{}/{}", r.p50_us, r.p99_us));
    let fmt_rate = |r: Option<&&BenchResult>| r.map_or("-".into(), |r| format!("{:.0}", r.cycles_per_sec));
    let fmt_lost = |r: Option<&&BenchResult>| r.map_or("-".into(), |r| r.lost_updates.to_string());
    render(&header, &by_key, |(key, libs)| {
        let ours = libs.get("cloakroom");
        let any = libs.values().next().copied();
        let theirs = libs.get(anchor);
        let ratio = match (ours, theirs) {
            (Some(o), Some(t)) if t.cycles_per_sec > 0.0 => {
                format!("{:.2}", o.cycles_per_sec / t.cycles_per_sec)
            }
            _ => "-".into(),
        };
        vec![
            key.0.clone(),
            any.map_or(String::new(), |r| r.mode.clone()),
            any.map_or(String::new(), concurrency_label),
            fmt_rate(ours),
            fmt_rate(theirs),
            ratio,
            fmt_lat(ours),
            fmt_lat(theirs),
            fmt_lost(ours),
            fmt_lost(theirs),
            fmt_rate(libs.get(baseline)),
        ]
    })
}

/// The result of the sweep mode on one store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SweepResult {
    /// Always `cloakroom` (the anchor has no sweep).
    pub library: String,
    /// Backend name (`sqlite`, `postgres`, …).
    pub backend: String,
    /// `sweep`.
    pub mode: String,
    /// Expired sessions created before the sweep.
    pub created: u64,
    /// Sessions the sweep deleted.
    pub deleted: u64,
    /// Time of the sweep, from the first batch to the end of the last.
    pub seconds: f64,
    /// Deleted sessions per second; `None` when the backend expired the
    /// records itself and the sweep had nothing to delete.
    pub deleted_per_sec: Option<f64>,
    /// Records examined per sweep batch.
    pub batch: usize,
    /// Resident set of this process just before the sweep (MiB).
    pub rss_before_mib: Option<f64>,
    /// Peak growth of the resident set during the sweep over `rss_before_mib`.
    pub rss_growth_mib: Option<f64>,
    /// Live sessions counted after the sweep (0 expected).
    pub remaining: u64,
    /// Expired sessions a second sweep still found and deleted (0 expected).
    pub left_behind: u64,
    /// The backend deletes expired records by itself (Redis).
    pub expires_natively: bool,
}

/// A plain-text table of sweep results.
pub fn sweep_table(results: &[SweepResult]) -> String {
    let header = [
        "backend",
        "mode",
        "created",
        "deleted",
        "seconds",
        "deleted/s",
        "peak RSS growth MiB",
        "remaining",
        "2nd sweep",
        "note",
    ]
    .map(String::from);
    let mib = |m: Option<f64>| m.map_or("n/a".into(), |m| format!("{m:.1}"));
    render(&header, results, |r| {
        vec![
            r.backend.clone(),
            r.mode.clone(),
            r.created.to_string(),
            r.deleted.to_string(),
            format!("{:.2}", r.seconds),
            r.deleted_per_sec.map_or("-".into(), |v| format!("{v:.0}")),
            mib(r.rss_growth_mib),
            r.remaining.to_string(),
            r.left_behind.to_string(),
            if r.expires_natively {
                format!("{} expired them itself; nothing to sweep", r.backend)
            } else {
                String::new()
            },
        ]
    })
}

/// Render `items` as a Markdown table (readable as plain text too), a row
/// each, its cells given by `row`.
fn render<T>(
    header: &[String],
    items: impl IntoIterator<Item = T>,
    row: impl FnMut(T) -> Vec<String>,
) -> String {
    let rows: Vec<Vec<String>> = items.into_iter().map(row).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut s = Samples((1..=100).collect());
        assert_eq!(s.quantile(0.5), 50);
        assert_eq!(s.quantile(0.99), 99);
        assert_eq!(s.quantile(1.0), 100);
        assert_eq!(Samples::default().quantile(0.5), 0);
    }
}
