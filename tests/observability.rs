//! Incoming-request metrics and the access log, end to end: real `tether up`, real backends,
//! real HTTP clients; `/metrics` checked with promtool, the access log read as JSON lines.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{Backend, Tether, metric, wait_until};

/// Two routes (by name order: `a-broken` first): `/broken` to a backend nobody listens on,
/// `/app` sharded on `x-user` over two live backends. `/` matches no route.
fn config(b1: &Backend, b2: &Backend, dead: std::net::SocketAddr) -> String {
    format!(
        r#"
backends:
  - name: b1
    address: {}
  - name: b2
    address: {}
    weight: 2
  - name: dead
    address: {dead}
    connect_timeout: 500ms
    admin_health: healthy
directors:
  - name: users
    shard: {{ algorithm: varnish }}
    members: [{{ backend: b1 }}, {{ backend: b2 }}]
  - name: nowhere
    fallback: {{ sticky: false }}
    members: [{{ backend: dead }}]
routes:
  - name: a-broken
    path_prefix: /broken
    director: nowhere
    key: {{ url: true }}
  - name: b-app
    path_prefix: /app
    director: users
    key: {{ header: x-user }}
"#,
        b1.addr, b2.addr
    )
}

/// A request through the proxy: status and body.
async fn send(
    t: &Tether,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: &str,
) -> (u16, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("{}{path}", t.proxy));
    if let Some(u) = user {
        req = req.header("x-user", u);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The access log's lines once it has `n` of them.
async fn log_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    wait_until("access log lines", Duration::from_secs(10), || {
        std::fs::read_to_string(path).is_ok_and(|s| s.lines().count() >= n)
    })
    .await;
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A free loopback port nothing listens on.
fn dead_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_route_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let t = Tether::up(dir.path(), &["--access-log", log.to_str().unwrap()]).await;
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    t.apply(&config(&b1, &b2, dead_addr()));
    let mut bytes_out = 0;
    for i in 0..20 {
        let (status, body) =
            send(&t, "GET", "/app/x?secret=1", Some(&format!("user-{i}")), "").await;
        assert_eq!(status, 200);
        bytes_out += body.len();
    }
    let (status, body) = send(&t, "POST", "/app/form", Some("poster"), "hello world").await;
    assert_eq!(status, 200);
    bytes_out += body.len();
    assert_eq!(send(&t, "GET", "/broken", None, "").await.0, 502);
    assert_eq!(send(&t, "GET", "/", None, "").await.0, 404);

    let m = t.admin_get("/metrics").await.1;
    support::promtool_check_metrics(&m);
    assert_eq!(
        metric(&m, r#"tether_requests_total{route="b-app",class="2xx"}"#),
        21
    );
    assert_eq!(
        metric(&m, r#"tether_requests_total{route="b-app",class="5xx"}"#),
        0
    );
    assert_eq!(
        metric(&m, r#"tether_requests_total{route="a-broken",class="5xx"}"#),
        1
    );
    assert_eq!(
        metric(&m, r#"tether_requests_total{route="",class="4xx"}"#),
        1
    );
    assert_eq!(
        metric(
            &m,
            r#"tether_request_duration_seconds_count{route="b-app"}"#
        ),
        21
    );
    assert_eq!(
        metric(
            &m,
            r#"tether_request_duration_seconds_bucket{route="b-app",le="+Inf"}"#
        ),
        21
    );
    assert_eq!(
        metric(&m, r#"tether_request_body_bytes_total{route="b-app"}"#),
        11
    );
    assert_eq!(
        metric(&m, r#"tether_response_body_bytes_total{route="b-app"}"#),
        i64::try_from(bytes_out).unwrap()
    );
    assert_eq!(metric(&m, "tether_requests_in_flight"), 0);
    assert_eq!(
        metric(
            &m,
            r#"tether_backend_failures_total{backend="dead",cause="connect_failed"}"#
        ),
        1
    );
    assert_eq!(
        metric(
            &m,
            r#"tether_backend_failures_total{backend="b1",cause="connect_failed"}"#
        ),
        0
    );
    assert_eq!(
        metric(&m, r#"tether_director_members{director="users"}"#),
        2
    );
    assert_eq!(
        metric(&m, r#"tether_director_healthy_members{director="users"}"#),
        2
    );
    assert_eq!(metric(&m, r#"tether_backend_weight{backend="b2"}"#), 2);
    assert_eq!(
        metric(
            &m,
            r#"tether_backend_admin_state{backend="dead",state="healthy"}"#
        ),
        1
    );
    assert_eq!(
        metric(
            &m,
            r#"tether_backend_admin_state{backend="b1",state="auto"}"#
        ),
        1
    );
    assert_eq!(metric(&m, r#"tether_backend_draining{backend="b1"}"#), 0);

    let lines = log_lines(&log, 23).await;
    assert_eq!(lines.len(), 23, "one line per request");
    for (i, l) in lines.iter().take(20).enumerate() {
        let user = format!("user-{i}");
        let explain: serde_json::Value = serde_json::from_str(
            &t.admin_get(&format!("/explain?route=b-app&key={user}"))
                .await
                .1,
        )
        .unwrap();
        assert_eq!(l["route"], "b-app", "{l}");
        assert_eq!(l["director"], "users");
        assert_eq!(l["backend"], explain["backend"], "{l}");
        assert_eq!(l["alternate"], 0);
        assert_eq!(l["status"], 200);
        assert_eq!(l["method"], "GET");
        assert_eq!(l["path"], "/app/x", "the query is not logged: {l}");
        assert_eq!(l["key_source"], "header:x-user");
        assert!(
            l.get("key").is_none(),
            "no raw key without --access-log-keys: {l}"
        );
        assert_eq!(l["client"], "127.0.0.1");
        assert_eq!(l["listener"], "http");
        assert_eq!(l["completed"], true);
        assert_eq!(l["bytes_out"], 2, "the backend's name: {l}");
        assert!(l["upstream_ms"].as_f64().unwrap() <= l["total_ms"].as_f64().unwrap());
        assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");
    }
    assert_eq!(lines[20]["method"], "POST");
    assert_eq!(lines[20]["bytes_in"], 11);
    let broken = &lines[21];
    assert_eq!(broken["status"], 502);
    assert_eq!(broken["route"], "a-broken");
    assert_eq!(broken["backend"], "dead");
    assert!(
        broken["error"].as_str().unwrap().contains("dead"),
        "{broken}"
    );
    assert!(broken.get("upstream_ms").is_none());
    let unrouted = &lines[22];
    assert_eq!(unrouted["status"], 404);
    assert!(unrouted.get("route").is_none(), "{unrouted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_shows_keys_when_asked_and_reopens_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let t = Tether::up(
        dir.path(),
        &["--access-log", log.to_str().unwrap(), "--access-log-keys"],
    )
    .await;
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    t.apply(&config(&b1, &b2, dead_addr()));
    assert_eq!(send(&t, "GET", "/app", Some("alice"), "").await.0, 200);
    let first = log_lines(&log, 1).await;
    assert_eq!(first[0]["key"], "alice");
    // Rotation: the file is moved away, SIGHUP, the next line goes to a new file.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    support::signal(&t.child, "HUP");
    // The reopen is asynchronous: send until a line lands in the new file.
    let mut sent = 0;
    while !log.exists() || std::fs::read_to_string(&log).unwrap().is_empty() {
        assert!(sent < 100, "no line in the reopened access log");
        assert_eq!(send(&t, "GET", "/app", Some("bob"), "").await.0, 200);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = log_lines(&log, 1).await;
    assert_eq!(new[0]["key"], "bob");
}

#[test]
fn access_log_keys_needs_an_access_log() {
    let out = std::process::Command::new(support::BIN)
        .args(["up", "--access-log-keys"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--access-log"), "{err}");
}
