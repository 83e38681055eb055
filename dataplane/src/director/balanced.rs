//! The `balanced` shard algorithm: Tether's own consistent hash over a slot space.
//!
//! Every member owns one slot (a small integer the control plane assigns and stores with the
//! director, so the mapping is a pure function of the stored director). A key seeds an endless
//! pseudo-random sequence of slots; the key goes to the first slot of its sequence that is
//! occupied, accepted (weights, below) and healthy. `alt=n` is the (n+1)-th distinct such member
//! of the same sequence, which is exactly where the key goes if its first n choices are
//! unavailable.
//!
//! The sequence is *nested*: the slot space has capacity 2^K, and the sequence of capacity 2^K
//! interleaves the sequence of capacity 2^(K−1) (each sample of level K is, by a fair coin,
//! either a uniform slot of the upper half or the next sample of level K−1). Restricted to the
//! lower half it is therefore the very same sequence as the smaller capacity's, so growing the
//! capacity moves no key unless a member in the new half takes it. Each level keeps its own
//! sample counter; a sample costs two mixes on average and a lookup needs at most two samples
//! on average when slots are dense.
//!
//! Weights: a sample of slot s is accepted with probability `weight(s) / scale`, decided by the
//! sample's own hash, where `scale` is the smallest power of two ≥ the largest weight. When all
//! weights equal the scale (the usual case) nothing is drawn. Because every sample is uniform
//! and acceptance independent, a member's expected share is exactly `weight / Σ weight`.
//!
//! Termination: after a budget of samples without an answer (256 times the expected samples per
//! hit, so only when almost every member is sick), the walk ranks the remaining eligible members
//! by weighted rendezvous hashing, deterministically.
//!
//! Density: a lookup draws `capacity / members` samples per hit on average, so slots should
//! stay dense; the control plane gives a new member the lowest free slot.

use super::key::fmix64;
use super::visited::Visited;
use super::{HealthyMode, Pick};

/// No member in this slot.
const EMPTY: u32 = u32::MAX;
/// Largest slot number accepted (one million members per director).
pub const MAX_SLOT: u32 = (1 << 20) - 1;
/// Levels of the slot space: 0 (slot 0 alone) to 20 (slots up to [`MAX_SLOT`]).
const LEVELS: usize = 21;
/// Samples per expected hit that a walk may draw before it falls back to rendezvous ranking:
/// a walk reaching its fourth alternate with every member healthy exhausts it with probability
/// far below e^-64.
const BUDGET_PER_HIT: f64 = 256.0;
/// The least budget, for small tables.
const MIN_BUDGET: u64 = 1024;

/// The seed premix multiplier (the golden ratio in 64 bits).
const PREMIX_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
/// wyrand's increment and output constants.
const WY_INC: u64 = 0xa076_1d64_78bd_642f;
const WY_XOR: u64 = 0xe703_7ed1_a0b4_28db;
const SEED_SALT: u64 = 0x5157_a7d3_c9e2_10b5;
const ACCEPT_SALT: u64 = 0xa0b4_28db_6c3e_f9d1;
const RENDEZVOUS_SALT: u64 = 0x3c6e_f372_fe94_f82b;

/// Why slots could not be assigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// Two members asked for the same slot.
    #[error("members[{member}].slot: slot {slot} is already taken by members[{other}]")]
    Duplicate {
        /// The member index that asked second.
        member: usize,
        /// The first member with that slot.
        other: usize,
        /// The slot.
        slot: u32,
    },
    /// A slot beyond [`MAX_SLOT`].
    #[error("members[{member}].slot: {slot} is larger than the maximum {MAX_SLOT}")]
    TooLarge {
        /// The member index.
        member: usize,
        /// The slot asked for.
        slot: u32,
    },
}

/// Gives every member a slot: members that have one keep it; the others take the lowest free
/// slots in member order. The control plane stores the result, so a later removal leaves every
/// other member in its slot (and so moves no other key).
pub fn assign_slots(requested: &[Option<u32>]) -> Result<Vec<u32>, SlotError> {
    // owner[slot] = member that asked for it; slots are dense, so a vector beats a map.
    let len = requested
        .iter()
        .flatten()
        .max()
        .map_or(0, |&m| m as usize + 1);
    let mut owner: Vec<Option<usize>> = vec![None; len.min(MAX_SLOT as usize + 1)];
    for (member, slot) in requested.iter().enumerate() {
        if let Some(slot) = *slot {
            if slot > MAX_SLOT {
                return Err(SlotError::TooLarge { member, slot });
            }
            if let Some(other) = owner[slot as usize] {
                return Err(SlotError::Duplicate {
                    member,
                    other,
                    slot,
                });
            }
            owner[slot as usize] = Some(member);
        }
    }
    let mut next_free = 0usize;
    let mut out = Vec::with_capacity(requested.len());
    for slot in requested {
        match slot {
            Some(s) => out.push(*s),
            None => {
                while owner.get(next_free).is_some_and(Option::is_some) {
                    next_free += 1;
                }
                out.push(next_free as u32);
                next_free += 1;
            }
        }
    }
    Ok(out)
}

/// An entry of a per-slot table: a member index or a backend id, [`SlotId::NONE`] when the
/// slot is empty.
trait SlotId: Copy + PartialEq {
    const NONE: Self;
    fn widen(self) -> u32;
}

impl SlotId for u32 {
    const NONE: u32 = EMPTY;
    #[inline(always)]
    fn widen(self) -> u32 {
        self
    }
}

impl SlotId for u16 {
    const NONE: u16 = u16::MAX;
    #[inline(always)]
    fn widen(self) -> u32 {
        u32::from(self)
    }
}

/// Backend id per slot, in 16 bits when every id fits: at N = 10,000 (16,384 slots) the table
/// is 32 KiB instead of 64 and stays in L1 with the health table.
#[derive(Debug, Clone)]
enum SlotBackends {
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

/// The slot table of one director.
#[derive(Debug, Clone)]
pub(crate) struct SlotTable {
    /// Capacity is `1 << level`.
    level: u32,
    /// Levels up to this one are one flat level (see [`SlotTable::build`]).
    base: u32,
    /// Member index per slot, or [`EMPTY`].
    slot_member: Vec<u32>,
    /// Acceptance threshold per slot, out of 2^32; `None` when every weight equals the scale.
    accept: Option<Vec<u64>>,
    /// Per member: (slot, weight), for the rendezvous fallback.
    members: Vec<(u32, f64)>,
    /// Samples a walk may draw before falling back to rendezvous.
    budget: u64,
    /// Backend id per slot ([`EMPTY`] for an empty slot), when every member is a backend.
    slot_backend: Option<SlotBackends>,
    /// Samples [`SlotTable::first_flat`] draws at once: enough that all of them miss rarely
    /// (a miss is a mispredicted branch), no more (each costs a multiply and a load).
    lanes: u8,
}

impl SlotTable {
    /// Builds the table from each member's (slot, weight). Slots must be distinct (see
    /// [`assign_slots`]); weights finite and ≥ 0.
    ///
    /// `base_level`: the slot space `[0, 2^base_level)` is one flat level, sampled by a single
    /// uniform draw without level coins (DxHash-like, the fastest), and nesting starts above
    /// it; 0 makes every level nested. It is part of the stored director: changing it moves
    /// keys, growing the slot space past it does not.
    pub(crate) fn build(members: &[(u32, f64)], base_level: u32) -> SlotTable {
        let max_slot = members.iter().map(|m| m.0).max().unwrap_or(0);
        let level = (u32::BITS - max_slot.leading_zeros()).max(base_level);
        let capacity = 1usize << level;
        let mut slot_member = vec![EMPTY; capacity];
        for (i, &(slot, _)) in members.iter().enumerate() {
            slot_member[slot as usize] = i as u32;
        }
        let max_w = members.iter().map(|m| m.1).fold(0.0f64, f64::max);
        let scale = power_of_two_at_least(max_w);
        let accept = if members.iter().all(|m| m.1 == scale) {
            None
        } else {
            let mut t = vec![0u64; capacity];
            for &(slot, w) in members {
                t[slot as usize] = ((w / scale) * 4_294_967_296.0) as u64;
            }
            Some(t)
        };
        // Expected samples per accepted hit: capacity over the summed acceptance probabilities.
        let acceptance: f64 = members.iter().map(|m| m.1 / scale).sum();
        let per_hit = if acceptance > 0.0 {
            capacity as f64 / acceptance
        } else {
            1.0
        };
        // A sample misses with probability 1 − 1/per_hit: one lane when that is under 1/32
        // (N = 1,000 in 1,024 slots), two under 1/4 (N = 100 in 128), else four (N = 10 in 16:
        // all four miss 2% of the time).
        let miss = 1.0 - 1.0 / per_hit;
        let lanes = if miss <= 1.0 / 32.0 {
            1
        } else if miss <= 0.25 {
            2
        } else {
            4
        };
        SlotTable {
            level,
            base: base_level,
            slot_member,
            accept,
            members: members.to_vec(),
            budget: ((BUDGET_PER_HIT * per_hit) as u64).max(MIN_BUDGET),
            slot_backend: None,
            lanes,
        }
    }

    /// The member for `hash` (see the module doc), and its successor when asked for.
    pub(crate) fn pick<F: Fn(u32) -> bool>(
        &self,
        hash: u64,
        alt: u32,
        mode: HealthyMode,
        successor: bool,
        healthy: &F,
    ) -> Pick {
        if self.members.is_empty() {
            return Pick::NONE;
        }
        let need_healthy = mode != HealthyMode::Ignore;
        if alt == 0 && !successor {
            // The common request: the first member is never a repeat, so no visited set.
            if self.is_flat() {
                return Pick::only(self.first_flat(hash, need_healthy, healthy));
            }
            return Pick::only(self.sampler(hash).first(need_healthy, healthy));
        }
        let mut walk = self.walk(hash);
        let mut skip = alt.min(self.members.len() as u32 - 1);
        let chosen = loop {
            let Some(m) = walk.next(need_healthy, healthy) else {
                return Pick::NONE;
            };
            if skip == 0 {
                break m;
            }
            skip -= 1;
        };
        let next = if successor && alt == 0 && need_healthy {
            walk.next(true, healthy)
        } else {
            None
        };
        Pick {
            chosen: Some(chosen),
            successor: next,
        }
    }

    /// Members in preference order for `hash`, whatever their health.
    pub(crate) fn order(&self, hash: u64, limit: usize) -> Vec<u32> {
        let mut walk = self.walk(hash);
        let mut out = Vec::new();
        while out.len() < limit.min(self.members.len()) {
            match walk.next(false, &|_: u32| true) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }

    /// Whether the table is one flat level with members, so that [`SlotTable::first_flat`]
    /// answers a first pick.
    #[inline]
    pub(crate) fn is_flat(&self) -> bool {
        self.level == self.base && !self.members.is_empty()
    }

    /// [`Sampler::first`] for a table that is one flat level (the usual case when the base
    /// covers the director): the draws of a flat level are independent of each other, so
    /// `lanes` of them are computed and looked up at once and the first occupied one is found
    /// with bit arithmetic. One sample at a time, whether a slot is empty is a coin the branch
    /// predictor cannot learn (37% of slots are empty at N = 10 in 16 slots); four at a time,
    /// the loop continues only when all four are empty (2% there). Same sequence, same budget,
    /// same answer as the sampler.
    #[inline(always)]
    pub(crate) fn first_flat<F: Fn(u32) -> bool>(
        &self,
        hash: u64,
        need_healthy: bool,
        healthy: &F,
    ) -> Option<u32> {
        self.first_flat_in(&self.slot_member, hash, need_healthy, healthy, |m| m)
    }

    /// [`SlotTable::first_flat`] answered with the member's backend id, read from a per-slot
    /// table of backend ids, which saves the member → backend load on the way: `None` when
    /// some member is not a backend (see [`SlotTable::set_backends`]). `healthy` takes a
    /// backend id.
    #[inline(always)]
    pub(crate) fn first_flat_backend<F: Fn(u32) -> bool>(
        &self,
        hash: u64,
        need_healthy: bool,
        healthy: &F,
    ) -> Option<Option<u32>> {
        match self.slot_backend.as_ref()? {
            SlotBackends::Narrow(ids) => {
                Some(self.first_backend_in(ids, hash, need_healthy, healthy))
            }
            SlotBackends::Wide(ids) => {
                Some(self.first_backend_in(ids, hash, need_healthy, healthy))
            }
        }
    }

    #[inline(always)]
    fn first_backend_in<T: SlotId, F: Fn(u32) -> bool>(
        &self,
        ids: &[T],
        hash: u64,
        need_healthy: bool,
        healthy: &F,
    ) -> Option<u32> {
        let backend_of = |m: u32| {
            self.members
                .get(m as usize)
                .and_then(|&(slot, _)| ids.get(slot as usize))
                .map_or(EMPTY, |&b| b.widen())
        };
        self.first_flat_in(ids, hash, need_healthy, healthy, backend_of)
    }

    /// Records each member's backend id (`None` for a member that is a nested director), for
    /// [`SlotTable::first_flat_backend`]; it answers only when every member is a backend.
    pub(crate) fn set_backends(&mut self, backend_of_member: &[Option<u32>]) {
        self.slot_backend = None;
        if backend_of_member.len() != self.members.len() {
            return;
        }
        let mut ids = vec![EMPTY; self.slot_member.len()];
        for (&(slot, _), b) in self.members.iter().zip(backend_of_member) {
            match b {
                Some(b) => ids[slot as usize] = *b,
                None => return,
            }
        }
        let narrow = ids
            .iter()
            .map(|&b| {
                if b == EMPTY {
                    Some(u16::NONE)
                } else {
                    u16::try_from(b).ok().filter(|&n| n != u16::NONE)
                }
            })
            .collect::<Option<Vec<u16>>>();
        self.slot_backend = Some(match narrow {
            Some(n) => SlotBackends::Narrow(n),
            None => SlotBackends::Wide(ids),
        });
    }

    /// The flat first pick over `ids`, a per-slot table (members, or their backends), where
    /// `id_of` maps a member index to its id and `healthy` takes an id.
    #[inline(always)]
    fn first_flat_in<T: SlotId, F: Fn(u32) -> bool, I: Fn(u32) -> u32>(
        &self,
        ids: &[T],
        hash: u64,
        need_healthy: bool,
        healthy: &F,
        id_of: I,
    ) -> Option<u32> {
        // One copy of the loop per lane count, and the unweighted ones carry no acceptance test.
        let unweighted = |_: usize, _: u64| true;
        let seed = premix(hash);
        let found = match (&self.accept, self.lanes) {
            (None, 1) => {
                self.first_flat_with::<1, _, _, _>(ids, seed, need_healthy, healthy, unweighted)
            }
            (None, 2) => {
                self.first_flat_with::<2, _, _, _>(ids, seed, need_healthy, healthy, unweighted)
            }
            (None, _) => {
                self.first_flat_with::<4, _, _, _>(ids, seed, need_healthy, healthy, unweighted)
            }
            (Some(accept), _) => {
                let accepted = |slot: usize, h: u64| {
                    accept
                        .get(slot)
                        .is_some_and(|&a| fmix64(h ^ ACCEPT_SALT) >> 32 < a)
                };
                self.first_flat_with::<4, _, _, _>(ids, seed, need_healthy, healthy, accepted)
            }
        };
        match found {
            Some(id) => Some(id),
            // Out of budget (almost every member sick): rank the rest by rendezvous.
            None => rendezvous(self, seed, None, need_healthy, &|m| healthy(id_of(m))).map(id_of),
        }
    }

    #[inline(always)]
    fn first_flat_with<const K: usize, T: SlotId, F: Fn(u32) -> bool, A: Fn(usize, u64) -> bool>(
        &self,
        table: &[T],
        seed: u64,
        need_healthy: bool,
        healthy: &F,
        accepted: A,
    ) -> Option<u32> {
        let mask = (1u64 << self.level) - 1;
        // Draw `i` hashes `seed + ((level << 32) | i) · WY_INC`; `(level << 32) | i` is
        // `(level << 32) + i` because the budget is below 2^32 (at most 256 · 2^21, the
        // acceptance summing to at least ½), so consecutive draws step by WY_INC.
        let first = seed.wrapping_add((u64::from(self.level) << 32).wrapping_mul(WY_INC));
        // The id draw `x` lands on, or EMPTY when its slot is empty or it is not accepted.
        let candidate = |x: u64| -> u32 {
            let h = mix(x);
            let slot = (h & mask) as usize;
            match table.get(slot) {
                Some(&m) if m != T::NONE && accepted(slot, h) => m.widen(),
                _ => EMPTY,
            }
        };
        let mut i = 0u64;
        let mut x = first;
        while i + K as u64 <= self.budget {
            // Written out lane by lane: as a loop (or `array::from_fn`) the lanes compiled to
            // branches or a call, which cost more than they save.
            let lane = |k: u64| {
                if k < K as u64 {
                    candidate(x.wrapping_add(WY_INC.wrapping_mul(k)))
                } else {
                    EMPTY
                }
            };
            let c = [lane(0), lane(1), lane(2), lane(3)];
            let mut hits = u32::from(c[0] != EMPTY)
                | u32::from(c[1] != EMPTY) << 1
                | u32::from(c[2] != EMPTY) << 2
                | u32::from(c[3] != EMPTY) << 3;
            while hits != 0 {
                let m = c[hits.trailing_zeros() as usize % 4];
                if !need_healthy || healthy(m) {
                    return Some(m);
                }
                hits &= hits - 1;
            }
            i += K as u64;
            x = x.wrapping_add(WY_INC.wrapping_mul(K as u64));
        }
        while i < self.budget {
            let m = candidate(x);
            if m != EMPTY && (!need_healthy || healthy(m)) {
                return Some(m);
            }
            i += 1;
            x = x.wrapping_add(WY_INC);
        }
        None
    }

    fn sampler(&self, hash: u64) -> Sampler<'_> {
        Sampler {
            table: self,
            seed: premix(hash),
            counters: [0; LEVELS],
            samples: 0,
        }
    }

    fn walk(&self, hash: u64) -> Walk<'_> {
        Walk {
            s: self.sampler(hash),
            visited: Visited::new(),
        }
    }
}

/// Decorrelates the key hash (an integer key arrives as given, so consecutive keys differ in
/// one bit): a multiply-fold, one multiply of latency. The multiplier must differ from the
/// draw's constants: reusing `WY_XOR` here measurably skews the load (max/avg 1.045 instead of
/// 1.026 at N = 100), which `balanced_max_over_average_at_n100_is_at_most_1_03` catches.
#[inline]
fn premix(hash: u64) -> u64 {
    let r = u128::from(hash ^ SEED_SALT) * u128::from(PREMIX_MUL);
    (r as u64) ^ ((r >> 64) as u64)
}

/// The hash of draw `index` of a key's sequence: the output of the wyrand generator at
/// counter position `index` from `seed` (a Weyl sequence, then a 64×64→128-bit multiply
/// folded to 64 bits). One multiply of latency where a full finaliser takes two, and a
/// generator that passes PractRand and BigCrush.
#[inline]
fn draw(seed: u64, index: u64) -> u64 {
    mix(seed.wrapping_add(index.wrapping_mul(WY_INC)))
}

/// wyrand's output function of a Weyl-sequence state.
#[inline]
fn mix(x: u64) -> u64 {
    let r = u128::from(x) * u128::from(x ^ WY_XOR);
    (r as u64) ^ ((r >> 64) as u64)
}

/// The smallest power of two ≥ `w` (1 for a zero weight), so that small changes of the
/// largest weight do not rescale every member's acceptance.
fn power_of_two_at_least(w: f64) -> f64 {
    if w <= 0.0 || !w.is_finite() {
        return 1.0;
    }
    let mut s = 1.0f64;
    while s < w {
        s *= 2.0;
    }
    while s / 2.0 >= w {
        s /= 2.0;
    }
    s
}

/// A key's slot sequence.
struct Sampler<'t> {
    table: &'t SlotTable,
    seed: u64,
    /// Samples drawn so far at each level.
    counters: [u32; LEVELS],
    samples: u64,
}

/// A key's walk through its sequence, remembering the members already returned.
struct Walk<'t> {
    s: Sampler<'t>,
    visited: Visited,
}

impl Sampler<'_> {
    /// The next sample: a slot and the sample's own hash.
    ///
    /// The top two levels are resolved together: their next draws are independent, so both
    /// are computed, and the landing level is chosen with mask arithmetic instead of a 50/50
    /// branch per level (a mispredicted branch costs more than the extra draw). Only a sample
    /// that descends past both (1 in 4) continues level by level. The sequence is exactly
    /// the one the module doc defines.
    #[inline]
    fn sample(&mut self) -> (u32, u64) {
        let (top, base) = (self.table.level, self.table.base);
        let mut l = top;
        if top >= base + 2 {
            let (t, u) = (top as usize, top as usize - 1);
            let (c1, c2) = (self.counters[t], self.counters[u]);
            let h1 = draw(self.seed, (u64::from(top) << 32) | u64::from(c1));
            let h2 = draw(self.seed, (u64::from(top - 1) << 32) | u64::from(c2));
            let up1 = h1 >> 63;
            let up2 = h2 >> 63;
            // Level `top` always draws; level `top-1` draws when `top` descended.
            self.counters[t] = c1.wrapping_add(1);
            self.counters[u] = c2.wrapping_add((1 - up1) as u32);
            if up1 | up2 != 0 {
                let m = up1.wrapping_neg(); // all ones when the sample landed at `top`
                let h = (h1 & m) | (h2 & !m);
                let lv = top - 1 + up1 as u32;
                let half = 1u32 << (lv - 1);
                return (half | (h as u32 & (half - 1)), h);
            }
            l = top - 2;
        }
        loop {
            let i = self.counters[l as usize];
            self.counters[l as usize] = i.wrapping_add(1);
            let h = draw(self.seed, (u64::from(l) << 32) | u64::from(i));
            if l == base {
                // The flat base level: one uniform draw over [0, 2^base) (slot 0 for base 0).
                return ((h & ((1u64 << base) - 1)) as u32, h);
            }
            if h >> 63 == 1 {
                let half = 1u32 << (l - 1);
                return (half | (h as u32 & (half - 1)), h);
            }
            l -= 1;
        }
    }

    /// Draws one sample: the member it lands on if the slot is occupied and the sample is
    /// accepted (weights), else `None`.
    #[inline]
    fn accepted(&mut self) -> Option<u32> {
        let t = self.table;
        self.samples += 1;
        let (slot, h) = self.sample();
        let m = t.slot_member[slot as usize];
        if m == EMPTY {
            return None;
        }
        if let Some(accept) = &t.accept
            && fmix64(h ^ ACCEPT_SALT) >> 32 >= accept[slot as usize]
        {
            return None;
        }
        Some(m)
    }

    /// The first member that is accepted (and healthy when `need_healthy`): [`Walk::next`] on a
    /// fresh walk, without its bookkeeping.
    #[inline]
    fn first<F: Fn(u32) -> bool>(&mut self, need_healthy: bool, healthy: &F) -> Option<u32> {
        while self.samples < self.table.budget {
            if let Some(m) = self.accepted()
                && (!need_healthy || healthy(m))
            {
                return Some(m);
            }
        }
        rendezvous(self.table, self.seed, None, need_healthy, healthy)
    }
}

impl Walk<'_> {
    /// The next distinct member that is accepted (and healthy when `need_healthy`).
    fn next<F: Fn(u32) -> bool>(&mut self, need_healthy: bool, healthy: &F) -> Option<u32> {
        let t = self.s.table;
        while self.visited.len() < t.members.len() {
            if self.s.samples >= t.budget {
                let m = rendezvous(t, self.s.seed, Some(&self.visited), need_healthy, healthy)?;
                self.visited.insert(m);
                return Some(m);
            }
            let Some(m) = self.s.accepted() else {
                continue;
            };
            if self.visited.contains(m) || (need_healthy && !healthy(m)) {
                continue;
            }
            self.visited.insert(m);
            return Some(m);
        }
        None
    }
}

/// Weighted rendezvous over the eligible members not in `visited`: the deterministic tail of a
/// walk that ran out of samples.
fn rendezvous<F: Fn(u32) -> bool>(
    table: &SlotTable,
    seed: u64,
    visited: Option<&Visited>,
    need_healthy: bool,
    healthy: &F,
) -> Option<u32> {
    let mut best: Option<(f64, u32)> = None;
    for (i, &(slot, w)) in table.members.iter().enumerate() {
        let m = i as u32;
        if w <= 0.0 || visited.is_some_and(|v| v.contains(m)) || (need_healthy && !healthy(m)) {
            continue;
        }
        let u = super::key::unit(seed ^ RENDEZVOUS_SALT, u64::from(slot));
        // Weighted rendezvous: maximise ln(u)/w (u in (0,1)).
        let score = u.max(f64::MIN_POSITIVE).ln() / w;
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, m));
        }
    }
    best.map(|b| b.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: u32) -> SlotTable {
        let members: Vec<(u32, f64)> = (0..n).map(|s| (s, 1.0)).collect();
        SlotTable::build(&members, 0)
    }

    #[test]
    fn slots_keep_requests_and_fill_the_lowest_holes() {
        assert_eq!(
            assign_slots(&[None, Some(0), None, Some(5), None]),
            Ok(vec![1, 0, 2, 5, 3])
        );
        assert_eq!(
            assign_slots(&[Some(2), Some(2)]),
            Err(SlotError::Duplicate {
                member: 1,
                other: 0,
                slot: 2
            })
        );
        assert!(matches!(
            assign_slots(&[Some(MAX_SLOT + 1)]),
            Err(SlotError::TooLarge { .. })
        ));
    }

    #[test]
    fn capacity_is_the_power_of_two_above_the_largest_slot() {
        assert_eq!(table(1).slot_member.len(), 1);
        assert_eq!(table(2).slot_member.len(), 2);
        assert_eq!(table(3).slot_member.len(), 4);
        assert_eq!(table(100).slot_member.len(), 128);
    }

    #[test]
    fn scale_is_a_power_of_two() {
        assert_eq!(power_of_two_at_least(1.0), 1.0);
        assert_eq!(power_of_two_at_least(3.0), 4.0);
        assert_eq!(power_of_two_at_least(0.3), 0.5);
        assert_eq!(power_of_two_at_least(0.0), 1.0);
    }

    #[test]
    fn growing_capacity_keeps_the_lower_sequence() {
        // 4 members in slots 0..3 (capacity 4) vs. the same plus an empty capacity of 64:
        // a far member in slot 63 only takes keys, never shuffles the others.
        let small = table(4);
        let big = SlotTable::build(&[(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0), (63, 1.0)], 0);
        let all = |_| true;
        let mut moved_elsewhere = 0;
        for k in 0..20_000u64 {
            let a = small.pick(k, 0, HealthyMode::Chosen, false, &all).chosen;
            let b = big.pick(k, 0, HealthyMode::Chosen, false, &all).chosen;
            if a != b && b != Some(4) {
                moved_elsewhere += 1;
            }
        }
        assert_eq!(moved_elsewhere, 0);
    }

    #[test]
    fn sequential_integer_keys_are_balanced() {
        // Integer keys are used as given; 0, 1, 2, … must still spread at the statistical
        // floor (every member within 5 standard deviations).
        let t = table(37);
        let all = |_: u32| true;
        let mut counts = [0u32; 37];
        let n = 370_000u64;
        for k in 0..n {
            counts[t
                .pick(k, 0, HealthyMode::Chosen, false, &all)
                .chosen
                .unwrap() as usize] += 1;
        }
        let mean = n as f64 / 37.0;
        let sd = (mean * (1.0 - 1.0 / 37.0)).sqrt();
        for (m, &c) in counts.iter().enumerate() {
            assert!(
                (f64::from(c) - mean).abs() < 5.0 * sd,
                "member {m}: {c} vs {mean:.0}±{sd:.0}"
            );
        }
    }

    #[test]
    fn growing_past_a_flat_base_keeps_the_sequence() {
        // Base 16 slots (flat), 10 members; a member added at slot 40 (capacity 64) only
        // takes keys.
        let members: Vec<(u32, f64)> = (0..10).map(|s| (s, 1.0)).collect();
        let small = SlotTable::build(&members, 4);
        let mut more = members;
        more.push((40, 1.0));
        let big = SlotTable::build(&more, 4);
        assert_eq!(small.slot_member.len(), 16);
        let all = |_: u32| true;
        for k in 0..20_000u64 {
            let a = small.pick(k, 0, HealthyMode::Chosen, false, &all).chosen;
            let b = big.pick(k, 0, HealthyMode::Chosen, false, &all).chosen;
            assert!(a == b || b == Some(10), "key {k}: {a:?} -> {b:?}");
        }
    }

    #[test]
    fn a_flat_base_is_balanced() {
        let members: Vec<(u32, f64)> = (0..10).map(|s| (s, 1.0)).collect();
        let t = SlotTable::build(&members, 4);
        let all = |_: u32| true;
        let mut counts = [0u32; 10];
        for k in 0..100_000u64 {
            counts[t
                .pick(k, 0, HealthyMode::Chosen, false, &all)
                .chosen
                .unwrap() as usize] += 1;
        }
        for c in counts {
            assert!((f64::from(c) - 10_000.0).abs() < 5.0 * 95.0, "{counts:?}");
        }
    }

    #[test]
    fn the_flat_fast_path_gives_the_samplers_answer() {
        // Flat tables of several densities, with and without weights, healthy, partly sick
        // and almost all sick (the budget runs out and rendezvous answers).
        let layouts: [(Vec<(u32, f64)>, u32); 4] = [
            ((0..10).map(|s| (s, 1.0)).collect(), 4),
            ((0..100).map(|s| (s * 3 % 128, 1.0)).collect(), 7),
            ((0..37).map(|s| (s, f64::from(s % 4) + 0.5)).collect(), 6),
            ((0..1).map(|s| (s, 1.0)).collect(), 0),
        ];
        let healths: [&dyn Fn(u32) -> bool; 4] = [
            &|_| true,
            &|m: u32| m % 10 != 3,
            &|m: u32| m == 7 || m == 0,
            &|_| false,
        ];
        let mut lanes = Vec::new();
        for (members, base) in &layouts {
            let mut t = SlotTable::build(members, *base);
            assert_eq!(t.level, t.base);
            lanes.push(t.lanes);
            // Member m is backend 3m + offset (16-bit ids, then ids past 16 bits); the backend
            // path must name the same member's backend.
            for offset in [5, 70_000] {
                let backends: Vec<Option<u32>> = (0..members.len() as u32)
                    .map(|m| Some(3 * m + offset))
                    .collect();
                t.set_backends(&backends);
                assert_eq!(
                    matches!(t.slot_backend, Some(SlotBackends::Narrow(_))),
                    offset < 65_535
                );
                for healthy in healths {
                    let backend_healthy = |b: u32| healthy((b - offset) / 3);
                    for need in [true, false] {
                        for k in 0..3_000u64 {
                            let hash = fmix64(k);
                            let expected = t.sampler(hash).first(need, &healthy);
                            let msg = format!("key {k}, base {base}, offset {offset}");
                            assert_eq!(t.first_flat(hash, need, &healthy), expected, "{msg}");
                            assert_eq!(
                                t.first_flat_backend(hash, need, &backend_healthy),
                                Some(expected.map(|m| 3 * m + offset)),
                                "{msg}"
                            );
                        }
                    }
                }
            }
        }
        // Every lane count and the weighted loop were exercised.
        assert_eq!(lanes, [4, 2, 4, 1]);
    }

    #[test]
    fn the_backend_path_needs_every_member_to_be_a_backend() {
        let mut t = table(4);
        assert_eq!(t.first_flat_backend(7, true, &|_| true), None);
        t.set_backends(&[Some(0), None, Some(2), Some(3)]);
        assert_eq!(t.first_flat_backend(7, true, &|_| true), None);
        t.set_backends(&[Some(9), Some(8), Some(7), Some(6)]);
        assert!(t.first_flat_backend(7, true, &|_| true).is_some());
    }

    #[test]
    fn all_sick_gives_none_and_ignore_still_answers() {
        let t = table(10);
        let sick = |_| false;
        assert_eq!(t.pick(1, 0, HealthyMode::Chosen, false, &sick).chosen, None);
        assert!(
            t.pick(1, 0, HealthyMode::Ignore, false, &sick)
                .chosen
                .is_some()
        );
    }

    #[test]
    fn budget_exhaustion_falls_back_consistently() {
        // One healthy member among 5000: the walk runs out of samples and ranks the rest.
        let t = table(5000);
        let only = |m: u32| m == 4321;
        for k in 0..50 {
            assert_eq!(
                t.pick(k, 0, HealthyMode::Chosen, false, &only).chosen,
                Some(4321)
            );
        }
    }
}
