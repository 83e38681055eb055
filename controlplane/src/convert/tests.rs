use super::*;

fn backend(name: &str, port: u16) -> v1::Backend {
    v1::Backend {
        name: name.into(),
        address: format!("127.0.0.1:{port}"),
        ..Default::default()
    }
}

fn member(b: &str) -> v1::Member {
    v1::Member {
        target: Some(v1::member::Target::Backend(b.into())),
        ..Default::default()
    }
}

fn balanced(members: &[&str]) -> v1::Director {
    v1::Director {
        name: "d".into(),
        revision: 0,
        policy: Some(v1::director::Policy::Shard(v1::Shard {
            algorithm: v1::ShardAlgorithm::Balanced as i32,
            ..Default::default()
        })),
        members: members.iter().map(|m| member(m)).collect(),
        ..Default::default()
    }
}

#[test]
fn probe_rules_follow_varnish() {
    let p = |w, t, i| v1::Probe {
        name: "p".into(),
        window: w,
        threshold: t,
        initial: i,
        ..Default::default()
    };
    let s = probe(&p(0, 0, None), &"probe").unwrap();
    assert_eq!((s.window, s.threshold, s.initial), (8, 3, 2));
    let s = probe(&p(0, 5, None), &"probe").unwrap();
    assert_eq!(
        (s.window, s.threshold, s.initial),
        (6, 5, 4),
        "window = threshold + 1"
    );
    assert_eq!(
        probe(&p(8, 0, None), &"probe").unwrap_err().field,
        "probe.threshold"
    );
    assert_eq!(
        probe(&p(65, 3, None), &"probe").unwrap_err().field,
        "probe.window"
    );
    assert_eq!(
        probe(&p(4, 5, None), &"probe").unwrap_err().field,
        "probe.threshold"
    );
    assert_eq!(
        probe(&p(8, 3, Some(4)), &"probe").unwrap_err().field,
        "probe.initial"
    );
    let mut bad = p(0, 0, None);
    bad.expected_status = 99;
    assert_eq!(
        probe(&bad, &"probe").unwrap_err().field,
        "probe.expected_status"
    );
    bad.expected_status = 1000;
    assert_eq!(
        probe(&bad, &"probe").unwrap_err().field,
        "probe.expected_status"
    );
}

#[test]
fn references_are_preconditions_and_values_are_invalid() {
    let (mut b, mut d) = (backend("b0", 1), balanced(&["b0", "b9"]));
    fn set<'a>(b: &'a v1::Backend, d: &'a v1::Director) -> Resources<'a> {
        Resources {
            backends: vec![(Label::Field("backend"), b)],
            directors: vec![(Label::Field("director"), d)],
            ..Resources::default()
        }
    }
    let e = validate(&set(&b, &d)).unwrap_err();
    assert_eq!(e.field, "director.members[1].backend");
    assert_eq!(e.failure, Failure::Precondition);
    d.members.pop();
    b.address = "nowhere".into();
    let e = validate(&set(&b, &d)).unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.failure),
        ("backend.address", Failure::Invalid)
    );
}

#[test]
fn slots_are_kept_for_unchanged_members_and_base_fixed_at_creation() {
    let mut d = balanced(&["a", "b", "c"]);
    assign_slots(&mut d, None);
    let slots = |d: &v1::Director| d.members.iter().map(|m| m.slot).collect::<Vec<_>>();
    assert_eq!(slots(&d), [Some(0), Some(1), Some(2)]);
    let Some(v1::director::Policy::Shard(s)) = &d.policy else {
        panic!()
    };
    assert_eq!(s.base_slots, 4);
    // Remove "a", add "e": b and c keep theirs, e takes the freed slot; base stays.
    let mut next = balanced(&["b", "c", "e"]);
    assign_slots(&mut next, Some(&d));
    assert_eq!(slots(&next), [Some(1), Some(2), Some(0)]);
    let Some(v1::director::Policy::Shard(s)) = &next.policy else {
        panic!()
    };
    assert_eq!(s.base_slots, 4);
}

#[test]
fn converted_backends_are_reused_by_stored_revision_only() {
    let stored = |name: &str, port: u16, revision: i64| v1::Backend {
        revision,
        ..backend(name, port)
    };
    let mut converted = Converted::default();
    let mut run = |bs: &[v1::Backend]| -> Config {
        let res = Resources {
            backends: bs
                .iter()
                .map(|b| (Label::Stored(Kind::Backend, &b.name), b))
                .collect(),
            ..Resources::default()
        };
        validate_with(&res, None, &mut converted)
            .expect("valid")
            .config
    };
    let first = run(&[stored("a", 1, 5), stored("b", 2, 6), stored("c", 3, 7)]);
    // b changed (new revision), a deleted, d added; c is the earlier conversion itself.
    let second = run(&[stored("b", 9, 8), stored("c", 3, 7), stored("d", 4, 8)]);
    assert_eq!(second.backends[0].address.to_string(), "127.0.0.1:9");
    assert!(Arc::ptr_eq(&first.backends[2], &second.backends[1]));
    assert!(!Arc::ptr_eq(&first.backends[1], &second.backends[0]));
    // A message without a stored revision (a request's) is always converted.
    let third = run(&[stored("c", 3, 0)]);
    assert!(!Arc::ptr_eq(&second.backends[1], &third.backends[0]));
    // An unsorted set is converted correctly too (the walk just finds nothing to reuse).
    let fourth = run(&[stored("z", 5, 9), stored("c", 6, 10)]);
    assert_eq!(fourth.backends[1].address.to_string(), "127.0.0.1:6");
}

#[test]
fn durations_are_bounded_and_the_error_names_the_field() {
    let mut b = backend("b1", 80);
    b.timeouts = Some(v1::Timeouts {
        between_bytes: Some(prost_types::Duration {
            seconds: 10_000_000_000_000_000,
            nanos: 0,
        }),
        ..Default::default()
    });
    let e = backend_spec(&b).unwrap_err();
    assert_eq!(e.field, "backend.timeouts.between_bytes");
    assert!(e.message.contains("at most 86400 s"), "{}", e.message);
    // One day is allowed.
    b.timeouts = Some(v1::Timeouts {
        between_bytes: Some(prost_types::Duration {
            seconds: 86_400,
            nanos: 0,
        }),
        ..Default::default()
    });
    assert!(backend_spec(&b).is_ok());
}

#[test]
fn queue_timeout_and_connection_lifetime_are_bounded_and_zero_means_none() {
    let over = Some(prost_types::Duration {
        seconds: 86_401,
        nanos: 0,
    });
    let mut b = backend("b1", 80);
    b.queue_timeout = over;
    assert_eq!(backend_spec(&b).unwrap_err().field, "backend.queue_timeout");
    b.queue_timeout = None;
    b.max_connection_lifetime = over;
    assert_eq!(
        backend_spec(&b).unwrap_err().field,
        "backend.max_connection_lifetime"
    );
    b.max_connection_lifetime = Some(prost_types::Duration::default());
    let spec = backend_spec(&b).unwrap();
    assert_eq!(spec.max_connection_lifetime, None);
    assert_eq!(spec.queue_timeout, Duration::ZERO);
    b.queue_timeout = Some(prost_types::Duration {
        seconds: 2,
        nanos: 0,
    });
    b.max_connection_lifetime = Some(prost_types::Duration {
        seconds: 600,
        nanos: 0,
    });
    let spec = backend_spec(&b).unwrap();
    assert_eq!(spec.queue_timeout, Duration::from_secs(2));
    assert_eq!(spec.max_connection_lifetime, Some(Duration::from_secs(600)));
}

fn backend_spec(b: &v1::Backend) -> Result<BackendSpec, FieldError> {
    super::backend(b, &"backend")
}

fn nested(name: &str, inner: &str) -> v1::Director {
    v1::Director {
        name: name.into(),
        policy: Some(v1::director::Policy::RoundRobin(v1::RoundRobin {})),
        members: vec![v1::Member {
            target: Some(v1::member::Target::Director(inner.into())),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn shard_of(members: Vec<v1::Member>, replicas: u32) -> v1::Director {
    v1::Director {
        name: "sh".into(),
        policy: Some(v1::director::Policy::Shard(v1::Shard {
            replicas,
            ..Default::default()
        })),
        members,
        ..Default::default()
    }
}

fn fields(e: &FieldError) -> Vec<&str> {
    e.violations().map(|v| v.field.as_str()).collect()
}

#[test]
fn every_violation_of_a_resource_is_reported_not_the_first() {
    let b = v1::Backend {
        name: "Bad Name".into(),
        address: "nowhere".into(),
        weight: Some(-1.0),
        ..Default::default()
    };
    let e = super::backend(&b, &"backend").unwrap_err();
    assert_eq!(
        fields(&e),
        ["backend.name", "backend.address", "backend.weight"]
    );
    // And across a whole set: every bad resource, bad values before missing references.
    let req = v1::ApplyRequest {
        backends: vec![b, backend("ok", 1), backend("Also Bad", 2)],
        directors: vec![shard_of(vec![member("ok")], 4_000_000_000)],
        ..Default::default()
    };
    let e = validate(&Resources::of_request(&req)).unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "backends[0].name",
            "backends[0].address",
            "backends[0].weight",
            "backends[2].name",
            "directors[0].shard.replicas",
        ]
    );
    assert!(e.to_string().ends_with("(and 4 more violations)"), "{e}");
}

#[test]
fn configurations_are_bounded() {
    let one = |d: v1::Director, backends: Vec<v1::Backend>| {
        let req = v1::ApplyRequest {
            backends,
            directors: vec![d],
            ..Default::default()
        };
        validate(&Resources::of_request(&req))
    };
    // A weight that would put 10^16 points on the ring.
    let mut m = member("b");
    m.weight = Some(1e12);
    let e = one(shard_of(vec![m], 67), vec![backend("b", 1)]).unwrap_err();
    assert_eq!(e.field, "directors[0].members[0].weight");
    // Within the weight limit, but too many points for one member, then for the ring.
    let mut m = member("b");
    m.weight = Some(1000.0);
    let e = one(shard_of(vec![m], 10_000), vec![backend("b", 1)]).unwrap_err();
    assert_eq!(e.field, "directors[0].members[0].weight");
    assert!(e.message.contains("ring points"), "{e}");
    let backends: Vec<_> = (0..500).map(|i| backend(&format!("b{i}"), 1)).collect();
    let members = (0..500).map(|i| member(&format!("b{i}"))).collect();
    let e = one(shard_of(members, 10_000), backends).unwrap_err();
    assert_eq!(e.field, "directors[0].shard.replicas");
    assert!(e.message.contains("per director"), "{e}");
    // A 10 MiB ident, named by its size only.
    let mut m = member("b");
    m.ident = "x".repeat(10 << 20);
    let e = one(shard_of(vec![m], 67), vec![backend("b", 1)]).unwrap_err();
    assert_eq!(e.field, "directors[0].members[0].ident");
    assert!(e.to_string().len() < 200, "{e}");
    // A name as long, the same.
    let e = super::backend(&backend(&"b".repeat(10 << 20), 1), &"backend").unwrap_err();
    assert_eq!(e.field, "backend.name");
    assert!(e.to_string().len() < 200);
}

/// `depth` directors, each nesting the next, the last holding backend `b`.
fn chain(depth: usize) -> v1::ApplyRequest {
    let mut directors: Vec<_> = (0..depth - 1)
        .map(|i| nested(&format!("d{i:05}"), &format!("d{:05}", i + 1)))
        .collect();
    directors.push(v1::Director {
        name: format!("d{:05}", depth - 1),
        policy: Some(v1::director::Policy::RoundRobin(v1::RoundRobin {})),
        members: vec![member("b")],
        ..Default::default()
    });
    v1::ApplyRequest {
        backends: vec![backend("b", 1)],
        directors,
        ..Default::default()
    }
}

#[test]
fn nesting_is_bounded_without_recursion() {
    // A chain of nested directors deeper than the limit (and one far deeper than any stack
    // would survive, were the check recursive): refused by field, not by a crash.
    for depth in [limits::MAX_NESTING as usize + 1, limits::MAX_DIRECTORS] {
        let e = validate(&Resources::of_request(&chain(depth))).unwrap_err();
        assert!(e.field.ends_with(".members"), "{e}");
        assert!(e.message.contains("nest"), "{e}");
    }
    // The limit itself is fine.
    validate(&Resources::of_request(&chain(limits::MAX_NESTING as usize))).unwrap();
}

#[test]
fn stored_objects_past_the_limits_are_left_out_with_their_referrers() {
    // As a node reads them: labelled by kind and name.
    let mut directors: Vec<_> = (0..100_000)
        .map(|i| nested(&format!("d{i:06}"), &format!("d{:06}", i + 1)))
        .collect();
    directors.push(v1::Director {
        name: "d100000".into(),
        policy: Some(v1::director::Policy::RoundRobin(v1::RoundRobin {})),
        members: vec![member("b")],
        ..Default::default()
    });
    let mut big = shard_of(vec![member("b")], 4_000_000_000);
    big.name = "a-huge".into();
    let backends = [backend("b", 1)];
    let routes = [v1::Route {
        name: "r".into(),
        director: "d000000".into(),
        key: Some(v1::KeySource {
            source: Some(v1::key_source::Source::Path(true)),
        }),
        ..Default::default()
    }];
    let set = Resources {
        backends: backends
            .iter()
            .map(|b| (Label::Stored(Kind::Backend, &b.name), b))
            .collect(),
        // In name order, as a store's state is.
        directors: [&big]
            .into_iter()
            .chain(&directors)
            .map(|d| (Label::Stored(Kind::Director, &d.name), d))
            .collect(),
        routes: routes
            .iter()
            .map(|r| (Label::Stored(Kind::Route, &r.name), r))
            .collect(),
        ..Resources::default()
    };
    let (v, left_out) =
        validate_leaving_out(&set, None, &mut Converted::default(), |_| true).unwrap();
    // What remains: the backend. The chain went over the director count, the cut left its top
    // referring to a missing director, and its referrers (the whole chain, the route) with it.
    assert_eq!(v.config.backends.len(), 1);
    assert!(v.config.routes.is_empty());
    assert!(
        v.config.directors.is_empty(),
        "{:?}",
        v.config.directors.len()
    );
    assert!(
        left_out
            .iter()
            .any(|e| e.field == "directors/a-huge.shard.replicas")
    );
    assert!(left_out.iter().any(|e| e.field == "routes/r"));
}

fn labelled(name: &str, port: u16, labels: &[(&str, &str)]) -> v1::Backend {
    v1::Backend {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..backend(name, port)
    }
}

fn selector_member(text: &str) -> v1::Member {
    v1::Member {
        target: Some(v1::member::Target::Selector(
            crate::selector::parse(text).unwrap(),
        )),
        ..Default::default()
    }
}

fn expanded(d: &v1::Director, backends: &[v1::Backend]) -> Vec<(String, Option<u32>)> {
    let set: Vec<(Label<'_>, &v1::Backend)> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (Label::Indexed("backends", i), b))
        .collect();
    director(d, &"director", &set)
        .unwrap()
        .members
        .iter()
        .map(|m| (m.target.name().to_owned(), m.slot))
        .collect()
}

#[test]
fn selector_members_expand_in_name_order_once_each() {
    let backends = [
        labelled("web-c", 1, &[("app", "web")]),
        labelled("web-a", 2, &[("app", "web"), ("zone", "a")]),
        labelled("api", 3, &[("app", "api")]),
        labelled("web-b", 4, &[("app", "web")]),
    ];
    let mut d = shard_of(vec![member("web-b"), selector_member("app=web")], 67);
    let names = |v: Vec<(String, Option<u32>)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    // The named member first; the selector adds the others (web-b once), by name.
    assert_eq!(names(expanded(&d, &backends)), ["web-b", "web-a", "web-c"]);
    d.members.push(selector_member("zone=a"));
    assert_eq!(
        names(expanded(&d, &backends)),
        ["web-b", "web-a", "web-c"],
        "web-a matched by an earlier selector"
    );
    // Matching nothing is an empty director, not an error.
    let none = shard_of(vec![selector_member("app=db")], 67);
    assert!(expanded(&none, &backends).is_empty());
    // ident and slot belong to named members.
    let mut bad = shard_of(vec![selector_member("app=web")], 67);
    bad.members[0].ident = "x".into();
    let set: Vec<(Label<'_>, &v1::Backend)> = vec![];
    let e = director(&bad, &"director", &set).unwrap_err();
    assert_eq!(e.field, "director.members[0].ident");
}

#[test]
fn selector_slots_are_stored_state_kept_while_a_backend_matches() {
    let web = |n: &str, p| labelled(n, p, &[("app", "web")]);
    let mut backends = vec![web("w1", 1), web("w2", 2), web("w3", 3)];
    let mut d = balanced(&["named"]);
    d.members.push(selector_member("app=web"));
    assign_slots(&mut d, None);
    fn refs(b: &[v1::Backend]) -> Vec<&v1::Backend> {
        b.iter().collect()
    }
    assign_selector_slots(&mut d, &refs(&backends));
    // Created with one named member and three matches: a flat base for four, not for the
    // two entries of its member list.
    let base = |d: &v1::Director| match &d.policy {
        Some(v1::director::Policy::Shard(s)) => s.base_slots,
        _ => panic!(),
    };
    assert_eq!(base(&d), 4);
    let mut only = balanced(&[]);
    only.members.push(selector_member("app=web"));
    assign_slots(&mut only, None);
    assert_eq!(base(&only), 0, "left for the selector slots");
    assign_selector_slots(&mut only, &refs(&backends));
    assert_eq!(base(&only), 4);
    // Kept on later writes, however many match then.
    let mut later = only.clone();
    assign_slots(&mut later, Some(&only));
    assign_selector_slots(&mut later, &refs(&backends[..1]));
    assert_eq!(base(&later), 4);
    let slot = |d: &v1::Director, n: &str| d.selector_slots.get(n).copied();
    // The named member has slot 0; the selected backends take 1, 2, 3 in name order.
    assert_eq!(d.members[0].slot, Some(0));
    assert_eq!(
        (slot(&d, "w1"), slot(&d, "w2"), slot(&d, "w3")),
        (Some(1), Some(2), Some(3))
    );
    let mut all = vec![labelled("named", 9, &[])];
    all.extend(backends.iter().cloned());
    assert_eq!(
        expanded(&d, &all),
        [
            ("named".to_owned(), Some(0)),
            ("w1".to_owned(), Some(1)),
            ("w2".to_owned(), Some(2)),
            ("w3".to_owned(), Some(3))
        ]
    );
    // w1 goes, w0 comes (sorting before the others): w2 and w3 keep theirs, w0 takes the
    // freed slot; a rewrite of the director without the map keeps it.
    backends.remove(0);
    backends.push(web("w0", 4));
    let mut rewritten = balanced(&["named"]);
    rewritten.members.push(selector_member("app=web"));
    assign_slots(&mut rewritten, Some(&d));
    assign_selector_slots(&mut rewritten, &refs(&backends));
    assert_eq!(
        (
            slot(&rewritten, "w0"),
            slot(&rewritten, "w1"),
            slot(&rewritten, "w2"),
            slot(&rewritten, "w3")
        ),
        (Some(1), None, Some(2), Some(3))
    );
    // A new named member does not take a selected backend's slot.
    let mut grown = rewritten.clone();
    grown.members.insert(1, member("extra"));
    grown.members[1].slot = None;
    assign_slots(&mut grown, Some(&rewritten));
    assert_eq!(grown.members[1].slot, Some(4));
    // A varnish director keeps no slots.
    let mut v = shard_of(vec![selector_member("app=web")], 67);
    v.selector_slots.insert("w2".into(), 7);
    assign_selector_slots(&mut v, &refs(&backends));
    assert!(v.selector_slots.is_empty());
}

/// The director `d` as validated with backends `bs`, all as read from the store, through
/// `converted`.
fn stored_director(
    converted: &mut Converted,
    d: &v1::Director,
    bs: &[v1::Backend],
) -> Arc<DirectorSpec> {
    let res = Resources {
        backends: bs
            .iter()
            .map(|b| (Label::Stored(Kind::Backend, &b.name), b))
            .collect(),
        directors: vec![(Label::Stored(Kind::Director, &d.name), d)],
        ..Resources::default()
    };
    validate_with(&res, None, converted)
        .expect("valid")
        .config
        .directors[0]
        .clone()
}

#[test]
fn a_selector_directors_conversion_is_reused_only_while_its_selection_holds() {
    let web = |name: &str, port: u16, revision: i64, app: &str| v1::Backend {
        revision,
        ..labelled(name, port, &[("app", app)])
    };
    let mut d = shard_of(vec![selector_member("app=web")], 67);
    d.revision = 3;
    let mut converted = Converted::default();
    let mut run = |bs: &[v1::Backend]| stored_director(&mut converted, &d, bs);
    let names = |s: &DirectorSpec| -> Vec<String> {
        s.members
            .iter()
            .map(|m| m.target.name().to_owned())
            .collect()
    };
    let mut set = vec![
        web("a", 1, 5, "web"),
        web("b", 2, 6, "web"),
        web("c", 3, 7, "api"),
    ];
    let first = run(&set);
    assert_eq!(names(&first), ["a", "b"]);
    // b's weight changes (a new revision, still selected): reused as it is.
    set[1].weight = Some(3.0);
    set[1].revision = 8;
    let second = run(&set);
    assert!(Arc::ptr_eq(&first, &second));
    // c becomes web: expanded again, with c.
    set[2] = web("c", 3, 9, "web");
    let third = run(&set);
    assert_eq!(names(&third), ["a", "b", "c"]);
    // a relabelled away, and a new unselected backend: a is out.
    set[0] = web("a", 1, 10, "api");
    set.push(web("d", 4, 10, "db"));
    let fourth = run(&set);
    assert_eq!(names(&fourth), ["b", "c"]);
    // d (never selected) deleted: reused; b deleted: b is out.
    set.pop();
    let fifth = run(&set);
    assert!(Arc::ptr_eq(&fourth, &fifth));
    set.remove(1);
    assert_eq!(names(&run(&set)), ["c"]);
}

/// Many small changes in a row (labels moving backends between two selectors and out, a
/// named member, adds and deletes): the cached path — kept, spliced or converted — gives
/// exactly what converting from scratch gives, at every step.
#[test]
fn spliced_selector_members_equal_a_fresh_expansion() {
    let mut d = shard_of(
        vec![
            member("n3"),
            selector_member("tier=a"),
            v1::Member {
                weight: Some(2.0),
                rampup: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..selector_member("tier in (a, b)")
            },
        ],
        67,
    );
    d.revision = 1;
    let tiers = ["a", "b", "c"];
    let mut set: Vec<v1::Backend> = (0..30)
        .map(|i| v1::Backend {
            revision: 1,
            ..labelled(
                &format!("n{i}"),
                1000 + i,
                &[("tier", tiers[i as usize % 3])],
            )
        })
        .collect();
    set.sort_by(|a, b| a.name.cmp(&b.name));
    let mut cached = Converted::default();
    let convert = |converted: &mut Converted, bs: &[v1::Backend]| -> DirectorSpec {
        (*stored_director(converted, &d, bs)).clone()
    };
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for step in 2..300i64 {
        match next() % 4 {
            // Relabel one backend.
            0 | 1 => {
                let i = (next() % set.len() as u64) as usize;
                let tier = tiers[(next() % 3) as usize];
                set[i].labels.insert("tier".into(), tier.into());
                set[i].revision = step;
            }
            // Delete one (not the named member's backend).
            2 if set.len() > 5 => {
                let i = (next() % set.len() as u64) as usize;
                if set[i].name != "n3" {
                    set.remove(i);
                }
            }
            // Add one.
            _ => {
                let name = format!("m{}", next() % 1000);
                if !set.iter().any(|b| b.name == name) {
                    let tier = tiers[(next() % 3) as usize];
                    set.push(v1::Backend {
                        revision: step,
                        ..labelled(&name, 2000, &[("tier", tier)])
                    });
                    set.sort_by(|a, b| a.name.cmp(&b.name));
                }
            }
        }
        let from_cache = convert(&mut cached, &set);
        let fresh = convert(&mut Converted::default(), &set);
        assert_eq!(from_cache, fresh, "step {step}");
        assert_eq!(from_cache.members[0].target.name(), "n3");
    }
}
