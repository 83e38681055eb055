//! `fallback` (Varnish §2.2): the first healthy member in priority (member) order. With
//! `sticky`, the director stays on its current member while it is healthy, even after a
//! higher-priority one recovers.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::round_robin::{nth_healthy, rotation};

#[derive(Debug, Default)]
pub(crate) struct Fallback {
    pub(crate) sticky: bool,
    cur: AtomicUsize,
}

impl Fallback {
    pub(crate) fn new(sticky: bool) -> Fallback {
        Fallback {
            sticky,
            cur: AtomicUsize::new(0),
        }
    }

    fn start(&self, n: usize) -> usize {
        if self.sticky {
            self.cur.load(Ordering::Relaxed) % n
        } else {
            0
        }
    }

    /// The `alt`-th healthy member from the cursor (from the first member when not sticky).
    pub(crate) fn select(
        &self,
        n: usize,
        alt: u32,
        healthy: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let m = nth_healthy(n, self.start(n), alt, healthy)?;
        if alt == 0 && self.sticky {
            self.cur.store(m, Ordering::Relaxed);
        }
        Some(m)
    }

    pub(crate) fn order(&self, n: usize) -> Vec<usize> {
        if n == 0 {
            return Vec::new();
        }
        rotation(n, self.start(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn non_sticky_returns_to_the_first_healthy() {
        let f = Fallback::new(false);
        let sick0 = Cell::new(true);
        let h = |m: usize| !(m == 0 && sick0.get());
        assert_eq!(f.select(3, 0, &h), Some(1));
        sick0.set(false);
        assert_eq!(f.select(3, 0, &h), Some(0));
    }

    #[test]
    fn sticky_stays_until_its_member_fails() {
        let f = Fallback::new(true);
        let sick = Cell::new([true, false, false]);
        let h = |m: usize| !sick.get()[m];
        assert_eq!(f.select(3, 0, &h), Some(1));
        sick.set([false, false, false]);
        assert_eq!(f.select(3, 0, &h), Some(1), "stays on 1 after 0 recovers");
        sick.set([false, true, false]);
        assert_eq!(f.select(3, 0, &h), Some(2), "moves forward, not back to 0");
        sick.set([false, true, true]);
        assert_eq!(f.select(3, 0, &h), Some(0), "wraps around");
        assert_eq!(f.select(3, 0, &|_| false), None);
    }
}
