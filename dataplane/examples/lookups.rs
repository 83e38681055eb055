//! A lookup loop for instruction-level profiling (`valgrind --tool=callgrind`), where
//! wall-clock benchmarks on a shared VM are too noisy to compare small changes:
//!
//! `cargo build --release --example lookups -p tether-dataplane`
//! `valgrind --tool=callgrind --branch-sim=yes target/release/examples/lookups balanced 100 200000`
//!
//! A fourth argument `base` gives the balanced director a flat base covering it
//! (`base_slots` = the power of two at or above N), as the control plane does.

#[path = "../benches/common.rs"]
mod common;

use std::hint::black_box;

use common::config_with_base;
use tether_dataplane::director::{
    Algorithm, BackendId, Directors, HealthView, Key, KeySource, SelectOpts,
};

struct AllHealthy;

impl HealthView for AllHealthy {
    fn is_healthy(&self, _: BackendId) -> bool {
        true
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let algorithm = match args.get(1).map(String::as_str) {
        Some("varnish") => Algorithm::Varnish,
        _ => Algorithm::Balanced,
    };
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let lookups: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let base = match args.get(4).map(String::as_str) {
        Some("base") => n.next_power_of_two() as u32,
        _ => 1,
    };
    let config = config_with_base(algorithm, n, None, false, base);
    let set = Directors::build(&config, None).expect("build");
    let d = set.id("d").expect("director");
    // 16-byte keys, all distinct (no repeating pattern for a branch predictor to learn).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut hits = 0u64;
    for _ in 0..lookups {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&x.to_le_bytes());
        k[8..].copy_from_slice(&(!x).to_le_bytes());
        let key = Key::new(KeySource::Bytes(&k));
        if let Ok(Some(b)) = black_box(set.select(d, &key, SelectOpts::default(), &AllHealthy)) {
            hits += u64::from(b);
        }
    }
    println!("{hits}");
}
