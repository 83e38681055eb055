//! Cluster-mode figures for docs/benchmarks.md (run by `bench/cluster.sh`, which starts etcd, a
//! control plane and three data planes and passes their addresses):
//!
//! 1. propagation: from an API call returning to all data planes having applied it, over 200
//!    changes (p50, p99, max);
//! 2. a 5,000-resource write (split over ~40 etcd transactions): from the call to every data
//!    plane applied, three times;
//! 3. 10,000 backends in one shard director: the Apply, the time to list and build from
//!    scratch, and to apply a one-backend change (in this process, with the data plane's own
//!    code), and the propagation of a one-backend change at that size;
//! 4. a backend added to and removed from that director: named (the director rewritten with
//!    it) against selected by label (the backend alone), API call(s) to every node applied.
//!
//! Usage: cluster API ETCD ADMIN_URL...

use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tether_controlplane::convert::Converted;
use tether_controlplane::node::follower;
use tether_controlplane::state::State;
use tether_controlplane::store::Store;
use tether_controlplane::store::etcd::{EtcdOptions, EtcdStore};
use tether_dataplane::runtime::Runtime;
use tether_proto::keys::Layout;
use tether_proto::v1::{self, tether_client::TetherClient};

#[path = "shared.rs"]
mod shared;
use shared::{Http, percentile};

async fn applied(http: &Http, admin: &str) -> i64 {
    shared::state(http, &format!("{admin}/state?backends=false")).await["applied_revision"]
        .as_i64()
        .unwrap_or(0)
}

/// Waits until every data plane applied `rev`; the time since `since`.
async fn all_applied(http: &Http, admins: &[String], rev: i64, since: Instant) -> Duration {
    for a in admins {
        while applied(http, a).await < rev {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "{a} never applied {rev}"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    since.elapsed()
}

fn backend(i: usize) -> v1::Backend {
    v1::Backend {
        name: format!("b{i}"),
        address: format!("10.{}.{}.{}:80", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        ..Default::default()
    }
}

fn director(n: usize) -> v1::Director {
    v1::Director {
        name: "users".into(),
        revision: 0,
        policy: Some(v1::director::Policy::Shard(v1::Shard::default())),
        members: (0..n)
            .map(|i| v1::Member {
                target: Some(v1::member::Target::Backend(format!("b{i}"))),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Applies `n` backends in one shard director (pruning the rest): the API call's time, and
/// the time until every data plane applied it.
async fn timed_apply(
    c: &mut TetherClient<tonic::transport::Channel>,
    http: &Http,
    admins: &[String],
    n: usize,
) -> Result<(Duration, Duration), tonic::Status> {
    let start = Instant::now();
    let rev = c
        .apply(v1::ApplyRequest {
            backends: (0..n).map(backend).collect(),
            directors: vec![director(n)],
            prune: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .revision;
    let api_done = start.elapsed();
    Ok((api_done, all_applied(http, admins, rev, start).await))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (api, etcd, admins) = (args[0].clone(), args[1].clone(), args[2..].to_vec());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Http = Client::builder(TokioExecutor::new()).build(connector);
    let mut c = TetherClient::connect(api)
        .await?
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);

    // 1. Propagation of small changes.
    c.apply(v1::ApplyRequest {
        backends: (0..3).map(backend).collect(),
        directors: vec![director(3)],
        prune: true,
        ..Default::default()
    })
    .await?;
    let mut times = Vec::new();
    for i in 0..200 {
        let mut b = backend(0);
        b.weight = Some(1.0 + f64::from(i % 7));
        let start = Instant::now();
        let rev = c
            .update_backend(v1::UpdateBackendRequest {
                backend: Some(b),
                update_mask: None,
            })
            .await?
            .into_inner()
            .revision;
        times.push(all_applied(&http, &admins, rev, start).await);
    }
    times.sort();
    println!(
        "propagation to {} data planes, 200 changes: p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        admins.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1]
    );

    // 2. A 5,000-resource write, split over many etcd transactions (at most 128 operations
    // each): from the call to every node applied. Three times, alternating with the small set.
    for _ in 0..3 {
        let (api_done, all) = timed_apply(&mut c, &http, &admins, 4999).await?;
        println!(
            "split write of 5,000 resources (4,999 backends + director): API {api_done:.2?}, applied on every node after {all:.2?}"
        );
        c.apply(v1::ApplyRequest {
            backends: (0..3).map(backend).collect(),
            directors: vec![director(3)],
            prune: true,
            ..Default::default()
        })
        .await?;
    }

    // 3. 10,000 backends in one shard director.
    let n = 10_000;
    let (api_done, all) = timed_apply(&mut c, &http, &admins, n).await?;
    println!(
        "apply of {n} backends + director: API {api_done:.2?}, applied on every node after {all:.2?}"
    );

    // In this process, with the data plane's code: list and build from scratch, then apply a
    // one-backend change.
    let store = EtcdStore::connect(&EtcdOptions::new(&etcd))?;
    let layout = Layout::default();
    let mut builds = Vec::new();
    let mut state = State::default();
    for _ in 0..5 {
        let t = Instant::now();
        let listing = store.list(layout.root()).await?;
        let (s, _) = State::from_listing(&layout, &listing);
        assert!(follower::apply(
            &Runtime::new(),
            &s,
            &mut Converted::default()
        ));
        builds.push(t.elapsed());
        state = s;
    }
    builds.sort();
    println!("list + build from scratch at {n}: median {:.2?}", builds[2]);
    // The follower's own apply, as after a watch event changing one backend's weight (1 to 20:
    // 67 to 1,340 ring points change), 50 times after a second's pause (the data planes'
    // post-Apply work — snapshot cache writes, node registrations — done). The other five
    // processes share this 2-core machine; controlplane/benches/apply.rs measures the same
    // function alone.
    let rt = Runtime::new();
    let mut converted = Converted::default();
    assert!(follower::apply(&rt, &state, &mut converted));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut changes = Vec::new();
    for i in 0..50 {
        state.revision += 1;
        if let Some(b) = state.backends.get_mut("b17").map(std::sync::Arc::make_mut) {
            b.weight = Some(1.0 + f64::from((i + 1) % 20));
            b.revision = state.revision;
        }
        let t = Instant::now();
        assert!(follower::apply(&rt, &state, &mut converted));
        changes.push(t.elapsed());
    }
    changes.sort();
    println!(
        "one-backend change at {n} (the follower's apply: convert + validate + build + install), 50 changes: min {:.2?}  p50 {:.2?}  p90 {:.2?}  max {:.2?}",
        changes[0],
        percentile(&changes, 0.5),
        percentile(&changes, 0.9),
        changes[49]
    );

    let mut times = Vec::new();
    for i in 0..20 {
        let mut b = backend(17);
        b.weight = Some(3.0 + f64::from(i));
        let start = Instant::now();
        let rev = c
            .update_backend(v1::UpdateBackendRequest {
                backend: Some(b),
                update_mask: None,
            })
            .await?
            .into_inner()
            .revision;
        times.push(all_applied(&http, &admins, rev, start).await);
    }
    times.sort();
    println!(
        "one-backend change at {n}, API call to every node applied: p50 {:.2?}  max {:.2?}",
        percentile(&times, 0.5),
        times[times.len() - 1]
    );

    // 4. A backend added to and removed from the 10,000-member director, as a user does it:
    // named, the director is written with it (Apply of the backend and the whole director;
    // UpdateDirector without it, then DeleteBackend); selected by label, the backend alone.
    let mut named = Vec::new();
    for i in 0..10 {
        let mut d = director(n);
        let x = v1::Backend {
            name: format!("x{i}"),
            ..backend(n + i)
        };
        d.members.push(v1::Member {
            target: Some(v1::member::Target::Backend(x.name.clone())),
            ..Default::default()
        });
        let start = Instant::now();
        let rev = c
            .apply(v1::ApplyRequest {
                backends: vec![x.clone()],
                directors: vec![d],
                ..Default::default()
            })
            .await?
            .into_inner()
            .revision;
        named.push(all_applied(&http, &admins, rev, start).await);
        let start = Instant::now();
        let updated = c
            .update_director(v1::UpdateDirectorRequest {
                director: Some(director(n)),
                update_mask: None,
            })
            .await?
            .into_inner()
            .revision;
        c.delete_backend(v1::DeleteRequest {
            name: x.name,
            revision: 0,
        })
        .await?;
        // A delete answers no revision: it is the next configuration write (node records are
        // written too, but a data plane's applied revision counts configuration batches).
        named.push(all_applied(&http, &admins, updated + 1, start).await);
    }
    let web = || [("app".to_owned(), "web".to_owned())].into();
    c.apply(v1::ApplyRequest {
        backends: (0..n)
            .map(|i| v1::Backend {
                labels: web(),
                ..backend(i)
            })
            .collect(),
        directors: vec![v1::Director {
            members: vec![v1::Member {
                target: Some(v1::member::Target::Selector(v1::LabelSelector {
                    match_labels: web(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..director(0)
        }],
        prune: true,
        ..Default::default()
    })
    .await?;
    let mut selected = Vec::new();
    for i in 0..10 {
        let x = v1::Backend {
            name: format!("x{i}"),
            labels: web(),
            ..backend(n + i)
        };
        let start = Instant::now();
        let rev = c
            .create_backend(v1::CreateBackendRequest {
                backend: Some(x.clone()),
            })
            .await?
            .into_inner()
            .revision;
        selected.push(all_applied(&http, &admins, rev, start).await);
        let start = Instant::now();
        c.delete_backend(v1::DeleteRequest {
            name: x.name,
            revision: 0,
        })
        .await?;
        selected.push(all_applied(&http, &admins, rev + 1, start).await);
    }
    named.sort();
    selected.sort();
    println!(
        "a backend added or removed at {n}, API call(s) to every node applied, 20 changes: named (director rewritten) p50 {:.2?} max {:.2?}; selector (backend only) p50 {:.2?} max {:.2?}",
        percentile(&named, 0.5),
        named[named.len() - 1],
        percentile(&selected, 0.5),
        selected[selected.len() - 1]
    );
    Ok(())
}
