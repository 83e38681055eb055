//! What a scrape of `/metrics` costs: Tether's hand-written exposition (the real page of a
//! node, `admin::metrics`) against the `prometheus-client` crate encoding the same per-backend
//! series from a registry. Issue 19 asked to adopt the crate unless the hand-written code is
//! measured faster where it matters; results and the command: docs/benchmarks.md.
//!
//! `cargo bench -p tether-dataplane --bench exposition`

mod common;

use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use common::config;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tether_dataplane::admin;
use tether_dataplane::director::Algorithm;
use tether_dataplane::histogram::LATENCY_BUCKETS;
use tether_dataplane::pool::Failure;
use tether_dataplane::runtime::Runtime;

const SIZES: [usize; 2] = [1_000, 10_000];

type Labels = Vec<(&'static str, String)>;

/// The per-backend families of the node's page, in prometheus-client: the same names, label
/// sets and histogram buckets, one series for each series Tether writes.
fn registry(n: usize) -> Registry {
    let mut reg = Registry::default();
    let gauges = [
        "tether_backend_healthy",
        "tether_backend_draining",
        "tether_backend_max_connections",
        "tether_backend_connections",
    ];
    let counters = [
        "tether_health_transitions",
        "tether_backend_connects",
        "tether_backend_connect_failures",
        "tether_backend_queued",
        "tether_backend_queue_timeouts",
        "tether_backend_resolve_failures",
    ];
    let backend = |i: usize| -> Labels { vec![("backend", format!("backend-{i:05}"))] };
    for name in gauges {
        let f = Family::<Labels, Gauge>::default();
        for i in 0..n {
            f.get_or_create(&backend(i)).set(1);
        }
        reg.register(name, "help", f);
    }
    let weight = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for i in 0..n {
        weight.get_or_create(&backend(i)).set(1.0);
    }
    reg.register("tether_backend_weight", "help", weight);
    for name in counters {
        let f = Family::<Labels, Counter>::default();
        for i in 0..n {
            f.get_or_create(&backend(i)).inc();
        }
        reg.register(name, "help", f);
    }
    let admin = Family::<Labels, Gauge>::default();
    for i in 0..n {
        for state in ["auto", "healthy", "sick"] {
            let mut l = backend(i);
            l.push(("state", state.to_owned()));
            admin.get_or_create(&l).set(i64::from(state == "auto"));
        }
    }
    reg.register("tether_backend_admin_state", "help", admin);
    let failures = Family::<Labels, Counter>::default();
    let probes = Family::<Labels, Counter>::default();
    for i in 0..n {
        for f in Failure::ALL {
            let mut l = backend(i);
            l.push(("cause", f.label().to_owned()));
            failures.get_or_create(&l).inc_by(0);
        }
        for result in ["good", "bad"] {
            let mut l = backend(i);
            l.push(("result", result.to_owned()));
            probes.get_or_create(&l).inc_by(0);
        }
    }
    reg.register("tether_backend_failures", "help", failures);
    reg.register("tether_probe_results", "help", probes);
    let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
        Histogram::new(LATENCY_BUCKETS.iter().copied())
    });
    for i in 0..n {
        latency.get_or_create(&backend(i)).observe(0.001);
    }
    reg.register("tether_backend_response_seconds", "help", latency);
    reg
}

/// Series (sample lines) on a page.
fn samples(page: &str) -> usize {
    page.lines().filter(|l| !l.starts_with('#')).count()
}

fn scrape(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrape");
    g.measurement_time(Duration::from_secs(5));
    for n in SIZES {
        let rt = Runtime::new();
        rt.apply(1, config(Algorithm::Balanced, n, None, false))
            .expect("the configuration builds");
        let reg = registry(n);
        let ours = admin::metrics(&rt);
        let mut theirs = String::new();
        encode(&mut theirs, &reg).expect("encodes");
        eprintln!(
            "{n} backends: hand-written {} series, {} bytes; prometheus-client {} series, {} bytes",
            samples(&ours),
            ours.len(),
            samples(&theirs),
            theirs.len()
        );
        g.bench_with_input(BenchmarkId::new("hand_written", n), &n, |b, _| {
            b.iter(|| black_box(admin::metrics(&rt)));
        });
        g.bench_with_input(BenchmarkId::new("prometheus_client", n), &n, |b, _| {
            b.iter(|| {
                let mut out = String::new();
                encode(&mut out, &reg).expect("encodes");
                black_box(out)
            });
        });
    }
    g.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);
