//! What the resolving replica shows on `/metrics` about discovery: whether it holds the
//! election, and per Discovery its resolutions, whether it is failing now, the backends it
//! keeps and when it last had an answer. A replica not holding the election shows only the
//! first.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use tether_dataplane::exposition::{MetricsSource, label};

use super::reconcile::Outcome;

/// Discovery's counters (shared by the resolver and the admin listeners).
#[derive(Debug, Default)]
pub struct DiscoveryMetrics {
    leader: AtomicBool,
    entries: Mutex<BTreeMap<String, Entry>>,
}

/// A gauge family: its name, help and value per Discovery.
type Gauge = (&'static str, &'static str, fn(&Entry) -> f64);

#[derive(Debug, Default, Clone)]
struct Entry {
    ok: u64,
    failed: u64,
    failing: bool,
    backends: usize,
    last_answer: Option<SystemTime>,
}

impl DiscoveryMetrics {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Entry>) -> T) -> T {
        f(&mut self.entries.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// This replica holds (or no longer holds) the election.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Forgets every Discovery (the election was lost: another replica reports them now).
    pub fn clear(&self) {
        self.with(BTreeMap::clear);
    }

    /// Forgets the Discoveries `keep` refuses (deleted).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.with(|m| m.retain(|n, _| keep(n)));
    }

    /// Counts one resolution.
    pub fn resolved(&self, name: &str, outcome: &Outcome) {
        self.with(|m| {
            let e = m.entry(name.to_owned()).or_default();
            match outcome {
                Outcome::Answer(_) => {
                    e.ok += 1;
                    e.failing = false;
                    e.last_answer = Some(SystemTime::now());
                }
                Outcome::Failed(_) => {
                    e.failed += 1;
                    e.failing = true;
                }
            }
        });
    }

    /// The backends a Discovery keeps now.
    pub fn kept(&self, name: &str, backends: usize) {
        self.with(|m| m.entry(name.to_owned()).or_default().backends = backends);
    }
}

impl MetricsSource for DiscoveryMetrics {
    fn write(&self, w: &mut String) {
        let entries = self.with(|m| m.clone());
        let _ = writeln!(
            w,
            "# HELP tether_discovery_leader Whether this replica holds the discovery election (resolves every Discovery)."
        );
        let _ = writeln!(w, "# TYPE tether_discovery_leader gauge");
        let _ = writeln!(
            w,
            "tether_discovery_leader {}",
            u8::from(self.leader.load(Ordering::Relaxed))
        );
        let _ = writeln!(
            w,
            "# HELP tether_discovery_resolutions_total Resolutions of a Discovery's DNS name, by result."
        );
        let _ = writeln!(w, "# TYPE tether_discovery_resolutions_total counter");
        for (n, e) in &entries {
            let n = label(n);
            let _ = writeln!(
                w,
                "tether_discovery_resolutions_total{{discovery=\"{n}\",result=\"ok\"}} {}",
                e.ok
            );
            let _ = writeln!(
                w,
                "tether_discovery_resolutions_total{{discovery=\"{n}\",result=\"error\"}} {}",
                e.failed
            );
        }
        let gauges: [Gauge; 3] = [
            (
                "tether_discovery_failing",
                "1 while a Discovery's last resolution failed (the last answer's backends are kept).",
                |e| f64::from(u8::from(e.failing)),
            ),
            (
                "tether_discovery_backends",
                "Backends a Discovery keeps.",
                |e| e.backends as f64,
            ),
            (
                "tether_discovery_last_answer_timestamp_seconds",
                "When a Discovery's name last answered (Unix seconds; 0: never since this replica began resolving).",
                |e| {
                    e.last_answer
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map_or(0.0, |d| d.as_secs_f64())
                },
            ),
        ];
        for (metric, help, value) in gauges {
            let _ = writeln!(w, "# HELP {metric} {help}");
            let _ = writeln!(w, "# TYPE {metric} gauge");
            for (n, e) in &entries {
                let _ = writeln!(w, "{metric}{{discovery=\"{}\"}} {}", label(n), value(e));
            }
        }
    }
}
