//! The two text formats of `/metrics` and which one a scraper gets. Tether writes the
//! Prometheus text format (0.0.4); a scraper whose `Accept` prefers OpenMetrics 1.0 (as
//! Prometheus itself does by default) gets the same families in OpenMetrics: a counter's family
//! is named without its `_total` (its samples keep it) and the page ends with `# EOF`. One
//! place for both the node's and the control plane's admin listener, with the writers'
//! shared pieces: label escaping ([`label`]) and plain counters ([`counters`]).
//!
//! Why hand-written exposition instead of the `prometheus-client` crate: measured no slower
//! (`benches/exposition.rs`, docs/benchmarks.md), and it reads the live state at scrape time,
//! where a registry would need every backend's series added and removed on each snapshot.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The Prometheus text format's content type.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// OpenMetrics 1.0's content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Metrics something outside the data plane adds to a node's `/metrics` page (`tether up`'s
/// DNS discovery), in the Prometheus text format.
pub trait MetricsSource: Send + Sync + std::fmt::Debug {
    /// Appends its families to `w`.
    fn write(&self, w: &mut String);
}

/// A label value, escaped (`\`, `"`, newline).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Unlabelled counters: `# HELP`, `# TYPE` and the value of each `(name, help, value)`.
pub fn counters(w: &mut String, list: &[(&str, &str, &AtomicU64)]) {
    for (name, help, v) in list {
        let _ = writeln!(w, "# HELP {name} {help}");
        let _ = writeln!(w, "# TYPE {name} counter");
        let _ = writeln!(w, "{name} {}", v.load(Ordering::Relaxed));
    }
}

/// The page in the format `accept` prefers, with its content type.
pub fn negotiate(accept: Option<&str>, page: String) -> (&'static str, String) {
    if accept.is_some_and(prefers_openmetrics) {
        (OPENMETRICS, to_openmetrics(&page))
    } else {
        (PROMETHEUS, page)
    }
}

/// Whether an `Accept` header ranks OpenMetrics text above the Prometheus text format.
fn prefers_openmetrics(accept: &str) -> bool {
    let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0_f32;
        let mut version = None;
        for p in parts {
            match p.split_once('=') {
                Some((k, v)) if k.trim().eq_ignore_ascii_case("q") => {
                    q = v.trim().parse().unwrap_or(0.0);
                }
                Some((k, v)) if k.trim().eq_ignore_ascii_case("version") => {
                    version = Some(v.trim().to_owned());
                }
                _ => {}
            }
        }
        match media.as_str() {
            // 0.0.1 is the draft that became 1.0.0; the text is the same.
            "application/openmetrics-text"
                if version
                    .as_deref()
                    .is_none_or(|v| v == "1.0.0" || v == "0.0.1") =>
            {
                openmetrics = openmetrics.max(q);
            }
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics > text
}

/// A Prometheus text page as OpenMetrics.
fn to_openmetrics(page: &str) -> String {
    let counters: HashSet<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(page.len() + 8);
    for line in page.lines() {
        let family = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            let family = name
                .strip_suffix("_total")
                .filter(|_| counters.contains(name))?;
            Some((p, family, tail))
        });
        match family {
            Some((prefix, family, tail)) => {
                out.push_str(prefix);
                out.push_str(family);
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n";

    #[test]
    fn prometheus_default_accept_gets_openmetrics() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert!(prefers_openmetrics(prometheus));
        assert!(prefers_openmetrics("application/openmetrics-text"));
        assert!(!prefers_openmetrics("text/plain"));
        assert!(!prefers_openmetrics("*/*"));
        assert!(!prefers_openmetrics(
            "text/plain;q=1, application/openmetrics-text;q=0.5"
        ));
        assert!(!prefers_openmetrics(
            "application/openmetrics-text;version=2.0.0"
        ));
        assert!(!prefers_openmetrics("application/openmetrics-text;q=0"));
        assert_eq!(negotiate(None, PAGE.into()), (PROMETHEUS, PAGE.into()));
    }

    #[test]
    fn counters_lose_total_in_their_family_name_only() {
        let (ct, om) = negotiate(Some("application/openmetrics-text"), PAGE.into());
        assert_eq!(ct, OPENMETRICS);
        assert_eq!(
            om,
            "# HELP a Things.\n# TYPE a counter\na_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n"
        );
    }
}
