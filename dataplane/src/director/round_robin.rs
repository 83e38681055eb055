//! `round_robin` (Varnish §2.1): one cursor per director; each pick takes the first healthy
//! member from the cursor and leaves the cursor after it.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The `alt`-th healthy member from the cursor; `alt = 0` advances the cursor past it.
    /// Like Varnish, the cursor is shared and only approximately fair under concurrency.
    pub(crate) fn select(
        &self,
        n: usize,
        alt: u32,
        healthy: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let m = nth_healthy(n, self.next.load(Ordering::Relaxed) % n, alt, healthy)?;
        if alt == 0 {
            self.next.store((m + 1) % n, Ordering::Relaxed);
        }
        Some(m)
    }

    /// Members in the order the next picks would try them.
    pub(crate) fn order(&self, n: usize) -> Vec<usize> {
        if n == 0 {
            return Vec::new();
        }
        rotation(n, self.next.load(Ordering::Relaxed) % n).collect()
    }
}

/// Members `start, start+1, …` around the circle of `n` (the cursor order of round_robin and
/// fallback).
pub(crate) fn rotation(n: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (start + i) % n)
}

/// The `alt`-th healthy member in cursor order from `start`.
pub(crate) fn nth_healthy(
    n: usize,
    start: usize,
    alt: u32,
    healthy: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    rotation(n, start).filter(|&m| healthy(m)).nth(alt as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_and_skips_sick_members() {
        let rr = RoundRobin::default();
        let all = |_| true;
        let picks: Vec<_> = (0..6).map(|_| rr.select(3, 0, &all)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2].map(Some));
        let not1 = |m| m != 1;
        let picks: Vec<_> = (0..4).map(|_| rr.select(3, 0, &not1)).collect();
        assert_eq!(picks, [0, 2, 0, 2].map(Some));
        assert_eq!(rr.select(3, 0, &|_| false), None);
        assert_eq!(rr.select(0, 0, &all), None);
    }

    #[test]
    fn alt_does_not_move_the_cursor() {
        let rr = RoundRobin::default();
        let all = |_| true;
        assert_eq!(rr.select(3, 1, &all), Some(1));
        assert_eq!(rr.select(3, 0, &all), Some(0));
    }
}
