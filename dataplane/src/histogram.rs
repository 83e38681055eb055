//! A lock-free Prometheus histogram of durations over a fixed set of bucket bounds, the one
//! both admin listeners use (the control plane's gRPC and store latencies too).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bounds (seconds) for a backend's time to its response head and for applying a revision.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Bounds (seconds) for a whole exchange as the client sees it, up to the longest default
/// timeout (60 s: first byte, between bytes, idle) and beyond it for slow downloads.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// Observations per bucket (not cumulative; the last one is `+Inf`) and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Writes the histogram's `_bucket`, `_sum` and `_count` lines with these labels
    /// (`name="value"` pairs joined by commas, possibly empty).
    pub fn write_prometheus(&self, out: &mut String, metric: &str, labels: &str) {
        let labels = labels.trim_end_matches(',');
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            match self.bounds.get(i) {
                Some(le) => {
                    let _ = writeln!(
                        out,
                        "{metric}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{metric}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{metric}_sum{braces} {sum}");
        let _ = writeln!(out, "{metric}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_in_inf() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.write_prometheus(&mut out, "m", "a=\"b\",");
        assert_eq!(
            out,
            "m_bucket{a=\"b\",le=\"0.1\"} 1\nm_bucket{a=\"b\",le=\"1\"} 2\n\
             m_bucket{a=\"b\",le=\"+Inf\"} 3\nm_sum{a=\"b\"} 5.55\nm_count{a=\"b\"} 3\n"
        );
        let mut bare = String::new();
        h.write_prometheus(&mut bare, "m", "");
        assert!(
            bare.contains("m_bucket{le=\"+Inf\"} 3\nm_sum 5.55\nm_count 3\n"),
            "{bare}"
        );
        assert_eq!(h.count(), 3);
    }
}
