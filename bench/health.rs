//! Shared-health figures for docs/benchmarks.md (run by `bench/health.sh`, which starts etcd
//! and a control plane and passes their addresses), each with shared health off (every node
//! probes every backend: the "before") and on (the default):
//!
//! 1. probes per second arriving at a backend, for N = 1, 3 and 10 data planes (6 backends,
//!    probe interval 100 ms);
//! 2. time from a backend's health endpoint changing to all 3 nodes routing on the new
//!    verdict, p50/p99/max over 50 transitions (interval 100 ms, window 3, threshold 2);
//! 3. agreement while a backend flaps (healthy/sick every 2.5 s for 30 s; interval 500 ms,
//!    window 3, threshold 2) with the nodes' probe loops out of step (started 1.3 s apart, one
//!    restarted): one of the flapper's keys asked of all three nodes at once, over and over;
//!    the share of samples where all three answer alike, overall and outside the 100 ms after
//!    each transition.
//!
//! Usage: health BIN API ETCD WORKDIR

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed setup should panic

#[allow(unreachable_pub, dead_code)] // shared with the tests, which use all of it
#[path = "../tests/support/health.rs"]
mod flippable;
#[path = "shared.rs"]
mod shared;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flippable::Flippable;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shared::percentile;

type Http = Client<HttpConnector, Empty<Bytes>>;

struct Ctx {
    bin: String,
    api: String,
    etcd: String,
    work: PathBuf,
    http: Http,
    next: usize,
}

/// A running `tether dataplane`.
struct Node {
    child: Child,
    proxy: String,
    admin: String,
}

impl Node {
    /// SIGTERM (its lease is revoked) and wait.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Ctx {
    async fn get(&self, url: String, key: Option<&str>) -> (u16, String) {
        let mut req = hyper::Request::builder().uri(url);
        if let Some(k) = key {
            req = req.header("x-user", k);
        }
        let Ok(resp) = self.http.request(req.body(Empty::new()).unwrap()).await else {
            return (0, String::new());
        };
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn state(&self, n: &Node) -> serde_json::Value {
        serde_json::from_str(&self.get(format!("{}/state", n.admin), None).await.1)
            .unwrap_or_default()
    }

    async fn metric(&self, n: &Node, series: &str) -> i64 {
        let m = self.get(format!("{}/metrics", n.admin), None).await.1;
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Starts a data plane; waits until it is ready.
    async fn node(&mut self, shared: bool) -> Node {
        self.next += 1;
        let dir = self.work.join(format!("dp{}", self.next));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(&self.bin)
            .args(["dataplane", "--etcd", &self.etcd, "--proxy", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0", "--proxy-threads", "1"])
            .arg(format!("--shared-health={shared}"))
            .arg("--data-dir")
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn tether dataplane");
        let endpoints = dir.join("endpoints.json");
        let start = Instant::now();
        while !endpoints.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no endpoints.json"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
        let n = Node {
            child,
            proxy: v["proxy"].as_str().unwrap().to_owned(),
            admin: v["admin"].as_str().unwrap().to_owned(),
        };
        while self.get(format!("{}/readyz", n.admin), None).await.0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(20), "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    }

    fn apply(&self, yaml: &str) {
        let f = self.work.join("apply.yaml");
        std::fs::write(&f, yaml).unwrap();
        let out = Command::new(&self.bin)
            .args(["apply", "--prune", "-f"])
            .arg(&f)
            .args(["--server", &self.api])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until every node serves `backend`'s health as `healthy` on its `/state`.
    async fn wait_health(&self, nodes: &[Node], backend: &str, healthy: bool) {
        let start = Instant::now();
        for n in nodes {
            loop {
                let s = self.state(n).await;
                let ok = s["backends"].as_array().is_some_and(|bs| {
                    bs.iter()
                        .any(|b| b["name"] == backend && b["healthy"] == healthy)
                });
                if ok {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "{backend}: {s}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Waits until `want` (backend, owner) pairs are owned over `nodes`.
    async fn wait_owned(&self, nodes: &[Node], want: i64) {
        let start = Instant::now();
        loop {
            let mut sum = 0;
            for n in nodes {
                sum += self.metric(n, "tether_health_owned_backends").await;
            }
            if sum == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "owned {sum}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// 1: probes per second at each of 6 backends with `n` nodes.
async fn probe_rate(cx: &mut Ctx, shared: bool, bs: &[Flippable]) {
    for n in [1usize, 3, 10] {
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(cx.node(shared).await);
        }
        for b in bs {
            cx.wait_health(&nodes, &b.name, true).await;
        }
        if shared {
            cx.wait_owned(&nodes, (bs.len() * n.min(2)) as i64).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before: Vec<usize> = bs.iter().map(Flippable::probes).collect();
        let period = Duration::from_secs(5);
        tokio::time::sleep(period).await;
        let total: usize = bs.iter().zip(&before).map(|(b, n)| b.probes() - n).sum();
        let per = total as f64 / bs.len() as f64 / period.as_secs_f64();
        println!("  N={n:<2}  probes/s at one backend: {per:6.1}  (interval 100 ms)");
        for node in nodes {
            node.stop();
        }
    }
}

/// The proxy's answer for `key` on every node, asked at once.
async fn ask_all(cx: &Ctx, nodes: &[Node], key: &str) -> Vec<String> {
    let (a, b, c) = tokio::join!(
        cx.get(format!("{}/", nodes[0].proxy), Some(key)),
        cx.get(format!("{}/", nodes[1].proxy), Some(key)),
        cx.get(format!("{}/", nodes[2].proxy), Some(key)),
    );
    [a, b, c]
        .into_iter()
        .map(|(s, b)| format!("{s} {b}"))
        .collect()
}

/// A key the shard director sends to `backend` while it is healthy.
async fn key_of(cx: &Ctx, node: &Node, backend: &str) -> String {
    for i in 0..10_000 {
        let k = format!("user-{i}");
        if cx.get(format!("{}/", node.proxy), Some(&k)).await.1 == backend {
            return k;
        }
    }
    panic!("no key on {backend}");
}

/// 2: from flipping the health endpoint to all nodes routing on the new verdict.
async fn transitions(cx: &mut Ctx, shared: bool, bs: &[Flippable]) {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(cx.node(shared).await);
    }
    for b in bs {
        cx.wait_health(&nodes, &b.name, true).await;
    }
    let key = key_of(cx, &nodes[0], &bs[0].name).await;
    let (mut times, mut spreads) = (Vec::new(), Vec::new());
    let mut healthy = true;
    for _ in 0..50 {
        // Somewhere in the probe interval, as a real change would be.
        tokio::time::sleep(Duration::from_millis(300 + fastrand_ms())).await;
        healthy = !healthy;
        let flipped = Instant::now();
        bs[0].set(healthy);
        // Each node in turn until all switched: when each was first seen on the new verdict.
        let mut seen: Vec<Option<Duration>> = vec![None; nodes.len()];
        while seen.iter().any(Option::is_none) {
            for (n, at) in nodes.iter().zip(&mut seen) {
                if at.is_none() {
                    let (_, body) = cx.get(format!("{}/", n.proxy), Some(&key)).await;
                    if (body == bs[0].name) == healthy {
                        *at = Some(flipped.elapsed());
                    }
                }
            }
            assert!(
                flipped.elapsed() < Duration::from_secs(10),
                "never switched"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let seen: Vec<Duration> = seen.into_iter().flatten().collect();
        let (first, last) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
        times.push(*last);
        spreads.push(*last - *first);
    }
    bs[0].set(true);
    times.sort();
    spreads.sort();
    println!(
        "  change → all 3 nodes routing on it, 50 transitions: p50 {}  p99 {}  max {}  (interval 100 ms, threshold 2)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(times[times.len() - 1])
    );
    println!(
        "  first node → last node on the new verdict:          p50 {}  p99 {}  max {}",
        ms(percentile(&spreads, 0.5)),
        ms(percentile(&spreads, 0.99)),
        ms(spreads[spreads.len() - 1])
    );
    for n in nodes {
        n.stop();
    }
}

/// Milliseconds from 0 to 99, from the clock (no RNG crate needed for this).
fn fastrand_ms() -> u64 {
    u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
            % 100_000_000,
    ) / 1_000_000
}

/// 3: agreement while the first backend flaps.
async fn flapping(cx: &mut Ctx, shared: bool, bs: &[Flippable]) {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(cx.node(shared).await);
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    // One restarted: its probe loop starts at yet another phase.
    let restarted = nodes.remove(1);
    restarted.stop();
    tokio::time::sleep(Duration::from_millis(700)).await;
    nodes.insert(1, cx.node(shared).await);
    for b in bs {
        cx.wait_health(&nodes, &b.name, true).await;
    }
    let f = &bs[0];
    let mut keys = Vec::new();
    for i in 0..2000 {
        let k = format!("user-{i}");
        if cx.get(format!("{}/", nodes[0].proxy), Some(&k)).await.1 == f.name {
            keys.push(k);
        }
    }
    let start = Instant::now();
    let flap = async {
        let mut healthy = true;
        while start.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            healthy = !healthy;
            f.set(healthy);
        }
        f.set(true);
    };
    let sample = async {
        let mut out = Vec::new();
        let mut i = 0;
        while start.elapsed() < Duration::from_secs(30) {
            let answers = ask_all(cx, &nodes, &keys[i % keys.len()]).await;
            i += 1;
            out.push((start.elapsed(), answers));
        }
        out
    };
    let ((), samples) = tokio::join!(flap, sample);
    let (mut last, mut transitions, mut agree, mut outside, mut outside_agree) = (
        None::<Vec<bool>>,
        Vec::<Duration>::new(),
        0usize,
        0usize,
        0usize,
    );
    for (at, answers) in &samples {
        let view: Vec<bool> = answers
            .iter()
            .map(|a| *a == format!("200 {}", f.name))
            .collect();
        if let Some(l) = &last
            && l.iter().all(|x| *x == l[0])
            && view != *l
        {
            transitions.push(*at);
        }
        last = Some(view);
        let alike = answers.iter().all(|a| *a == answers[0]);
        agree += usize::from(alike);
        let near = transitions
            .last()
            .is_some_and(|t| *at - *t <= Duration::from_millis(100));
        if !near {
            outside += 1;
            outside_agree += usize::from(alike);
        }
    }
    println!(
        "  flapping, {} samples over 30 s, {} transitions: {:.3}% agree overall, {:.3}% outside 100 ms of a transition",
        samples.len(),
        transitions.len(),
        100.0 * agree as f64 / samples.len() as f64,
        100.0 * outside_agree as f64 / outside.max(1) as f64
    );
    for n in nodes {
        n.stop();
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bin, api, etcd, work] = &args[..] else {
        panic!("usage: health BIN API ETCD WORKDIR");
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut cx = Ctx {
        bin: bin.clone(),
        api: api.clone(),
        etcd: etcd.clone(),
        work: Path::new(work).to_owned(),
        http: Client::builder(TokioExecutor::new()).build(connector),
        next: 0,
    };
    let bs = Flippable::several(6).await;
    let refs: Vec<&Flippable> = bs.iter().collect();
    for shared in [false, true] {
        println!(
            "shared health {}:",
            if shared {
                "on (k = 2)"
            } else {
                "off (every node probes)"
            }
        );
        cx.apply(&flippable::config(&refs, "100ms"));
        probe_rate(&mut cx, shared, &bs).await;
        transitions(&mut cx, shared, &bs).await;
        cx.apply(&flippable::config(&refs[..3], "500ms"));
        flapping(&mut cx, shared, &bs[..3]).await;
    }
}
