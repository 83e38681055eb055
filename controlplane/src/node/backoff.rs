//! The one backoff of the node agent: jittered exponential, reset only after a healthy period.
//!
//! "Healthy" means the thing that failed had been working for [`Backoff::healthy`] before it
//! failed: a watch that opens and dies at once does not reset the delay, so a flapping store
//! is retried at the cap, not every first delay.

use std::fmt::Display;
use std::time::Duration;

use tokio::time::Instant;

/// Jittered exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    healthy: Duration,
    next: Duration,
}

impl Backoff {
    /// Delays from `first`, doubling up to `max`; reset after `healthy` of uninterrupted work.
    pub fn new(first: Duration, max: Duration, healthy: Duration) -> Backoff {
        Backoff {
            first,
            max,
            healthy,
            next: first,
        }
    }

    /// How long a run must have lasted for its failure to start over from the first delay.
    pub fn healthy(&self) -> Duration {
        self.healthy
    }

    /// The delay after a failure of something that had worked for `worked` (zero: it never
    /// started): a random point in [d/2, d], then d doubles up to the cap. A failure after a
    /// healthy period starts from the first delay again.
    pub fn after_failure(&mut self, worked: Duration) -> Duration {
        if worked >= self.healthy {
            self.next = self.first;
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// Consecutive failures of one task, so that an outage is logged when it starts and when it
/// ends — not at every retry (twice a second per node while the store is down).
#[derive(Debug, Default)]
pub struct Streak {
    failures: u32,
    since: Option<Instant>,
}

impl Streak {
    /// A failed attempt at `what`: a warning for the first, debug lines after it.
    pub fn failed(&mut self, what: &str, error: &dyn Display) {
        if self.failures == 0 {
            self.since = Some(Instant::now());
            tracing::warn!(error = %error, "{what} failed; retrying (further failures are logged at debug level)");
        } else {
            tracing::debug!(error = %error, attempt = self.failures + 1, "{what} failed again");
        }
        self.failures = self.failures.saturating_add(1);
    }

    /// A successful attempt at `what`: says so once when it ends a streak of failures.
    pub fn succeeded(&mut self, what: &str) {
        if self.failures > 0 {
            let secs = self.since.map_or(0.0, |t| t.elapsed().as_secs_f64());
            tracing::info!(
                failed_attempts = self.failures,
                seconds = secs,
                "{what} works again"
            );
        }
        self.failures = 0;
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets_only_after_a_healthy_period() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500), Duration::from_secs(10));
        let mut upper = Vec::new();
        for _ in 0..6 {
            let d = b.after_failure(Duration::ZERO);
            upper.push(d);
        }
        let caps = [100, 200, 400, 500, 500, 500];
        for (d, cap) in upper.iter().zip(caps) {
            assert!(
                *d >= ms(cap / 2) && *d <= ms(cap),
                "{d:?} not in [{}, {cap}] ms",
                cap / 2
            );
        }
        // A watch that opened and died within the healthy period: still at the cap.
        assert!(b.after_failure(Duration::from_secs(9)) >= ms(250));
        // One that had worked long enough: from the first delay again.
        assert!(b.after_failure(Duration::from_secs(10)) <= ms(100));
    }
}
