//! Unit tests of the director set: building, nesting, cycles, and every policy.

use super::*;
use crate::config::{Address, BackendSpec, DirectorSpec, MemberSpec, Policy, ShardSpec, TargetRef};
use std::cell::RefCell;
use std::collections::{HashMap as Map, HashSet};
use std::sync::Arc;

/// Health by backend id; everything else healthy.
#[derive(Default)]
struct Sick(RefCell<HashSet<BackendId>>);

impl HealthView for Sick {
    fn is_healthy(&self, b: BackendId) -> bool {
        !self.0.borrow().contains(&b)
    }
}

fn backend(i: usize) -> BackendSpec {
    BackendSpec::new(
        format!("b{i}"),
        format!("127.0.0.1:{}", 19000 + i)
            .parse::<Address>()
            .unwrap(),
    )
}

fn members(n: usize) -> Vec<MemberSpec> {
    (0..n)
        .map(|i| MemberSpec::new(TargetRef::Backend(format!("b{i}"))))
        .collect()
}

fn one(policy: Policy, n: usize) -> (Directors, DirectorId) {
    let cfg = Config {
        backends: (0..n).map(backend).map(Arc::new).collect(),
        directors: vec![std::sync::Arc::new(DirectorSpec {
            name: "d".into(),
            policy,
            members: members(n),
        })],
        ..Default::default()
    };
    let set = Directors::build(&cfg, None).unwrap();
    let id = set.id("d").unwrap();
    (set, id)
}

fn shard(algorithm: Algorithm) -> Policy {
    Policy::Shard(ShardSpec {
        algorithm,
        ..ShardSpec::default()
    })
}

/// The verbal rules of reference §1.5, written independently of the state machine: what a
/// varnish shard pick returns given the ring's host order and each host's health.
fn reference_pick(
    order: &[u32],
    healthy: &dyn Fn(u32) -> bool,
    alt: usize,
    mode: HealthyMode,
) -> Option<u32> {
    let alt = alt.min(order.len() - 1);
    let healthy_hosts: Vec<u32> = order.iter().copied().filter(|&h| healthy(h)).collect();
    match mode {
        HealthyMode::Ignore => Some(order[alt]),
        HealthyMode::Chosen => {
            // Skip the first `alt` hosts whatever their health, then the next healthy one...
            if let Some(&h) = order[alt..].iter().find(|&&h| healthy(h)) {
                return Some(h);
            }
            // ...else the last healthy host among the first alt-1 skipped.
            if alt == 0 {
                return None;
            }
            order[..alt - 1].iter().rev().copied().find(|&h| healthy(h))
        }
        HealthyMode::All => {
            if healthy_hosts.len() > alt {
                Some(healthy_hosts[alt])
            } else if healthy_hosts.len() < alt {
                healthy_hosts.last().copied()
            } else if alt >= 2 {
                Some(healthy_hosts[alt - 2])
            } else {
                None
            }
        }
    }
}

#[test]
fn varnish_alt_and_healthy_table_matches_the_reference_for_every_health_subset() {
    let n = 5;
    let (set, d) = one(shard(Algorithm::Varnish), n);
    for key in ["user-0", "user-1", "k", "zzz"] {
        let k = Key::str(key);
        let order: Vec<u32> = set
            .order(d, &k, n)
            .unwrap()
            .into_iter()
            .map(|t| match t {
                Target::Backend(b) => b,
                Target::Director(_) => unreachable!(),
            })
            .collect();
        assert_eq!(order.len(), n);
        for mask in 0u32..(1 << n) {
            let health = Sick::default();
            for b in 0..n as u32 {
                if mask & (1 << b) == 0 {
                    health.0.borrow_mut().insert(b);
                }
            }
            let healthy = |h: u32| mask & (1 << h) != 0;
            for alt in 0..=n + 2 {
                for mode in [HealthyMode::Chosen, HealthyMode::Ignore, HealthyMode::All] {
                    let opts = SelectOpts {
                        alt: alt as u32,
                        healthy: Some(mode),
                    };
                    let got = set.select(d, &k, opts, &health).unwrap();
                    let want = reference_pick(&order, &healthy, alt, mode);
                    assert_eq!(got, want, "key {key} mask {mask:05b} alt {alt} {mode:?}");
                }
            }
        }
    }
}

#[test]
fn reference_examples() {
    let (set, d) = one(shard(Algorithm::Varnish), 5);
    let k = Key::str("user-0");
    let order: Vec<Target> = set.order(d, &k, 5).unwrap();
    let Target::Backend(primary) = order[0] else {
        unreachable!()
    };
    let Target::Backend(second) = order[1] else {
        unreachable!()
    };
    // Only the primary healthy: alt=1 CHOSEN gives nothing.
    let h = Sick::default();
    h.0.borrow_mut().extend((0..5).filter(|&b| b != primary));
    let at = |alt, mode| {
        set.select(
            d,
            &k,
            SelectOpts {
                alt,
                healthy: Some(mode),
            },
            &h,
        )
        .unwrap()
    };
    assert_eq!(at(0, HealthyMode::Chosen), Some(primary));
    assert_eq!(at(1, HealthyMode::Chosen), None);
    // One healthy host with ALL: alt=1 → none, alt=2 → that host (non-monotonic fallback).
    let h2 = Sick::default();
    h2.0.borrow_mut().extend((0..5).filter(|&b| b != second));
    let at2 = |alt| {
        set.select(
            d,
            &k,
            SelectOpts {
                alt,
                healthy: Some(HealthyMode::All),
            },
            &h2,
        )
        .unwrap()
    };
    assert_eq!(at2(1), None);
    assert_eq!(at2(2), Some(second));
    // alt is clamped to n-1.
    let none_sick = Sick::default();
    let ign = |alt| {
        set.select(
            d,
            &k,
            SelectOpts {
                alt,
                healthy: Some(HealthyMode::Ignore),
            },
            &none_sick,
        )
        .unwrap()
    };
    assert_eq!(ign(99), ign(4));
}

#[test]
fn duplicate_idents_keep_the_first_member() {
    let mut cfg = Config {
        backends: (0..3).map(backend).map(Arc::new).collect(),
        directors: vec![std::sync::Arc::new(DirectorSpec {
            name: "d".into(),
            policy: shard(Algorithm::Varnish),
            members: members(3),
        })],
        ..Default::default()
    };
    std::sync::Arc::make_mut(&mut cfg.directors[0]).members[2].ident = Some("b1".into());
    let set = Directors::build(&cfg, None).unwrap();
    let d = set.id("d").unwrap();
    let all = Sick::default();
    for i in 0..2000 {
        let b = set
            .select(d, &Key::str(&format!("k{i}")), SelectOpts::default(), &all)
            .unwrap();
        assert_ne!(
            b,
            Some(2),
            "b2 duplicates b1's ident and must never be chosen"
        );
    }
}

#[test]
fn integer_keys_beyond_32_bits_are_refused_by_varnish_and_taken_by_balanced() {
    let (v, dv) = one(shard(Algorithm::Varnish), 3);
    let (b, db) = one(shard(Algorithm::Balanced), 3);
    let h = Sick::default();
    let k = Key::int(1 << 40);
    assert_eq!(
        v.select(dv, &k, SelectOpts::default(), &h),
        Err(SelectError::KeyOutOfRange)
    );
    assert!(
        b.select(db, &k, SelectOpts::default(), &h)
            .unwrap()
            .is_some()
    );
}

#[test]
fn empty_directors_select_nothing() {
    for p in [
        Policy::RoundRobin,
        Policy::Fallback { sticky: true },
        Policy::Random,
        Policy::Hash,
        shard(Algorithm::Varnish),
        shard(Algorithm::Balanced),
    ] {
        let (set, d) = one(p.clone(), 0);
        assert_eq!(
            set.select(d, &Key::str("x"), SelectOpts::default(), &Sick::default()),
            Ok(None),
            "{p:?}"
        );
    }
}

#[test]
fn every_policy_returns_none_when_all_are_sick_and_skips_sick_members() {
    for p in [
        Policy::RoundRobin,
        Policy::Fallback { sticky: false },
        Policy::Random,
        Policy::Hash,
        shard(Algorithm::Varnish),
        shard(Algorithm::Balanced),
    ] {
        let (set, d) = one(p.clone(), 4);
        let h = Sick::default();
        h.0.borrow_mut().extend([0, 1, 2, 3]);
        assert_eq!(
            set.select(d, &Key::str("x"), SelectOpts::default(), &h),
            Ok(None),
            "{p:?}"
        );
        h.0.borrow_mut().remove(&2);
        for i in 0..50 {
            let got = set.select(d, &Key::str(&format!("k{i}")), SelectOpts::default(), &h);
            assert_eq!(got, Ok(Some(2)), "{p:?}");
        }
    }
}

#[test]
fn hash_director_is_deterministic_weighted_and_not_consistent() {
    let mut cfg = Config {
        backends: (0..3).map(backend).map(Arc::new).collect(),
        directors: vec![std::sync::Arc::new(DirectorSpec {
            name: "d".into(),
            policy: Policy::Hash,
            members: members(3),
        })],
        ..Default::default()
    };
    std::sync::Arc::make_mut(&mut cfg.directors[0]).members[1].weight = Some(2.0);
    let set = Directors::build(&cfg, None).unwrap();
    let d = set.id("d").unwrap();
    let h = Sick::default();
    let mut counts: Map<Option<BackendId>, usize> = Map::new();
    for i in 0..40_000 {
        let s = format!("key-{i}");
        let k = Key::str(&s);
        let a = set.select(d, &k, SelectOpts::default(), &h).unwrap();
        assert_eq!(a, set.select(d, &k, SelectOpts::default(), &h).unwrap());
        // r = H32(key)/2^32 against cumulative weights 1,2,1 out of 4.
        let r = f64::from(k.h32().unwrap()) / 4_294_967_296.0;
        let want = if r < 0.25 {
            0
        } else if r < 0.75 {
            1
        } else {
            2
        };
        assert_eq!(a, Some(want));
        *counts.entry(a).or_default() += 1;
    }
    let share1 = counts[&Some(1)] as f64 / 40_000.0;
    assert!(
        (share1 - 0.5).abs() < 0.02,
        "weight-2 member share {share1}"
    );
}

#[test]
fn random_director_follows_weights_over_healthy_members() {
    let mut cfg = Config {
        backends: (0..3).map(backend).map(Arc::new).collect(),
        directors: vec![std::sync::Arc::new(DirectorSpec {
            name: "d".into(),
            policy: Policy::Random,
            members: members(3),
        })],
        ..Default::default()
    };
    std::sync::Arc::make_mut(&mut cfg.directors[0]).members[0].weight = Some(3.0);
    std::sync::Arc::make_mut(&mut cfg.directors[0]).members[2].weight = Some(0.0);
    let set = Directors::build(&cfg, None).unwrap();
    let d = set.id("d").unwrap();
    let h = Sick::default();
    let mut c = [0usize; 3];
    for _ in 0..40_000 {
        let b = set
            .select(d, &Key::str("x"), SelectOpts::default(), &h)
            .unwrap()
            .unwrap();
        c[b as usize] += 1;
    }
    assert_eq!(c[2], 0, "weight 0 is never picked");
    let share0 = c[0] as f64 / 40_000.0;
    assert!((share0 - 0.75).abs() < 0.02, "share {share0}");
}

#[test]
fn nested_directors_resolve_and_are_healthy_when_any_member_is() {
    let cfg = Config {
        backends: (0..3).map(backend).map(Arc::new).collect(),
        directors: vec![
            Arc::new(DirectorSpec {
                name: "sh".into(),
                policy: shard(Algorithm::Varnish),
                members: members(2),
            }),
            Arc::new(DirectorSpec {
                name: "fb".into(),
                policy: Policy::Fallback { sticky: false },
                members: vec![
                    MemberSpec::new(TargetRef::Director("sh".into())),
                    MemberSpec::new(TargetRef::Backend("b2".into())),
                ],
            }),
        ],
        ..Default::default()
    };
    let set = Directors::build(&cfg, None).unwrap();
    let fb = set.id("fb").unwrap();
    let sh = set.id("sh").unwrap();
    let h = Sick::default();
    let k = Key::str("user-0");
    let via_shard = set.select(sh, &k, SelectOpts::default(), &h).unwrap();
    assert_eq!(
        set.select(fb, &k, SelectOpts::default(), &h).unwrap(),
        via_shard
    );
    h.0.borrow_mut().insert(0);
    assert!(set.is_healthy(Target::Director(sh), &h));
    assert_eq!(
        set.select(fb, &k, SelectOpts::default(), &h).unwrap(),
        Some(1)
    );
    h.0.borrow_mut().insert(1);
    assert!(!set.is_healthy(Target::Director(sh), &h));
    assert_eq!(
        set.select(fb, &k, SelectOpts::default(), &h).unwrap(),
        Some(2)
    );
}

#[test]
fn cycles_and_unknown_references_are_rejected() {
    let d = |name: &str, to: &str| {
        Arc::new(DirectorSpec {
            name: name.into(),
            policy: Policy::RoundRobin,
            members: vec![MemberSpec::new(TargetRef::Director(to.into()))],
        })
    };
    let cfg = Config {
        backends: vec![],
        directors: vec![d("a", "b"), d("b", "c"), d("c", "a")],
        ..Default::default()
    };
    match Directors::build(&cfg, None) {
        Err(BuildError::Cycle(path)) => assert_eq!(path, ["a", "b", "c", "a"]),
        other => panic!("{other:?}"),
    }
    let cfg = Config {
        backends: vec![],
        directors: vec![d("a", "a")],
        ..Default::default()
    };
    assert!(matches!(
        Directors::build(&cfg, None),
        Err(BuildError::Cycle(_))
    ));
    let cfg = Config {
        backends: vec![Arc::new(backend(0))],
        directors: vec![std::sync::Arc::new(DirectorSpec {
            name: "x".into(),
            policy: Policy::Hash,
            members: vec![MemberSpec::new(TargetRef::Backend("b9".into()))],
        })],
        ..Default::default()
    };
    let err = Directors::build(&cfg, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "director \"x\": members[0].backend: no backend named \"b9\""
    );
}

#[test]
fn bad_values_are_rejected_naming_the_field() {
    let (_, _) = one(Policy::RoundRobin, 1);
    let mut cfg = Config {
        backends: (0..2).map(backend).map(Arc::new).collect(),
        directors: vec![std::sync::Arc::new(DirectorSpec {
            name: "d".into(),
            policy: shard(Algorithm::Balanced),
            members: members(2),
        })],
        ..Default::default()
    };
    std::sync::Arc::make_mut(&mut cfg.directors[0]).members[1].weight = Some(-1.0);
    let e = Directors::build(&cfg, None).unwrap_err().to_string();
    assert!(e.contains("members[1].weight"), "{e}");
    std::sync::Arc::make_mut(&mut cfg.directors[0]).members[1].weight = Some(1.0);
    std::sync::Arc::make_mut(&mut cfg.directors[0]).members[0].slot = Some(3);
    std::sync::Arc::make_mut(&mut cfg.directors[0]).members[1].slot = Some(3);
    let e = Directors::build(&cfg, None).unwrap_err().to_string();
    assert_eq!(
        e,
        "director \"d\": members[1].slot: slot 3 is already taken by members[0]"
    );
    std::sync::Arc::make_mut(&mut cfg.directors[0]).members[1].slot = None;
    std::sync::Arc::make_mut(&mut cfg.directors[0]).policy = Policy::Shard(ShardSpec {
        warmup: 1.0,
        ..ShardSpec::default()
    });
    let e = Directors::build(&cfg, None).unwrap_err().to_string();
    assert!(e.contains("shard.warmup"), "{e}");
    cfg.directors.push(Arc::clone(&cfg.directors[0]));
    assert!(matches!(
        Directors::build(&cfg, None),
        Err(BuildError::DuplicateDirector(_))
    ));
}

/// Health with per-backend "time since change" for rampup tests.
struct Ramp(Map<BackendId, Duration>);

impl HealthView for Ramp {
    fn is_healthy(&self, _: BackendId) -> bool {
        true
    }
    fn since_change(&self, b: BackendId) -> Duration {
        self.0.get(&b).copied().unwrap_or(Duration::MAX)
    }
}

#[test]
fn rampup_is_deterministic_monotone_and_linear() {
    for algorithm in [Algorithm::Varnish, Algorithm::Balanced] {
        let cfg = Config {
            backends: (0..4).map(backend).map(Arc::new).collect(),
            directors: vec![std::sync::Arc::new(DirectorSpec {
                name: "d".into(),
                policy: Policy::Shard(ShardSpec {
                    algorithm,
                    rampup: Duration::from_secs(100),
                    ..ShardSpec::default()
                }),
                members: members(4),
            })],
            ..Default::default()
        };
        let set = Directors::build(&cfg, None).unwrap();
        let d = set.id("d").unwrap();
        let keys: Vec<String> = (0..20_000).map(|i| format!("k{i}")).collect();
        // Keys whose first choice is b0 when nothing ramps.
        let settled = Ramp(Map::new());
        let mine: Vec<&String> = keys
            .iter()
            .filter(|k| {
                set.select(d, &Key::str(k), SelectOpts::default(), &settled)
                    .unwrap()
                    == Some(0)
            })
            .collect();
        let mut prev_kept: HashSet<&String> = HashSet::new();
        for t in [0u64, 25, 50, 75, 100] {
            let ramping = Ramp(Map::from([(0, Duration::from_secs(t))]));
            let kept: HashSet<&String> = mine
                .iter()
                .copied()
                .filter(|k| {
                    set.select(d, &Key::str(k), SelectOpts::default(), &ramping)
                        .unwrap()
                        == Some(0)
                })
                .collect();
            // Same answer twice (no process-local randomness).
            for k in &mine {
                let a = set
                    .select(d, &Key::str(k), SelectOpts::default(), &ramping)
                    .unwrap();
                assert_eq!(
                    a,
                    set.select(d, &Key::str(k), SelectOpts::default(), &ramping)
                        .unwrap()
                );
            }
            let share = kept.len() as f64 / mine.len() as f64;
            assert!(
                (share - t as f64 / 100.0).abs() < 0.05,
                "{algorithm:?} t={t} share {share}"
            );
            assert!(
                prev_kept.is_subset(&kept),
                "a key that ramped in never leaves"
            );
            prev_kept = kept;
        }
    }
}

#[test]
fn warmup_sends_its_share_to_the_next_member() {
    let cfg = Config {
        backends: (0..4).map(backend).map(Arc::new).collect(),
        directors: vec![std::sync::Arc::new(DirectorSpec {
            name: "d".into(),
            policy: Policy::Shard(ShardSpec {
                algorithm: Algorithm::Balanced,
                warmup: 0.2,
                ..ShardSpec::default()
            }),
            members: members(4),
        })],
        ..Default::default()
    };
    let set = Directors::build(&cfg, None).unwrap();
    let d = set.id("d").unwrap();
    let h = Ramp(Map::new());
    let mut moved = 0;
    for i in 0..20_000 {
        let s = format!("k{i}");
        let k = Key::str(&s);
        let first = set.order(d, &k, 1).unwrap()[0];
        if set
            .select(d, &k, SelectOpts::default(), &h)
            .unwrap()
            .map(Target::Backend)
            != Some(first)
        {
            moved += 1;
        }
    }
    let share = f64::from(moved) / 20_000.0;
    assert!((share - 0.2).abs() < 0.02, "warmup share {share}");
}

#[test]
fn shard_first_picks_are_the_first_healthy_member_of_the_walk_on_every_path() {
    // A shard director whose members are all backends answers first picks from a per-slot
    // (flat balanced) or per-host (varnish) backend table; the same director with a
    // nested-director member, or walked with `order`, goes through members. Every path must
    // agree: the pick is the first healthy member of the key's walk.
    for algorithm in [Algorithm::Balanced, Algorithm::Varnish] {
        first_picks_follow_the_walk(algorithm);
    }
}

fn first_picks_follow_the_walk(algorithm: Algorithm) {
    let n = 10;
    let flat = |extra_director: bool| {
        let mut ms = members(n);
        if extra_director {
            ms.push(MemberSpec::new(TargetRef::Director("inner".into())));
        }
        let mut directors = vec![Arc::new(DirectorSpec {
            name: "d".into(),
            policy: Policy::Shard(ShardSpec {
                algorithm,
                base_slots: 16,
                ..ShardSpec::default()
            }),
            members: ms,
        })];
        directors.push(Arc::new(DirectorSpec {
            name: "inner".into(),
            policy: Policy::Fallback { sticky: false },
            members: members(1),
        }));
        let cfg = Config {
            backends: (0..n).map(backend).map(Arc::new).collect(),
            directors,
            ..Default::default()
        };
        Directors::build(&cfg, None).unwrap()
    };
    let sick = Sick::default();
    sick.0.borrow_mut().extend([2, 5, 7]);
    for set in [flat(false), flat(true)] {
        let d = set.id("d").unwrap();
        for k in 0..2_000 {
            let text = format!("k{k}");
            let key = Key::str(&text);
            let expected = set
                .order(d, &key, n + 1)
                .unwrap()
                .into_iter()
                .find(|&t| set.is_healthy(t, &sick))
                .map(|t| match t {
                    Target::Backend(b) => b,
                    Target::Director(_) => 0, // "inner" resolves to b0
                });
            assert_eq!(
                set.select(d, &key, SelectOpts::default(), &sick),
                Ok(expected)
            );
        }
    }
}
