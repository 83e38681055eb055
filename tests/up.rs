//! `tether up` end to end, through the real binary: stickiness, failover by admin override and
//! by probe, refusal of a bad Apply, durability across kill -9, and connection reuse across
//! configuration changes. Real sockets and real HTTP backends on loopback.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{Backend, Tether, config};

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

/// Keys whose backend changed between two maps.
fn moved(before: &[String], after: &[String]) -> Vec<usize> {
    (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stick_and_only_a_sick_backends_keys_move_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let b: Vec<Backend> = futures_join(["b1", "b2", "b3"]).await;
    let t = Tether::up(dir.path(), &[]).await;
    let rev = t.apply(&config(
        &[("b1", b[0].addr), ("b2", b[1].addr), ("b3", b[2].addr)],
        true,
    ));
    t.wait_applied(rev).await;
    for x in ["b1", "b2", "b3"] {
        t.wait_health(x, true).await;
    }

    // 1,000 keys, each always reaching the same backend; the load spreads over all three.
    let keys = keys(1000);
    let first = t.map(&keys).await;
    assert_eq!(
        t.map(&keys).await,
        first,
        "every key reaches the same backend again"
    );
    let mut per: HashMap<&str, usize> = HashMap::new();
    for v in &first {
        *per.entry(v.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    // The running system's explain agrees with the proxy.
    let explained = t.ok(&[
        "explain", "--route", "app", "--format", "csv", &keys[0], &keys[1], &keys[2],
    ]);
    for (line, got) in explained.lines().zip(&first) {
        assert_eq!(line.split(',').nth(1), Some(got.as_str()), "{explained}");
    }

    // Admin override: b1's keys, and only those, move to their alternates; then come back.
    t.ok(&["health", "set", "b1", "sick"]);
    t.wait_health("b1", false).await;
    let sick = t.map(&keys).await;
    let m = moved(&first, &sick);
    assert!(!m.is_empty());
    for &i in &m {
        assert_eq!(first[i], "b1", "only b1's keys move (key {})", keys[i]);
        assert_ne!(sick[i], "b1");
    }
    assert_eq!(m.len(), per["b1"], "all of b1's keys move");
    assert_eq!(t.map(&keys).await, sick, "the alternates are sticky too");
    t.ok(&["health", "set", "b1", "auto"]);
    t.wait_health("b1", true).await;
    assert_eq!(t.map(&keys).await, first, "restored: every key is back");

    // Probe: stop b2; once the probe marks it sick its keys move, and only those.
    b[1].stop();
    t.wait_health("b2", false).await;
    let down = t.map(&keys).await;
    let m = moved(&first, &down);
    assert_eq!(m.len(), per["b2"]);
    assert!(m.iter().all(|&i| first[i] == "b2"));
    // Same alternates as the admin override would give: the shard alt chain.
    let b2_again = Backend::start_at("b2", b[1].addr).await;
    t.wait_health("b2", true).await;
    assert_eq!(t.map(&keys).await, first, "b2 back: its keys return");
    drop(b2_again);

    let metrics = t.admin_get("/metrics").await.1;
    assert!(metrics.contains("tether_backend_requests_total{backend=\"b1\",status=\"200\"}"));
    assert!(metrics.contains("tether_health_transitions_total{backend=\"b2\"}"));
}

async fn futures_join<const N: usize>(names: [&str; N]) -> Vec<Backend> {
    let mut out = Vec::new();
    for n in names {
        out.push(Backend::start(n).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_apply_leaves_the_store_exactly_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let b = futures_join(["b1", "b2"]).await;
    let t = Tether::up(dir.path(), &[]).await;
    let good = config(&[("b1", b[0].addr), ("b2", b[1].addr)], false);
    let rev = t.apply(&good);
    let before: Vec<String> = ["backend", "director", "route", "probe"]
        .iter()
        .map(|k| t.ok(&[k, "list", "-o", "json"]))
        .collect();
    // One invalid field among valid, changed resources.
    let bad = config(
        &[("b1", b[0].addr), ("b2", b[1].addr), ("b3", b[1].addr)],
        true,
    )
    .replace("threshold: 2", "threshold: 9");
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, bad).unwrap();
    let out = t.cli(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("probes[0].threshold"), "{err}");
    let after: Vec<String> = ["backend", "director", "route", "probe"]
        .iter()
        .map(|k| t.ok(&[k, "list", "-o", "json"]))
        .collect();
    assert_eq!(before, after);
    assert_eq!(t.state().await["applied_revision"].as_i64(), Some(rev));
    // A dry run of a good change writes nothing either.
    let g = dir.path().join("more.yaml");
    std::fs::write(
        &g,
        config(
            &[("b1", b[0].addr), ("b2", b[1].addr), ("b3", b[1].addr)],
            false,
        ),
    )
    .unwrap();
    let dry = t.ok(&["apply", "-f", g.to_str().unwrap(), "--dry-run"]);
    assert!(
        dry.lines()
            .any(|l| l.starts_with("create") && l.contains("backend") && l.ends_with("b3")),
        "{dry}"
    );
    assert!(dry.contains("of keys move"), "{dry}");
    assert_eq!(before[0], t.ok(&["backend", "list", "-o", "json"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keeps_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let b = futures_join(["b1", "b2"]).await;
    let mut t = Tether::up(dir.path(), &[]).await;
    let rev = t.apply(&config(&[("b1", b[0].addr), ("b2", b[1].addr)], false));
    t.ok(&["health", "set", "b2", "sick"]);
    let listed: Vec<String> = ["backend", "director", "route"]
        .iter()
        .map(|k| t.ok(&[k, "list", "-o", "json"]))
        .collect();
    t.kill9();
    let t2 = Tether::up(dir.path(), &[]).await;
    let again: Vec<String> = ["backend", "director", "route"]
        .iter()
        .map(|k| t2.ok(&[k, "list", "-o", "json"]))
        .collect();
    assert_eq!(listed, again);
    assert!(t2.state().await["applied_revision"].as_i64().unwrap() > rev);
    let keys = keys(50);
    assert!(
        t2.map(&keys).await.iter().all(|b| b == "b1"),
        "b2 is still sick after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_leaves_a_backend_unchanged_does_not_reconnect_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = futures_join(["b1", "b2", "b3"]).await;
    // One proxy thread: idle connections are kept per thread, so with several threads a
    // request that lands on another thread opens that thread's first connection — a new
    // connection that is not a reconnection.
    let t = Tether::up(dir.path(), &["--proxy-threads", "1"]).await;
    let rev = t.apply(&config(&[("b1", b[0].addr), ("b2", b[1].addr)], false));
    t.wait_applied(rev).await;
    let keys = keys(200);
    // Sequential requests: one keep-alive connection per backend is enough.
    t.map(&keys).await;
    let b1_conns = b[0].accepted();
    assert!(b1_conns >= 1);
    // Add b3, and change b2's weight: b1's identity (name + address) is unchanged.
    let changed = config(
        &[("b1", b[0].addr), ("b2", b[1].addr), ("b3", b[2].addr)],
        false,
    )
    .replacen("connect_timeout: 500ms", "connect_timeout: 600ms", 1)
    .replace(
        "      - backend: b2\n",
        "      - backend: b2\n        weight: 2\n",
    );
    let rev2 = t.apply(&changed);
    assert!(rev2 > rev);
    t.wait_applied(rev2).await;
    let after = t.map(&keys).await;
    assert!(after.iter().any(|x| x == "b1"));
    assert!(after.iter().any(|x| x == "b3"));
    assert_eq!(b[0].accepted(), b1_conns, "b1 was not reconnected");
    // A backend whose address changes is a new identity: it gets a new connection.
    let moved_b1 = Backend::start("b1").await;
    let rev3 = t.apply(&changed.replace(&b[0].addr.to_string(), &moved_b1.addr.to_string()));
    t.wait_applied(rev3).await;
    t.map(&keys).await;
    assert!(moved_b1.accepted() >= 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_can_follow_the_control_plane_instead_of_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let b = futures_join(["b1", "b2", "b3"]).await;
    let t = Tether::up(&dir.path().join("up"), &[]).await;
    let node = Tether::dataplane_from(&dir.path().join("dp"), &t.api).await;
    let rev = t.apply(&config(
        &[("b1", b[0].addr), ("b2", b[1].addr), ("b3", b[2].addr)],
        false,
    ));
    t.wait_applied(rev).await;
    node.wait_applied(rev).await;
    let keys = keys(1000);
    let here = t.map(&keys).await;
    assert_eq!(
        node.map(&keys).await,
        here,
        "both proxies route every key alike"
    );
    t.ok(&["health", "set", "b1", "sick"]);
    t.wait_health("b1", false).await;
    node.wait_health("b1", false).await;
    assert_eq!(node.map(&keys).await, t.map(&keys).await);
    assert!(node.map(&keys).await.iter().all(|x| x != "b1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_into_head_ends_quietly_when_head_does() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    t.ok(&["backend", "create", "x1", "--address", "127.0.0.1:9"]);
    // The stream has nothing more to say after its first line: the watch must notice that its
    // reader left, not wait for a next change that never comes.
    let start = std::time::Instant::now();
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; timeout 10 {} watch --from 1 --server {} | head -1",
                support::BIN,
                t.api
            ),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("create\tbackend\tx1"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn completion_scripts_load_and_complete_subcommands() {
    // bash: the script loads and completes `tether bac` and `tether backend cr`.
    let script = format!(
        "source <({bin} completion bash) || exit 1
         COMP_WORDS=(tether bac); COMP_CWORD=1; _tether tether bac tether; echo \"${{COMPREPLY[@]}}\"
         COMP_WORDS=(tether backend cr); COMP_CWORD=2; _tether tether cr backend; echo \"${{COMPREPLY[@]}}\"",
        bin = support::BIN
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "backend\ncreate\n");
    // zsh and fish: scripts for them, naming the subcommands.
    for shell in ["zsh", "fish"] {
        let out = std::process::Command::new(support::BIN)
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("backend") && text.contains("dataplane"),
            "{shell}"
        );
    }
    let bad = std::process::Command::new(support::BIN)
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn server_commands_neither_show_nor_take_client_flags() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(support::BIN)
            .args(args)
            .env_remove("TETHER_SERVER")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_, up_help, _) = run(&["up", "--help"]);
    for flag in ["--server", "--token ", "--ca ", "--output"] {
        assert!(
            !up_help.contains(flag),
            "up --help shows {flag}:\n{up_help}"
        );
    }
    assert!(up_help.contains("--insecure"), "up reads --insecure");
    // A data plane following a control plane authenticates as a client: those flags stay.
    let (_, dp_help, _) = run(&["dataplane", "--help"]);
    assert!(
        dp_help.contains("--token") && !dp_help.contains("--server"),
        "{dp_help}"
    );
    let (_, list_help, _) = run(&["backend", "list", "--help"]);
    assert!(list_help.contains("--server") && list_help.contains("--output"));
    // Given anyway, before or after the subcommand: a usage error naming the flag.
    for args in [
        &["up", "--token", "t"][..],
        &[
            "--server",
            "h:1",
            "controlplane",
            "--etcd",
            "http://127.0.0.1:1",
        ],
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("is a client flag"), "{err}");
    }
    // The global flag still works before a client subcommand.
    let (code, _, err) = run(&["--server", "127.0.0.1:1", "backend", "list"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_takes_several_documents_several_files_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(&dir.path().join("t"), &[]).await;
    let b = [Backend::start("b1").await, Backend::start("b2").await];
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    // A sectioned file and a file of kubectl-style documents, one resource each.
    std::fs::write(
        conf.join("10-backends.yaml"),
        format!("backends:\n  - name: b1\n    address: {}\n", b[0].addr),
    )
    .unwrap();
    std::fs::write(
        conf.join("20-rest.yml"),
        format!(
            "kind: backend\nname: b2\naddress: {}\n---\nkind: Director\nname: users\nshard: {{algorithm: varnish}}\nmembers: [{{backend: b1}}, {{backend: b2}}]\n---\nkind: route\nname: app\ndirector: users\nkey: {{header: x-user}}\n",
            b[1].addr
        ),
    )
    .unwrap();
    std::fs::write(conf.join("notes.txt"), "not YAML: ignored").unwrap();
    let d = conf.to_str().unwrap();
    let out = t.ok(&["apply", "-f", d, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 4, "{v}");
    t.wait_applied(v["revision"].as_i64().unwrap()).await;
    let got = t
        .map(&(0..50).map(|i| format!("u{i}")).collect::<Vec<_>>())
        .await;
    assert!(got.iter().any(|x| x == "b1") && got.iter().any(|x| x == "b2"));

    // The same two files named one by one: nothing to change.
    let f1 = conf.join("10-backends.yaml");
    let f2 = conf.join("20-rest.yml");
    let out = t.ok(&[
        "apply",
        "-f",
        f1.to_str().unwrap(),
        "-f",
        f2.to_str().unwrap(),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 4, "{v}");
    assert!(changes.iter().all(|c| c["action"] == "unchanged"), "{v}");

    // An error in the second document names the file, the document and the field; nothing
    // is written.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: backend\nname: b3\naddress: 127.0.0.1:9\n---\nkind: backend\nname: b4\nweight: heavy\n").unwrap();
    let out = t.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("#2.weight"),
        "{err}"
    );
    let listed = t.ok(&["backend", "list"]);
    assert!(!listed.contains("b3"), "{listed}");
    // An unknown kind is refused by name.
    std::fs::write(&bad, "kind: gateway\nname: g\n").unwrap();
    let out = t.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"gateway\""));
}

/// `--log-format json`: every line of the process log is one JSON object (for log
/// collectors); the default text log has no colour codes when standard error is not a
/// terminal.
#[test]
fn the_log_is_json_lines_when_asked_and_plain_text_otherwise() {
    for (format, json) in [("json", true), ("text", false)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let child = std::process::Command::new(support::BIN)
            .args(["up", "--api", "127.0.0.1:0", "--proxy", "127.0.0.1:0"])
            .args([
                "--admin",
                "127.0.0.1:0",
                "--data-dir",
                d,
                "--log-format",
                format,
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let endpoints = dir.path().join("endpoints.json");
        let start = std::time::Instant::now();
        while !endpoints.exists() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        support::sigterm(&child);
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.lines().count() >= 2, "{log}");
        assert!(!log.contains('\u{1b}'), "colour codes in a pipe: {log}");
        for line in log.lines() {
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            if json {
                let v = parsed.unwrap_or_else(|e| panic!("{e}: {line}"));
                assert!(
                    v["level"].is_string() && v["fields"]["message"].is_string(),
                    "{line}"
                );
            } else {
                assert!(parsed.is_err(), "{line}");
                assert!(line.contains(" INFO ") || line.contains(" WARN "), "{line}");
            }
        }
    }
}

/// A balanced director grown by `apply -f` keeps its stored mapping: the file's own
/// first-apply mapping (a larger `base_slots`) used to be sent and move two thirds of the
/// keys instead of the third the new member takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_a_grown_balanced_director_moves_only_the_new_members_keys() {
    let b = futures_join(["b1", "b2", "b3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    let file = |n: usize| {
        let mut y = String::from("backends:\n");
        for (i, x) in b.iter().take(n).enumerate() {
            y.push_str(&format!(
                "  - {{ name: b{}, address: '{}' }}\n",
                i + 1,
                x.addr
            ));
        }
        y.push_str(
            "directors:\n  - name: users\n    shard: { algorithm: balanced }\n    members:\n",
        );
        for i in 0..n {
            y.push_str(&format!("      - backend: b{}\n", i + 1));
        }
        y.push_str("routes:\n  - name: app\n    director: users\n    key: { header: x-user }\n");
        y
    };
    t.wait_applied(t.apply(&file(2))).await;
    let keys = keys(1000);
    let before = t.map(&keys).await;
    t.wait_applied(t.apply(&file(3))).await;
    let after = t.map(&keys).await;
    let m = moved(&before, &after);
    assert!(
        m.iter().all(|&i| after[i] == "b3"),
        "keys moved between old members"
    );
    let share = m.len() as f64 / keys.len() as f64;
    assert!((0.2..0.45).contains(&share), "{share} of the keys moved");
    let d = t.ok(&["director", "get", "users"]);
    assert!(d.contains("base_slots: 2"), "{d}");
}
