//! Incoming requests as a whole, as the client sees them: per-route counters (status class,
//! end-to-end latency, bytes in and out), requests in flight, and the access log.
//!
//! Each request gets an [`Exchange`] when it arrives. The proxy fills in what it learns
//! (route, director, backend, alternate, status); a backend's response body carries it to the
//! end; dropping it — when the body is done, or the client went away — records the counters
//! and hands the log line to the [`AccessLog`]'s writer thread. Counting is a few relaxed
//! atomic adds per request; nothing is formatted unless the access log is on.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::config::{KeySpec, RouteSpec};
use crate::histogram::{Histogram, REQUEST_BUCKETS};
use crate::snapshot::Snapshot;

/// One route's counters (kept across revisions while the route keeps its name).
#[derive(Debug)]
pub struct RouteCounters {
    /// Responses by status class: 1xx … 5xx.
    classes: [AtomicU64; 5],
    /// From the request's arrival to its response's last byte (or the client leaving).
    latency: Histogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Default for RouteCounters {
    fn default() -> Self {
        RouteCounters {
            classes: Default::default(),
            latency: Histogram::new(REQUEST_BUCKETS),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

/// The whole node's request counters and its access log.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Per route name: its counters, handed to each snapshot (see [`Traffic::routes_for`]).
    routes: Mutex<FxHashMap<String, Arc<RouteCounters>>>,
    /// Requests no route took (404, and those refused before routing).
    unrouted: Arc<RouteCounters>,
    in_flight: AtomicI64,
    log: OnceLock<AccessLog>,
}

impl Traffic {
    /// The counters for `routes` (in their order), reusing those of routes that keep their
    /// name; the counters of routes gone are forgotten.
    pub fn routes_for(&self, routes: &[RouteSpec]) -> Vec<Arc<RouteCounters>> {
        let mut known = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let list: Vec<Arc<RouteCounters>> = routes
            .iter()
            .map(|r| Arc::clone(known.entry(r.name.clone()).or_default()))
            .collect();
        known.retain(|name, _| routes.iter().any(|r| r.name == *name));
        list
    }

    /// Turns the access log on (once; later calls are ignored and say so).
    pub fn set_access_log(&self, log: AccessLog) -> bool {
        self.log.set(log).is_ok()
    }

    /// The access log, if on.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.log.get()
    }

    /// Requests in progress (from arrival to the response's end).
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request arrived.
    pub fn begin(self: &Arc<Self>) -> Exchange {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Exchange {
            traffic: Arc::clone(self),
            route: None,
            started: Instant::now(),
            status: 0,
            bytes_out: 0,
            bytes_in: None,
            completed: false,
            log: None,
        }
    }

    /// The request families of `/metrics`, for the routes of the applied snapshot
    /// (`route=""`: requests no route took).
    pub fn write_metrics(&self, w: &mut String, routes: &[(&str, &Arc<RouteCounters>)]) {
        use std::fmt::Write as _;
        let all = || {
            routes
                .iter()
                .map(|(n, c)| (*n, *c))
                .chain(std::iter::once(("", &self.unrouted)))
        };
        let label = crate::exposition::label;
        let _ = writeln!(
            w,
            "# HELP tether_requests_total Client requests by route and status class (route=\"\": no route took them)."
        );
        let _ = writeln!(w, "# TYPE tether_requests_total counter");
        for (name, c) in all() {
            for (i, n) in c.classes.iter().enumerate() {
                let _ = writeln!(
                    w,
                    "tether_requests_total{{route=\"{}\",class=\"{}xx\"}} {}",
                    label(name),
                    i + 1,
                    n.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            w,
            "# HELP tether_request_duration_seconds From a request's arrival to its response's last byte, by route."
        );
        let _ = writeln!(w, "# TYPE tether_request_duration_seconds histogram");
        for (name, c) in all() {
            let labels = format!("route=\"{}\"", label(name));
            c.latency
                .write_prometheus(w, "tether_request_duration_seconds", &labels);
        }
        for (metric, help, get) in [
            (
                "tether_request_body_bytes_total",
                "Request body bytes read from clients, by route.",
                (|c| &c.bytes_in) as fn(&RouteCounters) -> &AtomicU64,
            ),
            (
                "tether_response_body_bytes_total",
                "Response body bytes sent to clients, by route.",
                |c| &c.bytes_out,
            ),
        ] {
            let _ = writeln!(w, "# HELP {metric} {help}");
            let _ = writeln!(w, "# TYPE {metric} counter");
            for (name, c) in all() {
                let _ = writeln!(
                    w,
                    "{metric}{{route=\"{}\"}} {}",
                    label(name),
                    get(c).load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            w,
            "# HELP tether_requests_in_flight Client requests received and not yet answered to the end."
        );
        let _ = writeln!(w, "# TYPE tether_requests_in_flight gauge");
        let _ = writeln!(w, "tether_requests_in_flight {}", self.in_flight());
        if let Some(log) = self.access_log() {
            crate::exposition::counters(
                w,
                &[(
                    "tether_access_log_dropped_total",
                    "Access log lines dropped because the writer fell behind.",
                    &log.dropped,
                )],
            );
        }
    }
}

/// Which of a route's key sources gave the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsed {
    /// The route's `key`.
    Key,
    /// Its `fallback_key` (the key was absent).
    Fallback,
    /// Neither was present: the URL.
    Url,
}

/// What the access log says about one request, gathered on the request's path with as few
/// allocations as it can (names are looked up in the snapshot, the URI and host are
/// reference-counted) and written out as JSON by the log's own thread.
#[derive(Debug)]
struct LogRecord {
    /// When the request arrived.
    time: SystemTime,
    /// The client as believed (`--trusted-proxies`, PROXY protocol; the peer for requests
    /// refused before routing).
    client: IpAddr,
    https: bool,
    method: http::Method,
    uri: http::Uri,
    host: Option<http::HeaderValue>,
    /// The snapshot the request was routed on (for the names of its route and backend).
    snap: Arc<Snapshot>,
    route: Option<usize>,
    key_used: Option<KeyUsed>,
    key: Option<String>,
    backend: Option<usize>,
    alternate: u32,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    upstream: Option<Duration>,
    total: Duration,
    completed: bool,
    error: Option<String>,
}

/// One access log line, as written.
#[derive(Debug, Serialize)]
struct Line<'a> {
    /// When the request arrived, RFC 3339 in UTC.
    time: String,
    client: IpAddr,
    /// `http` or `https`.
    listener: &'static str,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    /// The path, without the query (which may carry credentials).
    path: &'a str,
    /// The route that took it.
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    /// Where the key came from: `header:x-user`, `cookie:sid`, `query:id`, `client_ip`,
    /// `path` or `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    key_source: Option<String>,
    /// The key itself, with `--access-log-keys` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    director: Option<&'a str>,
    /// The backend that answered (or the last one tried).
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<&'a str>,
    /// The alternate it was: 0 the director's first choice, 1 the next after a failure…
    #[serde(skip_serializing_if = "Option::is_none")]
    alternate: Option<u32>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    /// Milliseconds from arrival to the backend's response head.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_ms: Option<f64>,
    /// Milliseconds from arrival to the response's last byte.
    total_ms: f64,
    /// Whether the response went out to its end (false: the client left, or the backend's
    /// body failed midway).
    completed: bool,
    /// The proxy's own error, when it answered itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl LogRecord {
    /// The line to write (on the log's thread).
    fn line(&self) -> Line<'_> {
        let route = self.route.and_then(|r| self.snap.config.routes.get(r));
        let key_source = route.zip(self.key_used).map(|(r, used)| {
            match used {
                KeyUsed::Key => Some(&r.key),
                KeyUsed::Fallback => r.fallback_key.as_ref(),
                KeyUsed::Url => None,
            }
            .map_or_else(|| "url".to_owned(), describe)
        });
        let backend = self
            .backend
            .and_then(|b| self.snap.config.backends.get(b))
            .map(|b| b.name.as_str());
        Line {
            time: time::OffsetDateTime::from(self.time)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            client: self.client,
            listener: if self.https { "https" } else { "http" },
            method: self.method.as_str(),
            host: self
                .uri
                .authority()
                .map(http::uri::Authority::as_str)
                .or_else(|| self.host.as_ref().and_then(|h| h.to_str().ok())),
            path: self.uri.path(),
            route: route.map(|r| r.name.as_str()),
            key_source,
            key: self.key.as_deref(),
            director: route.map(|r| r.director.as_str()),
            backend,
            alternate: backend.map(|_| self.alternate),
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            upstream_ms: self.upstream.map(millis),
            total_ms: millis(self.total),
            completed: self.completed,
            error: self.error.as_deref(),
        }
    }
}

/// One request on its way; dropping it records it.
#[derive(Debug)]
pub struct Exchange {
    traffic: Arc<Traffic>,
    route: Option<Arc<RouteCounters>>,
    started: Instant,
    status: u16,
    bytes_out: u64,
    /// Counted by the request body as the backend reads it (requests with a body only).
    bytes_in: Option<Arc<AtomicU64>>,
    completed: bool,
    log: Option<Box<LogRecord>>,
}

impl Exchange {
    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Starts the log record, if the access log is on: what the request head says, from
    /// `peer`, routed on `snap`.
    pub fn log_request(
        &mut self,
        https: bool,
        req: &http::request::Parts,
        peer: IpAddr,
        snap: &Arc<Snapshot>,
    ) {
        if self.traffic.log.get().is_none() {
            return;
        }
        self.log = Some(Box::new(LogRecord {
            time: SystemTime::now(),
            client: peer,
            https,
            method: req.method.clone(),
            uri: req.uri.clone(),
            host: req.headers.get(http::header::HOST).cloned(),
            snap: Arc::clone(snap),
            route: None,
            key_used: None,
            key: None,
            backend: None,
            alternate: 0,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream: None,
            total: Duration::ZERO,
            completed: false,
            error: None,
        }));
    }

    /// Whether the access log is on (so the caller fills in the record).
    pub fn logging(&self) -> bool {
        self.log.is_some()
    }

    /// Route `ri` of the snapshot took the request; these are its counters.
    pub fn routed(&mut self, counters: &Arc<RouteCounters>, ri: usize) {
        self.route = Some(Arc::clone(counters));
        if let Some(l) = self.log.as_mut() {
            l.route = Some(ri);
        }
    }

    /// The client, as believed (behind trusted proxies).
    pub fn client(&mut self, client: IpAddr) {
        if let Some(l) = self.log.as_mut() {
            l.client = client;
        }
    }

    /// Which of the route's sources gave the key, and (with `--access-log-keys`) the key.
    pub fn key(&mut self, used: KeyUsed, key: impl FnOnce() -> String) {
        let keys = self.traffic.log.get().is_some_and(|l| l.keys);
        if let Some(l) = self.log.as_mut() {
            l.key_used = Some(used);
            if keys {
                l.key = Some(key());
            }
        }
    }

    /// The director's pick (alternate `alt`) is backend `b` of the snapshot.
    pub fn backend(&mut self, b: usize, alt: u32) {
        if let Some(l) = self.log.as_mut() {
            l.backend = Some(b);
            l.alternate = alt;
        }
    }

    /// The backend's response head arrived.
    pub fn upstream_head(&mut self) {
        if let Some(l) = self.log.as_mut() {
            l.upstream = Some(self.started.elapsed());
        }
    }

    /// The proxy answered itself with this error.
    pub fn error(&mut self, e: &dyn std::fmt::Display) {
        if let Some(l) = self.log.as_mut() {
            l.error = Some(e.to_string());
        }
    }

    /// The response's status.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// The counter the request body adds its bytes to.
    pub fn body_counter(&mut self) -> Arc<AtomicU64> {
        Arc::clone(self.bytes_in.get_or_insert_with(Arc::default))
    }

    /// Response body bytes sent.
    #[inline]
    pub fn sent(&mut self, n: usize) {
        self.bytes_out += n as u64;
    }

    /// The response went out to its end.
    pub fn complete(&mut self) {
        self.completed = true;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        let bytes_in = self
            .bytes_in
            .as_ref()
            .map_or(0, |n| n.load(Ordering::Relaxed));
        // No status yet: the client went away first — NGINX's 499.
        let status = if self.status == 0 { 499 } else { self.status };
        let c = self.route.as_ref().unwrap_or(&self.traffic.unrouted);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        c.classes[class].fetch_add(1, Ordering::Relaxed);
        c.latency.observe(took);
        if bytes_in > 0 {
            c.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        }
        c.bytes_out.fetch_add(self.bytes_out, Ordering::Relaxed);
        self.traffic.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let (Some(mut l), Some(log)) = (self.log.take(), self.traffic.log.get()) {
            l.status = status;
            l.bytes_in = bytes_in;
            l.bytes_out = self.bytes_out;
            l.total = took;
            l.completed = self.completed;
            log.write(l);
        }
    }
}

/// Milliseconds to the microsecond (`0.392`, not `0.39232500000000003`).
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

/// A key source as the log names it.
fn describe(k: &KeySpec) -> String {
    match k {
        KeySpec::ClientIp => "client_ip".to_owned(),
        KeySpec::Header(h) => format!("header:{h}"),
        KeySpec::Cookie(c) => format!("cookie:{c}"),
        KeySpec::Query(q) => format!("query:{q}"),
        KeySpec::Url => "url".to_owned(),
        KeySpec::Path => "path".to_owned(),
    }
}

/// Records waiting for the writer at most; beyond, they are dropped and counted (a slow disk
/// must not stall requests or grow memory). At [`TICK`], 327,000 requests a second.
const QUEUE: usize = 16_384;

/// The writer wakes this often, writes what came, and flushes. Polling rather than waiting:
/// a request thread then hands a record over without ever waking another thread.
const TICK: Duration = Duration::from_millis(50);

/// Lines gathered before one write.
const WRITE_BYTES: usize = 64 * 1024;

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (`-`).
    Stdout,
    /// A file, appended to, reopened on SIGHUP (after log rotation).
    File(PathBuf),
}

impl std::str::FromStr for LogTarget {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "-" {
            LogTarget::Stdout
        } else {
            LogTarget::File(PathBuf::from(s))
        })
    }
}

/// Why the access log cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The file cannot be opened for appending.
    #[error("cannot open the access log {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The writer thread cannot start.
    #[error("cannot start the access log writer: {0}")]
    Thread(std::io::Error),
}

/// The access log: JSON lines, written by a thread of its own from a bounded queue.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Box<LogRecord>>,
    reopen: Arc<AtomicBool>,
    dropped: AtomicU64,
    /// Log the raw key (`--access-log-keys`).
    keys: bool,
}

impl AccessLog {
    /// Opens `target` and starts the writer; `keys`: log raw keys too.
    pub fn open(target: LogTarget, keys: bool) -> Result<AccessLog, AccessLogError> {
        let out = Output::open(&target)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&reopen);
        std::thread::Builder::new()
            .name("tether-access-log".into())
            .spawn(move || writer(&target, out, &rx, &flag))
            .map_err(AccessLogError::Thread)?;
        Ok(AccessLog {
            tx,
            reopen,
            dropped: AtomicU64::new(0),
            keys,
        })
    }

    /// Reopens the file (after it was rotated away), at the writer's next tick.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    fn write(&self, record: Box<LogRecord>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(record)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An open log output.
enum Output {
    Stdout(std::io::Stdout),
    File(std::fs::File),
}

impl Output {
    fn open(target: &LogTarget) -> Result<Output, AccessLogError> {
        Ok(match target {
            LogTarget::Stdout => Output::Stdout(std::io::stdout()),
            LogTarget::File(path) => Output::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AccessLogError::Open {
                        path: path.clone(),
                        source,
                    })?,
            ),
        })
    }

    /// Writes `buf` out and empties it.
    fn write(&mut self, buf: &mut Vec<u8>) {
        if buf.is_empty() {
            return;
        }
        let r = match self {
            Output::Stdout(s) => {
                let mut s = s.lock();
                s.write_all(buf).and_then(|()| s.flush())
            }
            Output::File(f) => f.write_all(buf),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "access log write failed");
        }
        buf.clear();
    }
}

/// The writer thread: every [`TICK`], writes the records that came (in [`WRITE_BYTES`]
/// writes), reopens the file when asked; ends when the log is dropped.
fn writer(target: &LogTarget, mut out: Output, rx: &Receiver<Box<LogRecord>>, reopen: &AtomicBool) {
    let mut buf = Vec::with_capacity(WRITE_BYTES + 4096);
    loop {
        let gone = loop {
            match rx.try_recv() {
                Ok(r) => {
                    if serde_json::to_writer(&mut buf, &r.line()).is_ok() {
                        buf.push(b'\n');
                    }
                    if buf.len() >= WRITE_BYTES {
                        out.write(&mut buf);
                    }
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        out.write(&mut buf);
        if reopen.swap(false, Ordering::Relaxed) {
            match Output::open(target) {
                Ok(o) => out = o,
                Err(e) => tracing::warn!(error = %e, "access log not reopened"),
            }
        }
        if gone {
            break;
        }
        std::thread::sleep(TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str) -> RouteSpec {
        RouteSpec {
            name: name.into(),
            hosts: Vec::new(),
            path_prefix: "/".into(),
            headers: Vec::new(),
            director: "d".into(),
            key: KeySpec::Header("x-user".into()),
            fallback_key: None,
            max_body_bytes: None,
            upgrades: Vec::new(),
            https: None,
            https_redirect: false,
        }
    }

    #[test]
    fn route_counters_outlive_revisions_by_name() {
        let t = Traffic::default();
        let first = t.routes_for(&[route("a"), route("b")]);
        let second = t.routes_for(&[route("b"), route("c")]);
        assert!(Arc::ptr_eq(&first[1], &second[0]), "b keeps its counters");
        let third = t.routes_for(&[route("a")]);
        assert!(!Arc::ptr_eq(&first[0], &third[0]), "a was gone in between");
    }

    #[test]
    fn an_exchange_counts_when_dropped() {
        let t = Arc::new(Traffic::default());
        let routes = t.routes_for(&[route("a")]);
        let mut ex = t.begin();
        assert_eq!(t.in_flight(), 1);
        ex.routed(&routes[0], 0);
        ex.set_status(503);
        ex.sent(10);
        ex.body_counter().fetch_add(7, Ordering::Relaxed);
        drop(ex);
        let unrouted = t.begin();
        drop(unrouted);
        assert_eq!(t.in_flight(), 0);
        let mut out = String::new();
        t.write_metrics(&mut out, &[("a", &routes[0])]);
        assert!(
            out.contains("tether_requests_total{route=\"a\",class=\"5xx\"} 1\n"),
            "{out}"
        );
        // No status: the client left before any answer (499, as NGINX logs it).
        assert!(
            out.contains("tether_requests_total{route=\"\",class=\"4xx\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("tether_request_body_bytes_total{route=\"a\"} 7\n"),
            "{out}"
        );
        assert!(
            out.contains("tether_response_body_bytes_total{route=\"a\"} 10\n"),
            "{out}"
        );
        assert!(
            out.contains("tether_request_duration_seconds_count{route=\"a\"} 1\n"),
            "{out}"
        );
    }
}
