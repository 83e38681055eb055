//! Bounded work and bounded configurations through the real binary: a read-only token cannot
//! make a call do unbounded work (a 1 MiB health pattern, `alternates = 2^32 - 1`, 10,000
//! Watch streams); objects past the limits are refused by field through the API with nothing
//! stored, and left out and counted by every data plane when written straight into etcd.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use prost::Message;
use support::etcd::Etcd;
use support::{Backend, ControlPlane, Tether, apply, config};
use tether_controlplane::client::{self, Client, ClientOptions};
use tether_controlplane::store::etcd::{EtcdOptions, EtcdStore};
use tether_controlplane::store::{Op, Store, Txn, TxnOutcome};
use tether_proto::v1;
use tonic_types::StatusExt;

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";

async fn connect(url: &str, token: &str) -> Client {
    let (endpoint, bearer) = ClientOptions {
        url: url.into(),
        token: Some(token.into()),
        ..ClientOptions::default()
    }
    .endpoint()
    .unwrap();
    client::client(endpoint.connect().await.unwrap(), bearer, 64 << 20)
}

fn backend(name: &str) -> v1::Backend {
    v1::Backend {
        name: name.into(),
        address: "127.0.0.1:9".into(),
        ..Default::default()
    }
}

fn member(b: &str) -> v1::Member {
    v1::Member {
        target: Some(v1::member::Target::Backend(b.into())),
        ..Default::default()
    }
}

fn director(name: &str, policy: v1::director::Policy, members: Vec<v1::Member>) -> v1::Director {
    v1::Director {
        name: name.into(),
        policy: Some(policy),
        members,
        ..Default::default()
    }
}

/// The field of every violation an INVALID_ARGUMENT carries.
fn violations(s: &tonic::Status) -> Vec<String> {
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    s.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_cannot_make_a_call_do_unbounded_work() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("admin:{ADMIN}\nread-only:{READER}\n")).unwrap();
    let t = Tether::up(dir.path(), &["--token-file", tokens.to_str().unwrap()]).await;
    let mut admin = connect(&t.api, ADMIN).await;
    let names: Vec<String> = (0..5000).map(|i| format!("b{i:04}")).collect();
    let applied = admin
        .apply(v1::ApplyRequest {
            backends: names.iter().map(|n| backend(n)).collect(),
            directors: vec![director(
                "h",
                v1::director::Policy::Hash(v1::Hash {}),
                names.iter().map(|n| member(n)).collect(),
            )],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    let mut reader = connect(&t.api, READER).await;
    // Explain in `tether up` answers from the running data plane: wait until it applied.
    let start = Instant::now();
    loop {
        let r = reader
            .explain(v1::ExplainRequest {
                target: Some(v1::explain_request::Target::Director("h".into())),
                key: "k".into(),
                alternates: 1,
            })
            .await;
        match r {
            Ok(r) if r.get_ref().revision >= applied => break,
            _ => assert!(
                start.elapsed() < Duration::from_secs(10),
                "never applied: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let start = Instant::now();
    let e = reader
        .list_health(v1::ListHealthRequest {
            pattern: "*".repeat(1 << 20),
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), ["pattern"]);
    assert!(e.message().len() < 300, "the pattern is not echoed back");
    let explain = |alternates| v1::ExplainRequest {
        target: Some(v1::explain_request::Target::Director("h".into())),
        key: "user-1".into(),
        alternates,
    };
    let e = reader.explain(explain(u32::MAX)).await.unwrap_err();
    assert_eq!(violations(&e), ["alternates"]);
    // Both refused before any work: generous for a debug build on a loaded machine (the
    // release figures are in docs/benchmarks.md).
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    // At the cap, answered.
    let r = reader.explain(explain(100)).await.unwrap().into_inner();
    assert_eq!(r.alternates.len(), 100);

    // 10,000 Watch streams from one token, over 100 connections: the first 1,000 open.
    let mut conns = Vec::new();
    for _ in 0..100 {
        conns.push(connect(&t.api, READER).await);
    }
    let mut open = Vec::new();
    let mut exhausted = 0;
    for i in 0..10_000 {
        let c = &mut conns[i % 100];
        match c.watch(v1::WatchRequest { from_revision: 0 }).await {
            Ok(s) => open.push(s.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                exhausted += 1;
            }
        }
    }
    assert_eq!(
        open.len(),
        tether_controlplane::service::MAX_WATCHES_PER_TOKEN
    );
    assert_eq!(exhausted, 10_000 - open.len());
    // Other calls are still answered, for this token and for others.
    let list = reader.list_backends(v1::ListRequest::default()).await;
    assert!(list.is_ok(), "{list:?}");
    admin
        .create_backend(v1::CreateBackendRequest {
            backend: Some(backend("late")),
        })
        .await
        .unwrap();
    // And the streams go on.
    let msg = tokio::time::timeout(Duration::from_secs(10), open[999].message())
        .await
        .unwrap()
        .unwrap();
    assert!(msg.is_some());
    // Closed streams give their places back.
    drop(open);
    let start = Instant::now();
    loop {
        match conns[0].watch(v1::WatchRequest { from_revision: 0 }).await {
            Ok(_) => break,
            Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "places never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A chain of `n` directors nesting one another down to backend `b`.
fn chain(n: usize) -> Vec<v1::Director> {
    (0..n)
        .map(|i| {
            let target = if i + 1 == n {
                v1::member::Target::Backend("b".into())
            } else {
                v1::member::Target::Director(format!("c{:06}", i + 1))
            };
            director(
                &format!("c{i:06}"),
                v1::director::Policy::RoundRobin(v1::RoundRobin {}),
                vec![v1::Member {
                    target: Some(target),
                    ..Default::default()
                }],
            )
        })
        .collect()
}

/// The oversized objects of the issue, each alone.
fn oversized() -> Vec<(&'static str, v1::ApplyRequest)> {
    let shard = |replicas, m: v1::Member| {
        director(
            "sh",
            v1::director::Policy::Shard(v1::Shard {
                replicas,
                ..Default::default()
            }),
            vec![m],
        )
    };
    let one = |d: Vec<v1::Director>| v1::ApplyRequest {
        backends: vec![backend("b")],
        directors: d,
        ..Default::default()
    };
    let mut heavy = member("b");
    heavy.weight = Some(1e12);
    let mut long = member("b");
    long.ident = "x".repeat(10 << 20);
    vec![
        (
            "directors[0].shard.replicas",
            one(vec![shard(4_000_000_000, member("b"))]),
        ),
        (
            "directors[0].members[0].weight",
            one(vec![shard(67, heavy)]),
        ),
        ("directors[0].members[0].ident", one(vec![shard(67, long)])),
        ("directors[10000]", one(chain(100_000))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_objects_are_refused_by_field_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    let mut api = connect(&t.api, ADMIN).await;
    for (field, req) in oversized() {
        let e = api.apply(req).await.unwrap_err();
        assert_eq!(violations(&e), [field]);
    }
    // A chain within the director count but deeper than the nesting limit.
    let e = api
        .apply(v1::ApplyRequest {
            backends: vec![backend("b")],
            directors: chain(1000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let f = violations(&e);
    assert!(f.len() == 1 && f[0].ends_with(".members"), "{f:?}");
    // Every violation of one backend at once.
    let e = api
        .create_backend(v1::CreateBackendRequest {
            backend: Some(v1::Backend {
                name: "Bad Name".into(),
                address: "nowhere".into(),
                weight: Some(-1.0),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violations(&e),
        ["backend.name", "backend.address", "backend.weight"]
    );
    // NOT_FOUND says which resource.
    let e = api
        .get_backend(v1::GetRequest {
            name: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let info = e.get_details_resource_info().unwrap();
    assert_eq!(
        (info.resource_type.as_str(), info.resource_name.as_str()),
        ("backend", "ghost")
    );
    // Nothing was stored, and the node still serves.
    let snap = api
        .get_snapshot(v1::GetSnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        snap.backends.is_empty() && snap.directors.is_empty(),
        "{snap:?}"
    );
    assert_eq!(t.admin_get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_objects_written_into_etcd_are_left_out_and_counted_on_every_node() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b1").await;
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let mut nodes = Vec::new();
    for i in 0..2 {
        nodes.push(Tether::dataplane(&dir.path().join(format!("dp{i}")), &etcd.urls(), true).await);
    }
    let rev = apply(
        &cp.api,
        dir.path(),
        &config(&[("b1", b.addr)], false),
        false,
    );
    for n in &nodes {
        n.wait_applied(rev).await;
    }
    // Behind the API's back: each oversized object, in its own transactions.
    let store = EtcdStore::connect(&EtcdOptions::new(&etcd.urls())).unwrap();
    let mut revision = 0;
    let mut objects = oversized();
    // The chain shorter than through the API (100,000): etcd takes 128 operations per
    // transaction, and every transaction is a revision each node validates; 12,000 directors
    // are still past the director count and 750 times the nesting limit.
    objects[3].1.directors = chain(12_000);
    for (_, req) in objects {
        let kvs: Vec<(String, Vec<u8>)> = req
            .directors
            .iter()
            .map(|d| {
                // Renamed so they sort after the good objects' names.
                let mut d = d.clone();
                d.name = format!("z-{}", d.name);
                for m in &mut d.members {
                    if let Some(v1::member::Target::Director(x)) = &mut m.target {
                        *x = format!("z-{x}");
                    }
                    if let Some(v1::member::Target::Backend(x)) = &mut m.target {
                        *x = "b1".into();
                    }
                }
                (
                    format!("/tether/v1/directors/{}", d.name),
                    d.encode_to_vec(),
                )
            })
            .collect();
        for chunk in kvs.chunks(120) {
            let out = store
                .txn(Txn {
                    compares: vec![],
                    ops: chunk
                        .iter()
                        .map(|(k, v)| Op::Put(k.clone(), v.clone()))
                        .collect(),
                    witness: None,
                })
                .await;
            // etcd refuses a 10 MiB value itself (its request limit is 1.5 MiB): that object
            // cannot be written behind our back either.
            match out {
                Ok(TxnOutcome::Committed { revision: r }) => revision = r,
                Ok(o) => panic!("{o:?}"),
                Err(e) => assert!(chunk.len() == 1, "{e}"),
            }
        }
    }
    for n in &nodes {
        // ~100 revisions of up to 12,000 directors each, validated one after the other by a
        // debug build on a shared machine.
        n.wait_applied_within(revision, Duration::from_secs(90))
            .await;
    }
    // Every node left them out, counted them, and routes as before.
    for n in &nodes {
        let metrics = n.admin_get("/metrics").await.1;
        let invalid: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("tether_invalid_objects_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(invalid >= 3, "{invalid}");
        let state = n.state().await;
        let directors: Vec<_> = state["directors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect();
        assert!(
            directors.iter().all(|d| !d.starts_with("z-")),
            "{directors:?}"
        );
        assert_eq!(n.request("k").await, (200, "b1".to_owned()));
    }
}
