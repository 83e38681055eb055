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
