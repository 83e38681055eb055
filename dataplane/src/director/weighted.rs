//! The cumulative-weight pick shared by the `random` and `hash` directors (Varnish's
//! `vdir_pick_be`).

/// Given `r` in `[0, 1)`, returns the first eligible member `u` (in member order) with
/// `r·T < Σ weight of eligible members ≤ u`, where `T` is the total eligible weight; `None` when
/// `T = 0`.
pub(crate) fn pick(weights: &[f64], eligible: &dyn Fn(usize) -> bool, r: f64) -> Option<usize> {
    let total: f64 = (0..weights.len())
        .filter(|&m| eligible(m))
        .map(|m| weights[m])
        .sum();
    if total <= 0.0 {
        return None;
    }
    let target = r * total;
    let mut acc = 0.0;
    let mut last = None;
    for m in (0..weights.len()).filter(|&m| eligible(m)) {
        acc += weights[m];
        if weights[m] > 0.0 {
            last = Some(m);
        }
        if target < acc {
            return Some(m);
        }
    }
    // Rounding can leave target == acc at the very end: the last weighted member takes it.
    last
}

/// The preference order of a weighted pick with a fixed `r`: pick, exclude, pick again.
pub(crate) fn order(
    weights: &[f64],
    eligible: &dyn Fn(usize) -> bool,
    r: &mut dyn FnMut() -> f64,
    limit: usize,
) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    // A mask, not a search of `out`: each pick is O(members), so the order is
    // O(limit × members) rather than O(limit² × members).
    let mut taken = vec![false; weights.len()];
    while out.len() < limit {
        let ok = |m: usize| eligible(m) && !taken[m];
        match pick(weights, &ok, r()) {
            Some(m) => {
                taken[m] = true;
                out.push(m);
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_ranges() {
        let w = [1.0, 2.0, 1.0];
        let all = |_| true;
        assert_eq!(pick(&w, &all, 0.0), Some(0));
        assert_eq!(pick(&w, &all, 0.249), Some(0));
        assert_eq!(pick(&w, &all, 0.25), Some(1));
        assert_eq!(pick(&w, &all, 0.74), Some(1));
        assert_eq!(pick(&w, &all, 0.75), Some(2));
        // Member 1 sick: ranges are split over members 0 and 2 only.
        let not1 = |m| m != 1;
        assert_eq!(pick(&w, &not1, 0.49), Some(0));
        assert_eq!(pick(&w, &not1, 0.5), Some(2));
    }

    #[test]
    fn zero_total_weight_is_none() {
        assert_eq!(pick(&[0.0, 0.0], &|_| true, 0.5), None);
        assert_eq!(pick(&[1.0], &|_| false, 0.5), None);
    }
}
