//! The API surface of `tether up` through the real binary: bearer tokens and roles, the
//! refusal of a non-loopback API without TLS or tokens, the standard gRPC health service and server
//! reflection, and CLI exit codes.

mod support;

use std::process::Command;

use support::{BIN, Tether};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_health_and_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("admin:{ADMIN}\nread-only:{READER}\n")).unwrap();
    let t = Tether::up(dir.path(), &["--token-file", tokens.to_str().unwrap()]).await;
    let run = |token: Option<&str>, args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(args)
            .args(["--server", &t.api])
            .env_remove("TETHER_TOKEN");
        if let Some(tok) = token {
            c.env("TETHER_TOKEN", tok);
        }
        c.output().unwrap()
    };
    let create = ["backend", "create", "b1", "--address", "127.0.0.1:9"];
    let out = run(None, &create);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
    let out = run(Some(READER), &create);
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"));
    assert!(run(Some(ADMIN), &create).status.success());
    let out = run(Some(READER), &["backend", "list", "-o", "json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"b1\""));
    // A data plane following this control plane with a read-only token.
    let node =
        Tether::dataplane_from_env(&dir.path().join("dp"), &t.api, &[("TETHER_TOKEN", READER)])
            .await;
    assert_eq!(node.state().await["backends"][0]["name"], "b1");

    // Stock gRPC tools: health (read-only allowed) and reflection.
    let channel = tonic::transport::Channel::from_shared(t.api.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {READER}").parse().unwrap());
        Ok(req)
    };
    let mut health = HealthClient::with_interceptor(channel.clone(), auth);
    let r = health
        .check(HealthCheckRequest {
            service: "tether.v1.Tether".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    let mut refl = ServerReflectionClient::with_interceptor(channel, auth);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"tether.v1.Tether"), "{names:?}");

    // The token file is re-read when it changes: the new token works, the old one no longer.
    const NEW: &str = "admin-token-9876543210";
    std::fs::write(&tokens, format!("admin:{NEW}\nread-only:{READER}\n")).unwrap();
    let list = ["backend", "list"];
    wait_for(
        || run(Some(NEW), &list).status.success(),
        "the changed token file",
    )
    .await;
    assert!(!run(Some(ADMIN), &list).status.success());
    // On SIGHUP, even when nothing the poll looks at changed (same size, time and inode).
    const HUP: &str = "admin-token-hup3210987";
    let stamp = std::fs::metadata(&tokens).unwrap().modified().unwrap();
    std::fs::write(&tokens, format!("admin:{HUP}\nread-only:{READER}\n")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tokens)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        !run(Some(HUP), &list).status.success(),
        "not re-read without a change or SIGHUP"
    );
    let hup = Command::new("kill")
        .args(["-HUP", &t.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_for(|| run(Some(HUP), &list).status.success(), "SIGHUP").await;
    // A broken file keeps the tokens in force.
    std::fs::write(&tokens, "admin:short\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(run(Some(HUP), &list).status.success());
}

async fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn a_non_loopback_api_without_tls_or_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["up", "--api", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = up(&[]);
    assert!(
        err.contains("without TLS") && err.contains("--api-cert") && err.contains("--insecure"),
        "{err}"
    );
    let ca = support::certs::Ca::new(dir.path(), "ca");
    let leaf = ca.leaf(dir.path(), "api");
    let err = up(&[
        "--api-cert",
        leaf.cert.to_str().unwrap(),
        "--api-key",
        leaf.key.to_str().unwrap(),
    ]);
    assert!(
        err.contains("without tokens")
            && err.contains("--token-file")
            && err.contains("--insecure"),
        "{err}"
    );
    // The CLI will not send a token in plaintext off loopback either.
    let out = Command::new(BIN)
        .args(["backend", "list", "--server", "http://192.0.2.1:7070"])
        .env("TETHER_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plaintext") && err.contains("--insecure"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_name_the_field_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    let out = t.cli(&["backend", "create", "B1", "--address", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backend.name"));
    let out = t.cli(&["backend", "get", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    let f = dir.path().join("d.yaml");
    std::fs::write(&f, "name: d\nshard: {}\nmembers: [{ backend: ghost }]\n").unwrap();
    let out = t.cli(&["director", "create", "-f", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FailedPrecondition") && err.contains("director.members[0].backend"),
        "{err}"
    );
    std::fs::write(&f, "name: d\nshard: {}\ncolour: red\n").unwrap();
    let out = t.cli(&["director", "create", "-f", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `colour`"));
    // A missing file is input to fix too.
    let out = t.cli(&["apply", "-f", "/nonexistent/tether.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/tether.yaml"));
    // Nothing was stored by any of these.
    assert_eq!(t.ok(&["director", "list", "-o", "json"]).trim(), "[]");
    // Round trip: get prints the YAML that update takes.
    t.ok(&["backend", "create", "b1", "--address", "127.0.0.1:9"]);
    let yaml = t.ok(&["backend", "get", "b1"]);
    std::fs::write(&f, yaml.replace("127.0.0.1:9", "127.0.0.1:10")).unwrap();
    t.ok(&["backend", "update", "-f", f.to_str().unwrap()]);
    assert!(t.ok(&["backend", "get", "b1"]).contains("127.0.0.1:10"));
    let out = t.cli(&[
        "backend",
        "update",
        "-f",
        f.to_str().unwrap(),
        "--revision",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2), "stale revision");
    assert!(String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"));
}

#[tokio::test]
async fn a_token_file_others_can_read_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("admin:{ADMIN}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--api",
            "127.0.0.1:0",
            "--proxy",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--token-file")
        .arg(&tokens)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let endpoints = dir.path().join("data/endpoints.json");
    support::wait_until("endpoints.json", std::time::Duration::from_secs(20), || {
        endpoints.exists()
    })
    .await;
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable by its group or by everyone"),
        "{err}"
    );
}

/// Python's stock clients (grpcio, grpcio-reflection's v1alpha client, grpcio-health-checking)
/// with no .proto files (tests/python/client.py): lists the services, calls the health Check,
/// creates labelled backends, patches one's weight with an update mask, lists with a label
/// filter, and decodes every google.rpc.BadRequest violation of a bad request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_python_clients_work_unmodified() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/client.py"
        ))
        .arg(t.api.trim_start_matches("http://"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "services ok",
            "health SERVING",
            "created",
            "patched weight 7.5",
            "filtered ['py1', 'py3']",
            "violations ['backend.address', 'backend.name', 'backend.weight']",
            "bad mask update_mask.paths[0]: Backend has no field \"nope\"",
        ],
        "{stdout}"
    );
    // The patch changed the weight and nothing else.
    let got = t.ok(&["backend", "get", "py1", "-o", "json"]);
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["weight"], 7.5);
    assert_eq!(got["labels"]["zone"], "a");
}

/// `tether watch | head -1`: once the reader is gone, the next event ends the command quietly
/// with status 0 (no broken-pipe panic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_a_command_quietly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    t.ok(&["backend", "create", "b1", "--address", "127.0.0.1:9"]);
    let mut child = Command::new(BIN)
        .args(["watch", "--from", "1", "--server", &t.api])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("b1"), "{first}");
    // The reader is gone (dropped above); the next event has nowhere to go.
    t.ok(&["backend", "create", "b2", "--address", "127.0.0.1:9"]);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "watch went on"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.is_empty(), "{err}");
}

/// What orchestration tools and people do without a read-modify-write: `backend set` (an
/// update mask), `list -l` (a label filter), `get -o json | update -f -` guarded by the
/// document's revision, `export` taken back by `apply -f`, `tether version`, and a Watch delete
/// that carries the deleted resource's last value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_labels_round_trips_export_version_and_deletes_with_their_last_value() {
    use tether_proto::v1;
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    t.apply(
        "backends:\n\
         - { name: b1, address: '127.0.0.1:9001', labels: { app: web, zone: a } }\n\
         - { name: b2, address: '127.0.0.1:9002', labels: { app: web, zone: b } }\n\
         - { name: b3, address: '127.0.0.1:9003', labels: { app: api } }\n",
    );
    let names = |json: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = |sel: &str| names(&t.ok(&["backend", "list", "-l", sel, "-o", "json"]));
    assert_eq!(list("app=web"), ["b1", "b2"]);
    assert_eq!(list("app=web,zone!=a"), ["b2"]);
    assert_eq!(list("zone"), ["b1", "b2"]);
    let bad = t.cli(&[
        "backend",
        "list",
        "--filter",
        "labels.app = web OR name = b3",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("filter: expected AND"));

    // One field and one label change; the rest stays as stored.
    t.ok(&["backend", "set", "b1", "--weight", "5", "--label", "zone=c"]);
    let get = |name: &str| -> serde_json::Value {
        serde_json::from_str(&t.ok(&["backend", "get", name, "-o", "json"])).unwrap()
    };
    let b1 = get("b1");
    assert_eq!(b1["weight"], 5.0);
    assert_eq!(b1["labels"], serde_json::json!({"app": "web", "zone": "c"}));
    assert_eq!(b1["address"], "127.0.0.1:9001");
    t.ok(&[
        "backend",
        "set",
        "b1",
        "--remove-label",
        "app",
        "--drain",
        "true",
    ]);
    let b1 = get("b1");
    assert_eq!(b1["labels"], serde_json::json!({"zone": "c"}));
    assert_eq!(b1["drain"], true);

    // get → edit → update -f -: concurrency-checked by the revision the document carries.
    let round_trip = |edit: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{BIN} backend get b2 -o json --server {api} | sed '{edit}' | {BIN} backend update -f - --server {api}",
                api = t.api
            ))
            .output()
            .unwrap()
    };
    let out = round_trip("s/9002/9012/");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get("b2")["address"], "127.0.0.1:9012");
    let stale = get("b2").to_string();
    t.ok(&["backend", "set", "b2", "--weight", "2"]);
    let file = dir.path().join("stale.json");
    std::fs::write(&file, stale.replace("9012", "9022")).unwrap();
    let out = t.cli(&["backend", "update", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get("b2")["address"], "127.0.0.1:9012", "nothing written");
    // The YAML form takes the same path back.
    let yaml = t.ok(&["backend", "get", "b3", "-o", "yaml"]);
    assert!(yaml.contains("revision: "), "{yaml}");
    let file = dir.path().join("b3.yaml");
    std::fs::write(&file, yaml.replace("9003", "9013")).unwrap();
    t.ok(&["backend", "update", "-f", file.to_str().unwrap()]);
    assert_eq!(get("b3")["address"], "127.0.0.1:9013");

    // export → apply -f on a fresh instance gives the same configuration.
    let export = t.ok(&["export"]);
    assert!(!export.contains("revision:"), "{export}");
    let file = dir.path().join("export.yaml");
    std::fs::write(&file, &export).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let t2 = Tether::up(dir2.path(), &[]).await;
    t2.ok(&["apply", "-f", file.to_str().unwrap()]);
    let strip = |json: String| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        for b in v.as_array_mut().unwrap() {
            b.as_object_mut().unwrap().remove("revision");
        }
        v
    };
    assert_eq!(
        strip(t2.ok(&["backend", "list", "-o", "json"])),
        strip(t.ok(&["backend", "list", "-o", "json"]))
    );

    // Client and server build info.
    let version = t.ok(&["version"]);
    let lines: Vec<&str> = version.lines().collect();
    assert_eq!(lines.len(), 2, "{version}");
    assert!(lines[0].starts_with("client: tether "), "{version}");
    assert!(
        lines[1].starts_with("server: tether ") && lines[1].ends_with("embedded store"),
        "{version}"
    );
    let v: serde_json::Value = serde_json::from_str(&t.ok(&["version", "-o", "json"])).unwrap();
    assert_eq!(v["server"]["version"], v["client"]["version"]);
    assert_eq!(v["server"]["commit"], v["client"]["commit"]);

    // A Watch delete carries the deleted backend's last value.
    let mut watch = support::open_watch(&t.api).await;
    t.ok(&["backend", "delete", "b3"]);
    let event = support::next_watch_event(&mut watch, "backend").await;
    assert_eq!(
        (event.kind.as_str(), event.name.as_str()),
        ("backend", "b3")
    );
    assert_eq!(event.action, v1::Action::Delete as i32);
    match event.resource {
        Some(v1::watch_event::Resource::Backend(b)) => {
            assert_eq!(b.address, "127.0.0.1:9013");
            assert!(b.revision > 0);
        }
        other => panic!("no last value: {other:?}"),
    }
    // And `tether watch -o json` prints it, as the document `apply -f` takes.
    let mut child = Command::new(BIN)
        .args(["watch", "--from", "1", "-o", "json", "--server", &t.api])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut deleted = None;
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["action"] == "delete" && v["name"] == "b3" {
            deleted = Some(v);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let deleted = deleted.expect("the delete event");
    assert_eq!(deleted["kind"], "backend");
    assert_eq!(
        deleted["resource"]["address"], "127.0.0.1:9013",
        "{deleted}"
    );
    assert!(
        deleted["resource"]["revision"].as_i64().unwrap() > 0,
        "{deleted}"
    );
}
