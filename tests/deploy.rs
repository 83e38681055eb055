//! `deploy/` is checked by the tools its formats have (scripts/test installs them when
//! missing): hadolint for the Dockerfile, kubernetes-validate for the manifests, the Compose
//! specification's JSON Schema for the compose file, promtool for the alerting rules and for a
//! live node's `/metrics`, `systemd-analyze verify` for the units; the compose demo's
//! declarative file loads. The declarative file's JSON Schema (`tether schema`, kept in
//! `docs/declarative.schema.json`) validates the examples with check-jsonschema and rejects
//! bad files.

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic

mod support;

use std::path::Path;
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tool args` in the repository root; panics with its output unless it succeeds.
fn check(tool: &str, args: &[&str]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (scripts/test installs it)"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn files(dir: &str, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| p.strip_prefix(root()).unwrap().to_str().unwrap().to_owned())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {ext} files in {dir}");
    v
}

#[test]
fn the_dockerfile_passes_hadolint() {
    check("hadolint", &["deploy/Dockerfile"]);
}

#[test]
fn the_kubernetes_manifests_validate_strictly() {
    let f = files("deploy/kubernetes", "yaml");
    let mut args = vec!["--strict", "--quiet"];
    args.extend(f.iter().map(String::as_str));
    check("kubernetes-validate", &args);
}

#[test]
fn the_compose_file_follows_the_compose_specification_and_its_demo_loads() {
    check(
        "check-jsonschema",
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/compose/compose.yaml",
        ],
    );
    let out = check(
        support::BIN,
        &[
            "explain",
            "-f",
            "deploy/compose/demo.yaml",
            "--director",
            "users",
            "alice",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("web"));
}

#[test]
fn the_alerting_rules_pass_promtool() {
    check(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yaml"],
    );
}

#[test]
fn the_grafana_dashboard_is_json_with_panels() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/tether.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["panels"].as_array().is_some_and(|p| !p.is_empty()));
}

#[test]
fn the_systemd_units_verify() {
    // `systemd-analyze verify` wants the ExecStart binary to exist: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["verify".to_owned(), "--man=no".to_owned()];
    for f in files("deploy/systemd", "service") {
        let text = std::fs::read_to_string(root().join(&f)).unwrap();
        let unit = dir.path().join(Path::new(&f).file_name().unwrap());
        std::fs::write(&unit, text.replace("/usr/local/bin/tether", support::BIN)).unwrap();
        args.push(unit.to_str().unwrap().to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = check("systemd-analyze", &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().is_empty(), "systemd-analyze warned: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_nodes_metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let t = support::Tether::up(dir.path(), &[]).await;
    let b = support::Backend::start("b1").await;
    t.apply(&support::config(&[("b1", b.addr)], true));
    t.wait_health("b1", true).await;
    assert_eq!(t.request("k").await.0, 200);
    let metrics = t.admin_get("/metrics").await.1;
    support::promtool_check_metrics(&metrics);
    // And as OpenMetrics, which Prometheus asks for first.
    let om = support::openmetrics_check(&format!("{}/metrics", t.admin));
    assert!(om.contains("# TYPE tether_requests counter\n"), "{om}");
    assert!(om.contains("\ntether_requests_total{"), "{om}");
}

#[test]
fn the_declarative_schema_is_current_and_validates_the_examples() {
    let out = Command::new(support::BIN).arg("schema").output().unwrap();
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/declarative.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        printed, kept,
        "docs/declarative.schema.json is stale: tether schema > docs/declarative.schema.json"
    );
    let mut args = vec!["--schemafile", "docs/declarative.schema.json"];
    let examples = files("examples", "yaml");
    args.extend(examples.iter().map(String::as_str));
    check("check-jsonschema", &args);
    // One resource naming its kind is a document too.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let good = write(
        "kind.yaml",
        "kind: backend\nname: b1\naddress: 127.0.0.1:9\nlabels: { app: web }\n",
    );
    check(
        "check-jsonschema",
        &["--schemafile", "docs/declarative.schema.json", &good],
    );
    for (name, text) in [
        (
            "typo.yaml",
            "backends:\n  - name: b1\n    adress: 127.0.0.1:9\n",
        ),
        (
            "type.yaml",
            "backends:\n  - name: b1\n    address: x:1\n    weight: heavy\n",
        ),
        ("kind.yaml", "kind: backend\nname: b1\n"),
        (
            "enum.yaml",
            "backends:\n  - { name: b1, address: 'x:1', admin_health: maybe }\n",
        ),
        ("section.yaml", "backendz: []\n"),
    ] {
        let f = write(name, text);
        let out = Command::new("check-jsonschema")
            .args(["--schemafile", "docs/declarative.schema.json", &f])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} passed the schema");
    }
}
