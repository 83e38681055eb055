//! DNS discovery through the real binaries and a real DNS server on loopback: a Discovery's
//! answer growing from 3 to 4 A records puts a fourth backend on every node; an answer that
//! drops one removes it after the grace period; a dead name server keeps the last answer and
//! says so (status, /metrics). In cluster mode, the control plane holding the discovery
//! election killed with SIGKILL → the other takes over within the lease TTL, and the members
//! do not change.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use support::dns::DnsServer;
use support::etcd::Etcd;
use support::{Backend, ControlPlane, Tether, metric};

const NAME: &str = "web.tether.test";

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// Backends `b1`..`b4` on 127.0.0.1..4, all on one port: the answer alone says which exist.
async fn backends() -> (Vec<Backend>, u16) {
    let first = Backend::start_at("b1", SocketAddr::new(ip(1).into(), 0)).await;
    let port = first.addr.port();
    let mut all = vec![first];
    for n in 2..=4 {
        all.push(Backend::start_at(&format!("b{n}"), SocketAddr::new(ip(n).into(), port)).await);
    }
    (all, port)
}

/// A Discovery of NAME (refresh 1-2 s, grace `grace`) whose backends a balanced shard
/// director selects by label, routed by `x-user`.
fn config(port: u16, grace: &str) -> String {
    format!(
        "discoveries:\n  - name: web\n    dns_name: {NAME}\n    port: {port}\n    labels: {{ app: web }}\n    refresh: 2s\n    min_refresh: 1s\n    grace: {grace}\ndirectors:\n  - name: users\n    shard: {{ algorithm: balanced }}\n    members:\n      - selector: {{ app: web }}\nroutes:\n  - name: app\n    director: users\n    key: {{ header: x-user }}\n"
    )
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

/// The discovered backends in `/state` of a node: name → address.
async fn discovered(t: &Tether) -> BTreeMap<String, String> {
    t.state().await["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_owned(),
                b["address"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .filter(|(n, _)| n.starts_with("web-"))
        .collect()
}

async fn wait_discovered(nodes: &[&Tether], want: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for n in nodes {
            all &= discovered(n).await.len() == want;
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "never {want} discovered backends on every node: {:?}",
            discovered(nodes[0]).await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `tether discovery get web` as JSON.
fn status(api_cli: impl Fn(&[&str]) -> String) -> serde_json::Value {
    let out = api_cli(&["-o", "json", "discovery", "get", "web"]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_four_records_makes_four_backends_and_a_dropped_one_goes_after_the_grace() {
    let (_backends, port) = backends().await;
    let dns = DnsServer::start(NAME, &[ip(1), ip(2), ip(3)], 1).await;
    let server = dns.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &["--dns-server", &server]).await;
    t.apply(&config(port, "3s"));
    wait_discovered(&[&t], 3, Duration::from_secs(10)).await;
    let names = discovered(&t).await;
    assert_eq!(
        names.keys().cloned().collect::<Vec<_>>(),
        (1..=3)
            .map(|n| format!("web-127-0-0-{n}-{port}"))
            .collect::<Vec<_>>()
    );
    let ks = keys(400);
    let before = t.map(&ks).await;
    for b in ["b1", "b2", "b3"] {
        assert!(before.iter().any(|x| x == b), "no key on {b}");
    }
    // They are ordinary backends: listed, labelled, kept by the discovery.
    let one = t.ok(&["backend", "get", &format!("web-127-0-0-1-{port}")]);
    assert!(one.contains("discovery: web"), "{one}");
    let list = t.ok(&["-o", "json", "backend", "list", "-l", "app=web"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // A director may not name one (it would dangle when DNS drops it).
    let named = "name: pinned\nfallback: {}\nmembers:\n  - backend: web-127-0-0-1-PORT\n"
        .replace("PORT", &port.to_string());
    let f = dir.path().join("pinned.yaml");
    std::fs::write(&f, named).unwrap();
    let out = t.cli(&["director", "create", "-f", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kept by discovery") && err.contains("select it by label"),
        "{err}"
    );

    // An Apply with prune leaves the discovered backends alone (they are the discovery's).
    let f = dir.path().join("config.yaml");
    std::fs::write(&f, config(port, "3s")).unwrap();
    t.ok(&["apply", "--prune", "-f", f.to_str().unwrap()]);
    assert_eq!(discovered(&t).await.len(), 3);

    // 3 → 4 records: a fourth backend (an ordinary Watch event), and only the keys it
    // takes move.
    let mut watch = support::open_watch(&t.api).await;
    dns.set(&[ip(1), ip(2), ip(3), ip(4)]);
    // The new backend and the discovery's status, in one revision.
    let events = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if !msg.events.is_empty() {
            break msg.events;
        }
    };
    let seen: Vec<(String, String, i32)> = events
        .iter()
        .map(|e| (e.kind.clone(), e.name.clone(), e.action))
        .collect();
    use tether_proto::v1::Action;
    assert!(
        seen.contains(&(
            "backend".into(),
            format!("web-127-0-0-4-{port}"),
            Action::Create as i32
        )) && seen.contains(&("discovery".into(), "web".into(), Action::Update as i32)),
        "{seen:?}"
    );
    wait_discovered(&[&t], 4, Duration::from_secs(10)).await;
    let after = t.map(&ks).await;
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    for (a, b) in before.iter().zip(&after) {
        assert!(
            a == b || b == "b4",
            "a key moved from {a} to {b}, not to the new backend"
        );
    }
    assert!((50..=150).contains(&moved), "{moved} of 400 keys moved");

    // A dropped record: kept (marked missing) through the grace, then removed.
    dns.set(&[ip(1), ip(2), ip(4)]);
    let dropped = Instant::now();
    let gone = format!("web-127-0-0-3-{port}");
    let cli = |a: &[&str]| t.ok(a);
    loop {
        let s = status(cli);
        if s["missing_since_unix_ms"].get(&gone).is_some() {
            break;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(5),
            "never marked missing: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        discovered(&t).await.contains_key(&gone),
        "removed before its grace"
    );
    wait_discovered(&[&t], 3, Duration::from_secs(10)).await;
    let took = dropped.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "removed after {took:?}, before the 3 s grace"
    );
    let s = status(cli);
    assert_eq!(s["state"], "ok");
    assert_eq!(s["addresses"].as_array().unwrap().len(), 3);

    // The name server dies: the last answer's backends stay; status and /metrics say so.
    dns.stop();
    let stopped = Instant::now();
    loop {
        let s = status(cli);
        if s["state"] == "failing" {
            assert!(!s["message"].as_str().unwrap().is_empty(), "{s}");
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "never failing: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(discovered(&t).await.len(), 3);
    let m = t.admin_get("/metrics").await.1;
    assert_eq!(
        metric(&m, "tether_discovery_failing{discovery=\"web\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        metric(&m, "tether_discovery_backends{discovery=\"web\"}"),
        3
    );
    assert_eq!(metric(&m, "tether_discovery_leader"), 1);
    support::promtool_check_metrics(&m);
    let table = t.ok(&["discovery", "list"]);
    assert!(table.contains("failing"), "{table}");

    // Export leaves the discovered backends out (the discovery recreates them); the
    // discovery itself is in it, without its status.
    let out = t.cli(&["export"]);
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        yaml.contains("dns_name: web.tether.test") && !yaml.contains("backends:"),
        "{yaml}"
    );
    assert!(!yaml.contains("status"), "{yaml}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("kept by a discovery left out"));

    // Deleting the discovery deletes its backends.
    t.ok(&["discovery", "delete", "web"]);
    wait_discovered(&[&t], 0, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_discoveries_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    for (yaml, field) in [
        (
            "discoveries:\n  - name: d\n    dns_name: 10.0.0.1\n    port: 80\n",
            "discoveries[0].dns_name",
        ),
        (
            "discoveries:\n  - name: d\n    dns_name: a.test\n",
            "discoveries[0].port",
        ),
        (
            "discoveries:\n  - name: d\n    dns_name: a.test\n    port: 80\n    min_refresh: 0s\n",
            "discoveries[0].min_refresh",
        ),
        (
            "discoveries:\n  - name: d\n    dns_name: a.test\n    port: 80\n    template: { probe: nope }\n",
            "discoveries[0].template.probe",
        ),
    ] {
        let f = dir.path().join("bad.yaml");
        std::fs::write(&f, yaml).unwrap();
        let out = t.cli(&["apply", "-f", f.to_str().unwrap()]);
        assert!(!out.status.success(), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{field}: {err}");
    }
    let list = t.ok(&["discovery", "list"]);
    assert!(!list.contains(" d "), "nothing stored: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_resolver_is_replaced_within_the_lease_ttl_without_changing_the_members() {
    let (_backends, port) = backends().await;
    let dns = DnsServer::start(NAME, &[ip(1), ip(2), ip(3)], 1).await;
    let server = dns.addr.to_string();
    let etcd = Etcd::start(1);
    let endpoint = etcd.urls();
    let dir = tempfile::tempdir().unwrap();
    let ttl = 3;
    let extra = ["--dns-server", &server, "--discovery-election-ttl", "3s"];
    let d1 = dir.path().join("cp1");
    let d2 = dir.path().join("cp2");
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let mut cps = vec![
        ControlPlane::start_with(&d1, &endpoint, &[], &extra).await,
        ControlPlane::start_with(&d2, &endpoint, &[], &extra).await,
    ];
    let nodes = Tether::dataplanes(dir.path(), &endpoint, 3).await;
    let node_refs: Vec<&Tether> = nodes.iter().collect();
    support::apply(&cps[0].api, dir.path(), &config(port, "3s"), false);
    wait_discovered(&node_refs, 3, Duration::from_secs(15)).await;
    let leader_of = |cps: &[ControlPlane]| {
        let mut leaders = Vec::new();
        for (i, cp) in cps.iter().enumerate() {
            let m = support::curl(&format!("{}/metrics", cp.admin)).1;
            if metric(&m, "tether_discovery_leader") == 1 {
                leaders.push(i);
            }
        }
        leaders
    };
    let leaders = leader_of(&cps);
    assert_eq!(leaders.len(), 1, "one resolver at a time: {leaders:?}");
    let leader = leaders[0];
    let listed = |api: &str| support::ok(api, &["-o", "json", "backend", "list"]);
    let other = 1 - leader;
    let members = listed(&cps[other].api);
    cps[leader].child.kill().unwrap();
    let _ = cps[leader].child.wait();
    let killed = Instant::now();
    let survivor = cps.remove(other);
    loop {
        let m = support::curl(&format!("{}/metrics", survivor.admin)).1;
        if metric(&m, "tether_discovery_leader") == 1 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(ttl + 1),
            "no takeover within the lease TTL ({ttl} s) and a second"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("taken over {:?} after the kill", killed.elapsed());
    // Resolving the same answer, the new resolver writes nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        listed(&survivor.api),
        members,
        "the members changed on takeover"
    );
    // And it follows the answer from now on: on every node.
    dns.set(&[ip(1), ip(2), ip(3), ip(4)]);
    wait_discovered(&node_refs, 4, Duration::from_secs(10)).await;
    let ks = keys(200);
    let first = nodes[0].map(&ks).await;
    for n in &nodes[1..] {
        assert_eq!(n.map(&ks).await, first, "nodes disagree");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_each_target_its_port() {
    let (_backends, port) = backends().await;
    let dns = DnsServer::start(NAME, &[ip(1), ip(2)], 1).await;
    dns.set_srv("_http._tcp.tether.test", &[(port, NAME)]);
    let server = dns.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &["--dns-server", &server]).await;
    t.apply("discoveries:\n  - name: web\n    dns_name: _http._tcp.tether.test\n    srv: true\n    labels: { app: web }\n    min_refresh: 1s\n    refresh: 1s\n");
    wait_discovered(&[&t], 2, Duration::from_secs(10)).await;
    let found = discovered(&t).await;
    assert_eq!(
        found.values().cloned().collect::<Vec<_>>(),
        vec![format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")]
    );
}

/// A record TTL longer than `refresh` is trusted for `refresh` only: the resolver asks the
/// name server again on its schedule, not when a cache would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_ttl_is_trusted_for_refresh_only() {
    let (_backends, port) = backends().await;
    let dns = DnsServer::start(NAME, &[ip(1)], 3600).await;
    let server = dns.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &["--dns-server", &server]).await;
    t.apply(&config(port, "0s"));
    wait_discovered(&[&t], 1, Duration::from_secs(10)).await;
    dns.set(&[ip(1), ip(2)]);
    let took = wait_discovered(&[&t], 2, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(4), "{took:?} with refresh 2 s");
}
