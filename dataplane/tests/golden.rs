//! Golden vectors: the shard director's mapping is a compatibility contract.
//!
//! - `golden/varnish_*.csv` come from a real varnishd 7.1.1 (`golden/generate_varnish.py`):
//!   every row must match bit for bit, with the same sick backends, `alt` and `healthy`.
//! - `golden/balanced.csv` pins Tether's own algorithm so that a change to it is deliberate:
//!   when the mapping changes the test fails and writes the new rows to
//!   `target/tmp/balanced.csv`; copy them over the pinned file once reviewed. No environment
//!   variable makes it pass.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{SickSet, build, shard_config, uniform};
use tether_dataplane::director::{Algorithm, HealthyMode, Key, SelectOpts};

const WEIGHTS: [f64; 10] = [1.0, 2.0, 1.5, 3.0, 1.0, 0.5, 10.0, 1.0, 2.7, 1.0];

type Members = Vec<(String, f64, Option<String>, Option<u32>)>;

/// The scenarios of generate_varnish.py, member for member.
fn varnish_scenario(name: &str) -> (u32, Members) {
    let m =
        |b: &str, w: f64, ident: Option<&str>| (b.to_owned(), w, ident.map(str::to_owned), None);
    let ten: Members = WEIGHTS
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            m(
                &format!("b{i}"),
                w,
                (i == 3).then_some("node-3.example:8080"),
            )
        })
        .collect();
    match name {
        "ten" | "ten_many" => (67, ten),
        "dup_ident" => (
            67,
            vec![
                m("b0", 1.0, None),
                m("b1", 1.0, None),
                m("b2", 1.0, Some("b1")),
                m("b3", 2.0, None),
            ],
        ),
        "two_points" => (1, vec![m("b0", 1.0, None), m("b1", 1.0, None)]),
        "three_points" => (
            1,
            vec![m("b0", 1.0, None), m("b1", 1.0, None), m("b2", 1.0, None)],
        ),
        "collide" => (
            67,
            vec![
                m("b0", 1.0, Some("m-1")),
                m("b1", 1.0, Some("m-15")),
                m("b2", 1.0, Some("m-150")),
                m("b3", 1.0, Some("m-2")),
            ],
        ),
        "collide_rev" => (
            67,
            vec![
                m("b2", 1.0, Some("m-150")),
                m("b1", 1.0, Some("m-15")),
                m("b0", 1.0, Some("m-1")),
                m("b3", 1.0, Some("m-2")),
            ],
        ),
        "int_keys" => (67, (0..5).map(|i| m(&format!("b{i}"), 1.0, None)).collect()),
        other => panic!("unknown scenario {other}"),
    }
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn rows(file: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(golden_dir().join(file)).expect("golden file");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .skip(1)
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

fn mode(s: &str) -> HealthyMode {
    match s {
        "chosen" => HealthyMode::Chosen,
        "ignore" => HealthyMode::Ignore,
        "all" => HealthyMode::All,
        other => panic!("mode {other}"),
    }
}

#[test]
fn varnish_matches_varnishd_7_1_1() {
    let mut total = 0;
    for scenario in [
        "ten",
        "ten_many",
        "dup_ident",
        "two_points",
        "three_points",
        "collide",
        "collide_rev",
        "int_keys",
    ] {
        let (replicas, members) = varnish_scenario(scenario);
        let config = shard_config(Algorithm::Varnish, replicas, &members);
        let set = build(&config);
        let d = set.id("d").expect("director");
        let ids: HashMap<&str, u32> = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i as u32))
            .collect();
        let mut mismatches = Vec::new();
        for row in rows(&format!("varnish_{scenario}.csv")) {
            let [sick, healthy, alt, key, want] = &row[..] else {
                panic!("bad row {row:?}");
            };
            let health = SickSet(if sick == "-" {
                Default::default()
            } else {
                sick.split('+').map(|b| ids[b]).collect()
            });
            let k = match key.strip_prefix('#') {
                Some(int) => Key::int(int.parse().expect("int key")),
                None => Key::str(key),
            };
            let opts = SelectOpts {
                alt: alt.parse().expect("alt"),
                healthy: Some(mode(healthy)),
            };
            let got = set
                .select(d, &k, opts, &health)
                .expect("select")
                .map_or("", |b| set.backend_name(b));
            if got != want {
                mismatches.push(format!("{row:?}: got {got:?}"));
            }
            total += 1;
        }
        assert!(
            mismatches.is_empty(),
            "{scenario}: {} mismatches, first: {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(5)]
        );
    }
    assert!(total > 40_000, "only {total} vectors");
}

/// Balanced scenarios: 10 uniform members; weighted; with two sick; alt 0..2.
fn balanced_rows() -> Vec<String> {
    let mut out = Vec::new();
    let weighted: Members = WEIGHTS
        .iter()
        .enumerate()
        .map(|(i, &w)| (format!("b{i}"), w, None, Some(i as u32 * 3)))
        .collect();
    for (name, members, base) in [
        ("uniform", uniform(10), 1),
        ("weighted", weighted, 1),
        ("base16", uniform(10), 16),
    ] {
        let mut config = shard_config(Algorithm::Balanced, 67, &members);
        if let tether_dataplane::config::Policy::Shard(s) =
            &mut std::sync::Arc::make_mut(&mut config.directors[0]).policy
        {
            s.base_slots = base;
        }
        let set = build(&config);
        let d = set.id("d").expect("director");
        for sick in [vec![], vec![2u32, 6]] {
            let health = SickSet(sick.iter().copied().collect());
            for alt in 0..3 {
                for i in 0..300 {
                    let key = format!("user-{i}");
                    let got = set
                        .select(
                            d,
                            &Key::str(&key),
                            SelectOpts { alt, healthy: None },
                            &health,
                        )
                        .expect("select")
                        .map_or("", |b| set.backend_name(b));
                    let sick_s: Vec<String> = sick.iter().map(|s| s.to_string()).collect();
                    out.push(format!(
                        "{name},{},{alt},{key},{got}",
                        if sick.is_empty() {
                            "-".into()
                        } else {
                            sick_s.join("+")
                        }
                    ));
                }
            }
        }
        for int in [0u64, 1, u64::MAX, 1 << 40] {
            let got = set
                .select(
                    d,
                    &Key::int(int),
                    SelectOpts::default(),
                    &SickSet::default(),
                )
                .expect("select")
                .map_or("", |b| set.backend_name(b));
            out.push(format!("{name},-,0,#{int},{got}"));
        }
    }
    out
}

#[test]
fn balanced_matches_its_pinned_vectors() {
    let path = golden_dir().join("balanced.csv");
    let got = balanced_rows();
    let want: Vec<String> = std::fs::read_to_string(&path)
        .expect("balanced.csv")
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect();
    if got == want {
        return;
    }
    // Never rewritten by the test itself: a changed mapping fails until a person has looked at
    // it and copied the new rows over the pinned file.
    let review = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("balanced.csv");
    let body = format!("scenario,sick,alt,key,backend\n{}\n", got.join("\n"));
    std::fs::write(&review, body).expect("write the rows to review");
    let diff: Vec<_> = got
        .iter()
        .zip(&want)
        .filter(|(g, w)| g != w)
        .take(5)
        .collect();
    panic!(
        "balanced mapping changed ({} rows now, {} pinned; first differences {diff:?}); the new rows are in {} — if the change is intended, review them and copy them over {}",
        got.len(),
        want.len(),
        review.display(),
        path.display()
    );
}
