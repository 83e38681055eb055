//! End-to-end harness: the real `tether` binary on ephemeral loopback ports, real HTTP backends
//! (in-process hyper servers that count their connections), and small helpers to wait for a
//! condition instead of sleeping.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // test support: a failed setup should panic

pub mod certs;
pub mod dns;
pub mod etcd;
pub mod health;
pub mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// The value of series `name{labels}` (exactly, as `/metrics` writes it) in `metrics`.
pub fn metric(metrics: &str, series: &str) -> i64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{metrics}"))
}

/// A GET with curl: its status and body (`0` and nothing when it could not connect).
pub fn curl(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Polls `f` every 25 ms until it holds, or panics after `limit` with `what`.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A real HTTP/1.1 backend that answers with its name and counts accepted connections.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_at(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_at(name: &str, addr: SocketAddr) -> Backend {
        Backend::serving(name, addr, Bytes::from(name.to_owned())).await
    }

    /// A backend whose every answer is `body`.
    pub async fn serving(name: &str, addr: SocketAddr, body: Bytes) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (acc, t2, o2) = (Arc::clone(&accepted), Arc::clone(&tasks), Arc::clone(&open));
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                o2.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                let o3 = Arc::clone(&o2);
                t2.lock().unwrap().spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let b = body.clone();
                        async move {
                            // The request body is read first, as an upload endpoint would.
                            let _ = req.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(b)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    o3.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend {
            name: name.to_owned(),
            addr,
            accepted,
            open,
            tasks,
        }
    }

    /// Stops listening and closes every connection.
    pub fn stop(&self) {
        self.tasks.lock().unwrap().abort_all();
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now (an aborted connection task is not counted down).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns the binary with `args`, waits for `<dir>/endpoints.json`, and returns the child and
/// the endpoints.
pub async fn spawn_with_endpoints(dir: &Path, args: &[&str]) -> (Child, serde_json::Value) {
    spawn_env(dir, args, &[]).await
}

/// [`spawn_with_endpoints`] with extra environment variables.
pub async fn spawn_env(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, serde_json::Value) {
    spawn_wrapped(dir, &[], args, env).await
}

/// [`spawn_env`] run through `wrap` (as `prlimit --nofile=1024 --`), when not empty.
pub async fn spawn_wrapped(
    dir: &Path,
    wrap: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    let endpoints = dir.join("endpoints.json");
    let _ = std::fs::remove_file(&endpoints);
    let mut cmd = match wrap.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let child = cmd
        .args(args)
        .envs(env.iter().copied())
        // TETHER_TEST_LOG=<filter> logs each process at that level into <dir>/stderr.log
        // (for chasing a failure; the test's own output stays readable). A test's directory
        // goes with its `TempDir`: keep it (`tempdir().unwrap().keep()`) while chasing.
        .env(
            "RUST_LOG",
            std::env::var("TETHER_TEST_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(match std::env::var("TETHER_TEST_LOG") {
            Ok(_) => Stdio::from(std::fs::File::create(dir.join("stderr.log")).unwrap()),
            Err(_) => Stdio::inherit(),
        })
        .spawn()
        .expect("spawn tether");
    wait_until("endpoints.json", Duration::from_secs(20), || {
        endpoints.exists()
    })
    .await;
    let v = serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    (child, v)
}

/// A running `tether up`.
pub struct Tether {
    pub child: Child,
    pub dir: PathBuf,
    pub api: String,
    pub proxy: String,
    pub admin: String,
    /// Every URL of endpoints.json.
    endpoints: serde_json::Value,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Tether {
    /// Starts `tether up` on ephemeral ports with its store in `dir`, and waits until ready.
    pub async fn up(dir: &Path, extra: &[&str]) -> Tether {
        Tether::up_wrapped(dir, &[], extra).await
    }

    /// [`Tether::up`] run through `wrap` (as `prlimit --nofile=1024 --`).
    pub async fn up_wrapped(dir: &Path, wrap: &[&str], extra: &[&str]) -> Tether {
        let d = dir.to_str().unwrap();
        let mut args = vec!["up"];
        // An `--api ADDR` among `extra` replaces the ephemeral one (a restart on one port).
        if !extra.contains(&"--api") {
            args.extend(["--api", "127.0.0.1:0"]);
        }
        args.extend([
            "--proxy",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
            d,
        ]);
        args.extend_from_slice(extra);
        let (child, v) = spawn_wrapped(dir, wrap, &args, &[]).await;
        Tether::ready(child, dir, &v).await
    }

    /// Starts `tether dataplane` following etcd, with its cache in `dir`. Waits until ready
    /// unless `wait` is false (etcd down and no cache).
    pub async fn dataplane(dir: &Path, etcd: &str, wait: bool) -> Tether {
        Tether::dataplane_env(dir, etcd, wait, &[]).await
    }

    /// `n` data planes following etcd, in `dir/dp0` … `dir/dp{n-1}`, each ready.
    pub async fn dataplanes(dir: &Path, etcd: &str, n: usize) -> Vec<Tether> {
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            nodes.push(Tether::dataplane(&dir.join(format!("dp{i}")), etcd, true).await);
        }
        nodes
    }

    /// [`Tether::dataplane`] with extra environment variables.
    pub async fn dataplane_env(dir: &Path, etcd: &str, wait: bool, env: &[(&str, &str)]) -> Tether {
        Tether::dataplane_of(dir, ["--etcd", etcd], wait, env).await
    }

    /// Starts `tether dataplane` reading its configuration from `source` (`--etcd URLS` or
    /// `--controlplane URL`), on free loopback ports, one proxy thread.
    async fn dataplane_of(
        dir: &Path,
        source: [&str; 2],
        wait: bool,
        env: &[(&str, &str)],
    ) -> Tether {
        Tether::dataplane_args(dir, source, wait, env, &[]).await
    }

    /// `tether dataplane` reading from `source` (`["--etcd", URLS]` or `["--controlplane",
    /// URL]`) with `extra` flags, on free loopback ports, one proxy thread.
    pub async fn dataplane_args(
        dir: &Path,
        source: [&str; 2],
        wait: bool,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Tether {
        let d = dir.to_str().unwrap();
        let mut args = vec![
            "dataplane",
            source[0],
            source[1],
            "--proxy",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--proxy-threads",
            "1",
            "--data-dir",
            d,
        ];
        args.extend_from_slice(extra);
        let (child, v) = spawn_env(dir, &args, env).await;
        if wait {
            Tether::ready(child, dir, &v).await
        } else {
            Tether::new(child, dir, &v)
        }
    }

    /// Starts `tether dataplane` following the control plane at `api` (its Watch stream).
    pub async fn dataplane_from(dir: &Path, api: &str) -> Tether {
        Tether::dataplane_from_env(dir, api, &[]).await
    }

    /// [`Tether::dataplane_from`] with extra environment variables.
    pub async fn dataplane_from_env(dir: &Path, api: &str, env: &[(&str, &str)]) -> Tether {
        Tether::dataplane_of(dir, ["--controlplane", api], true, env).await
    }

    fn new(child: Child, dir: &Path, v: &serde_json::Value) -> Tether {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Tether {
            child,
            dir: dir.to_owned(),
            api: s("api"),
            proxy: s("proxy"),
            admin: s("admin"),
            endpoints: v.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn ready(child: Child, dir: &Path, v: &serde_json::Value) -> Tether {
        let t = Tether::new(child, dir, v);
        let start = Instant::now();
        while t.admin_get("/readyz").await.0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tether never became ready"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        t
    }

    /// The URL of listener `name` in endpoints.json (`https`…).
    pub fn endpoint(&self, name: &str) -> String {
        self.endpoints[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {}", self.endpoints))
            .to_owned()
    }

    /// Runs a CLI command against this instance.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.api, args)
    }

    /// Runs a CLI command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(&self.api, args)
    }

    /// Applies YAML text; the revision written.
    pub fn apply(&self, yaml: &str) -> i64 {
        apply(&self.api, &self.dir, yaml, false)
    }

    async fn get(&self, url: String, header: Option<(&str, &str)>) -> (u16, String) {
        let mut req = hyper::Request::builder().uri(url);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let resp = self
            .client
            .request(req.body(Empty::new()).unwrap())
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// GET through the proxy with `x-user: key`.
    pub async fn request(&self, key: &str) -> (u16, String) {
        self.get(format!("{}/", self.proxy), Some(("x-user", key)))
            .await
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        tokio::time::timeout(
            Duration::from_secs(5),
            self.get(format!("{}{path}", self.admin), None),
        )
        .await
        .unwrap_or_default()
    }

    pub async fn state(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/state").await.1).unwrap()
    }

    /// Waits until the proxy applied `revision`.
    pub async fn wait_applied(&self, revision: i64) {
        self.wait_applied_within(revision, Duration::from_secs(10))
            .await;
    }

    /// [`Tether::wait_applied`], for up to `limit`.
    pub async fn wait_applied_within(&self, revision: i64, limit: Duration) {
        let start = Instant::now();
        loop {
            let s = self.state().await;
            if s["applied_revision"].as_i64().unwrap() >= revision {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "revision {revision} never applied: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the proxy sees `backend` as healthy (or not).
    pub async fn wait_health(&self, backend: &str, healthy: bool) {
        let start = Instant::now();
        loop {
            let s = self.state().await;
            let b = s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["name"] == backend)
                .cloned();
            if b.as_ref().is_some_and(|b| b["healthy"] == healthy) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{backend} never became healthy={healthy}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where each key goes now (status must be 200).
    pub async fn map(&self, keys: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let (status, body) = self.request(k).await;
            assert_eq!(status, 200, "key {k}: {body}");
            out.push(body);
        }
        out
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a CLI command against the API at `api`.
pub fn cli(api: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--server", api])
        .output()
        .expect("run tether")
}

/// Runs a CLI command that must succeed; its stdout.
pub fn ok(api: &str, args: &[&str]) -> String {
    let out = cli(api, args);
    assert!(
        out.status.success(),
        "tether {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Applies YAML text through the API at `api` (a temporary file in `dir`); the revision.
pub fn apply(api: &str, dir: &Path, yaml: &str, prune: bool) -> i64 {
    let f = dir.join(format!("apply-{}.yaml", fastrand_name()));
    std::fs::write(&f, yaml).unwrap();
    let mut args = vec!["apply", "-f", f.to_str().unwrap(), "-o", "json"];
    if prune {
        args.push("--prune");
    }
    let out = ok(api, &args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["revision"].as_i64().unwrap()
}

/// A running `tether controlplane` on etcd.
pub struct ControlPlane {
    pub child: Child,
    pub api: String,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`), as `http://…`.
    pub admin: String,
}

impl ControlPlane {
    pub async fn start(dir: &Path, etcd: &str) -> ControlPlane {
        ControlPlane::start_env(dir, etcd, &[]).await
    }

    /// [`ControlPlane::start`] with extra environment variables.
    pub async fn start_env(dir: &Path, etcd: &str, env: &[(&str, &str)]) -> ControlPlane {
        ControlPlane::start_with(dir, etcd, env, &[]).await
    }

    /// [`ControlPlane::start`] with extra environment variables and arguments.
    pub async fn start_with(
        dir: &Path,
        etcd: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> ControlPlane {
        let d = dir.to_str().unwrap();
        let mut args = vec![
            "controlplane",
            "--etcd",
            etcd,
            "--api",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--endpoints-dir",
            d,
        ];
        args.extend_from_slice(extra);
        let (child, v) = spawn_env(dir, &args, env).await;
        let api = v["api"].as_str().unwrap().to_owned();
        let admin = v["admin"].as_str().unwrap().to_owned();
        // Killed on drop even if the wait below panics.
        let cp = ControlPlane { child, api, admin };
        // Serving once a call gets an answer from it (whatever the store says).
        let start = Instant::now();
        loop {
            let out = cli(&cp.api, &["backend", "list"]);
            if !String::from_utf8_lossy(&out.stderr).contains("cannot reach the Tether API") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "controlplane never answered"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        cp
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fastrand_name() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A declarative file: backends (name, address), an optional probe on all of them, one shard
/// director "users" over them, and a route keyed on the `x-user` header.
pub fn config(backends: &[(&str, SocketAddr)], probe: bool) -> String {
    let mut y = String::new();
    if probe {
        y.push_str("probes:\n  - name: fast\n    interval: 100ms\n    timeout: 200ms\n    window: 3\n    threshold: 2\n");
    }
    y.push_str("backends:\n");
    for (n, a) in backends {
        y.push_str(&format!(
            "  - name: {n}\n    address: {a}\n    connect_timeout: 500ms\n"
        ));
        if probe {
            y.push_str("    probe: fast\n");
        }
    }
    y.push_str("directors:\n  - name: users\n    shard: { algorithm: varnish }\n    members:\n");
    for (n, _) in backends {
        y.push_str(&format!("      - backend: {n}\n"));
    }
    y.push_str("routes:\n  - name: app\n    director: users\n    key: { header: x-user }\n");
    y
}

/// Runs `promtool check metrics` on an exposition; panics with its complaints.
pub fn promtool_check_metrics(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Scrapes `url` as Prometheus does by default (OpenMetrics preferred): the answer must say
/// OpenMetrics and parse under the Prometheus project's own strict OpenMetrics parser
/// (Python's `prometheus_client`, which scripts/test installs). Returns the page.
pub fn openmetrics_check(url: &str) -> String {
    use std::io::Write;
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-D",
            "/dev/stderr",
            "-H",
            "Accept: application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            url,
        ])
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.ends_with("# EOF\n"), "{page}");
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nprint(len(list(p(sys.stdin.read()))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let parsed = child.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "OpenMetrics parser:\n{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    page
}

/// The first event of `kind` a Watch stream delivers within 10 s.
pub async fn next_watch_event(
    watch: &mut tonic::Streaming<tether_proto::v1::WatchResponse>,
    kind: &str,
) -> tether_proto::v1::WatchEvent {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a watch event")
            .unwrap()
            .expect("the stream went on");
        if let Some(e) = msg.events.into_iter().find(|e| e.kind == kind) {
            return e;
        }
    }
}

/// A Watch stream on the API at `api` from the current revision on.
pub async fn open_watch(api: &str) -> tonic::Streaming<tether_proto::v1::WatchResponse> {
    let mut client = tether_proto::v1::tether_client::TetherClient::connect(api.to_owned())
        .await
        .unwrap();
    client
        .watch(tether_proto::v1::WatchRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner()
}

/// Sends SIGTERM to `child` (a graceful stop).
pub fn sigterm(child: &Child) {
    signal(child, "TERM");
}

/// Sends signal `name` (`TERM`, `HUP`…) to `child`.
pub fn signal(child: &Child, name: &str) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([&format!("-{name}"), pid.as_str()])
            .status()
            .unwrap()
            .success()
    );
}
