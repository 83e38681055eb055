//! The proxy's edge, attacked through the real binary (`tether up` on loopback): idle sockets,
//! slowloris heads, stalled bodies, clients that stop reading, oversized and ambiguous heads,
//! connection floods. Each test asserts what the attacker gets and that normal clients are
//! still served.

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{Backend, Tether, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short timeouts, so that the suite runs in seconds.
const FAST: &[&str] = &[
    "--header-timeout",
    "1s",
    "--idle-timeout",
    "2s",
    "--send-timeout",
    "1s",
    "--body-timeout",
    "1s",
];

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes (or `limit` passes): what arrived, and when it closed.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (got, Some(start.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, None),
        }
    }
}

async fn up_with(extra: &[&str]) -> (tempfile::TempDir, Tether, Backend) {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b1").await;
    let t = Tether::up(dir.path(), extra).await;
    let rev = t.apply(&config(&[("b1", b.addr)], false));
    t.wait_applied(rev).await;
    (dir, t, b)
}

/// The value of the `tether_client_*` series whose labels are `labels`.
fn metric(metrics: &str, labels: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("tether_client") && l.contains(&format!("{{{labels}}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {{{labels}}} in\n{metrics}"))
}

fn status_of(response: &[u8]) -> String {
    String::from_utf8_lossy(response)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_and_slowloris_are_closed_within_the_timeout_while_others_are_served() {
    let (_d, t, _b) = up_with(FAST).await;
    let proxy = addr(&t.proxy);
    // Connects and sends nothing.
    let mut idle = TcpStream::connect(&proxy).await.unwrap();
    // Half a head, then a header line every 300 ms: never complete.
    let mut slow = TcpStream::connect(&proxy).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (mut slow_r, mut slow_w) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow_w
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // Meanwhile, a normal client is served.
    assert_eq!(t.request("k1").await, (200, "b1".into()));

    let (got, closed) = until_closed(&mut idle, Duration::from_secs(4)).await;
    let closed = closed.expect("the idle socket was not closed");
    assert!(
        got.is_empty(),
        "nothing is sent to a client that sent nothing"
    );
    assert!(closed <= Duration::from_secs(2), "closed after {closed:?}");

    let mut got = Vec::new();
    let start = Instant::now();
    let closed = loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(4), slow_r.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break start.elapsed(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the slowloris connection was not closed"),
        }
    };
    assert!(
        status_of(&got).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(closed <= Duration::from_secs(2), "closed after {closed:?}");
    trickle.abort();

    // A keep-alive connection closes after the idle timeout, not before.
    let mut ka = TcpStream::connect(&proxy).await.unwrap();
    ka.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nx-user: k\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = until_closed(&mut ka, Duration::from_secs(5)).await;
    assert!(status_of(&got).starts_with("HTTP/1.1 200"), "{got:?}");
    let closed = closed.expect("the idle keep-alive connection was not closed");
    assert!(
        closed >= Duration::from_millis(1900) && closed <= Duration::from_secs(3),
        "closed after {closed:?} (idle timeout 2 s)"
    );
    let metrics = t.admin_get("/metrics").await.1;
    assert_eq!(metric(&metrics, "listener=\"proxy\",timeout=\"header\""), 2);
    // The harness's own pooled client connection idles out too.
    assert!(metric(&metrics, "listener=\"proxy\",timeout=\"idle\"") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_408_and_closed() {
    let (_d, t, _b) = up_with(FAST).await;
    let mut s = TcpStream::connect(addr(&t.proxy)).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nx-user: k\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let (got, closed) = until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        status_of(&got).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let closed = closed.expect("not closed");
    assert!(closed <= Duration::from_secs(3), "closed after {closed:?}");
    assert_eq!(t.request("k").await.0, 200);
}

/// Sends `head` on a fresh connection (ignoring a write cut short by the proxy closing) and
/// returns the answer's status line and whether the connection closed after it.
async fn answer(proxy: &str, head: Vec<u8>) -> (String, bool) {
    let s = TcpStream::connect(proxy).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&head).await;
        w
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    drop(writer.await);
    (status_of(&got), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_ambiguous_heads_are_refused_with_the_right_status() {
    let (_d, t, _b) = up_with(&[]).await;
    let proxy = addr(&t.proxy);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(300 * 1024)
    );
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(70_000));
    let cases: [(&str, String, &str); 5] = [
        ("300 KiB head", big, "431"),
        ("150 headers", many, "431"),
        ("70 KB request line", uri, "414"),
        (
            "Content-Length with Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: x\r\nx-user: k\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "400",
        ),
        (
            "two Content-Length",
            "POST / HTTP/1.1\r\nHost: x\r\nx-user: k\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "400",
        ),
    ];
    for (what, head, want) in cases {
        let (status, closed) = answer(&proxy, head.into_bytes()).await;
        assert!(
            status.starts_with(&format!("HTTP/1.1 {want}")),
            "{what}: got {status:?}"
        );
        // One answer, then closed: the bytes after the head never become a second request.
        assert!(closed, "{what}: the connection stayed open");
    }
    assert_eq!(t.request("k").await, (200, "b1".into()));
    let metrics = t.admin_get("/metrics").await.1;
    assert_eq!(
        metric(&metrics, "listener=\"proxy\",reason=\"head_too_large\""),
        1
    );
    assert_eq!(
        metric(&metrics, "listener=\"proxy\",reason=\"uri_too_long\""),
        1
    );
    assert_eq!(
        metric(&metrics, "listener=\"proxy\",reason=\"ambiguous_framing\""),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_are_cut_off_and_free_their_backend_connections() {
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB answers: more than loopback socket buffers hold, so a client that does not read
    // stalls the proxy's writes.
    let b = Backend::serving(
        "big",
        "127.0.0.1:0".parse().unwrap(),
        Bytes::from(vec![b'x'; 16 << 20]),
    )
    .await;
    let t = Tether::up(dir.path(), FAST).await;
    let yaml = config(&[("big", b.addr)], false).replace(
        "    connect_timeout: 500ms\n",
        "    connect_timeout: 500ms\n    max_connections: 5\n",
    );
    let rev = t.apply(&yaml);
    t.wait_applied(rev).await;
    let proxy = addr(&t.proxy);
    // 20 clients ask and never read: 5 hold the backend's connections, the others get 503.
    let mut readers = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(&proxy).await.unwrap();
        s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nx-user: k{i}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        readers.push(s);
    }
    // After the send timeout they are gone, and their backend connections with them.
    let start = Instant::now();
    loop {
        let st = t.state().await;
        let open = st["backends"][0]["connections_open"].as_u64().unwrap();
        if open == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "backend connections still open: {open}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A reader that reads gets the whole answer.
    let (status, body) = t.request("k-normal").await;
    assert_eq!((status, body.len()), (200, 16 << 20));
    let metrics = t.admin_get("/metrics").await.1;
    // Exactly the 5 that held the backend's connections (the others got a 503 at once).
    assert_eq!(metric(&metrics, "listener=\"proxy\",timeout=\"send\""), 5);
    drop(readers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_service_resumes() {
    let (_d, t, _b) = up_with(&[
        "--max-connections",
        "20",
        "--max-connections-per-ip",
        "30",
        "--header-timeout",
        "30s",
    ])
    .await;
    let proxy = addr(&t.proxy);
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(&proxy).await.unwrap());
    }
    // Once all 20 are admitted, the 21st is closed at once.
    let start = Instant::now();
    loop {
        let m = t.admin_get("/metrics").await.1;
        if m.contains("tether_client_connections{listener=\"proxy\"} 20") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut extra = TcpStream::connect(&proxy).await.unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (got, closed) = until_closed(&mut extra, Duration::from_secs(2)).await;
    assert!(got.is_empty() && closed.is_some(), "over the cap: {got:?}");
    drop(held);
    // The held ones are gone: service resumes.
    let start = Instant::now();
    loop {
        let m = t.admin_get("/metrics").await.1;
        if m.contains("tether_client_connections{listener=\"proxy\"} 0") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.request("k").await, (200, "b1".into()));
    let m = t.admin_get("/metrics").await.1;
    assert_eq!(metric(&m, "listener=\"proxy\",cap=\"max_connections\""), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_cap_sheds_one_client_not_the_others() {
    let (_d, t, _b) = up_with(&["--max-connections-per-ip", "3", "--header-timeout", "30s"]).await;
    let port = addr(&t.proxy).rsplit(':').next().unwrap().to_owned();
    // 127.0.0.2 is loopback too: a second client address.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let (got, closed) = until_closed(&mut fourth, Duration::from_secs(2)).await;
    assert!(
        got.is_empty() && closed.is_some(),
        "the 4th from one address is shed"
    );
    let mut other = tokio::net::TcpSocket::new_v4().unwrap();
    other = {
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        other
    };
    let mut s = other
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nx-user: k\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(status_of(&got).starts_with("HTTP/1.1 200"), "{got:?}");
    let m = t.admin_get("/metrics").await.1;
    assert_eq!(
        metric(&m, "listener=\"proxy\",cap=\"max_connections_per_ip\""),
        1
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_exact_under_a_burst_of_cold_requests() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b1").await;
    let t = std::sync::Arc::new(Tether::up(dir.path(), &[]).await);
    let yaml = config(&[("b1", b.addr)], false).replace(
        "    connect_timeout: 500ms\n",
        "    connect_timeout: 500ms\n    max_connections: 10\n",
    );
    let rev = t.apply(&yaml);
    t.wait_applied(rev).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let t = std::sync::Arc::clone(&t);
        tasks.spawn(async move { t.request(&format!("k{i}")).await.0 });
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(s) = tasks.join_next().await {
        *statuses.entry(s.unwrap()).or_insert(0) += 1;
    }
    assert!(
        b.accepted() <= 10,
        "{} connections reached the backend (statuses {statuses:?})",
        b.accepted()
    );
    assert!(
        statuses.keys().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) >= 10,
        "{statuses:?}"
    );
}

/// A backend that answers with the request head it received.
async fn echo_backend() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let mut text = format!("{} {}\n", req.method(), req.uri());
                        for (k, v) in req.headers() {
                            text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                        }
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        text.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(text)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Sends `head` (with `connection: close`) and returns the whole answer.
async fn exchange(proxy: &str, head: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (got, _) = until_closed(&mut s, Duration::from_secs(5)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_backend_whole_chunked_or_with_length() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_backend().await;
    let t = Tether::up(dir.path(), &[]).await;
    let rev = t.apply(&config(&[("echo", echo)], false));
    t.wait_applied(rev).await;
    // Two requests on one client connection, so the second goes on the kept backend
    // connection: a chunked body (re-chunked to the backend), then one with a length.
    let r = exchange(
        &addr(&t.proxy),
        "POST /c HTTP/1.1\r\nHost: x\r\nx-user: k\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n\
         POST /l HTTP/1.1\r\nHost: x\r\nx-user: k\r\ncontent-length: 5\r\nconnection: close\r\n\r\nabcde",
    )
    .await;
    let (first, second) = r.split_once("POST /l").expect("two answers");
    assert!(first.starts_with("HTTP/1.1 200"), "{r}");
    assert!(first.contains("transfer-encoding: chunked\n"), "{first}");
    assert!(first.contains("body: hello world\n"), "{first}");
    assert!(second.contains("content-length: 5\n"), "{second}");
    assert!(second.contains("body: abcde\n"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_authority_and_forwarded_headers_are_what_routing_saw() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_backend().await;
    let t = Tether::up(dir.path(), &[]).await;
    let rev = t.apply(&config(&[("echo", echo)], false));
    t.wait_applied(rev).await;
    let proxy = addr(&t.proxy);

    // Absolute-form: the URI's authority wins over the Host header, and the backend sees it.
    let r = exchange(
        &proxy,
        "GET http://a.example/x?q=1 HTTP/1.1\r\nHost: b.example\r\nx-user: k\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains("\nhost: a.example\n") && !r.contains("b.example\n"),
        "{r}"
    );
    assert!(r.contains("GET /x?q=1\n"), "{r}");
    assert!(r.contains("\nx-forwarded-host: a.example\n"), "{r}");
    assert!(r.contains("\nx-forwarded-proto: http\n"), "{r}");

    // Two Host headers: ambiguous, refused.
    let r = exchange(
        &proxy,
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nx-user: k\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    // `Connection` cannot take away Host or the header the route keyed on.
    let r = exchange(
        &proxy,
        "GET / HTTP/1.1\r\nHost: a.example\r\nx-user: k\r\nx-other: 1\r\nconnection: close, host, x-user, x-other\r\n\r\n",
    )
    .await;
    assert!(
        r.contains("\nhost: a.example\n") && r.contains("\nx-user: k\n"),
        "{r}"
    );
    assert!(
        !r.contains("x-other"),
        "a header named by Connection is removed: {r}"
    );

    // Every X-Forwarded-For line, merged in order, then the peer.
    let r = exchange(
        &proxy,
        "GET / HTTP/1.1\r\nHost: a\r\nx-user: k\r\nx-forwarded-for: 192.0.2.1\r\nx-forwarded-for: 192.0.2.2, 192.0.2.3\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        r.contains("\nx-forwarded-for: 192.0.2.1, 192.0.2.2, 192.0.2.3, 127.0.0.1\n"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_is_impossible_clients_are_shed_and_probes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b1").await;
    // 1,024 descriptors: the default cap leaves room for backends and probes (448 clients).
    let t = Tether::up_wrapped(
        dir.path(),
        &["prlimit", "--nofile=1024", "--"],
        &["--header-timeout", "60s", "--idle-timeout", "60s"],
    )
    .await;
    let rev = t.apply(&config(&[("b1", b.addr)], true));
    t.wait_applied(rev).await;
    t.wait_health("b1", true).await;
    let proxy = addr(&t.proxy);
    let mut held = Vec::new();
    for _ in 0..2000 {
        if let Ok(s) = TcpStream::connect(&proxy).await {
            held.push(s);
        }
    }
    // Probes keep running (a probe every 100 ms, 3 of them to turn sick): still healthy.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = t.state().await;
    assert_eq!(st["backends"][0]["healthy"], true, "{st}");
    let m = t.admin_get("/metrics").await.1;
    let open = metric_line(&m, "tether_client_connections{listener=\"proxy\"}");
    assert!(open <= 448, "{open} open");
    assert!(
        metric(&m, "listener=\"proxy\",cap=\"max_connections\"") >= 2000 - 448,
        "{m}"
    );
    // A new client is shed while they are held.
    let r = exchange(
        &proxy,
        "GET / HTTP/1.1\r\nHost: x\r\nx-user: k\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(r.is_empty(), "{r}");
    // They leave: service resumes.
    drop(held);
    let start = Instant::now();
    loop {
        let r = exchange(
            &proxy,
            "GET / HTTP/1.1\r\nHost: x\r\nx-user: k\r\nconnection: close\r\n\r\n",
        )
        .await;
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "service did not resume: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the line starting with `series`.
fn metric_line(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_routes_limit_is_413_declared_or_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b1").await;
    let t = Tether::up(dir.path(), &[]).await;
    let yaml = config(&[("b1", b.addr)], false).replace(
        "key: { header: x-user }\n",
        "key: { header: x-user }\n    max_body_bytes: 1000\n",
    );
    let rev = t.apply(&yaml);
    t.wait_applied(rev).await;
    let proxy = addr(&t.proxy);
    let post = |len: &str, body: &str| {
        format!("POST / HTTP/1.1\r\nHost: x\r\nx-user: k\r\n{len}\r\n\r\n{body}")
    };
    // Within the limit.
    let r = exchange(
        &proxy,
        &post(
            "content-length: 1000\r\nconnection: close",
            &"a".repeat(1000),
        ),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // Declared over the limit: refused before anything reaches the backend.
    let before = b.accepted();
    let r = exchange(&proxy, &post("content-length: 1001", &"a".repeat(1001))).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert_eq!(
        b.accepted(),
        before,
        "no backend connection for a refused body"
    );
    // Chunked, no length: counted as it flows.
    let chunk = format!("{:x}\r\n{}\r\n", 600, "a".repeat(600));
    let r = exchange(
        &proxy,
        &post(
            "transfer-encoding: chunked",
            &format!("{chunk}{chunk}0\r\n\r\n"),
        ),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_closes_the_connection_and_costs_little() {
    let (_d, t, b) = up_with(&[]).await;
    let cpu_before = cpu_seconds(t.child.id());
    let tcp = TcpStream::connect(addr(&t.proxy)).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let start = Instant::now();
    let mut streams = 0u32;
    // Open a stream and reset it at once, as fast as the connection lets us (CVE-2023-44487).
    while streams < 100_000 && start.elapsed() < Duration::from_secs(10) {
        client = match client.ready().await {
            Ok(c) => c,
            Err(_) => break,
        };
        let req = hyper::Request::builder()
            .uri("http://x/")
            .header("x-user", "k")
            .body(())
            .unwrap();
        match client.send_request(req, false) {
            Ok((_resp, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
        streams += 1;
    }
    // The proxy ends the connection (GOAWAY) long before the attacker is done.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        ended.is_ok(),
        "the connection stayed open after {streams} resets"
    );
    assert!(streams < 100_000, "{streams} streams were opened and reset");
    // Bounded cost: little CPU, and at most a stream cap's worth of backend connections for
    // the streams accepted before their reset; normal clients are served.
    let cpu = cpu_seconds(t.child.id()) - cpu_before;
    assert!(cpu < 1.0, "the attack cost the proxy {cpu:.2} s of CPU");
    assert!(
        b.accepted() <= 100,
        "{} backend connections for reset streams",
        b.accepted()
    );
    assert_eq!(t.request("k").await, (200, "b1".into()));
    eprintln!(
        "rapid reset: connection closed after {streams} streams in {:?}",
        start.elapsed()
    );
}

/// User + system CPU seconds used so far by process `pid` (`/proc/PID/stat`, at 100 ticks/s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_gives_client_ip_keys_the_announced_address() {
    let (_d, t, _b) = keyed_on_client_ip(&["--proxy-protocol"]).await;
    let proxy = addr(&t.proxy);
    let request = "GET / HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n";
    // Ten announced clients, over v1 and v2: each reaches the backend explain names for it.
    for i in 1..=10u8 {
        let ip = format!("198.51.100.{i}");
        let want = explained(&t, &ip);
        let v1 = format!("PROXY TCP4 {ip} 203.0.113.1 4{i:04} 80\r\n{request}");
        let r = exchange(&proxy, &v1).await;
        assert!(
            r.ends_with(&format!("\r\n\r\n{want}")),
            "v1 {ip}: want {want}: {r}"
        );
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2.extend_from_slice(&[198, 51, 100, i, 203, 0, 113, 1, 0x9c, 0x40, 0, 80]);
        v2.extend_from_slice(request.as_bytes());
        let mut s = TcpStream::connect(&proxy).await.unwrap();
        s.write_all(&v2).await.unwrap();
        let (got, _) = until_closed(&mut s, Duration::from_secs(5)).await;
        let r = String::from_utf8_lossy(&got);
        assert!(
            r.ends_with(&format!("\r\n\r\n{want}")),
            "v2 {ip}: want {want}: {r}"
        );
    }
    // Without a header, or with a malformed one: closed, no answer.
    for bad in [
        request.to_owned(),
        format!("PROXY TCP4 1.2.3.4\r\n{request}"),
    ] {
        let r = exchange(&proxy, &bad).await;
        assert!(r.is_empty(), "{bad:?} got {r}");
    }
    let m = t.admin_get("/metrics").await.1;
    assert_eq!(
        metric(&m, "listener=\"proxy\",reason=\"bad_proxy_header\""),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_trusted_proxies_client_ip_keys_use_the_rightmost_untrusted_hop() {
    // The test connects from 127.0.0.1: a trusted proxy, as is 10.0.0.0/8.
    let (_d, t, _b) = keyed_on_client_ip(&["--trusted-proxies", "127.0.0.1,10.0.0.0/8"]).await;
    let proxy = addr(&t.proxy);
    for i in 1..=10u8 {
        let ip = format!("203.0.113.{i}");
        let want = explained(&t, &ip);
        // A spoofed hop on the left, the real client, then one of our own proxies.
        let r = exchange(
            &proxy,
            &format!("GET / HTTP/1.1\r\nHost: x\r\nx-forwarded-for: 192.0.2.66, {ip}\r\nx-forwarded-for: 10.1.1.1\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(
            r.ends_with(&format!("\r\n\r\n{want}")),
            "{ip}: want {want}: {r}"
        );
    }
}

/// `tether up` with `extra` flags, three backends, and the route keyed on the client address.
async fn keyed_on_client_ip(extra: &[&str]) -> (tempfile::TempDir, Tether, [Backend; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let b = [
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    ];
    let t = Tether::up(dir.path(), extra).await;
    let yaml = config(
        &[("b1", b[0].addr), ("b2", b[1].addr), ("b3", b[2].addr)],
        false,
    )
    .replace("key: { header: x-user }", "key: { client_ip: true }");
    let rev = t.apply(&yaml);
    t.wait_applied(rev).await;
    (dir, t, b)
}

/// The backend `tether explain` names for client address `ip`.
fn explained(t: &Tether, ip: &str) -> String {
    let out = t.ok(&["explain", "--route", "app", "--format", "csv", ip]);
    out.lines()
        .next()
        .unwrap()
        .split(',')
        .nth(1)
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_admin_listener_needs_a_token_and_tokens_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    // Refused before anything is bound: no token, not loopback, no --insecure.
    let out = std::process::Command::new(support::BIN)
        .args([
            "up",
            "--api",
            "127.0.0.1:0",
            "--proxy",
            "127.0.0.1:0",
            "--admin",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path().join("refused"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve the admin listener"),
        "{err}"
    );

    let tokens = dir.path().join("admin-tokens");
    std::fs::write(&tokens, "read-only:s3cret-admin-token-0123\n").unwrap();
    for public_metrics in [false, true] {
        let mut extra = vec!["--admin-token-file", tokens.to_str().unwrap()];
        if public_metrics {
            extra.push("--admin-metrics-public");
        }
        let t = Tether::up(&dir.path().join(format!("t{public_metrics}")), &extra).await;
        let admin = addr(&t.admin);
        let get = |path: &str, token: Option<&str>| {
            let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
            format!("GET {path} HTTP/1.1\r\nHost: a\r\n{auth}connection: close\r\n\r\n")
        };
        let status = |r: String| r.lines().next().unwrap_or("").to_owned();
        // Probes stay open.
        for p in ["/healthz", "/readyz"] {
            assert!(
                status(exchange(&admin, &get(p, None)).await).contains(" 200 "),
                "{p}"
            );
        }
        let r = exchange(&admin, &get("/state", None)).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        assert!(
            r.to_ascii_lowercase().contains("www-authenticate: bearer"),
            "{r}"
        );
        assert!(status(exchange(&admin, &get("/state", Some("wrong"))).await).contains(" 401 "));
        assert!(
            status(exchange(&admin, &get("/state", Some("s3cret-admin-token-0123"))).await)
                .contains(" 200 ")
        );
        let metrics = status(exchange(&admin, &get("/metrics", None)).await);
        let want = if public_metrics { " 200 " } else { " 401 " };
        assert!(metrics.contains(want), "public {public_metrics}: {metrics}");
        if public_metrics {
            continue;
        }
        // A rotated token file: the new token works within the poll, the old one no longer.
        std::fs::write(&tokens, "read-only:rotated-admin-token-0123\n").unwrap();
        let start = std::time::Instant::now();
        while !status(exchange(&admin, &get("/state", Some("rotated-admin-token-0123"))).await)
            .contains(" 200 ")
        {
            assert!(start.elapsed() < Duration::from_secs(10), "never re-read");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            status(exchange(&admin, &get("/state", Some("s3cret-admin-token-0123"))).await)
                .contains(" 401 ")
        );
        // The next round's `tether up` reads it afresh.
        std::fs::write(&tokens, "read-only:s3cret-admin-token-0123\n").unwrap();
    }
}
