//! What the control plane counts for its admin listener's `/metrics` (`tether controlplane
//! --admin`): gRPC calls by method and code with their latency (a tower layer around the
//! server, [`MetricsLayer`]), store transactions' latency and conflicts (the write engine
//! records them), open Watch streams, the build and the standard `process_*` metrics.
//!
//! Hand-written exposition in the Prometheus text format, as the data plane's: one way of
//! writing metrics in the project, checked by `promtool check metrics` in the tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tether_dataplane::exposition::{counters, label};
use tether_dataplane::histogram::Histogram;
use tower::{Layer, Service};

/// Latency buckets in seconds (a Watch's head comes at once; an Apply of 10,000 resources
/// takes seconds).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Distinct (method, code) series kept; calls beyond are counted under method `other`, so a
/// client inventing method names cannot grow the map.
const MAX_SERIES: usize = 512;

/// The control plane's counters.
#[derive(Debug)]
pub struct ApiMetrics {
    calls: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Arc<Histogram>>>,
    txn: Histogram,
    conflicts: AtomicU64,
    discovery: Arc<crate::discovery::metrics::DiscoveryMetrics>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            calls: Mutex::default(),
            latency: Mutex::default(),
            txn: Histogram::new(BUCKETS),
            conflicts: AtomicU64::new(0),
            discovery: Arc::default(),
        }
    }
}

impl ApiMetrics {
    /// What DNS discovery counts (rendered with the rest; `tether up` adds it to its node's
    /// page).
    pub fn discovery(&self) -> Arc<crate::discovery::metrics::DiscoveryMetrics> {
        Arc::clone(&self.discovery)
    }

    /// Records one gRPC call: its method path, status and the time to its response head.
    pub fn call(&self, method: &str, code: tonic::Code, took: Duration) {
        let code = code_name(code);
        let method = {
            let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
            let known = calls.contains_key(&(method.to_owned(), code));
            let method = if known || calls.len() < MAX_SERIES {
                method
            } else {
                "other"
            };
            *calls.entry((method.to_owned(), code)).or_default() += 1;
            method.to_owned()
        };
        let h = {
            let mut l = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(
                l.entry(method)
                    .or_insert_with(|| Arc::new(Histogram::new(BUCKETS))),
            )
        };
        h.observe(took);
    }

    /// Records one store transaction of a write: how long it took, and whether another writer
    /// got in first (a compare failed; the write is retried).
    pub fn txn(&self, took: Duration, conflict: bool) {
        self.txn.observe(took);
        if conflict {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The exposition, with `watches` open Watch streams.
    pub fn render(&self, watches: usize) -> String {
        let mut w = String::new();
        tether_dataplane::build::write_metric(&mut w);
        let _ = writeln!(
            w,
            "# HELP tether_grpc_requests_total gRPC calls by method and status code."
        );
        let _ = writeln!(w, "# TYPE tether_grpc_requests_total counter");
        for ((method, code), n) in self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                w,
                "tether_grpc_requests_total{{method=\"{}\",code=\"{code}\"}} {n}",
                label(method)
            );
        }
        let _ = writeln!(
            w,
            "# HELP tether_grpc_request_duration_seconds Time from a call to its response head, by method."
        );
        let _ = writeln!(w, "# TYPE tether_grpc_request_duration_seconds histogram");
        let latency: Vec<(String, Arc<Histogram>)> = self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(m, h)| (m.clone(), Arc::clone(h)))
            .collect();
        for (method, h) in latency {
            let labels = format!("method=\"{}\"", label(&method));
            h.write_prometheus(&mut w, "tether_grpc_request_duration_seconds", &labels);
        }
        let _ = writeln!(
            w,
            "# HELP tether_store_txn_duration_seconds Store transactions of API writes, committed or not."
        );
        let _ = writeln!(w, "# TYPE tether_store_txn_duration_seconds histogram");
        self.txn
            .write_prometheus(&mut w, "tether_store_txn_duration_seconds", "");
        counters(
            &mut w,
            &[(
                "tether_store_txn_conflicts_total",
                "Write transactions another writer got ahead of (retried).",
                &self.conflicts,
            )],
        );
        let _ = writeln!(
            w,
            "# HELP tether_watch_streams_open Watch streams open now."
        );
        let _ = writeln!(w, "# TYPE tether_watch_streams_open gauge");
        let _ = writeln!(w, "tether_watch_streams_open {watches}");
        tether_dataplane::exposition::MetricsSource::write(&*self.discovery, &mut w);
        tether_dataplane::process_metrics::write(&mut w);
        w
    }
}

/// gRPC's name for a code, as grpc-go and Envoy label it.
fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code;
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Counts every call the gRPC server answers ([`ApiMetrics::call`]). The code is the
/// response head's `grpc-status` — where tonic puts every error it returns (a trailers-only
/// response) — and OK otherwise; a stream's later end is not counted again.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Arc<ApiMetrics>,
}

impl MetricsLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<ApiMetrics>) -> MetricsLayer {
        MetricsLayer { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// The [`MetricsLayer`]'s service.
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<ApiMetrics>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Metered<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let metrics = Arc::clone(&self.metrics);
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await;
            let code = match &resp {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from),
                Err(_) => tonic::Code::Unavailable,
            };
            metrics.call(&method, code, start.elapsed());
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ApiMetrics;

    #[test]
    fn calls_are_counted_by_method_and_code_within_a_bound() {
        let m = ApiMetrics::default();
        m.call(
            "/tether.v1.Tether/GetBackend",
            tonic::Code::Ok,
            Duration::from_millis(2),
        );
        m.call(
            "/tether.v1.Tether/GetBackend",
            tonic::Code::NotFound,
            Duration::from_millis(1),
        );
        for i in 0..1000 {
            m.call(
                &format!("/x/{i}"),
                tonic::Code::Unimplemented,
                Duration::ZERO,
            );
        }
        m.txn(Duration::from_millis(3), true);
        let text = m.render(2);
        assert!(text.contains(
            "tether_grpc_requests_total{method=\"/tether.v1.Tether/GetBackend\",code=\"NotFound\"} 1"
        ));
        assert!(
            text.contains("tether_grpc_requests_total{method=\"other\",code=\"Unimplemented\"}")
        );
        let series = text
            .lines()
            .filter(|l| l.starts_with("tether_grpc_requests_total{"))
            .count();
        assert!(series <= super::MAX_SERIES + 1, "{series}");
        assert!(text.contains("tether_store_txn_conflicts_total 1"));
        assert!(text.contains("tether_watch_streams_open 2"));
        assert!(text.contains(
            "tether_grpc_request_duration_seconds_bucket{method=\"/tether.v1.Tether/GetBackend\",le=\"0.0025\"} 2"
        ));
    }
}
