//! Label-selected director members through the real binaries: backends created with
//! `tether backend create --label` join a director that selects them without the director
//! being rewritten; a fourth moves only the keys it takes; a label change or a delete moves
//! only that backend's keys; `apply --dry-run` reports the keys a new match would move; on
//! etcd every node computes the same members.
#![allow(clippy::unwrap_used)]

mod support;

use support::etcd::Etcd;
use support::{Backend, ControlPlane, Tether};

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

fn director_yaml(algorithm: &str) -> String {
    format!(
        "directors:\n  - name: users\n    shard: {{ algorithm: {algorithm} }}\n    members:\n      - selector: {{ app: web }}\nroutes:\n  - name: app\n    director: users\n    key: {{ header: x-user }}\n"
    )
}

/// The store revision a CLI write printed (`created at revision N` and the like).
fn revision_of(out: &str) -> i64 {
    out.split_whitespace()
        .filter_map(|w| w.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no revision in {out:?}"))
}

/// Checks that between `before` and `after` only keys that went to `to` (or left `from`)
/// changed, and returns the share that moved.
fn moved(before: &[String], after: &[String], from: Option<&str>, to: Option<&str>) -> f64 {
    let mut n = 0;
    for (b, a) in before.iter().zip(after) {
        if a != b {
            n += 1;
            if let Some(to) = to {
                assert_eq!(a, to, "a key moved from {b} to {a}, not to the new member");
            }
            if let Some(from) = from {
                assert_eq!(b, from, "a key moved from {b} to {a}, not off {from}");
            }
        }
    }
    n as f64 / before.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_backends_join_and_leave_moving_only_their_keys() {
    let web: Vec<Backend> = vec![
        Backend::start("w1").await,
        Backend::start("w2").await,
        Backend::start("w3").await,
        Backend::start("w4").await,
    ];
    let api = Backend::start("api1").await;
    let keys = keys(1000);
    for algorithm in ["balanced", "varnish"] {
        let dir = tempfile::tempdir().unwrap();
        let t = Tether::up(dir.path(), &[]).await;
        t.apply(&director_yaml(algorithm));
        // Nothing selected yet: an empty director answers 503, as when all are sick.
        assert_eq!(t.request("k").await.0, 503, "{algorithm}");
        let create = |name: &str, addr: std::net::SocketAddr, app: &str| {
            let label = format!("app={app}");
            revision_of(&t.ok(&[
                "backend",
                "create",
                name,
                "--address",
                &addr.to_string(),
                "--label",
                &label,
            ]))
        };
        for (i, b) in web.iter().take(3).enumerate() {
            create(&format!("w{}", i + 1), b.addr, "web");
        }
        let rev = create("api1", api.addr, "api");
        t.wait_applied(rev).await;
        let three = t.map(&keys).await;
        for name in ["w1", "w2", "w3"] {
            let share = three.iter().filter(|b| *b == name).count() as f64 / 1000.0;
            assert!((0.2..0.47).contains(&share), "{algorithm} {name}: {share}");
        }
        assert!(!three.iter().any(|b| b == "api1"), "{algorithm}");

        // A fourth: only the keys it takes move, about a quarter.
        let rev = create("w4", web[3].addr, "web");
        t.wait_applied(rev).await;
        let four = t.map(&keys).await;
        let share = moved(&three, &four, None, Some("w4"));
        assert!((0.15..0.35).contains(&share), "{algorithm}: {share} moved");

        // The director shows its selector; balanced stores each match's slot with it.
        let d: serde_json::Value =
            serde_json::from_str(&t.ok(&["director", "get", "users", "-o", "json"])).unwrap();
        assert_eq!(
            d["members"][0]["selector"],
            serde_json::json!({"app": "web"})
        );
        if algorithm == "balanced" {
            let slots = d["selector_slots"].as_object().unwrap();
            assert_eq!(slots.len(), 4, "{d}");
        } else {
            assert!(d.get("selector_slots").is_none(), "{d}");
        }

        // A label change takes w2 out: only its keys move.
        let out = t.ok(&["backend", "set", "w2", "--label", "app=old"]);
        t.wait_applied(revision_of(&out)).await;
        let without = t.map(&keys).await;
        moved(&four, &without, Some("w2"), None);
        assert!(!without.iter().any(|b| b == "w2"));

        // A dry run of a new matching backend reports the keys it would take.
        let file = dir.path().join("w5.yaml");
        std::fs::write(
            &file,
            format!(
                "backends:\n  - {{ name: w5, address: '{}', labels: {{ app: web }} }}\n",
                web[0].addr
            ),
        )
        .unwrap();
        let out = t.ok(&[
            "apply",
            "--dry-run",
            "-o",
            "json",
            "-f",
            file.to_str().unwrap(),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let share = v["keys_moved"][0]["share"].as_f64().unwrap_or(0.0);
        assert_eq!(v["keys_moved"][0]["director"], "users", "{v}");
        assert!((0.1..0.5).contains(&share), "{algorithm}: {v}");
        // explain --route reflects the members too.
        let explained = t.ok(&["explain", "--route", "app", "user-1", "user-2"]);
        assert!(!explained.contains("w2"), "{explained}");

        // A delete: only its keys move; the last one gone leaves the director empty.
        delete(&t, "w4").await;
        let after = t.map(&keys).await;
        moved(&without, &after, Some("w4"), None);
        delete(&t, "w1").await;
        delete(&t, "w3").await;
        assert_eq!(t.request("k").await.0, 503, "{algorithm}");
    }
}

/// Deletes a backend and waits until the proxy applied the delete (the CLI prints no
/// revision for it).
async fn delete(t: &Tether, name: &str) {
    let applied = t.state().await["applied_revision"].as_i64().unwrap();
    t.ok(&["backend", "delete", name]);
    t.wait_applied(applied + 1).await;
}

/// On etcd, three data planes compute the same selected members at every revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_selects_the_same_members() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let web = [
        Backend::start("w1").await,
        Backend::start("w2").await,
        Backend::start("w3").await,
        Backend::start("w4").await,
    ];
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let nodes = Tether::dataplanes(dir.path(), &etcd.urls(), 3).await;
    support::apply(&cp.api, dir.path(), &director_yaml("balanced"), false);
    let keys = keys(500);
    let mut last = Vec::new();
    for (i, b) in web.iter().enumerate() {
        let name = format!("w{}", i + 1);
        let out = support::ok(
            &cp.api,
            &[
                "backend",
                "create",
                &name,
                "--address",
                &b.addr.to_string(),
                "--label",
                "app=web",
            ],
        );
        let rev = revision_of(&out);
        for n in &nodes {
            n.wait_applied(rev).await;
        }
        let maps = [
            nodes[0].map(&keys).await,
            nodes[1].map(&keys).await,
            nodes[2].map(&keys).await,
        ];
        assert_eq!(maps[0], maps[1], "after {name}");
        assert_eq!(maps[0], maps[2], "after {name}");
        if !last.is_empty() {
            moved(&last, &maps[0], None, Some(&name));
        }
        last = maps[0].clone();
    }
}

/// A balanced director created with a selector gets a flat base for what the selector
/// matches then (three backends: 4), not for its one-entry member list (1, which nests every
/// level and makes lookups 2-3x slower), and keeps it as backends come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_director_is_created_with_a_base_for_its_matches() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    let mut yaml = String::from("backends:\n");
    for i in 1..=3 {
        yaml.push_str(&format!(
            "  - {{ name: w{i}, address: '127.0.0.1:{}', labels: {{ app: web }} }}\n",
            9000 + i
        ));
    }
    yaml.push_str(&director_yaml("balanced"));
    t.apply(&yaml);
    let base = |t: &Tether| -> serde_json::Value {
        let d: serde_json::Value =
            serde_json::from_str(&t.ok(&["director", "get", "users", "-o", "json"])).unwrap();
        d["shard"]["base_slots"].clone()
    };
    assert_eq!(base(&t), 4);
    t.ok(&[
        "backend",
        "create",
        "w9",
        "--address",
        "127.0.0.1:9009",
        "--label",
        "app=web",
    ]);
    assert_eq!(base(&t), 4);
}
