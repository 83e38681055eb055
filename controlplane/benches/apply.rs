//! The data-plane follower applying one revision at 10,000 backends in one shard director:
//! from scratch (a listing) and a one-backend change (a watch event): a weight change, and a
//! backend added to the director or deleted from it.
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

const N: usize = 10_000;

/// The state a follower lists: 10,000 backends and one shard director, decoded from a listing
/// in key order as from etcd (so the messages lie in memory as a follower's do).
fn state(n: usize) -> State {
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
            ..Default::default()
        };
        put(Kind::Backend, &b.name, b.encode_to_vec());
    }
    let d = v1::Director {
        name: "users".into(),
        revision: 0,
        policy: Some(v1::director::Policy::Shard(v1::Shard::default())),
        members: (0..n)
            .map(|i| v1::Member {
                target: Some(v1::member::Target::Backend(format!("b{i}"))),
                ..Default::default()
            })
            .collect(),
    };
    put(Kind::Director, &d.name, d.encode_to_vec());
    kvs.sort_by(|a, b| a.key.cmp(&b.key));
    let (s, errors) = State::from_listing(&layout, &Listing { revision: 1, kvs });
    assert!(errors.is_empty());
    s
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("follower_apply");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    let base = state(N);
    g.bench_function(format!("from_scratch/{N}"), |b| {
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
    g.bench_function(format!("one_backend_change/{N}"), |b| {
        b.iter(|| {
            weight += 1.0;
            s.revision += 1;
            let b17 = s.backends.get_mut("b17").expect("b17");
            // Weights 1 to 20: from 67 to 1,340 of the ring's points change.
            b17.weight = Some(1.0 + weight % 20.0);
            b17.revision = s.revision;
            assert!(follower::apply(&rt, black_box(&s), &mut converted));
        })
    });
    // A backend added as a member (one revision), then deleted (the next): each iteration is
    // one of the two, alternately.
    let mut added = false;
    g.bench_function(format!("one_backend_added_or_deleted/{N}"), |b| {
        b.iter(|| {
            s.revision += 1;
            let users = s.directors.get_mut("users").expect("users");
            users.revision = s.revision;
            if added {
                s.backends.remove("b5000x");
                users.members.pop();
            } else {
                let b = v1::Backend {
                    name: "b5000x".into(),
                    address: "10.9.9.9:80".into(),
                    revision: s.revision,
                    ..Default::default()
                };
                s.backends.insert(b.name.clone(), b);
                users.members.push(v1::Member {
                    target: Some(v1::member::Target::Backend("b5000x".into())),
                    ..Default::default()
                });
            }
            added = !added;
            assert!(follower::apply(&rt, black_box(&s), &mut converted));
        })
    });
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
