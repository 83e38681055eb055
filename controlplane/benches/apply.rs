//! The data-plane follower applying one revision at 10,000 backends in one shard director:
//! from scratch (a listing) and a one-backend change (a watch event).
//!
//! `cargo bench -p tether-controlplane --bench apply`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tether_controlplane::convert::Converted;
use tether_controlplane::follow;
use tether_controlplane::state::State;
use tether_dataplane::runtime::Runtime;
use tether_proto::v1;

const N: usize = 10_000;

fn state(n: usize) -> State {
    let mut s = State {
        revision: 1,
        ..State::default()
    };
    for i in 0..n {
        let b = v1::Backend {
            name: format!("b{i}"),
            address: format!("10.{}.{}.{}:80", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            revision: 1,
            ..Default::default()
        };
        s.backends.insert(b.name.clone(), b);
    }
    let d = v1::Director {
        name: "users".into(),
        revision: 1,
        policy: Some(v1::director::Policy::Shard(v1::Shard::default())),
        members: (0..n)
            .map(|i| v1::Member {
                target: Some(v1::member::Target::Backend(format!("b{i}"))),
                ..Default::default()
            })
            .collect(),
    };
    s.directors.insert(d.name.clone(), d);
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
            assert!(follow::apply(&rt, black_box(&base), &mut converted));
        })
    });
    // A weight change of one backend: a one-member change of the varnish ring.
    let rt = Runtime::new();
    let mut converted = Converted::default();
    assert!(follow::apply(&rt, &base, &mut converted));
    let mut s = base.clone();
    let mut weight = 1.0;
    g.bench_function(format!("one_backend_change/{N}"), |b| {
        b.iter(|| {
            weight += 1.0;
            s.revision += 1;
            let b17 = s.backends.get_mut("b17").expect("b17");
            b17.weight = Some(1.0 + weight % 5.0);
            b17.revision = s.revision;
            assert!(follow::apply(&rt, black_box(&s), &mut converted));
        })
    });
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
