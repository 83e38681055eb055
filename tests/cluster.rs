//! Cluster mode on a real etcd, through the real binaries: several control planes and data
//! planes agree on every key; a deletion moves only its keys, the same way on every node;
//! etcd outages (a member, or all of it) are survived; compaction while a node is cut off ends
//! in a re-list with exactly the stored state.

mod support;

use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::{Backend, ControlPlane, Tether, apply, cli, config};
use tether_controlplane::store::Store;
use tether_controlplane::store::etcd::{EtcdOptions, EtcdStore};

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

async fn maps(nodes: &[Tether], keys: &[String]) -> Vec<Vec<String>> {
    let futs = nodes.iter().map(|n| n.map(keys));
    let mut out = Vec::new();
    for f in futs {
        out.push(f.await);
    }
    out
}

async fn wait_all_applied(nodes: &[Tether], revision: i64, limit: Duration) -> Duration {
    let start = Instant::now();
    for n in nodes {
        loop {
            let s = n.state().await;
            if s["applied_revision"].as_i64().unwrap_or(0) >= revision {
                break;
            }
            assert!(
                start.elapsed() < limit,
                "revision {revision} not applied in {limit:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_routes_every_key_alike_and_a_deletion_moves_only_its_keys() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let b = [
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    ];
    let cp1 = ControlPlane::start(&dir.path().join("cp1"), &etcd.urls()).await;
    let cp2 = ControlPlane::start(&dir.path().join("cp2"), &etcd.urls()).await;
    let mut nodes = Tether::dataplanes(dir.path(), &etcd.urls(), 3).await;
    let all = [("b1", b[0].addr), ("b2", b[1].addr), ("b3", b[2].addr)];
    let rev = apply(&cp1.api, dir.path(), &config(&all, false), true);
    wait_all_applied(&nodes, rev, Duration::from_secs(5)).await;

    let keys = keys(10_000);
    let before = maps(&nodes, &keys).await;
    assert_eq!(before[0], before[1], "node 0 and node 1 agree on every key");
    assert_eq!(before[0], before[2], "node 0 and node 2 agree on every key");
    assert!(before[0].iter().any(|x| x == "b2"));

    // Delete b2 through the other control plane (its director updated in the same apply).
    let rev = apply(
        &cp2.api,
        dir.path(),
        &config(&[all[0], all[2]], false),
        true,
    );
    let took = wait_all_applied(&nodes, rev, Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1));
    let after = maps(&nodes, &keys).await;
    assert_eq!(after[0], after[1]);
    assert_eq!(after[0], after[2]);
    for i in 0..keys.len() {
        if before[0][i] == "b2" {
            assert_ne!(after[0][i], "b2");
        } else {
            assert_eq!(
                after[0][i], before[0][i],
                "key {} moved needlessly",
                keys[i]
            );
        }
    }
    let listed = cli(&cp1.api, &["backend", "list", "-o", "json"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("\"b2\""));

    // Every node is registered, at the same configuration revision (the last write's, whatever
    // registrations were written since), with the same routing fingerprint.
    let start = Instant::now();
    loop {
        let out = support::ok(&cp2.api, &["nodes", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let at_rev = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| {
                n["config_revision"].as_i64() == Some(rev)
                    && n["applied_revision"].as_i64() >= Some(rev)
            })
            .count();
        if at_rev == 3 && v["agree"] == true {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "nodes never agreed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The table form lists the nodes that are left.
    drop(nodes.pop());
    let table = support::ok(&cp2.api, &["nodes"]);
    assert!(table.contains("NODE"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_nodes_serve_from_their_last_state_and_their_cache() {
    let mut etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let b = [Backend::start("b1").await, Backend::start("b2").await];
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let mut nodes = vec![
        Tether::dataplane(&dir.path().join("dp1"), &etcd.urls(), true).await,
        Tether::dataplane(&dir.path().join("dp2"), &etcd.urls(), true).await,
    ];
    let two = config(&[("b1", b[0].addr), ("b2", b[1].addr)], false);
    let rev = apply(&cp.api, dir.path(), &two, false);
    wait_all_applied(&nodes, rev, Duration::from_secs(5)).await;
    let keys = keys(500);
    let before = nodes[0].map(&keys).await;
    assert!(before.iter().any(|x| x == "b1") && before.iter().any(|x| x == "b2"));

    etcd.members[0].kill();
    for n in &nodes {
        assert_eq!(
            n.map(&keys).await,
            before,
            "every request served from the last state"
        );
    }
    let out = cli(
        &cp.api,
        &["backend", "create", "b9", "--address", "127.0.0.1:9"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unavailable") && err.contains("etcd"), "{err}");

    // A node restarted during the outage serves from its cache.
    let d2 = nodes[1].dir.clone();
    drop(nodes.pop());
    let n2 = Tether::dataplane(&d2, &etcd.urls(), true).await;
    assert_eq!(n2.state().await["from_cache"], true);
    assert_eq!(n2.map(&keys).await, before);
    nodes.push(n2);

    // etcd back: a new change reaches every node.
    etcd.members[0].restart();
    etcd.members[0].wait_healthy();
    let out = support::ok(&cp.api, &["health", "set", "b1", "sick", "-o", "json"]);
    let rev: i64 = serde_json::from_str::<serde_json::Value>(&out).unwrap()["revision"]
        .as_i64()
        .unwrap();
    wait_all_applied(&nodes, rev, Duration::from_secs(20)).await;
    for n in &nodes {
        assert!(n.map(&keys).await.iter().all(|x| x == "b2"));
    }
    assert_eq!(nodes[1].state().await["from_cache"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_etcd_member_and_a_leader_change_are_survived_and_nothing_is_lost() {
    let mut etcd = Etcd::start(3);
    let dir = tempfile::tempdir().unwrap();
    let b = [Backend::start("b1").await, Backend::start("b2").await];
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let nodes = vec![Tether::dataplane(&dir.path().join("dp"), &etcd.urls(), true).await];
    let rev = apply(
        &cp.api,
        dir.path(),
        &config(&[("b1", b[0].addr), ("b2", b[1].addr)], false),
        false,
    );
    wait_all_applied(&nodes, rev, Duration::from_secs(5)).await;
    // Member 0 is where every client starts: its watch and its calls must move.
    etcd.members[0].kill();
    // Creates backend x{i} for each i in `range`; the last write's revision.
    let create = |range: std::ops::Range<usize>| -> i64 {
        let mut last = 0;
        for i in range {
            let out = support::ok(
                &cp.api,
                &[
                    "backend",
                    "create",
                    &format!("x{i}"),
                    "--address",
                    "127.0.0.1:9",
                    "-o",
                    "json",
                ],
            );
            last = serde_json::from_str::<serde_json::Value>(&out).unwrap()["revision"]
                .as_i64()
                .unwrap();
        }
        last
    };
    let last = create(0..5);
    wait_all_applied(&nodes, last, Duration::from_secs(10)).await;
    etcd.members[0].restart();
    etcd.members[0].wait_healthy();
    // Then the leader dies: a leader change while writes go on.
    let leader = etcd.leader().await.expect("a leader");
    etcd.members[leader].kill();
    let last = create(5..10);
    wait_all_applied(&nodes, last, Duration::from_secs(10)).await;
    etcd.members[leader].restart();
    etcd.members[leader].wait_healthy();
    let listed = support::ok(&cp.api, &["backend", "list", "-o", "json"]);
    for i in 0..10 {
        assert!(listed.contains(&format!("\"x{i}\"")), "{listed}");
    }
    assert_eq!(
        nodes[0].state().await["backends"].as_array().unwrap().len(),
        12
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_a_node_is_cut_off_ends_in_a_relist_with_the_stored_state() {
    let mut etcd = Etcd::start(3);
    let dir = tempfile::tempdir().unwrap();
    let b = [Backend::start("b1").await, Backend::start("b2").await];
    let others = format!("{},{}", etcd.members[0].url(), etcd.members[1].url());
    let cp = ControlPlane::start(&dir.path().join("cp"), &others).await;
    // The node only knows member 2.
    let nodes = vec![Tether::dataplane(&dir.path().join("dp"), &etcd.members[2].url(), true).await];
    let rev = apply(
        &cp.api,
        dir.path(),
        &config(&[("b1", b[0].addr), ("b2", b[1].addr)], false),
        false,
    );
    wait_all_applied(&nodes, rev, Duration::from_secs(5)).await;
    etcd.members[2].kill();
    // Changes it misses: two backends added, one deleted; then history is compacted.
    support::ok(
        &cp.api,
        &["backend", "create", "y1", "--address", "127.0.0.1:9"],
    );
    support::ok(
        &cp.api,
        &["backend", "create", "y2", "--address", "127.0.0.1:9"],
    );
    support::ok(&cp.api, &["backend", "delete", "y1"]);
    let store = EtcdStore::connect(&EtcdOptions::new(&others)).unwrap();
    let now = store.revision().await.unwrap();
    store.compact(now).await.unwrap();
    etcd.members[2].restart();
    etcd.members[2].wait_healthy();
    wait_all_applied(&nodes, now, Duration::from_secs(20)).await;
    let state = nodes[0].state().await;
    let mut names: Vec<String> = state["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["b1", "b2", "y2"]);
    let metrics = nodes[0].admin_get("/metrics").await.1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tether_store_relists_total ") && !l.ends_with(" 0")),
        "the node re-listed: {}",
        metrics
            .lines()
            .filter(|l| l.contains("relists"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_authentication_needs_the_user_and_password() {
    use tether_proto::etcd::etcdserverpb as pb;
    let etcd = Etcd::start(1);
    let channel = tonic::transport::Channel::from_shared(etcd.members[0].url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut auth = pb::auth_client::AuthClient::new(channel);
    auth.user_add(pb::AuthUserAddRequest {
        name: "root".into(),
        password: "root-password".into(),
        options: None,
    })
    .await
    .unwrap();
    auth.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    auth.auth_enable(pb::AuthEnableRequest {}).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b1").await;
    // Without credentials every call is refused, with a clear message.
    let anon = ControlPlane::start(&dir.path().join("anon"), &etcd.urls()).await;
    let out = cli(
        &anon.api,
        &["backend", "create", "b1", "--address", &b.addr.to_string()],
    );
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd"), "{err}");
    // With them, the control plane writes and a data plane follows.
    let creds = [
        ("TETHER_ETCD_USER", "root"),
        ("TETHER_ETCD_PASSWORD", "root-password"),
    ];
    let cp = ControlPlane::start_env(&dir.path().join("cp"), &etcd.urls(), &creds).await;
    let node = Tether::dataplane_env(&dir.path().join("dp"), &etcd.urls(), true, &creds).await;
    let rev = apply(
        &cp.api,
        dir.path(),
        &config(&[("b1", b.addr)], false),
        false,
    );
    wait_all_applied(&[node], rev, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_object_written_behind_our_back_is_left_out_not_wedging() {
    use prost::Message;
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let b = [Backend::start("b1").await, Backend::start("b2").await];
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let nodes = vec![Tether::dataplane(&dir.path().join("dp"), &etcd.urls(), true).await];
    let rev = apply(
        &cp.api,
        dir.path(),
        &config(&[("b1", b[0].addr), ("b2", b[1].addr)], false),
        false,
    );
    wait_all_applied(&nodes, rev, Duration::from_secs(5)).await;
    // Something other than a control plane writes a backend without a port.
    let store = EtcdStore::connect(&EtcdOptions::new(&etcd.urls())).unwrap();
    let bad = tether_proto::v1::Backend {
        name: "bad".into(),
        address: "nowhere".into(),
        ..Default::default()
    };
    let out = store
        .txn(tether_controlplane::store::Txn {
            compares: vec![],
            ops: vec![tether_controlplane::store::Op::Put(
                "/tether/v1/backends/bad".into(),
                bad.encode_to_vec(),
            )],
            witness: None,
        })
        .await
        .unwrap();
    let tether_controlplane::store::TxnOutcome::Committed { revision } = out else {
        panic!("{out:?}")
    };
    wait_all_applied(&nodes, revision, Duration::from_secs(5)).await;
    // Later changes still go through the control plane and reach the node.
    let out = support::ok(&cp.api, &["health", "set", "b1", "sick", "-o", "json"]);
    let rev: i64 = serde_json::from_str::<serde_json::Value>(&out).unwrap()["revision"]
        .as_i64()
        .unwrap();
    wait_all_applied(&nodes, rev, Duration::from_secs(5)).await;
    assert!(nodes[0].map(&keys(100)).await.iter().all(|x| x == "b2"));
    let metrics = nodes[0].admin_get("/metrics").await.1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tether_invalid_objects_total ") && !l.ends_with(" 0")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("invalid"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let state = nodes[0].state().await;
    assert_eq!(
        state["backends"].as_array().unwrap().len(),
        2,
        "the bad one is left out"
    );
}

/// Runs a shell command that must succeed.
fn sh(cmd: &str, dir: &std::path::Path) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA, a server certificate for 127.0.0.1 and a client certificate.
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=tether-test-ca 2>/dev/null",
        d,
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(d.join(format!("{name}.ext")), ext).unwrap();
        sh(
            &format!(
                "openssl req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name} 2>/dev/null"
            ),
            d,
        );
        sh(
            &format!(
                "openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 1 -extfile {name}.ext 2>/dev/null"
            ),
            d,
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let shm = format!("/dev/shm/tether-tls-{}-{port}", std::process::id());
    let mut etcd = std::process::Command::new(support::etcd::binary())
        .args(["--name", "tls", "--data-dir", &shm])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args(["--initial-cluster", &format!("tls=http://127.0.0.1:{peer}")])
        .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
        .arg(format!("--cert-file={}", d.join("server.pem").display()))
        .arg(format!("--key-file={}", d.join("server.key").display()))
        .arg(format!("--trusted-ca-file={}", d.join("ca.pem").display()))
        .arg("--client-cert-auth")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ca = d.join("ca.pem");
    let cert = d.join("client.pem");
    let key = d.join("client.key");
    let cp_dir = d.join("cp");
    let (child, v) = support::spawn_with_endpoints(
        &cp_dir,
        &[
            "controlplane",
            "--etcd",
            &url,
            "--api",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--endpoints-dir",
            cp_dir.to_str().unwrap(),
            "--etcd-ca",
            ca.to_str().unwrap(),
            "--etcd-cert",
            cert.to_str().unwrap(),
            "--etcd-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let cp = ControlPlane {
        child,
        api: v["api"].as_str().unwrap().to_owned(),
        admin: v["admin"].as_str().unwrap().to_owned(),
    };
    // Writes go through once etcd is up (TLS handshake with client certificate included).
    let start = Instant::now();
    loop {
        let out = cli(
            &cp.api,
            &["backend", "create", "b1", "--address", "127.0.0.1:9"],
        );
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(support::ok(&cp.api, &["backend", "list"]).contains("b1"));
    drop(cp);
    let _ = etcd.kill();
    let _ = etcd.wait();
    let _ = std::fs::remove_dir_all(&shm);
}

/// On etcd, as on the embedded store: a Watch delete carries the deleted resource's last
/// value (etcd's `prev_kv`) for a client, and a follower's stream still works without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_delete_carries_the_last_value_on_etcd() {
    use tether_proto::v1;
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &etcd.urls()).await;
    support::ok(
        &cp.api,
        &[
            "backend",
            "create",
            "gone",
            "--address",
            "127.0.0.1:9",
            "--weight",
            "3",
        ],
    );
    let mut watch = support::open_watch(&cp.api).await;
    support::ok(&cp.api, &["backend", "delete", "gone"]);
    let event = support::next_watch_event(&mut watch, "backend").await;
    assert_eq!(event.action, v1::Action::Delete as i32);
    match event.resource {
        Some(v1::watch_event::Resource::Backend(b)) => {
            assert_eq!((b.name.as_str(), b.weight), ("gone", Some(3.0)));
        }
        other => panic!("no last value: {other:?}"),
    }
}

/// `tether controlplane --admin`: /healthz, /readyz that follows etcd, and /metrics with calls
/// by method and code, store transactions, open Watch streams, build and process metrics —
/// clean under `promtool check metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_planes_admin_listener_reports_calls_the_store_and_readiness() {
    let mut etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &etcd.urls()).await;
    assert_eq!(support::curl(&format!("{}/healthz", cp.admin)).0, 200);
    let (code, body) = support::curl(&format!("{}/readyz", cp.admin));
    assert_eq!(code, 200, "{body}");
    support::ok(
        &cp.api,
        &["backend", "create", "b1", "--address", "127.0.0.1:9"],
    );
    let bad = cli(
        &cp.api,
        &["backend", "create", "b 2", "--address", "127.0.0.1:9"],
    );
    assert_eq!(bad.status.code(), Some(2));
    let _watch = support::open_watch(&cp.api).await;
    let (code, metrics) = support::curl(&format!("{}/metrics", cp.admin));
    assert_eq!(code, 200);
    for series in [
        "tether_grpc_requests_total{method=\"/tether.v1.Tether/CreateBackend\",code=\"OK\"} 1",
        "tether_grpc_requests_total{method=\"/tether.v1.Tether/CreateBackend\",code=\"InvalidArgument\"} 1",
        "tether_watch_streams_open 1",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    assert!(support::metric(&metrics, "tether_store_txn_duration_seconds_count") >= 1);
    assert!(
        metrics.contains("tether_build_info{version=\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("process_resident_memory_bytes "),
        "{metrics}"
    );
    support::promtool_check_metrics(&metrics);
    support::openmetrics_check(&format!("{}/metrics", cp.admin));
    // Without etcd the replica is not ready (and still alive).
    etcd.members[0].kill();
    let start = Instant::now();
    loop {
        let (code, body) = support::curl(&format!("{}/readyz", cp.admin));
        if code == 503 {
            assert!(body.contains("not ready"), "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "still ready: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(support::curl(&format!("{}/healthz", cp.admin)).0, 200);
    assert_eq!(support::curl(&format!("{}/nope", cp.admin)).0, 404);
}
