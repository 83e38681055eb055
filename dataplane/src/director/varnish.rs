//! The `varnish` shard algorithm: Varnish 7.1's `directors.shard()` ("VSLP"), bit-exact.
//!
//! Spec: `shared/reference/varnish-directors.md` §1. The ring holds `trunc(replicas × weight)`
//! points per host, each `H32(ident ‖ decimal(j))` for `j = 0…r−1`, sorted by (point, host).
//! Lookup reproduces Varnish's loop, including its two quirks (no wraparound above the last
//! point; a two-point ring always answers index 1). A prefix index over the top bits of the
//! points narrows the search to a few entries without changing the answer.
//!
//! Rebuilding after a one-member change reuses the previous ring: surviving hosts keep their
//! (already sorted) points, only new hosts are hashed, and the two sorted runs are merged.

use rustc_hash::FxHashMap;

use super::key::h32;
use super::visited::Visited;
use super::{HealthyMode, Pick};

/// Ring entries the first-pick fast path scans before it falls back to the full walk.
const SHORT_SCAN: usize = 64;

/// In a remap: the host has no unchanged counterpart.
const GONE: u32 = u32::MAX;

/// Average ring points per index bucket (measured 2026-11-23: 4 beat 8 by 1–2 ns per lookup
/// at N ≤ 100 and 16 by 2–5 ns; the same at N = 1,000).
const POINTS_PER_BUCKET: usize = 4;

/// One host of the ring, after duplicate idents were dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RingHost {
    pub(crate) ident: String,
    /// Ring points of this host: `min(u32::MAX, trunc(replicas × weight))`.
    pub(crate) replicas: u32,
}

impl RingHost {
    /// Varnish's replica count: `trunc(replicas × weight)` for `weight ≥ 1`; a weight below 1
    /// is ignored (treated as 1).
    pub(crate) fn new(ident: String, replicas: u32, weight: f64) -> RingHost {
        let r = if weight >= 1.0 {
            // `as` saturates at u32::MAX, which is Varnish's cap.
            (f64::from(replicas) * weight).trunc() as u32
        } else {
            replicas
        };
        RingHost { ident, replicas: r }
    }
}

/// The sorted ring and its index.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    hosts: Vec<RingHost>,
    /// `point << 32 | host`, sorted ascending: points in order, ties by host index.
    entries: Vec<u64>,
    /// `index[b]` = first entry whose point is ≥ `b << shift`; `index[buckets] = len`.
    index: Vec<u32>,
    shift: u32,
    /// Whether two entries share a point value: only then can the exact loop differ from the
    /// closed form, so only then is it run.
    has_duplicate_points: bool,
}

#[inline]
fn point(e: u64) -> u32 {
    (e >> 32) as u32
}

#[inline]
fn host(e: u64) -> u32 {
    e as u32
}

impl Ring {
    /// Builds the ring of `hosts` (in host-index order), reusing the points of `prev` for hosts
    /// whose (ident, replicas) it already had.
    pub(crate) fn build(hosts: Vec<RingHost>, prev: Option<&Ring>) -> Ring {
        let n = hosts.len();
        let rmax = rmax(n);
        // old host index -> new host index, for hosts whose point set is unchanged.
        let remap = prev
            .map(|p| Self::remap(p, &hosts, rmax))
            .unwrap_or_default();
        let mut reused = vec![false; n];
        for &h in remap.iter().filter(|&&h| h != GONE) {
            reused[h as usize] = true;
        }
        let mut fresh: Vec<u64> = Vec::new();
        let mut buf = [0u8; 10];
        for (h, rh) in hosts.iter().enumerate() {
            if reused[h] {
                continue;
            }
            for j in 0..rh.replicas.min(rmax) {
                let p = h32(&[rh.ident.as_bytes(), decimal(j, &mut buf)]);
                fresh.push(u64::from(p) << 32 | h as u64);
            }
        }
        fresh.sort_unstable();
        let (entries, index, shift, has_duplicate_points) = match prev {
            Some(p) if remap.iter().any(|&h| h != GONE) => {
                match merge_reused(&p.entries, &remap, &fresh) {
                    // The index follows from the previous one when its buckets are the same
                    // size: a pass over the index rather than over the ring.
                    (entries, Some(gone))
                        if index_bits(entries.len()) == index_bits(p.entries.len()) =>
                    {
                        let index = adjust_index(&p.index, p.shift, &fresh, &gone);
                        let duplicates = p.has_duplicate_points
                            || fresh
                                .iter()
                                .any(|&x| shares_point(&entries, &index, p.shift, x));
                        (entries, index, p.shift, duplicates)
                    }
                    (entries, _) => {
                        let (index, shift, duplicates) = build_index(&entries);
                        (entries, index, shift, duplicates)
                    }
                }
            }
            _ => {
                let (index, shift, duplicates) = build_index(&fresh);
                (fresh, index, shift, duplicates)
            }
        };
        Ring {
            hosts,
            entries,
            index,
            shift,
            has_duplicate_points,
        }
    }

    /// For each host of `prev`: its index among `hosts` if its ring points are unchanged, else
    /// [`GONE`]. The common prefix and suffix of the two host lists are matched in place (a
    /// one-member change leaves everything else there); only the hosts between are matched by
    /// ident, so a one-member change at 10,000 hosts hashes a handful of idents, not all.
    fn remap(prev: &Ring, hosts: &[RingHost], new_rmax: u32) -> Vec<u32> {
        let prev_rmax = rmax(prev.hosts.len());
        let same = |a: &RingHost, b: &RingHost| {
            a == b && a.replicas.min(prev_rmax) == b.replicas.min(new_rmax)
        };
        let (old, new) = (&prev.hosts[..], hosts);
        let mut out = vec![GONE; old.len()];
        let prefix = old.iter().zip(new).take_while(|(a, b)| same(a, b)).count();
        let suffix = old[prefix..]
            .iter()
            .rev()
            .zip(new[prefix..].iter().rev())
            .take_while(|(a, b)| same(a, b))
            .count();
        for (i, o) in out.iter_mut().enumerate().take(prefix) {
            *o = i as u32;
        }
        for k in 0..suffix {
            out[old.len() - 1 - k] = (new.len() - 1 - k) as u32;
        }
        // Idents are unique among a ring's hosts, so a host matched above is not in between.
        let between: FxHashMap<&RingHost, u32> = new[prefix..new.len() - suffix]
            .iter()
            .enumerate()
            .map(|(i, h)| (h, (prefix + i) as u32))
            .collect();
        for (i, h) in old.iter().enumerate().take(old.len() - suffix).skip(prefix) {
            if let Some(&j) = between.get(h)
                && same(h, &new[j as usize])
            {
                out[i] = j;
            }
        }
        out
    }

    /// Total ring points.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The ring index Varnish starts its walk at for `key` (`shard_lookup`).
    pub(crate) fn lookup(&self, key: u32) -> usize {
        let n = self.entries.len();
        match n {
            0 | 1 => 0,
            2 => 1,
            _ => {
                let b = (key >> self.shift) as usize;
                let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
                let idx = lo + self.entries[lo..hi].partition_point(|&e| point(e) < key);
                let idx = idx.min(n - 1);
                if self.has_duplicate_points && point(self.entries[idx]) == key {
                    self.lookup_loop(key)
                } else {
                    idx
                }
            }
        }
    }

    /// Varnish's binary search exactly as written; it differs from the closed form only when
    /// the key equals a point that occurs more than once.
    pub(crate) fn lookup_loop(&self, key: u32) -> usize {
        let n = self.entries.len();
        let (mut lo, mut hi) = (0usize, n);
        loop {
            let i = (lo + hi) / 2;
            let p = point(self.entries[i]);
            if p == key {
                return i;
            } else if i == n - 1 {
                return n - 1;
            } else if p < key && point(self.entries[i + 1]) >= key {
                return i + 1;
            } else if p > key {
                if i == 0 {
                    return 0;
                }
                hi = i;
            } else {
                lo = i;
            }
        }
    }

    /// Varnish's `sharddir_pick_be` without rampup/warmup: the host for `key`, and when
    /// `successor` is asked for, the next healthy host of the same walk (for rampup/warmup).
    pub(crate) fn pick<F: Fn(u32) -> bool>(
        &self,
        key: u32,
        alt: u32,
        mode: HealthyMode,
        successor: bool,
        healthy: &F,
    ) -> Pick {
        let n_hosts = self.hosts.len();
        if n_hosts == 0 || self.entries.is_empty() {
            return Pick::NONE;
        }
        // Varnish clamps alt into [0, n-1].
        let alt = alt.min(n_hosts as u32 - 1);
        if alt == 0
            && !successor
            && let Some(c) = self.first(key, &|h| mode == HealthyMode::Ignore || healthy(h))
        {
            return Pick::only(Some(c));
        }
        let idx = self.lookup(key);
        let mut w = Walk {
            ring: self,
            idx,
            picked: Visited::new(),
            prev: None,
            last: None,
            healthy,
        };
        if alt > 0
            && w.step(i64::from(alt) - 1, mode == HealthyMode::All)
                .is_none()
        {
            return Pick::only(w.prev);
        }
        let Some(chosen) = w.step(0, mode != HealthyMode::Ignore) else {
            return Pick::only(w.prev);
        };
        let next = if successor && alt == 0 && mode != HealthyMode::Ignore {
            w.step(0, true)
        } else {
            None
        };
        Pick {
            chosen: Some(chosen),
            successor: next,
        }
    }

    /// The common request, alt=0: Varnish's walk then returns the first host in ring order
    /// that `accept`s (every host when health is ignored). A few ring entries are scanned
    /// without the walk's bookkeeping; `None` when none of them is accepted (a longer run of
    /// sick hosts takes the walk) or the ring is empty.
    #[inline(always)]
    pub(crate) fn first<F: Fn(u32) -> bool>(&self, key: u32, accept: &F) -> Option<u32> {
        let n = self.entries.len();
        let mut i = self.lookup(key);
        for _ in 0..n.min(SHORT_SCAN) {
            let c = host(*self.entries.get(i)?);
            if accept(c) {
                return Some(c);
            }
            // Wrapping by comparison, not `%`: a division would sit on every lookup's
            // critical path.
            i += 1;
            if i == n {
                i = 0;
            }
        }
        None
    }

    /// Hosts in walk order from `key`, whatever their health: what `alt=0,1,…` reach with
    /// `healthy=IGNORE`.
    pub(crate) fn order(&self, key: u32, limit: usize) -> Vec<u32> {
        let mut out = Vec::new();
        if self.entries.is_empty() {
            return out;
        }
        let mut seen = Visited::new();
        let mut idx = self.lookup(key);
        let limit = limit.min(self.hosts.len());
        while out.len() < limit {
            let h = host(self.entries[idx]);
            if seen.insert(h) {
                out.push(h);
            }
            idx = (idx + 1) % self.entries.len();
        }
        out
    }
}

/// One walk around the ring (Varnish's `shard_state`).
struct Walk<'r, F> {
    ring: &'r Ring,
    idx: usize,
    picked: Visited,
    prev: Option<u32>,
    last: Option<u32>,
    healthy: &'r F,
}

impl<F: Fn(u32) -> bool> Walk<'_, F> {
    /// Varnish's `shard_next`: skips `skip` distinct hosts (healthy ones, and sick ones too
    /// unless `need_healthy`), returns the next one, and records `prev`/`last` as Varnish does.
    fn step(&mut self, mut skip: i64, need_healthy: bool) -> Option<u32> {
        let n_hosts = self.ring.hosts.len();
        let n_points = self.ring.entries.len();
        while self.picked.len() < n_hosts && skip >= 0 {
            let c = host(self.ring.entries[self.idx]);
            if self.picked.insert(c) {
                let mut chosen = false;
                if (self.healthy)(c) {
                    if skip == 0 {
                        chosen = true;
                    } else {
                        self.prev = Some(c);
                    }
                    skip -= 1;
                } else if !need_healthy {
                    chosen = skip == 0;
                    skip -= 1;
                }
                if chosen {
                    if let Some(l) = self.last {
                        self.prev = Some(l);
                    }
                    self.last = Some(c);
                    // Varnish returns without advancing idx.
                    return Some(c);
                }
            }
            self.idx += 1;
            if self.idx == n_points {
                self.idx = 0;
            }
        }
        None
    }
}

/// Varnish caps each host's points so that the total fits in u32 (§1.2).
fn rmax(n_hosts: usize) -> u32 {
    ((u32::MAX - 1) as usize).checked_div(n_hosts).unwrap_or(0) as u32
}

/// Merges the previous ring's surviving entries (renumbered by `remap`) with the sorted
/// `fresh` entries. When the renumbering kept the hosts' relative order (removals, appends,
/// changes in place), the survivors are still sorted by (point, host); otherwise ties may have
/// to sort differently and the result is sorted again.
///
/// Also returns, from the common case, the points of the entries that left (for
/// [`adjust_index`]).
fn merge_reused(prev: &[u64], remap: &[u32], fresh: &[u64]) -> (Vec<u64>, Option<Vec<u32>>) {
    let monotone = remap
        .iter()
        .filter(|&&h| h != GONE)
        .try_fold(None::<u32>, |last, &i| match last {
            Some(l) if l >= i => Err(()),
            _ => Ok(Some(i)),
        })
        .is_ok();
    let relabel = |e: u64| e & !0xffff_ffff | u64::from(remap[host(e) as usize]);
    let mut out = Vec::with_capacity(prev.len() + fresh.len());
    if monotone {
        // The common case, in runs: each fresh entry's place is a galloping search on the
        // points from the previous one's (then a step over the few entries with the same
        // point: ties), and the runs between are copied renumbered, gone hosts' entries left
        // out — no per-entry merge decision. When no host is gone or renumbered (a member
        // appended) the runs are plain copies.
        let plain = remap.iter().enumerate().all(|(i, &h)| h == i as u32);
        let mut gone = Vec::new();
        let mut copy = |out: &mut Vec<u64>, run: &[u64]| {
            if plain {
                out.extend_from_slice(run);
            } else {
                out.extend(run.iter().filter_map(|&e| {
                    let h = remap[host(e) as usize];
                    if h == GONE {
                        gone.push(point(e));
                        None
                    } else {
                        Some(e & !0xffff_ffff | u64::from(h))
                    }
                }));
            }
        };
        let mut start = 0;
        for &x in fresh {
            let mut end = start + gallop(&prev[start..], |e| point(e) < point(x));
            // Equal points sort by (new) host: survivors before x, and gone entries, go first.
            while end < prev.len()
                && point(prev[end]) == point(x)
                && (remap[host(prev[end]) as usize] == GONE || relabel(prev[end]) < x)
            {
                end += 1;
            }
            copy(&mut out, &prev[start..end]);
            out.push(x);
            start = end;
        }
        copy(&mut out, &prev[start..]);
        return (out, Some(gone));
    }
    let mut f = fresh.iter().copied().peekable();
    for &e in prev {
        if remap[host(e) as usize] == GONE {
            continue;
        }
        let e = relabel(e);
        while let Some(x) = f.next_if(|&x| x < e) {
            out.push(x);
        }
        out.push(e);
    }
    out.extend(f);
    if !monotone {
        out.sort_unstable();
    }
    (out, None)
}

/// Bits of the index's buckets for a ring of `len` entries. At most 2^17 buckets (512 KiB):
/// a ring of 10,000 members (670,000 points) is out of L2 anyway, and a larger index only
/// adds misses to its lookups and bytes to copy on every change.
fn index_bits(len: usize) -> u32 {
    (usize::BITS - (len / POINTS_PER_BUCKET).max(1).leading_zeros()).clamp(4, 17)
}

/// `prev`'s index (buckets of `shift`) after the entries at points `gone` left and `fresh`
/// came: each bucket's start moves by the entries that came and left before it.
fn adjust_index(prev: &[u32], shift: u32, fresh: &[u64], gone: &[u32]) -> Vec<u32> {
    let mut delta = vec![0i32; prev.len()];
    for &x in fresh {
        delta[(point(x) >> shift) as usize + 1] += 1;
    }
    for &g in gone {
        delta[(g >> shift) as usize + 1] -= 1;
    }
    let mut moved = 0i64;
    prev.iter()
        .zip(&delta)
        .map(|(&i, &d)| {
            moved += i64::from(d);
            // In range: the result counts entries of the new ring.
            (i64::from(i) + moved) as u32
        })
        .collect()
}

/// Whether another entry of `entries` has the point of `x` (found through the index).
fn shares_point(entries: &[u64], index: &[u32], shift: u32, x: u64) -> bool {
    let b = (point(x) >> shift) as usize;
    let bucket = &entries[index[b] as usize..index[b + 1] as usize];
    bucket.iter().filter(|&&e| point(e) == point(x)).count() > 1
}

/// The first index of `v` at which `below` is false (`below` holds for a prefix of `v`),
/// searched from the front in doubling steps and then by bisection: the answer is usually near
/// the front, and a plain bisection of a 5 MiB ring per fresh point misses the cache ~20 times.
fn gallop(v: &[u64], below: impl Fn(u64) -> bool) -> usize {
    // Everything before `lo` is below.
    let (mut lo, mut step) = (0, 1);
    loop {
        let probe = lo + step;
        if probe > v.len() {
            return lo + v[lo..].partition_point(|&e| below(e));
        }
        if below(v[probe - 1]) {
            lo = probe;
            step *= 2;
        } else {
            return lo + v[lo..probe - 1].partition_point(|&e| below(e));
        }
    }
}

/// A prefix index over the top bits of the points, about one bucket per [`POINTS_PER_BUCKET`]
/// points (at most 2^19 buckets): `index[b]` is the first entry whose bucket is ≥ b. A small
/// index stays in L1 (32 KiB at N = 1,000), and a bucket's entries share a cache line or two.
/// Also returns whether two entries share a point (found in the same pass).
fn build_index(entries: &[u64]) -> (Vec<u32>, u32, bool) {
    let bits = index_bits(entries.len());
    let shift = 32 - bits;
    let buckets = 1usize << bits;
    let mut index = vec![0u32; buckets + 1];
    let mut duplicates = false;
    // No point equals -1: the first entry has no predecessor to equal.
    let mut last = -1i64;
    for &e in entries {
        index[(point(e) >> shift) as usize + 1] += 1;
        duplicates |= i64::from(point(e)) == last;
        last = i64::from(point(e));
    }
    for b in 1..=buckets {
        index[b] += index[b - 1];
    }
    (index, shift, duplicates)
}

/// The ASCII decimal of `j` (Varnish's `"%d"`), written into `buf`.
fn decimal(mut j: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (j % 10) as u8;
        j /= 10;
        if j == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(idents: &[&str], replicas: u32) -> Ring {
        let hosts = idents
            .iter()
            .map(|i| RingHost::new((*i).to_owned(), replicas, 1.0))
            .collect();
        Ring::build(hosts, None)
    }

    #[test]
    fn decimal_matches_format() {
        let mut b = [0u8; 10];
        for j in [0, 7, 10, 66, 12345, u32::MAX] {
            assert_eq!(decimal(j, &mut b), j.to_string().as_bytes());
        }
    }

    #[test]
    fn replicas_follow_varnish_weight_rules() {
        assert_eq!(RingHost::new("a".into(), 67, 1.5).replicas, 100);
        assert_eq!(RingHost::new("a".into(), 67, 2.7).replicas, 180);
        assert_eq!(RingHost::new("a".into(), 67, 0.5).replicas, 67);
        assert_eq!(RingHost::new("a".into(), 67, 1e12).replicas, u32::MAX);
    }

    #[test]
    fn points_are_h32_of_ident_and_zero_based_suffix() {
        let r = ring(&["b0"], 3);
        let mut want: Vec<u32> = ["b00", "b01", "b02"]
            .iter()
            .map(|s| h32(&[s.as_bytes()]))
            .collect();
        want.sort_unstable();
        let got: Vec<u32> = r.entries.iter().map(|&e| point(e)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn indexed_lookup_equals_the_varnish_loop() {
        let r = ring(&["a", "b", "c", "d", "e"], 67);
        let mut keys = vec![0u32, 1, u32::MAX, u32::MAX - 1];
        keys.extend(r.entries.iter().map(|&e| point(e)));
        keys.extend(r.entries.iter().map(|&e| point(e).wrapping_add(1)));
        keys.extend(r.entries.iter().map(|&e| point(e).wrapping_sub(1)));
        let mut x = 0x1234_5678u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            keys.push(x);
        }
        for k in keys {
            assert_eq!(r.lookup(k), r.lookup_loop(k), "key {k}");
        }
    }

    #[test]
    fn no_wraparound_above_the_last_point() {
        let r = ring(&["a", "b", "c"], 5);
        let n = r.len();
        let max = point(r.entries[n - 1]);
        if max < u32::MAX {
            assert_eq!(r.lookup(max + 1), n - 1);
        }
        assert_eq!(r.lookup(u32::MAX), n - 1);
        assert_eq!(r.lookup(0), 0);
    }

    #[test]
    fn two_point_ring_always_answers_index_one() {
        let r = ring(&["a", "b"], 1);
        for k in [0, 1, 1 << 31, u32::MAX] {
            assert_eq!(r.lookup(k), 1);
            assert_eq!(r.lookup_loop(k), 1);
        }
    }

    #[test]
    fn duplicate_points_take_the_loop_answer() {
        // Two hosts with the same ident-less point set: build entries by hand.
        let hosts = vec![
            RingHost::new("x".into(), 1, 1.0),
            RingHost::new("y".into(), 1, 1.0),
            RingHost::new("z".into(), 1, 1.0),
        ];
        let mut r = Ring::build(hosts, None);
        r.entries = vec![10u64 << 32, 20u64 << 32 | 1, 20u64 << 32 | 2, 30u64 << 32];
        r.has_duplicate_points = true;
        let (index, shift, _) = build_index(&r.entries);
        r.index = index;
        r.shift = shift;
        for k in [0, 10, 15, 20, 25, 30, 31] {
            assert_eq!(r.lookup(k), r.lookup_loop(k), "key {k}");
        }
    }

    #[test]
    fn incremental_rebuild_equals_a_fresh_build() {
        let names: Vec<String> = (0..50).map(|i| format!("backend-{i}")).collect();
        let hosts = |skip: Option<usize>, extra: Option<&str>| -> Vec<RingHost> {
            let mut v: Vec<RingHost> = names
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != skip)
                .map(|(_, n)| RingHost::new(n.clone(), 67, 1.0))
                .collect();
            if let Some(e) = extra {
                v.push(RingHost::new(e.to_owned(), 67, 2.0));
            }
            v
        };
        let base = Ring::build(hosts(None, None), None);
        for (skip, extra) in [(Some(7), None), (None, Some("new")), (Some(0), Some("n2"))] {
            let fresh = Ring::build(hosts(skip, extra), None);
            let inc = Ring::build(hosts(skip, extra), Some(&base));
            assert_eq!(inc.entries, fresh.entries);
            assert_eq!(inc.index, fresh.index);
        }
        // A weight changed in place, and a host inserted in the middle: the common prefix and
        // suffix are matched in place, the rest by ident.
        let mut heavier = hosts(None, None);
        heavier[20] = RingHost::new(names[20].clone(), 67, 3.0);
        let mut inserted = hosts(None, None);
        inserted.insert(10, RingHost::new("middle".into(), 67, 1.0));
        for changed in [heavier, inserted] {
            let fresh = Ring::build(changed.clone(), None);
            let inc = Ring::build(changed, Some(&base));
            assert_eq!(inc.entries, fresh.entries);
            assert_eq!(inc.index, fresh.index);
            assert_eq!(inc.has_duplicate_points, fresh.has_duplicate_points);
        }
        // Reordered hosts: ties may sort differently, so the rebuild re-sorts.
        let mut rev = hosts(None, None);
        rev.reverse();
        assert_eq!(
            Ring::build(rev.clone(), Some(&base)).entries,
            Ring::build(rev, None).entries
        );
    }

    #[test]
    fn incremental_rebuild_equals_a_fresh_build_with_duplicate_points() {
        // Points occur twice when ident ‖ replica strings do ("b1" ‖ "10" = "b11" ‖ "0", as in
        // Varnish); the incremental merge must order them exactly as a fresh build does.
        let hosts: Vec<RingHost> = (0..200)
            .map(|i| RingHost::new(format!("b{i}"), 67, 1.0))
            .collect();
        let base = Ring::build(hosts.clone(), None);
        assert!(base.has_duplicate_points);
        let duplicated: Vec<u32> = base
            .entries
            .windows(2)
            .filter(|w| point(w[0]) == point(w[1]))
            .flat_map(|w| [host(w[0]), host(w[1])])
            .collect();
        let mut changes = Vec::new();
        for &h in duplicated.iter().step_by(duplicated.len() / 8 + 1) {
            // A host holding a duplicated point changes weight, goes, or has one inserted
            // before it.
            let mut heavier = hosts.clone();
            heavier[h as usize] = RingHost::new(format!("b{h}"), 67, 2.0);
            let mut removed = hosts.clone();
            removed.remove(h as usize);
            let mut inserted = hosts.clone();
            inserted.insert(h as usize, RingHost::new(format!("new{h}"), 67, 1.0));
            changes.extend([heavier, removed, inserted]);
        }
        for changed in changes {
            let fresh = Ring::build(changed.clone(), None);
            let inc = Ring::build(changed, Some(&base));
            assert!(inc.entries == fresh.entries);
            assert_eq!(inc.index, fresh.index);
            // Never false when a point occurs twice (it may stay true when one left).
            assert!(inc.has_duplicate_points || !fresh.has_duplicate_points);
        }
    }

    #[test]
    fn gallop_finds_the_partition_point() {
        let v: Vec<u64> = (0..100).map(|i| i * 2).collect();
        for x in 0..205 {
            assert_eq!(
                gallop(&v, |e| e < x),
                v.partition_point(|&e| e < x),
                "x={x}"
            );
        }
        assert_eq!(gallop(&[], |_| true), 0);
    }
}
