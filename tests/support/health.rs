//! A backend whose health endpoint can be flipped: it answers its name on every path but
//! `/health`, which answers 200 or 503 as the test sets it and counts the probes it receives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The path its probes must ask for.
pub const PATH: &str = "/health";

pub struct Flippable {
    pub name: String,
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    probes: Arc<AtomicUsize>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl Flippable {
    /// Starts one on a free loopback port, healthy.
    pub async fn start(name: &str) -> Flippable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let probes = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (h, p, t, body) = (
            Arc::clone(&healthy),
            Arc::clone(&probes),
            Arc::clone(&tasks),
            Bytes::from(name.to_owned()),
        );
        tasks.lock().unwrap().spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (h, p, body) = (Arc::clone(&h), Arc::clone(&p), body.clone());
                t.lock().unwrap().spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let mut resp = hyper::Response::new(Full::new(body.clone()));
                        if req.uri().path() == PATH {
                            p.fetch_add(1, Ordering::SeqCst);
                            if !h.load(Ordering::SeqCst) {
                                *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            }
                        }
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Flippable {
            name: name.to_owned(),
            addr,
            healthy,
            probes,
            tasks,
        }
    }

    /// `n` of them, named `b0`, `b1`….
    pub async fn several(n: usize) -> Vec<Flippable> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            v.push(Flippable::start(&format!("b{i}")).await);
        }
        v
    }

    /// What its health endpoint answers from now on.
    pub fn set(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Probes received so far.
    pub fn probes(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }
}

impl Drop for Flippable {
    fn drop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

/// A declarative file: `backends` each probed on [`PATH`] every `interval` (window 3,
/// threshold 2), one shard director "users" over them, a route keyed on `x-user`.
pub fn config(backends: &[&Flippable], interval: &str) -> String {
    let mut y = format!(
        "probes:\n  - name: hc\n    url: {PATH}\n    interval: {interval}\n    timeout: 200ms\n    window: 3\n    threshold: 2\nbackends:\n"
    );
    for b in backends {
        y.push_str(&format!(
            "  - name: {}\n    address: {}\n    connect_timeout: 500ms\n    probe: hc\n",
            b.name, b.addr
        ));
    }
    y.push_str("directors:\n  - name: users\n    shard: { algorithm: varnish }\n    members:\n");
    for b in backends {
        y.push_str(&format!("      - backend: {}\n", b.name));
    }
    y.push_str("routes:\n  - name: app\n    director: users\n    key: { header: x-user }\n");
    y
}
