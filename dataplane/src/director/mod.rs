//! Directors: pure selection strategies, no I/O.
//!
//! [`Directors::build`] turns a [`Config`] into an immutable set of built directors (rings,
//! slot tables, member tables), checking references, cycles, weights and slots. A request then
//! asks [`Directors::select`] for a backend with a [`Key`] and the caller's [`HealthView`];
//! a member that is a director is resolved recursively, and counts as healthy when any of its
//! members is.
//!
//! Modules: [`key`] (key hashing), [`varnish`] and [`balanced`] (the two shard algorithms),
//! `shard` (rampup/warmup around them), `round_robin`, `fallback`, `weighted` (random and hash),
//! `visited` (the walk's seen-set).

pub mod balanced;
mod fallback;
pub mod key;
mod round_robin;
mod shard;
pub mod varnish;
mod visited;
mod weighted;

use std::sync::Arc;
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};

pub use key::{Key, KeySource};
// The configuration's enums, re-exported for callers that only select.
pub use crate::config::{Algorithm, HealthyMode};

use crate::config::{BackendSpec, Config, Policy, TargetRef};
use crate::limits;
use balanced::SlotTable;
use fallback::Fallback;
use round_robin::RoundRobin;
use shard::{MemberHealth, Shard, Table};
use varnish::{Ring, RingHost};

/// Index of a backend in [`Config::backends`].
pub type BackendId = u32;
/// Index of a director in [`Config::directors`].
pub type DirectorId = u32;

/// What a director member refers to, once built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A backend.
    Backend(BackendId),
    /// A nested director.
    Director(DirectorId),
}

/// How the caller sees backend health. Health changes do not rebuild directors.
pub trait HealthView {
    /// Whether `backend` may receive requests.
    fn is_healthy(&self, backend: BackendId) -> bool;
    /// Time since `backend`'s last health change (for rampup); by default "long ago".
    fn since_change(&self, _backend: BackendId) -> Duration {
        Duration::MAX
    }
}

/// Per-request selection parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectOpts {
    /// Which alternate: 0 is the first choice.
    pub alt: u32,
    /// Overrides a shard director's configured health mode.
    pub healthy: Option<HealthyMode>,
}

/// Why a selection failed (as opposed to finding no healthy backend).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// An integer key above 2^32−1 given to an algorithm that takes 32-bit keys.
    #[error(
        "integer key out of range: the varnish shard and hash directors take keys 0..=4294967295"
    )]
    KeyOutOfRange,
}

/// Why a configuration could not be built. `field` is the path inside the director.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Two backends share a name.
    #[error("backends: name {0:?} is used twice")]
    DuplicateBackend(String),
    /// Two directors share a name.
    #[error("directors: name {0:?} is used twice")]
    DuplicateDirector(String),
    /// A member refers to a backend or director that does not exist.
    #[error("director {director:?}: {field}: no {kind} named {name:?}")]
    Unknown {
        /// The director.
        director: String,
        /// The member field, as `members[1].backend`.
        field: String,
        /// "backend" or "director".
        kind: &'static str,
        /// The missing name.
        name: String,
    },
    /// Directors refer to each other in a loop.
    #[error("directors form a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A bad value.
    #[error("director {director:?}: {field}: {reason}")]
    Invalid {
        /// The director.
        director: String,
        /// The field, as `members[0].weight`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy)]
struct Member {
    target: Target,
    weight: f64,
}

impl Member {
    /// The member's backend id; `None` for a nested director.
    fn backend(&self) -> Option<BackendId> {
        match self.target {
            Target::Backend(b) => Some(b),
            Target::Director(_) => None,
        }
    }
}

#[derive(Debug)]
enum Kind {
    RoundRobin(RoundRobin),
    Fallback(Fallback),
    Random,
    Hash,
    Shard(Box<Shard>),
}

/// One built director.
#[derive(Debug)]
struct Director {
    name: String,
    members: Vec<Member>,
    /// Per member: its backend id, or [`NOT_A_BACKEND`] for a nested director. A dense copy of
    /// `members[m].target`, so that the health check in a lookup is one small load.
    backend_of: Vec<BackendId>,
    /// Per member: its weight (random and hash pick by cumulative weight).
    weights: Vec<f64>,
    kind: Kind,
}

const NOT_A_BACKEND: BackendId = BackendId::MAX;

/// An immutable set of built directors.
#[derive(Debug)]
pub struct Directors {
    list: Vec<Director>,
    by_name: FxHashMap<String, DirectorId>,
    /// The configuration's backends, for their names (shared with it, not copied).
    backends: Vec<Arc<BackendSpec>>,
}

impl Directors {
    /// No directors at all (the data plane's state before its first snapshot).
    pub fn empty() -> Directors {
        Directors {
            list: Vec::new(),
            by_name: FxHashMap::default(),
            backends: Vec::new(),
        }
    }

    /// Builds every director of `config`. When `prev` is the set built from the previous
    /// revision, shard rings of unchanged members are reused (a one-member change does not
    /// rehash the ring).
    pub fn build(config: &Config, prev: Option<&Directors>) -> Result<Directors, BuildError> {
        let mut backend_ids = FxHashMap::default();
        for (i, b) in config.backends.iter().enumerate() {
            if backend_ids
                .insert(b.name.as_str(), i as BackendId)
                .is_some()
            {
                return Err(BuildError::DuplicateBackend(b.name.clone()));
            }
        }
        let mut by_name = FxHashMap::default();
        for (i, d) in config.directors.iter().enumerate() {
            if by_name.insert(d.name.clone(), i as DirectorId).is_some() {
                return Err(BuildError::DuplicateDirector(d.name.clone()));
            }
        }
        let mut list = Vec::with_capacity(config.directors.len());
        // Ring points of the varnish-shard directors so far (bounded in total).
        let mut ring_points = 0u64;
        for d in &config.directors {
            let invalid = |field: String, reason: String| BuildError::Invalid {
                director: d.name.clone(),
                field,
                reason,
            };
            if d.members.len() > limits::MAX_MEMBERS {
                return Err(invalid(
                    "members".into(),
                    format!(
                        "{} members; at most {}",
                        d.members.len(),
                        limits::MAX_MEMBERS
                    ),
                ));
            }
            let mut members = Vec::with_capacity(d.members.len());
            for (j, m) in d.members.iter().enumerate() {
                let target = match &m.target {
                    TargetRef::Backend(n) => {
                        backend_ids.get(n.as_str()).map(|&b| Target::Backend(b))
                    }
                    TargetRef::Director(n) => by_name.get(n).map(|&x| Target::Director(x)),
                };
                let Some(target) = target else {
                    let kind = match m.target {
                        TargetRef::Backend(_) => "backend",
                        TargetRef::Director(_) => "director",
                    };
                    return Err(BuildError::Unknown {
                        director: d.name.clone(),
                        field: format!("members[{j}].{kind}"),
                        kind,
                        name: m.target.name().to_owned(),
                    });
                };
                let weight = match (m.weight, target) {
                    (Some(w), _) => w,
                    (None, Target::Backend(b)) => config.backends[b as usize].weight,
                    (None, Target::Director(_)) => 1.0,
                };
                if !(0.0..=limits::MAX_WEIGHT).contains(&weight) {
                    return Err(invalid(
                        format!("members[{j}].weight"),
                        format!(
                            "must be a number from 0 to {}, got {weight}",
                            limits::MAX_WEIGHT
                        ),
                    ));
                }
                members.push(Member { target, weight });
            }
            let kind = match &d.policy {
                Policy::RoundRobin => Kind::RoundRobin(RoundRobin::default()),
                Policy::Fallback { sticky } => Kind::Fallback(Fallback::new(*sticky)),
                Policy::Random => Kind::Random,
                Policy::Hash => Kind::Hash,
                Policy::Shard(spec) => Kind::Shard(Box::new(build_shard(
                    d,
                    spec,
                    &members,
                    prev,
                    &mut ring_points,
                )?)),
            };
            let backend_of = members
                .iter()
                .map(|m| m.backend().unwrap_or(NOT_A_BACKEND))
                .collect();
            let weights = members.iter().map(|m| m.weight).collect();
            list.push(Director {
                name: d.name.clone(),
                members,
                backend_of,
                weights,
                kind,
            });
        }
        let set = Directors {
            list,
            by_name,
            backends: config.backends.clone(),
        };
        set.check_graph()?;
        Ok(set)
    }

    /// Rejects director graphs with a cycle (naming it), nested deeper than
    /// [`limits::MAX_NESTING`] or expanding to more than [`limits::MAX_EXPANDED_MEMBERS`]
    /// members. Iterative — an explicit stack, not recursion — so a 100,000-deep chain written
    /// straight into the store is refused rather than overflowing the thread's stack.
    fn check_graph(&self) -> Result<(), BuildError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let n = self.list.len();
        let mut marks = vec![Mark::New; n];
        // Longest chain from each director (itself counted), and its members with repetition.
        let mut depth = vec![0u32; n];
        let mut expanded = vec![0u64; n];
        // (director, index of its next member to look at): the path from the root.
        let mut stack: Vec<(usize, usize)> = Vec::new();
        for root in 0..n {
            if marks[root] != Mark::New {
                continue;
            }
            marks[root] = Mark::Open;
            stack.push((root, 0));
            while let Some(top) = stack.last_mut() {
                let (d, next) = *top;
                let members = &self.list[d].members;
                if let Some(m) = members.get(next) {
                    top.1 += 1;
                    let Target::Director(inner) = m.target else {
                        continue;
                    };
                    let inner = inner as usize;
                    match marks[inner] {
                        Mark::Done => {}
                        Mark::New => {
                            marks[inner] = Mark::Open;
                            stack.push((inner, 0));
                        }
                        Mark::Open => {
                            let start = stack.iter().position(|&(p, _)| p == inner).unwrap_or(0);
                            let mut names: Vec<String> = stack[start..]
                                .iter()
                                .map(|&(p, _)| self.list[p].name.clone())
                                .collect();
                            names.push(self.list[inner].name.clone());
                            return Err(BuildError::Cycle(names));
                        }
                    }
                    continue;
                }
                // Every member looked at: the nested ones are done.
                let mut dep = 1u32;
                let mut size = members.len() as u64;
                for m in members {
                    if let Target::Director(inner) = m.target {
                        dep = dep.max(depth[inner as usize].saturating_add(1));
                        size = size.saturating_add(expanded[inner as usize]);
                    }
                }
                let invalid = |reason: String| BuildError::Invalid {
                    director: self.list[d].name.clone(),
                    field: "members".into(),
                    reason,
                };
                if dep > limits::MAX_NESTING {
                    return Err(invalid(format!(
                        "directors nest {dep} deep from here; at most {} may",
                        limits::MAX_NESTING
                    )));
                }
                if size > limits::MAX_EXPANDED_MEMBERS {
                    return Err(invalid(format!(
                        "reaches {size} members through its nested directors; at most {}",
                        limits::MAX_EXPANDED_MEMBERS
                    )));
                }
                depth[d] = dep;
                expanded[d] = size;
                marks[d] = Mark::Done;
                stack.pop();
            }
        }
        Ok(())
    }

    /// The director named `name`.
    pub fn id(&self, name: &str) -> Option<DirectorId> {
        self.by_name.get(name).copied()
    }

    /// Every director with its member count and how many of them can take requests now (a
    /// nested director counts as one member, healthy when any of its own members is).
    pub fn membership<'a, H: HealthView + ?Sized>(
        &'a self,
        health: &'a H,
    ) -> impl Iterator<Item = (&'a str, usize, usize)> + 'a {
        self.list.iter().map(move |d| {
            let healthy = d
                .members
                .iter()
                .filter(|m| self.is_healthy(m.target, health))
                .count();
            (d.name.as_str(), d.members.len(), healthy)
        })
    }

    /// A director's name.
    pub fn name(&self, d: DirectorId) -> &str {
        &self.list[d as usize].name
    }

    /// A backend's name.
    pub fn backend_name(&self, b: BackendId) -> &str {
        &self.backends[b as usize].name
    }

    /// A member target's name.
    pub fn target_name(&self, t: Target) -> &str {
        match t {
            Target::Backend(b) => self.backend_name(b),
            Target::Director(d) => self.name(d),
        }
    }

    /// Whether a target can take requests: a backend per `health`, a director when any of its
    /// members can.
    #[inline]
    pub fn is_healthy<H: HealthView + ?Sized>(&self, t: Target, health: &H) -> bool {
        match t {
            Target::Backend(b) => health.is_healthy(b),
            Target::Director(d) => self.director_healthy(d, health),
        }
    }

    /// Out of line: recursion here would keep every backend health check from inlining.
    #[inline(never)]
    fn director_healthy<H: HealthView + ?Sized>(&self, d: DirectorId, health: &H) -> bool {
        self.list[d as usize]
            .members
            .iter()
            .any(|m| self.is_healthy(m.target, health))
    }

    /// The backend director `d` picks for `key`; `Ok(None)` when none is available.
    pub fn select<H: HealthView + ?Sized>(
        &self,
        d: DirectorId,
        key: &Key<'_>,
        opts: SelectOpts,
        health: &H,
    ) -> Result<Option<BackendId>, SelectError> {
        let dir = &self.list[d as usize];
        if let Kind::Shard(s) = &dir.kind
            && let Some(b) =
                s.select_backend(key, opts.alt, opts.healthy, &|b| health.is_healthy(b))
        {
            return Ok(b);
        }
        let n = dir.members.len();
        let ok = |m: usize| match dir.backend_of[m] {
            NOT_A_BACKEND => self.is_healthy(dir.members[m].target, health),
            b => health.is_healthy(b),
        };
        let member = match &dir.kind {
            Kind::RoundRobin(rr) => rr.select(n, opts.alt, &ok),
            Kind::Fallback(f) => f.select(n, opts.alt, &ok),
            Kind::Random if opts.alt == 0 => weighted::pick(&dir.weights, &ok, fastrand::f64()),
            Kind::Random => weighted::order(
                &dir.weights,
                &ok,
                &mut || fastrand::f64(),
                opts.alt as usize + 1,
            )
            .get(opts.alt as usize)
            .copied(),
            Kind::Hash => {
                let r = f64::from(key.h32()?) / 4_294_967_296.0;
                if opts.alt == 0 {
                    weighted::pick(&dir.weights, &ok, r)
                } else {
                    weighted::order(&dir.weights, &ok, &mut || r, opts.alt as usize + 1)
                        .get(opts.alt as usize)
                        .copied()
                }
            }
            Kind::Shard(s) => {
                let since = |m: usize| match dir.members[m].target {
                    Target::Backend(b) => health.since_change(b),
                    Target::Director(_) => Duration::MAX,
                };
                let mh = MemberHealth {
                    healthy: &ok,
                    since_change: &since,
                };
                s.select(key, opts.alt, opts.healthy, &mh)?
            }
        };
        match member.map(|m| dir.members[m].target) {
            None => Ok(None),
            Some(Target::Backend(b)) => Ok(Some(b)),
            Some(Target::Director(inner)) => self.select(inner, key, SelectOpts::default(), health),
        }
    }

    /// Director `d`'s members in the order it would try them for `key`, whatever their health
    /// (at most `limit`): the ring or slot order for shard, priority or cursor order for
    /// fallback and round_robin, the pick-and-exclude order for hash and random.
    pub fn order(
        &self,
        d: DirectorId,
        key: &Key<'_>,
        limit: usize,
    ) -> Result<Vec<Target>, SelectError> {
        let dir = &self.list[d as usize];
        let n = dir.members.len();
        let all = |_| true;
        let members = match &dir.kind {
            Kind::RoundRobin(rr) => rr.order(n),
            Kind::Fallback(f) => f.order(n),
            Kind::Random => weighted::order(&dir.weights, &all, &mut || fastrand::f64(), limit),
            Kind::Hash => {
                let r = f64::from(key.h32()?) / 4_294_967_296.0;
                weighted::order(&dir.weights, &all, &mut || r, limit)
            }
            Kind::Shard(s) => s.order(key, limit)?,
        };
        Ok(members
            .into_iter()
            .take(limit)
            .map(|m| dir.members[m].target)
            .collect())
    }
}

/// Builds a shard director: its ring (reusing `prev`'s ring of the same director, if any) or
/// its slot table, and its rampup settings.
fn build_shard(
    d: &crate::config::DirectorSpec,
    spec: &crate::config::ShardSpec,
    members: &[Member],
    prev: Option<&Directors>,
    ring_points: &mut u64,
) -> Result<Shard, BuildError> {
    let invalid = |field: String, reason: String| BuildError::Invalid {
        director: d.name.clone(),
        field,
        reason,
    };
    if spec.replicas == 0 || spec.replicas > limits::MAX_REPLICAS {
        return Err(invalid(
            "shard.replicas".into(),
            format!(
                "must be from 1 to {}, got {}",
                limits::MAX_REPLICAS,
                spec.replicas
            ),
        ));
    }
    if !spec.base_slots.is_power_of_two() || spec.base_slots > balanced::MAX_SLOT + 1 {
        return Err(invalid(
            "shard.base_slots".into(),
            format!(
                "must be a power of two from 1 to {}, got {}",
                balanced::MAX_SLOT + 1,
                spec.base_slots
            ),
        ));
    }
    if !(0.0..1.0).contains(&spec.warmup) {
        return Err(invalid(
            "shard.warmup".into(),
            format!("must be in [0, 1), got {}", spec.warmup),
        ));
    }
    let prev_ring = prev
        .and_then(|p| p.by_name.get(&d.name).map(|&i| &p.list[i as usize]))
        .and_then(|pd| match &pd.kind {
            Kind::Shard(s) => match &s.table {
                Table::Varnish(r) => Some(r),
                Table::Balanced(_) => None,
            },
            _ => None,
        });
    let (table, host_member) = match spec.algorithm {
        Algorithm::Varnish => {
            let (hosts, host_member) = ring_hosts(d, members, spec.replicas);
            // Counted before a point is hashed: the ring is 8 bytes a point.
            let mut points = 0u64;
            for (h, &j) in hosts.iter().zip(&host_member) {
                let p = u64::from(h.replicas);
                if p > limits::MAX_MEMBER_POINTS {
                    return Err(invalid(
                        format!("members[{j}].weight"),
                        format!(
                            "replicas × weight is {p} ring points; at most {} per member",
                            limits::MAX_MEMBER_POINTS
                        ),
                    ));
                }
                points += p;
            }
            if points > limits::MAX_RING_POINTS {
                return Err(invalid(
                    "shard.replicas".into(),
                    format!(
                        "the ring would hold {points} points; at most {} per director",
                        limits::MAX_RING_POINTS
                    ),
                ));
            }
            *ring_points += points;
            if *ring_points > limits::MAX_TOTAL_RING_POINTS {
                return Err(invalid(
                    "shard.replicas".into(),
                    format!(
                        "the shard directors' rings would hold {} points together; at most {}",
                        *ring_points,
                        limits::MAX_TOTAL_RING_POINTS
                    ),
                ));
            }
            (Table::Varnish(Ring::build(hosts, prev_ring)), host_member)
        }
        Algorithm::Balanced => {
            let requested: Vec<Option<u32>> = d.members.iter().map(|m| m.slot).collect();
            let slots = balanced::assign_slots(&requested).map_err(|e| match e {
                balanced::SlotError::Duplicate {
                    member,
                    other,
                    slot,
                } => invalid(
                    format!("members[{member}].slot"),
                    format!("slot {slot} is already taken by members[{other}]"),
                ),
                balanced::SlotError::TooLarge { member, slot } => invalid(
                    format!("members[{member}].slot"),
                    format!("{slot} is larger than the maximum {}", balanced::MAX_SLOT),
                ),
            })?;
            let sw: Vec<(u32, f64)> = slots
                .iter()
                .zip(members)
                .map(|(&s, m)| (s, m.weight))
                .collect();
            let mut table = SlotTable::build(&sw, spec.base_slots.trailing_zeros());
            let backends: Vec<Option<BackendId>> = members.iter().map(Member::backend).collect();
            table.set_backends(&backends);
            // Balanced hosts are the members themselves: no host → member map.
            (Table::Balanced(table), Vec::new())
        }
    };
    let host_rampup: Vec<_> = match spec.algorithm {
        Algorithm::Varnish => host_member.iter().map(|&m| d.members[m].rampup).collect(),
        Algorithm::Balanced => d.members.iter().map(|m| m.rampup).collect(),
    };
    let host_backend = match spec.algorithm {
        Algorithm::Varnish => host_member.iter().map(|&m| members[m].backend()).collect(),
        Algorithm::Balanced => None,
    };
    Ok(Shard {
        host_backend,
        ramps: Shard::ramps(spec.rampup, spec.warmup, &host_rampup),
        table,
        host_member,
        healthy: spec.healthy,
        rampup: spec.rampup,
        warmup: spec.warmup,
        host_rampup,
    })
}

/// The ring hosts of a varnish shard director: members in order, each named by its ident (or
/// target name), a repeated ident skipped (the first wins, as Varnish's reconfigure does).
fn ring_hosts(
    d: &crate::config::DirectorSpec,
    members: &[Member],
    replicas: u32,
) -> (Vec<RingHost>, Vec<usize>) {
    let mut seen = FxHashSet::default();
    let mut hosts = Vec::new();
    let mut host_member = Vec::new();
    for (j, (m, built)) in d.members.iter().zip(members).enumerate() {
        let ident = m
            .ident
            .as_deref()
            .filter(|i| !i.is_empty())
            .unwrap_or(m.target.name());
        if seen.insert(ident) {
            hosts.push(RingHost::new(ident.to_owned(), replicas, built.weight));
            host_member.push(j);
        }
    }
    (hosts, host_member)
}

/// Internal: the outcome of one shard algorithm's walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pick {
    /// The host picked.
    pub(crate) chosen: Option<u32>,
    /// The next healthy host of the same walk, when rampup/warmup asked for it.
    pub(crate) successor: Option<u32>,
}

impl Pick {
    pub(crate) const NONE: Pick = Pick {
        chosen: None,
        successor: None,
    };

    pub(crate) fn only(chosen: Option<u32>) -> Pick {
        Pick {
            chosen,
            successor: None,
        }
    }
}

#[cfg(test)]
mod tests;
