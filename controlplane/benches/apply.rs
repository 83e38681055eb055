//! The data-plane follower applying one revision at 10,000 backends in one shard director:
//! from scratch (a listing) and a one-backend change (a watch event): a weight change, and a
//! backend added to the director or deleted from it — with the director naming its 10,000
//! members in index order (b0, b1, …, a new one appended), the same in name order
//! (`name_order/…`: b0, b1, b10, …, a new one inserted where its name sorts, as a selector
//! places it), and (`selector/…`) with one selector member matching them all (`app=web`).
//!
//! `cargo bench -p tether-controlplane --bench apply`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use tether_controlplane::convert::Converted;
use tether_controlplane::node::follower;
use tether_controlplane::state::State;
use tether_controlplane::store::{KeyValue, Listing};
use tether_dataplane::runtime::Runtime;
use tether_proto::keys::{Kind, Layout};
use tether_proto::v1;

/// The tether binary's allocator (src/main.rs): what a data plane applies with.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const N: usize = 10_000;

/// The state a follower lists: 10,000 backends (labelled `app=web`) and one shard director
/// naming them (or selecting them), decoded from a listing in key order as from etcd (so the
/// messages lie in memory as a follower's do).
/// How the benchmark's director lists its members.
#[derive(Clone, Copy, PartialEq)]
enum Members {
    Named,
    NamedInNameOrder,
    Selector,
}

fn state(n: usize, members: Members) -> State {
    let layout = Layout::default();
    let mut kvs = Vec::new();
    let mut put = |kind: Kind, name: &str, value: Vec<u8>| {
        kvs.push(KeyValue {
            key: layout.key(kind, name),
            value,
            create_revision: 1,
            mod_revision: 1,
        });
    };
    for i in 0..n {
        let b = v1::Backend {
            name: format!("b{i}"),
            address: format!("10.{}.{}.{}:80", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            labels: web(),
            ..Default::default()
        };
        put(Kind::Backend, &b.name, b.encode_to_vec());
    }
    let d = v1::Director {
        name: "users".into(),
        revision: 0,
        policy: Some(v1::director::Policy::Shard(v1::Shard::default())),
        members: if members == Members::Selector {
            vec![v1::Member {
                target: Some(v1::member::Target::Selector(v1::LabelSelector {
                    match_labels: web(),
                    match_expressions: Vec::new(),
                })),
                ..Default::default()
            }]
        } else {
            let mut names: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
            if members == Members::NamedInNameOrder {
                names.sort();
            }
            names
                .into_iter()
                .map(|b| v1::Member {
                    target: Some(v1::member::Target::Backend(b)),
                    ..Default::default()
                })
                .collect()
        },
        ..Default::default()
    };
    put(Kind::Director, &d.name, d.encode_to_vec());
    kvs.sort_by(|a, b| a.key.cmp(&b.key));
    let (s, errors) = State::from_listing(&layout, &Listing { revision: 1, kvs });
    assert!(errors.is_empty());
    s
}

fn web() -> std::collections::HashMap<String, String> {
    [("app".to_owned(), "web".to_owned())].into()
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("follower_apply");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for members in [Members::Named, Members::NamedInNameOrder, Members::Selector] {
        variant(&mut g, members);
    }
    g.finish();
}

fn variant(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    members: Members,
) {
    let base = state(N, members);
    let tag = match members {
        Members::Named => "",
        Members::NamedInNameOrder => "name_order/",
        Members::Selector => "selector/",
    };
    g.bench_function(format!("{tag}from_scratch/{N}"), |b| {
        b.iter(|| {
            let rt = Runtime::new();
            let mut converted = Converted::default();
            assert!(follower::apply(&rt, black_box(&base), &mut converted));
        })
    });
    // A weight change of one backend: a one-member change of the varnish ring.
    let rt = Runtime::new();
    let mut converted = Converted::default();
    assert!(follower::apply(&rt, &base, &mut converted));
    let mut s = base.clone();
    let mut weight = 1.0;
    g.bench_function(format!("{tag}one_backend_change/{N}"), |b| {
        b.iter(|| {
            weight += 1.0;
            s.revision += 1;
            let b17 = s
                .backends
                .get_mut("b17")
                .map(std::sync::Arc::make_mut)
                .expect("b17");
            // Weights 1 to 20: from 67 to 1,340 of the ring's points change.
            b17.weight = Some(1.0 + weight % 20.0);
            b17.revision = s.revision;
            assert!(follower::apply(&rt, black_box(&s), &mut converted));
        })
    });
    // A backend added as a member (one revision), then deleted (the next): each iteration is
    // one of the two, alternately. With a selector the director is not written: the backend's
    // labels make it a member.
    let mut added = false;
    g.bench_function(format!("{tag}one_backend_added_or_deleted/{N}"), |b| {
        b.iter(|| {
            s.revision += 1;
            let revision = s.revision;
            if added {
                s.backends.remove("b5000x");
            } else {
                let b = v1::Backend {
                    name: "b5000x".into(),
                    address: "10.9.9.9:80".into(),
                    revision,
                    labels: web(),
                    ..Default::default()
                };
                s.backends.insert(b.name.clone(), std::sync::Arc::new(b));
            }
            if members != Members::Selector {
                let users = s.directors.get_mut("users").map(std::sync::Arc::make_mut).expect("users");
                users.revision = revision;
                // Appended, or where its name sorts.
                let at = match members {
                    Members::NamedInNameOrder => users.members.partition_point(|m| {
                        matches!(&m.target, Some(v1::member::Target::Backend(b)) if b.as_str() < "b5000x")
                    }),
                    _ => users.members.len() - usize::from(added),
                };
                if added {
                    users.members.remove(at);
                } else {
                    users.members.insert(
                        at,
                        v1::Member {
                            target: Some(v1::member::Target::Backend("b5000x".into())),
                            ..Default::default()
                        },
                    );
                }
            }
            added = !added;
            assert!(follower::apply(&rt, black_box(&s), &mut converted));
        })
    });
}

criterion_group!(benches, apply);
criterion_main!(benches);
