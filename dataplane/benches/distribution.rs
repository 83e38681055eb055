//! Distribution report: max/avg load over 1,000,000 keys, and keys moved when one member is
//! removed (as a multiple of the ideal 1/N, plus keys that moved needlessly), for both shard
//! algorithms at N = 10, 100, 1,000, 10,000. Results: docs/benchmarks.md.
//!
//! `cargo bench -p tether-dataplane --bench distribution`

mod common;

use common::{Table, config, keys};
use tether_dataplane::director::{Algorithm, Directors, Key, SelectOpts};

fn mapping(set: &Directors, ks: &[String], health: &Table) -> Vec<u32> {
    let d = set.id("d").expect("director");
    ks.iter()
        .map(|k| {
            set.select(d, &Key::str(k), SelectOpts::default(), health)
                .expect("select")
                .unwrap_or(u32::MAX)
        })
        .collect()
}

fn main() {
    // `cargo bench` passes --bench; anything else (e.g. a filter) is ignored.
    let ks = keys(1_000_000, 42);
    println!(
        "| algorithm | N | max/avg load (1M keys) | keys moved on 1 removal, x ideal 1/N | needless moves |"
    );
    println!("|---|---|---|---|---|");
    for (algo, name) in [
        (Algorithm::Balanced, "balanced"),
        (Algorithm::Varnish, "varnish"),
    ] {
        for n in [10usize, 100, 1_000, 10_000] {
            let all = Table(vec![true; n + 1]);
            let before = mapping(
                &Directors::build(&config(algo, n, None, false), None).expect("build"),
                &ks,
                &all,
            );
            let mut load = vec![0usize; n + 1];
            for &b in &before {
                load[b as usize] += 1;
            }
            let max = *load.iter().max().expect("load") as f64;
            let avg = ks.len() as f64 / n as f64;
            let victim = (n / 2) as u32;
            let after = mapping(
                &Directors::build(&config(algo, n, Some(n / 2), false), None).expect("build"),
                &ks,
                &all,
            );
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let needless = before
                .iter()
                .zip(&after)
                .filter(|(a, b)| a != b && **a != victim)
                .count();
            let ideal = ks.len() as f64 / n as f64;
            println!(
                "| {name} | {n} | {:.3} | {:.2}x | {needless} |",
                max / avg,
                moved as f64 / ideal
            );
        }
    }
}
