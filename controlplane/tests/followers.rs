//! One follower of each kind — reading the store itself, and following a control plane's
//! GetSnapshot + Watch over real gRPC on loopback — against the same embedded store: they must
//! route alike (same fingerprint) and leave out the same undecodable objects, counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tether_controlplane::auth::TokenFile;
use tether_controlplane::client::ClientOptions;
use tether_controlplane::node::remote::RemoteSource;
use tether_controlplane::node::{self, Shutdown, StoreSource};
use tether_controlplane::server;
use tether_controlplane::service::Api;
use tether_controlplane::store::embedded::EmbeddedStore;
use tether_controlplane::store::{Op, Store, Txn, TxnOutcome};
use tether_dataplane::runtime::Runtime;
use tether_proto::keys::{Kind, Layout};
use tether_proto::v1;
use tether_proto::v1::tether_server::Tether;

fn backend(name: &str, port: u16) -> v1::Backend {
    v1::Backend {
        name: name.into(),
        address: format!("127.0.0.1:{port}"),
        ..Default::default()
    }
}

fn shard(members: &[&str]) -> v1::Director {
    v1::Director {
        name: "d".into(),
        policy: Some(v1::director::Policy::Shard(v1::Shard::default())),
        members: members
            .iter()
            .map(|m| v1::Member {
                target: Some(v1::member::Target::Backend((*m).into())),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Writes `value` under a backend's key behind the API's back.
async fn put_raw(store: &EmbeddedStore, name: &str, value: Vec<u8>) -> i64 {
    let key = Layout::default().key(Kind::Backend, name);
    let txn = Txn {
        ops: vec![Op::Put(key, value)],
        ..Txn::default()
    };
    match store.txn(txn).await.expect("txn") {
        TxnOutcome::Committed { revision } => revision,
        TxnOutcome::Failed { .. } => panic!("no compare, cannot fail"),
    }
}

/// Waits until both runtimes route by configuration revision `rev`.
async fn both_at(a: &Runtime, b: &Runtime, rev: i64) {
    let start = Instant::now();
    while a.config_revision() != rev || b.config_revision() != rev {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "followers at {} and {}, not {rev}",
            a.config_revision(),
            b.config_revision()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(rt: &Runtime) -> Vec<String> {
    let snap = rt.snapshot();
    let mut v: Vec<String> = snap
        .config
        .backends
        .iter()
        .map(|b| b.name.clone())
        .collect();
    v.extend(
        snap.config
            .directors
            .iter()
            .map(|d| format!("director:{}", d.name)),
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_follower_kinds_route_alike_and_leave_out_the_same_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
    let layout = Layout::default();
    let api = Api::new(store.clone(), layout.clone(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, shutdown) = Shutdown::channel();
    let server = {
        let s = shutdown.clone();
        tokio::spawn(server::serve(
            listener,
            api.clone(),
            TokenFile::none(),
            None,
            async move { s.wait().await },
        ))
    };

    let req = v1::ApplyRequest {
        backends: vec![
            backend("b1", 9001),
            backend("b2", 9002),
            backend("b3", 9003),
        ],
        directors: vec![shard(&["b1", "b2", "b3"])],
        ..Default::default()
    };
    Tether::apply(&api, tonic::Request::new(req)).await.unwrap();
    // An object that never decoded, there before either follower starts.
    let rev = put_raw(&store, "zz", vec![0xff, 0xff]).await;

    let direct = Runtime::new();
    let remote = Runtime::new();
    let agents = [
        tokio::spawn(node::run(
            StoreSource::new(store.clone(), layout.clone()),
            Arc::clone(&direct),
            node::Options::default(),
            None,
            shutdown.clone(),
        )),
        tokio::spawn(node::run(
            RemoteSource::connect(&ClientOptions {
                url: url.clone(),
                ..ClientOptions::default()
            })
            .unwrap(),
            Arc::clone(&remote),
            node::Options::default(),
            None,
            shutdown.clone(),
        )),
    ];
    both_at(&direct, &remote, rev).await;
    assert_eq!(names(&direct), ["b1", "b2", "b3", "director:d"]);
    assert_eq!(names(&direct), names(&remote));
    assert_eq!(
        direct.snapshot().fingerprint(),
        remote.snapshot().fingerprint()
    );

    // b3 stops decoding while both watch: it is left out by both (not kept as it was), and so
    // is the director that refers to it.
    let rev = put_raw(&store, "b3", b"\x0a\x01".to_vec()).await;
    both_at(&direct, &remote, rev).await;
    assert_eq!(names(&direct), ["b1", "b2"]);
    assert_eq!(names(&direct), names(&remote));
    assert_eq!(
        direct.snapshot().fingerprint(),
        remote.snapshot().fingerprint()
    );

    // Later changes still flow to both.
    let req = v1::ApplyRequest {
        backends: vec![
            backend("b1", 9001),
            backend("b2", 9002),
            backend("b3", 9013),
        ],
        directors: vec![shard(&["b1", "b3"])],
        ..Default::default()
    };
    let rev = Tether::apply(&api, tonic::Request::new(req))
        .await
        .unwrap()
        .into_inner()
        .revision;
    both_at(&direct, &remote, rev).await;
    assert_eq!(names(&direct), ["b1", "b2", "b3", "director:d"]);
    assert_eq!(
        direct.snapshot().fingerprint(),
        remote.snapshot().fingerprint()
    );
    let invalid = |rt: &Runtime| rt.counters.invalid_objects.load(Ordering::Relaxed);
    assert!(
        invalid(&direct) >= 3,
        "zz, b3 and d counted: {}",
        invalid(&direct)
    );
    assert_eq!(invalid(&direct), invalid(&remote));

    let _ = stop.send(true);
    for a in agents {
        a.await.unwrap();
    }
    server.await.unwrap().unwrap();
}
