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

/// Python's stock reflection client (grpcio-reflection, v1alpha), with no .proto files: lists
/// the services, calls ListBackends and the health Check from reflected descriptors, and finds
/// google.rpc.BadRequest to decode error details with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_python_reflection_client_works_unmodified() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tether::up(dir.path(), &[]).await;
    t.ok(&["backend", "create", "b1", "--address", "127.0.0.1:9"]);
    let script = r#"
import grpc, sys
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf import message_factory
ch = grpc.insecure_channel(sys.argv[1])
db = ProtoReflectionDescriptorDatabase(ch)
services = set(db.get_services())
assert {'tether.v1.Tether', 'grpc.health.v1.Health'} <= services, services
pool = DescriptorPool(db)
def call(svc, method, **fields):
    m = pool.FindServiceByName(svc).methods_by_name[method]
    req = message_factory.GetMessageClass(m.input_type)
    resp = message_factory.GetMessageClass(m.output_type)
    f = ch.unary_unary('/%s/%s' % (svc, method), request_serializer=req.SerializeToString, response_deserializer=resp.FromString)
    return f(req(**fields), timeout=10)
print([b.name for b in call('tether.v1.Tether', 'ListBackends').backends])
print(call('grpc.health.v1.Health', 'Check', service='tether.v1.Tether').status)
print(pool.FindMessageTypeByName('google.rpc.BadRequest').full_name)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(t.api.trim_start_matches("http://"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["['b1']", "1", "google.rpc.BadRequest"],
        "{stdout}"
    );
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
