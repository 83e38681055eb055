//! A write split over many etcd transactions, through the real binaries: data planes never
//! apply a revision inside it, and a control plane killed (`kill -9`) between its parts leaves
//! a write that the next control plane's start completes — the store ends with all of it, and
//! no node ever served part of it.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::{Backend, ControlPlane, Tether, apply};
use tether_controlplane::serial::Serial;
use tether_controlplane::store::Store;
use tether_controlplane::store::etcd::{EtcdOptions, EtcdStore};

/// 1,000 resources: backends, and directors nesting each other named so that the referrer
/// sorts before the director it names.
fn big(upstream: std::net::SocketAddr) -> String {
    let mut y = String::from("backends:\n");
    for i in 0..994 {
        y.push_str(&format!("  - name: b{i:03}\n    address: {upstream}\n"));
    }
    y.push_str("directors:\n");
    y.push_str("  - name: a-top\n    fallback: {}\n    members: [{ director: m-mid }]\n");
    y.push_str("  - name: m-mid\n    fallback: {}\n    members: [{ director: z-leaf }]\n");
    y.push_str("  - name: z-leaf\n    shard: {}\n    members:\n");
    for i in 0..994 {
        y.push_str(&format!("      - backend: b{i:03}\n"));
    }
    y.push_str("routes:\n  - name: app\n    director: a-top\n    key: { header: x-user }\n");
    y.push_str("  - name: app2\n    director: m-mid\n    hosts: [two.example]\n    key: { header: x-user }\n");
    y.push_str("  - name: app3\n    director: z-leaf\n    hosts: [three.example]\n    key: { header: x-user }\n");
    y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_killed_between_parts_leaves_all_or_nothing_and_nodes_never_see_half() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let upstream = Backend::start("up").await;
    // This control plane pauses 300 ms after each part, long enough to be killed between two.
    let mut cp = ControlPlane::start_env(
        &d.join("cp1"),
        &etcd.urls(),
        &[("TETHER_TEST_PAUSE_BETWEEN_PARTS_MS", "300")],
    )
    .await;
    let nodes = [
        Tether::dataplane(&d.join("dp1"), &etcd.urls(), true).await,
        Tether::dataplane(&d.join("dp2"), &etcd.urls(), true).await,
    ];
    let before = apply(
        &cp.api,
        d,
        &format!(
            "backends:\n  - name: b000\n    address: {}\ndirectors:\n  - name: z-leaf\n    shard: {{}}\n    members: [{{ backend: b000 }}]\nroutes:\n  - name: app3\n    director: z-leaf\n    hosts: [three.example]\n    key: {{ header: x-user }}\n",
            upstream.addr
        ),
        false,
    );
    for n in &nodes {
        n.wait_applied(before).await;
    }

    // Every node's state, sampled until the end: only "before" or "all of it".
    let done = Arc::new(AtomicBool::new(false));
    let admins: Vec<String> = nodes.iter().map(|n| n.admin.clone()).collect();
    let sampler = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let client = reqwest_free_get();
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(Ordering::SeqCst) {
                for a in &admins {
                    if let Some(v) = client(format!("{a}/state")).await {
                        seen.insert((
                            v["backends"].as_array().map_or(0, Vec::len),
                            v["directors"].as_array().map_or(0, Vec::len),
                            v["routes"].as_array().map_or(0, Vec::len),
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };

    // The write, in the background; killed once etcd shows its second part.
    let file = d.join("big.yaml");
    std::fs::write(&file, big(upstream.addr)).unwrap();
    let api = cp.api.clone();
    let writer =
        std::thread::spawn(move || support::cli(&api, &["apply", "-f", file.to_str().unwrap()]));
    let store = EtcdStore::connect(&EtcdOptions::new(&etcd.urls())).unwrap();
    let start = Instant::now();
    let mark = loop {
        if let Some(kv) = store.get("/tether/v1/serial").await.unwrap()
            && let Some(m) = Serial::decode(&kv.value)
            && m.parts > 1
            && m.part >= 2
        {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the write never split"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    cp.child.kill().unwrap();
    let _ = cp.child.wait();
    let out = writer.join().unwrap();
    assert!(!out.status.success(), "the write was cut short");
    let kv = store.get("/tether/v1/serial").await.unwrap().unwrap();
    let left = Serial::decode(&kv.value).unwrap();
    assert!(
        left.is_open(),
        "killed between parts: {left:?} (saw {mark:?})"
    );
    // The nodes hold the state before it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in &nodes {
        assert_eq!(n.state().await["backends"].as_array().unwrap().len(), 1);
    }

    // The next control plane completes it at start.
    let cp2 = ControlPlane::start(&d.join("cp2"), &etcd.urls()).await;
    for n in &nodes {
        let start = Instant::now();
        loop {
            let s = n.state().await;
            let count = |k: &str| s[k].as_array().map_or(0, Vec::len);
            if count("backends") == 994 {
                assert_eq!((count("directors"), count("routes")), (3, 3));
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "never completed: {} backends",
                count("backends")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(n.request("k").await.0, 200);
    }
    let listing = store.list("/tether/v1/intents/").await.unwrap();
    assert!(listing.kvs.is_empty(), "the intent record is gone");
    let kv = store.get("/tether/v1/serial").await.unwrap().unwrap();
    assert!(!Serial::decode(&kv.value).unwrap().is_open());

    done.store(true, Ordering::SeqCst);
    let seen = sampler.await.unwrap();
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [(1, 1, 1), (994, 3, 3)],
        "the only states any node served"
    );
    drop(cp2);
}

/// A tiny GET returning JSON, for the sampler task (the support client is not `Send`-shared).
fn reqwest_free_get() -> impl Fn(
    String,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Option<serde_json::Value>> + Send>,
> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    move |url: String| {
        let client = client.clone();
        Box::pin(async move {
            let resp = client.get(url.parse().ok()?).await.ok()?;
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice(&body).ok()
        })
    }
}
