//! WebSocket and HTTP/1.1 Upgrade through the real binary: sessions routed and keyed like any
//! request (the same backend on every node, its alternate when it is sick), messages both ways,
//! the tunnel's own idle timeout, drain, refused upgrades, `Upgrade: h2c`, metrics.

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::etcd::Etcd;
use support::ws::{self, WsBackend};
use support::{ControlPlane, Tether, apply, metric, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One shard director over `backends`, a route keyed on `x-user`, with `route_extra` lines.
fn config(backends: &[(&str, SocketAddr)], route_extra: &str, drain: Option<&str>) -> String {
    let mut y = String::from("backends:\n");
    for (n, a) in backends {
        y.push_str(&format!(
            "  - name: {n}\n    address: {a}\n    connect_timeout: 500ms\n"
        ));
        if drain == Some(*n) {
            y.push_str("    drain: true\n");
        }
    }
    y.push_str("directors:\n  - name: users\n    shard: { algorithm: varnish }\n    members:\n");
    for (n, _) in backends {
        y.push_str(&format!("      - backend: {n}\n"));
    }
    y.push_str("routes:\n  - name: app\n    director: users\n    key: { header: x-user }\n");
    y.push_str(route_extra);
    y
}

/// Whether the peer closed `ws` within `limit`.
async fn closed_within(ws: &mut ws::Ws, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(m)) if m.is_close() => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await,
        Ok(())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_both_ways_and_an_idle_tunnel_is_closed_after_its_own_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let b = WsBackend::start("b1").await;
    // The edge's idle timeout (1 s) does not apply to a tunnel; the tunnel's (2 s) does.
    let t = Tether::up(
        dir.path(),
        &["--idle-timeout", "1s", "--tunnel-idle-timeout", "2s"],
    )
    .await;
    t.wait_applied(t.apply(&config(&[("b1", b.addr)], "", None)))
        .await;

    let mut s = ws::connect(&t.proxy, "alice").await.unwrap();
    // Traffic every 400 ms for 3 s: past both idle timeouts, kept open by the traffic.
    for i in 0..8 {
        assert_eq!(
            ws::echo(&mut s, &format!("m{i}")).await.as_deref(),
            Some(format!("b1:m{i}").as_str())
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Large binary messages both ways.
    let big = vec![7u8; 1 << 20];
    futures_util::SinkExt::send(
        &mut s,
        tokio_tungstenite::tungstenite::Message::binary(big.clone()),
    )
    .await
    .unwrap();
    match s.next().await {
        Some(Ok(m)) => assert_eq!(m.into_data().len(), big.len()),
        other => panic!("no binary echo: {other:?}"),
    }
    let m = t.admin_get("/metrics").await.1;
    assert_eq!(metric(&m, "tether_tunnels_open{listener=\"proxy\"}"), 1);
    assert_eq!(metric(&m, "tether_tunnels_total{listener=\"proxy\"}"), 1);

    // Then silence: closed after about 2 s (not after the edge's 1 s).
    let quiet = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    let took = quiet.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "an idle tunnel was closed after {took:?}"
    );
    wait_until("the backend session closed", Duration::from_secs(3), || {
        b.open.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    let m = t.admin_get("/metrics").await.1;
    assert_eq!(metric(&m, "tether_tunnels_open{listener=\"proxy\"}"), 0);
    assert_eq!(
        metric(
            &m,
            "tether_tunnels_closed_total{listener=\"proxy\",reason=\"idle\"}"
        ),
        1
    );
    // The proxy still serves upgrades afterwards.
    let mut s = ws::connect(&t.proxy, "bob").await.unwrap();
    assert_eq!(ws::backend_of(&mut s).await.as_deref(), Some("b1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_open_tunnels_at_the_deadline_and_new_sessions_go_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let b1 = WsBackend::start("b1").await;
    let b2 = WsBackend::start("b2").await;
    let t = Tether::up(dir.path(), &["--tunnel-drain-timeout", "1500ms"]).await;
    let all = [("b1", b1.addr), ("b2", b2.addr)];
    t.wait_applied(t.apply(&config(&all, "", None))).await;
    // Sessions on both backends.
    let mut on_b1 = Vec::new();
    let mut on_b2 = Vec::new();
    for i in 0..40 {
        let mut s = ws::connect(&t.proxy, &format!("user-{i}")).await.unwrap();
        match ws::backend_of(&mut s).await.as_deref() {
            Some("b1") => on_b1.push(s),
            Some("b2") => on_b2.push(s),
            other => panic!("reached {other:?}"),
        }
    }
    assert!(!on_b1.is_empty() && !on_b2.is_empty());

    let drained = Instant::now();
    t.wait_applied(t.apply(&config(&all, "", Some("b1")))).await;
    // Before the deadline the drained backend's sessions still work.
    assert_eq!(
        ws::echo(&mut on_b1[0], "still").await.as_deref(),
        Some("b1:still")
    );
    // New sessions avoid it.
    let mut s = ws::connect(&t.proxy, "user-new").await.unwrap();
    assert_eq!(ws::backend_of(&mut s).await.as_deref(), Some("b2"));
    for s in &mut on_b1 {
        assert!(closed_within(s, Duration::from_secs(4)).await);
    }
    let took = drained.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "drained tunnels closed after {took:?}"
    );
    // The other backend's tunnels are untouched.
    for s in &mut on_b2 {
        assert_eq!(ws::echo(s, "x").await.as_deref(), Some("b2:x"));
    }
    let m = t.admin_get("/metrics").await.1;
    assert_eq!(
        metric(
            &m,
            "tether_tunnels_closed_total{listener=\"proxy\",reason=\"drain\"}"
        ),
        i64::try_from(on_b1.len()).unwrap()
    );
}

/// A plain HTTP backend that answers every request with its head as received.
async fn head_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    head.len()
                );
                let _ = s.write_all(r.as_bytes()).await;
                let _ = s.write_all(&head).await;
            });
        }
    });
    addr
}

/// Sends a raw request to the proxy and reads the whole answer (the proxy closes after it).
async fn raw(proxy: &str, request: &str) -> String {
    let mut s = TcpStream::connect(proxy.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    // Until the whole answer (its head and `content-length` bytes) or the close: the proxy
    // keeps the connection open after it.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let complete = |out: &[u8]| {
        let text = String::from_utf8_lossy(out).to_ascii_lowercase();
        text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            head.lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .is_some_and(|n| body.len() >= n)
        })
    };
    while !complete(&out) {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_a_route_does_not_allow_are_refused_and_h2c_is_not_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let plain = head_echo().await;
    let t = Tether::up(dir.path(), &[]).await;
    // `a-chat` tunnels WebSocket on /chat; `app` (every other path, and after it: routes are
    // tried in name order) tunnels nothing.
    let y = config(&[("b1", plain)], "    upgrades: [none]\n", None).replacen(
        "routes:\n",
        "routes:\n  - name: a-chat\n    director: users\n    path_prefix: /chat\n    key: { header: x-user }\n    upgrades: [websocket]\n",
        1,
    );
    t.wait_applied(t.apply(&y)).await;

    // A route without upgrades: 403, saying why; nothing reached the backend as an upgrade.
    let r = raw(
        &t.proxy,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("does not allow Upgrade: websocket"), "{r}");
    // The route that allows it passes the upgrade on (this backend answers it with a 200,
    // relayed as is).
    let r = raw(
        &t.proxy,
        "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.to_ascii_lowercase().contains("upgrade: websocket"), "{r}");
    // A protocol the route does not list: 403 too.
    let r = raw(
        &t.proxy,
        "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo/2\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("Upgrade: foo"), "{r}");

    // h2c: answered as a plain request, with neither Upgrade nor HTTP2-Settings passed on.
    let r = raw(
        &t.proxy,
        "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = r.to_ascii_lowercase();
    assert!(seen.contains("get /chat http/1.1"), "{r}");
    assert!(!seen.contains("upgrade:"), "{r}");
    assert!(!seen.contains("http2-settings"), "{r}");

    let m = t.admin_get("/metrics").await.1;
    assert_eq!(
        metric(
            &m,
            "tether_client_requests_refused_total{listener=\"proxy\",reason=\"upgrade_not_allowed\"}"
        ),
        2
    );

    // Bad upgrades lists are refused when written, naming the field.
    for (bad, why) in [
        ("[h2c]", "never tunnelled"),
        ("[none, websocket]", "only entry"),
        ("[\"web socket\"]", "not an Upgrade protocol"),
    ] {
        let y = config(&[("b1", plain)], &format!("    upgrades: {bad}\n"), None);
        let f = dir.path().join("bad.yaml");
        std::fs::write(&f, y).unwrap();
        let out = t.cli(&["apply", "-f", f.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} was taken");
        assert!(err.contains("upgrades"), "{bad}: {err}");
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_land_where_explain_says_on_every_node_and_on_the_alternate_when_sick() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let b = [
        WsBackend::start("b1").await,
        WsBackend::start("b2").await,
        WsBackend::start("b3").await,
    ];
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let nodes = Tether::dataplanes(dir.path(), &etcd.urls(), 3).await;
    let all: Vec<(&str, SocketAddr)> = b.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    let rev = apply(&cp.api, dir.path(), &config(&all, "", None), true);
    for n in &nodes {
        n.wait_applied(rev).await;
    }
    let keys: Vec<String> = (0..1000).map(|i| format!("session-{i}")).collect();
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, keys.join("\n")).unwrap();
    let explain = |alt: &str| -> Vec<String> {
        let out = support::ok(
            &cp.api,
            &[
                "explain",
                "--route",
                "app",
                "--keys",
                keys_file.to_str().unwrap(),
                "--format",
                "csv",
                "--alt",
                alt,
            ],
        );
        out.lines()
            .map(|l| l.split(',').nth(1).unwrap().to_owned())
            .collect()
    };
    let expected = explain("0");
    assert_eq!(expected.len(), keys.len());

    // 1,000 sessions on each node, 100 open at a time, each checked both ways.
    let sessions = |node: &Tether, keys: Vec<String>| {
        let proxy = node.proxy.clone();
        async move {
            let mut got = vec![String::new(); keys.len()];
            for (c, chunk) in keys.chunks(100).enumerate() {
                let mut open = Vec::new();
                for k in chunk {
                    open.push(ws::connect(&proxy, k).await.unwrap());
                }
                for (i, s) in open.iter_mut().enumerate() {
                    let k = &chunk[i];
                    let who = ws::backend_of(s).await.unwrap();
                    assert_eq!(
                        ws::echo(s, k).await.unwrap(),
                        format!("{who}:{k}"),
                        "messages flow both ways"
                    );
                    got[c * 100 + i] = who;
                }
            }
            got
        }
    };
    for (i, n) in nodes.iter().enumerate() {
        let got = sessions(n, keys.clone()).await;
        assert_eq!(got, expected, "node {i} sent sessions where explain says");
    }

    // b2 made sick: its sessions go to the alternate explain names, on every node.
    let out = support::cli(&cp.api, &["health", "set", "b2", "sick"]);
    assert!(out.status.success(), "{out:?}");
    for n in &nodes {
        n.wait_health("b2", false).await;
    }
    let now = explain("0");
    assert!(expected.iter().any(|b| b == "b2"));
    for (i, k) in keys.iter().enumerate() {
        if expected[i] != "b2" {
            assert_eq!(
                now[i], expected[i],
                "{k} moved although its backend is healthy"
            );
        } else {
            assert_ne!(now[i], "b2");
        }
    }
    let moved: Vec<String> = keys
        .iter()
        .zip(&expected)
        .filter(|(_, b)| *b == "b2")
        .map(|(k, _)| k.clone())
        .collect();
    let want: Vec<String> = now
        .iter()
        .zip(&expected)
        .filter(|(_, b)| *b == "b2")
        .map(|(n, _)| n.clone())
        .collect();
    for n in &nodes {
        assert_eq!(sessions(n, moved.clone()).await, want);
    }
}
