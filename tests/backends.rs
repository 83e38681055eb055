//! The proxy's side of backend connections, through the real binary (`tether up` on
//! loopback): a response head over the limit, waiting for a connection at `max_connections`
//! (`queue_timeout`), connections retired by age (`max_connection_lifetime`), and DNS-named
//! backends whose answer changes (a real DNS server on a loopback UDP port).

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::dns::DnsServer;
use support::{Backend, Tether, config, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend that answers every request on a connection with `head` (then closes).
async fn raw_backend(head: Vec<u8>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let head = Arc::new(head);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let head = Arc::clone(&head);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(&head).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// `tether up` with one backend `b1` at `addr`, its settings followed by `extra` lines.
async fn up_one(addr: &str, extra: &str) -> (tempfile::TempDir, Tether) {
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    let yaml = config(&[("b1", "127.0.0.1:1".parse().unwrap())], false)
        .replace("address: 127.0.0.1:1", &format!("address: {addr}"))
        .replace(
            "    connect_timeout: 500ms\n",
            &format!("    connect_timeout: 500ms\n{extra}"),
        );
    let rev = t.apply(&yaml);
    t.wait_applied(rev).await;
    (dir, t)
}

fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{backend=\"b1\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for b1 in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_over_the_limit_is_502_and_one_within_it_is_relayed() {
    let head = |extra: String| {
        format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{extra}\r\nok").into_bytes()
    };
    // 40 KiB of one header, over the default 32 KiB head limit.
    let big = raw_backend(head(format!("x-big: {}\r\n", "a".repeat(40 * 1024)))).await;
    let (_d1, t) = up_one(&big.to_string(), "").await;
    let (status, body) = t.request("k").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("response head over 32768 bytes"), "{body}");
    // 150 headers: over hyper's 100.
    let many: String = (0..150).map(|i| format!("x-{i}: v\r\n")).collect();
    let many = raw_backend(head(many)).await;
    let (_d2, t) = up_one(&many.to_string(), "").await;
    assert_eq!(t.request("k").await.0, 502);
    // 20 KiB is within the limit.
    let fine = raw_backend(head(format!("x-big: {}\r\n", "a".repeat(20 * 1024)))).await;
    let (_d3, t) = up_one(&fine.to_string(), "").await;
    assert_eq!(t.request("k").await, (200, "ok".to_owned()));
}

/// A backend that takes `delay` per answer and counts its connections.
async fn slow_backend(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"slow")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// `n` requests at once; their statuses, sorted.
async fn burst(t: &Arc<Tether>, n: usize) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let t = Arc::clone(t);
        tasks.spawn(async move { t.request(&format!("k{i}")).await.0 });
    }
    let mut out = Vec::new();
    while let Some(s) = tasks.join_next().await {
        out.push(s.unwrap());
    }
    out.sort_unstable();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_requests_wait_up_to_the_queue_timeout() {
    let (addr, accepted) = slow_backend(Duration::from_millis(200)).await;
    // Without a queue timeout the requests beyond the one connection are 503 at once.
    let (_d1, t) = up_one(&addr.to_string(), "    max_connections: 1\n").await;
    let t = Arc::new(t);
    let statuses = burst(&t, 5).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        4,
        "{statuses:?}"
    );
    // With one, they take turns on that connection: all served, one connection.
    let before = accepted.load(Ordering::SeqCst);
    let (_d2, t) = up_one(
        &addr.to_string(),
        "    max_connections: 1\n    queue_timeout: 5s\n",
    )
    .await;
    let t = Arc::new(t);
    assert_eq!(burst(&t, 5).await, vec![200; 5]);
    assert_eq!(accepted.load(Ordering::SeqCst) - before, 1);
    let metrics = t.admin_get("/metrics").await.1;
    assert!(
        series(&metrics, "tether_backend_queued_total") >= 3,
        "{metrics}"
    );
    assert_eq!(series(&metrics, "tether_backend_queue_timeouts_total"), 0);
    // A queue timeout shorter than the wait: those still waiting get 503, and are counted.
    let (_d3, t) = up_one(
        &addr.to_string(),
        "    max_connections: 1\n    queue_timeout: 300ms\n",
    )
    .await;
    let t = Arc::new(t);
    let statuses = burst(&t, 5).await;
    assert!(
        statuses.contains(&503) && statuses.contains(&200),
        "{statuses:?}"
    );
    let metrics = t.admin_get("/metrics").await.1;
    assert!(
        series(&metrics, "tether_backend_queue_timeouts_total") >= 1,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_older_than_max_connection_lifetime_are_not_reused() {
    let b = Backend::start("b1").await;
    let (_d1, t) = up_one(&b.addr.to_string(), "").await;
    for _ in 0..3 {
        assert_eq!(t.request("k").await.0, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(b.accepted(), 1, "keep-alive reuses one connection");
    let b = Backend::start("b1").await;
    let (_d2, t) = up_one(&b.addr.to_string(), "    max_connection_lifetime: 100ms\n").await;
    for _ in 0..3 {
        assert_eq!(t.request("k").await.0, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(b.accepted(), 3, "each connection retired after 100 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_named_backend_follows_its_answer_within_the_ttl() {
    let name = "web.tether.test";
    let (old_ip, new_ip) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    // The same port on two loopback addresses: the answer alone decides which one is used.
    let old = Backend::start_at("old", SocketAddr::new(old_ip.into(), 0)).await;
    let new = Backend::start_at("new", SocketAddr::new(new_ip.into(), old.addr.port())).await;
    let dns = DnsServer::start(name, &[old_ip], 1).await;
    let dir = tempfile::tempdir().unwrap();
    let server = dns.addr.to_string();
    let t = Tether::up(
        dir.path(),
        &["--dns-server", &server, "--dns-min-ttl", "1s"],
    )
    .await;
    let yaml = config(&[("b1", "127.0.0.1:1".parse().unwrap())], false).replace(
        "address: 127.0.0.1:1",
        &format!("address: {name}:{}", old.addr.port()),
    );
    let rev = t.apply(&yaml);
    t.wait_applied(rev).await;
    // Within the TTL the answer comes from the cache: a burst of requests asks DNS once or
    // twice, not per connection.
    for _ in 0..20 {
        assert_eq!(t.request("k").await, (200, "old".to_owned()));
    }
    assert!(dns.queries() <= 2, "{} queries", dns.queries());
    dns.set(&[new_ip]);
    let changed = std::time::Instant::now();
    loop {
        let (status, body) = t.request("k").await;
        assert_eq!(status, 200);
        if body == "new" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "still the old address 3 s after the change (TTL 1 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The idle connection to the address that left the answer was closed: one open, to new.
    wait_until("the old connection closed", Duration::from_secs(3), || {
        old.open() == 0
    })
    .await;
    let metrics = t.admin_get("/metrics").await.1;
    assert_eq!(
        series(&metrics, "tether_backend_connections"),
        1,
        "{metrics}"
    );
    assert!(new.accepted() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_opened_by_one_proxy_thread_serves_the_others_at_the_limit() {
    let b = Backend::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &["--proxy-threads", "2"]).await;
    let yaml = config(&[("b1", b.addr)], false).replace(
        "    connect_timeout: 500ms\n",
        "    connect_timeout: 500ms\n    max_connections: 1\n",
    );
    let rev = t.apply(&yaml);
    t.wait_applied(rev).await;
    // Each request on a client connection of its own, so both proxy threads accept some;
    // the one backend connection is idle on one of them when the other needs it.
    let proxy = t.proxy.trim_start_matches("http://").to_owned();
    for i in 0..30 {
        let mut s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
        let req = format!("GET / HTTP/1.1\r\nhost: x\r\nx-user: k{i}\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "request {i}: {text}");
    }
    assert_eq!(b.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_name_server_dies_the_last_answer_is_kept() {
    let name = "kept.tether.test";
    let b = Backend::start("b1").await;
    let dns = DnsServer::start(name, &[Ipv4Addr::LOCALHOST], 1).await;
    let dir = tempfile::tempdir().unwrap();
    let server = dns.addr.to_string();
    let t = Tether::up(dir.path(), &["--dns-server", &server]).await;
    // Connections retired every 100 ms: each request needs a new one, so the name's answer
    // is needed again and again after the server is gone.
    let yaml = config(&[("b1", "127.0.0.1:1".parse().unwrap())], false)
        .replace(
            "address: 127.0.0.1:1",
            &format!("address: {name}:{}", b.addr.port()),
        )
        .replace(
            "    connect_timeout: 500ms\n",
            "    connect_timeout: 500ms\n    max_connection_lifetime: 100ms\n",
        );
    let rev = t.apply(&yaml);
    t.wait_applied(rev).await;
    assert_eq!(t.request("k").await, (200, "b1".to_owned()));
    dns.stop();
    // Well past the 1 s TTL: every request still served, from the kept answer.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(t.request("k").await, (200, "b1".to_owned()));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(b.accepted() >= 10, "{} connections", b.accepted());
    let metrics = t.admin_get("/metrics").await.1;
    assert!(
        series(&metrics, "tether_backend_resolve_failures_total") >= 1,
        "{metrics}"
    );
}
