//! Director benchmarks (criterion): lookup cost including key hashing, and the cost of
//! applying a one-member change. Results and the command: docs/benchmarks.md.
//!
//! `cargo bench -p tether-dataplane --bench directors`

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Table, config, config_with_base, keys, ten_percent_sick};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tether_dataplane::director::{Algorithm, Directors, Key, KeySource, SelectOpts};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn algorithms() -> [(Algorithm, &'static str); 2] {
    [
        (Algorithm::Balanced, "balanced"),
        (Algorithm::Varnish, "varnish"),
    ]
}

/// 65,536 keys of 16 bytes in one flat buffer (1 MiB, cache-resident): a request's key is hot
/// in cache (it was just parsed), so the benchmark should not measure cache misses on the key
/// itself. Not fewer keys: with 4,096 the branch predictor partly learns the sequence and
/// flatters branchy code by several ns per lookup.
fn flat_keys() -> Vec<[u8; 16]> {
    keys(1 << 16, 0x7e7e)
        .iter()
        .map(|k| k.as_bytes().try_into().expect("16 bytes"))
        .collect()
}

/// Variants measured for lookups: balanced fully nested, balanced with a flat base sized to
/// the director (`base_slots` = the power of two ≥ N), and varnish.
fn lookup_variants(n: usize) -> [(Algorithm, &'static str, u32); 3] {
    [
        (Algorithm::Balanced, "balanced", 1),
        (
            Algorithm::Balanced,
            "balanced_base",
            n.next_power_of_two() as u32,
        ),
        (Algorithm::Varnish, "varnish", 1),
    ]
}

fn lookup(c: &mut Criterion) {
    let ks = flat_keys();
    let mut g = c.benchmark_group("lookup");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    for n in SIZES {
        for (algo, algo_name, base) in lookup_variants(n) {
            let set = Directors::build(&config_with_base(algo, n, None, false, base), None)
                .expect("build");
            let d = set.id("d").expect("director");
            let all = Table(vec![true; n + 1]);
            let sick = ten_percent_sick(n);
            for (health, health_name) in [(&all, "0pct_sick"), (&sick, "10pct_sick")] {
                for alt in [0u32, 1] {
                    if alt == 1 && health_name != "0pct_sick" {
                        continue;
                    }
                    let id = BenchmarkId::new(format!("{algo_name}/{health_name}/alt{alt}"), n);
                    let opts = SelectOpts { alt, healthy: None };
                    g.bench_function(id, |b| {
                        let mut i = 0usize;
                        b.iter(|| {
                            i = (i + 1) & (ks.len() - 1);
                            let key = Key::new(KeySource::Bytes(&ks[i]));
                            black_box(set.select(d, &key, opts, health as &Table))
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

fn hash_baselines(c: &mut Criterion) {
    // The floors: hashing the key alone (SHA-256 for varnish, xxh3 for balanced).
    let ks = flat_keys();
    let mut g = c.benchmark_group("baseline");
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("h32_sha256_16B", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & (ks.len() - 1);
            black_box(Key::new(KeySource::Bytes(&ks[i])).h32())
        })
    });
    g.bench_function("sha256_digest_api_16B", |b| {
        // SHA-256 through the sha2 crate's streaming API, for comparison with H32's one-block path.
        use sha2::{Digest, Sha256};
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & (ks.len() - 1);
            black_box(Sha256::digest(ks[i]))
        })
    });
    g.bench_function("xxh3_16B", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & (ks.len() - 1);
            black_box(Key::new(KeySource::Bytes(&ks[i])).h64())
        })
    });
    g.finish();
}

fn one_member_change(c: &mut Criterion) {
    let n = 10_000;
    let mut g = c.benchmark_group("apply_one_member_change");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));
    for (algo, algo_name) in algorithms() {
        let base_cfg = config(algo, n, None, false);
        let base = Directors::build(&base_cfg, None).expect("build");
        let removed = config(algo, n, Some(n / 2), false);
        let added = config(algo, n, None, true);
        g.bench_function(format!("{algo_name}/remove/{n}"), |b| {
            b.iter(|| black_box(Directors::build(&removed, Some(&base)).expect("build")))
        });
        g.bench_function(format!("{algo_name}/add/{n}"), |b| {
            b.iter(|| black_box(Directors::build(&added, Some(&base)).expect("build")))
        });
        g.bench_function(format!("{algo_name}/from_scratch/{n}"), |b| {
            b.iter(|| black_box(Directors::build(&base_cfg, None).expect("build")))
        });
    }
    g.finish();
}

criterion_group!(benches, lookup, hash_baselines, one_member_change);
criterion_main!(benches);
