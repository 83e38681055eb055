//! The proxy over real sockets: a [`Runtime`] with a snapshot applied, `proxy::serve` on an
//! ephemeral port, and real HTTP backends with scripted behaviours (echo the request, answer
//! late, stall mid-body, hang up). Checks status mapping, retries on the alternate chain,
//! header handling, HTTP/2 from clients, streaming and drain.

#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tether_dataplane::config::{
    Address, BackendSpec, Config, DirectorSpec, KeySpec, MemberSpec, Policy, RouteSpec, ShardSpec,
    TargetRef, Timeouts,
};
use tether_dataplane::director::Key;
use tether_dataplane::edge::{Edge, EdgeConfig};
use tether_dataplane::proxy;
use tether_dataplane::runtime::Runtime;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

/// A backend named `name` with path-scripted behaviour.
async fn backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let resp = match path.as_str() {
                        "/echo" => {
                            let mut text = format!("{name}\n{} {}\n", req.method(), req.uri());
                            for (k, v) in req.headers() {
                                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                            }
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            text.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
                            Response::new(full(text))
                        }
                        "/slow-head" => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            Response::new(full(name))
                        }
                        "/slow-body" | "/stream" => {
                            let pause = if path == "/stream" { 1000 } else { 2000 };
                            let (tx, rx) =
                                tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
                            tokio::spawn(async move {
                                let _ = tx.send(Ok(Frame::data(Bytes::from("first;")))).await;
                                tokio::time::sleep(Duration::from_millis(pause)).await;
                                let _ = tx.send(Ok(Frame::data(Bytes::from("second")))).await;
                            });
                            Response::new(
                                StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx))
                                    .boxed(),
                            )
                        }
                        _ => Response::new(full(name)),
                    };
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A backend that accepts, reads the request head and hangs up without answering.
async fn rude_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            });
        }
    });
    addr
}

/// An address nobody listens on.
async fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn spec(name: &str, addr: SocketAddr) -> BackendSpec {
    let mut b = BackendSpec::new(name, addr.to_string().parse::<Address>().unwrap());
    b.timeouts = Timeouts {
        connect: Duration::from_millis(300),
        first_byte: Duration::from_millis(300),
        between_bytes: Duration::from_millis(300),
    };
    b
}

fn config(backends: Vec<BackendSpec>) -> Config {
    let members = backends
        .iter()
        .map(|b| MemberSpec::new(TargetRef::Backend(b.name.clone())))
        .collect();
    Config {
        backends: backends.into_iter().map(std::sync::Arc::new).collect(),
        directors: vec![std::sync::Arc::new(DirectorSpec {
            name: "d".into(),
            policy: Policy::Shard(ShardSpec::default()),
            members,
        })],
        routes: vec![RouteSpec {
            name: "r".into(),
            hosts: vec![],
            path_prefix: "/".into(),
            headers: vec![],
            director: "d".into(),
            key: KeySpec::Header("x-user".into()),
            fallback_key: None,
            max_body_bytes: None,
            upgrades: Vec::new(),
            https: None,
            https_redirect: false,
        }],
        ..Config::default()
    }
}

struct Proxy {
    rt: Arc<Runtime>,
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn proxy(cfg: Config) -> Proxy {
    let rt = Runtime::new();
    rt.apply(1, cfg).unwrap();
    rt.set_ready();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let edge = Edge::new("proxy", EdgeConfig::with_max_connections(1000));
    tokio::spawn(proxy::serve(l, None, Arc::clone(&rt), edge, async {
        let _ = rx.await;
    }));
    Proxy {
        rt,
        addr,
        _stop: stop,
    }
}

impl Proxy {
    /// A key whose first choice is `backend`.
    fn key_for(&self, backend: &str) -> String {
        let snap = self.rt.snapshot();
        let d = snap.directors.id("d").unwrap();
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| {
                let order = snap.directors.order(d, &Key::str(k), 1).unwrap();
                snap.directors.target_name(order[0]) == backend
            })
            .unwrap()
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> (u16, String) {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        (
            status,
            match body {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => format!("BODY ERROR: {e}"),
            },
        )
    }

    fn req(&self, method: &str, path: &str, key: &str, body: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("x-user", key)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }
}

#[tokio::test]
async fn no_route_is_404_and_no_healthy_backend_is_503() {
    let a = backend("a").await;
    let mut cfg = config(vec![spec("a", a)]);
    cfg.routes[0].path_prefix = "/app".into();
    std::sync::Arc::make_mut(&mut cfg.backends[0]).admin_health =
        tether_dataplane::config::AdminHealth::Sick;
    let p = proxy(cfg).await;
    let (s, body) = p.send(p.req("GET", "/other", "k", "")).await;
    assert_eq!((s, body.as_str()), (404, "no route matches this request\n"));
    let (s, body) = p.send(p.req("GET", "/app", "k", "")).await;
    assert_eq!(s, 503);
    assert!(body.contains("no healthy backend"), "{body}");
}

#[tokio::test]
async fn a_connect_failure_retries_on_the_alternate_with_the_body_intact() {
    let dead = dead_address().await;
    let b = backend("b").await;
    let p = proxy(config(vec![spec("a", dead), spec("b", b)])).await;
    let key = p.key_for("a");
    let (s, body) = p.send(p.req("POST", "/echo", &key, "payload")).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("b\nPOST /echo"), "{body}");
    assert!(body.contains("body: payload"), "{body}");
    // With every member dead the last connect error is reported: 502.
    let p = proxy(config(vec![spec("a", dead)])).await;
    let (s, body) = p.send(p.req("GET", "/", "k", "")).await;
    assert_eq!(s, 502, "{body}");
}

#[tokio::test]
async fn a_backend_that_hangs_up_is_502_unless_the_request_can_be_replayed() {
    let rude = rude_backend().await;
    let b = backend("b").await;
    let p = proxy(config(vec![spec("a", rude), spec("b", b)])).await;
    let key = p.key_for("a");
    let (s, body) = p.send(p.req("POST", "/echo", &key, "once")).await;
    assert_eq!(s, 502, "{body}");
    assert!(body.contains("backend \"a\" failed"), "{body}");
    let (s, body) = p.send(p.req("GET", "/", &key, "")).await;
    assert_eq!(
        (s, body.as_str()),
        (200, "b"),
        "an idempotent request goes on to b"
    );
}

#[tokio::test]
async fn timeouts_first_byte_is_504_and_between_bytes_cuts_the_body() {
    let a = backend("a").await;
    let p = proxy(config(vec![spec("a", a)])).await;
    let started = Instant::now();
    let (s, body) = p.send(p.req("GET", "/slow-head", "k", "")).await;
    assert_eq!(s, 504, "{body}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    let (s, body) = p.send(p.req("GET", "/slow-body", "k", "")).await;
    assert_eq!(s, 200);
    assert!(body.starts_with("BODY ERROR"), "{body}");
}

#[tokio::test]
async fn bodies_stream_without_buffering() {
    let a = backend("a").await;
    let mut cfg = config(vec![spec("a", a)]);
    std::sync::Arc::make_mut(&mut cfg.backends[0])
        .timeouts
        .between_bytes = Duration::from_secs(2);
    let p = proxy(cfg).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let started = Instant::now();
    let resp = client
        .request(p.req("GET", "/stream", "k", ""))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = started.elapsed();
    assert_eq!(first, "first;");
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, "second");
    assert!(
        first_at < Duration::from_millis(800) && started.elapsed() >= Duration::from_millis(1000),
        "the first chunk arrived at {first_at:?}, before the backend sent the second"
    );
}

#[tokio::test]
async fn headers_forwarded_for_hop_by_hop_and_host() {
    let a = backend("a").await;
    let mut cfg = config(vec![spec("a", a)]);
    std::sync::Arc::make_mut(&mut cfg.backends[0]).host_header = Some("origin.example".into());
    let p = proxy(cfg).await;
    let req = Request::builder()
        .uri(format!("http://{}/echo?q=1", p.addr))
        .header("x-user", "k")
        .header("x-forwarded-for", "10.0.0.9")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (s, body) = p.send(req).await;
    assert_eq!(s, 200);
    assert!(body.contains("GET /echo?q=1"), "{body}");
    assert!(
        body.contains("x-forwarded-for: 10.0.0.9, 127.0.0.1"),
        "{body}"
    );
    assert!(body.contains("host: origin.example"), "{body}");
    assert!(!body.contains("x-private"), "{body}");
    assert!(!body.contains("keep-alive"), "{body}");
}

#[tokio::test]
async fn http2_clients_are_served() {
    let a = backend("a").await;
    let p = proxy(config(vec![spec("a", a)])).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let resp = client
        .request(p.req("GET", "/echo", "k", ""))
        .await
        .unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("a\nGET /echo"), "{text}");
    assert!(
        text.contains(&format!("host: {}", p.addr)),
        "the authority becomes Host: {text}"
    );
}

#[tokio::test]
async fn a_draining_backend_gets_no_new_requests() {
    let a = backend("a").await;
    let b = backend("b").await;
    let p = proxy(config(vec![spec("a", a), spec("b", b)])).await;
    let key = p.key_for("a");
    assert_eq!(p.send(p.req("GET", "/", &key, "")).await.1, "a");
    let mut cfg = config(vec![spec("a", a), spec("b", b)]);
    std::sync::Arc::make_mut(&mut cfg.backends[0]).drain = true;
    p.rt.apply(2, cfg).unwrap();
    for _ in 0..20 {
        assert_eq!(p.send(p.req("GET", "/", &key, "")).await.1, "b");
    }
}

/// A backend that answers every connection with `200` and closes (what a probe needs), and
/// counts connections.
async fn counting_probe_target() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&n);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                let _ =
                    tokio::io::AsyncWriteExt::write_all(&mut s, b"HTTP/1.1 200 OK\r\n\r\n").await;
            });
        }
    });
    (addr, n)
}

#[tokio::test]
async fn one_probe_loop_per_backend_identity_across_directors_and_revisions() {
    let (addr, probes) = counting_probe_target().await;
    let mut probe = tether_dataplane::config::ProbeSpec::new("p");
    probe.interval = Duration::from_millis(100);
    let mut cfg = config(vec![spec("a", addr)]);
    std::sync::Arc::make_mut(&mut cfg.backends[0]).probe = Some("p".into());
    cfg.probes.push(probe);
    // A second director referring to the same backend.
    let mut second = (*cfg.directors[0]).clone();
    second.name = "d2".into();
    cfg.directors.push(std::sync::Arc::new(second));
    let p = proxy(cfg.clone()).await;
    // New revisions that keep the backend's identity do not start more loops.
    for rev in 2..5 {
        p.rt.apply(rev, cfg.clone()).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let n = probes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (6..=14).contains(&n),
        "{n} probes in ~1 s at a 100 ms interval: one loop (two would make ~20)"
    );
    // Healthy after its first good probe (the defaults start it sick).
    assert!(p.rt.snapshot().backends[0].probe_healthy());
}
