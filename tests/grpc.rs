//! gRPC through the real binary to tonic backends over h2c and over h2+TLS with a private CA:
//! unary (grpc.health.v1 Check), server streaming (Health Watch) and bidi streaming (server
//! reflection) from a stock tonic client; the proxy's own errors as gRPC statuses; the
//! client's `grpc-timeout`; TLS to backends verified against the CA and refused when it does
//! not match (502 with a clear body, a probe that goes sick).

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::Tether;
use support::certs::Ca;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::transport::{Channel, Identity, ServerTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// A tonic server with health (its own name SERVING) and reflection v1, over h2c, or TLS with
/// `identity`. Returns its address.
async fn grpc_backend(name: &str, identity: Option<Identity>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(name, tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let mut b = tonic::transport::Server::builder();
    if let Some(id) = identity {
        b = b.tls_config(ServerTlsConfig::new().identity(id)).unwrap();
    }
    let router = b.add_service(health).add_service(reflection);
    tokio::spawn(async move {
        // The reporter lives as long as the server.
        let _keep = reporter;
        let _ = router.serve_with_incoming(TcpListenerStream::new(l)).await;
    });
    addr
}

/// One backend behind a shard director and a route keyed on `x-user`.
fn config(backend: &str) -> String {
    format!(
        "probes:\n  - name: fast\n    interval: 100ms\n    timeout: 500ms\n    window: 3\n    threshold: 2\n    initial: 2\n\
         backends:\n{backend}\
         directors:\n  - name: grpc\n    shard: {{}}\n    members: [{{ backend: g1 }}]\n\
         routes:\n  - name: grpc\n    director: grpc\n    key: {{ header: x-user }}\n"
    )
}

async fn channel(proxy: &str) -> Channel {
    Channel::from_shared(proxy.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn keyed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-user", "alice".parse().unwrap());
    r
}

/// Unary, server streaming and bidi streaming through the proxy to backend `g1`.
async fn calls_work(proxy: &str) {
    let ch = channel(proxy).await;
    let mut health = HealthClient::new(ch.clone());
    let r = health
        .check(keyed(HealthCheckRequest {
            service: "g1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    // A status from the backend itself (trailers-only, relayed).
    let e = health
        .check(keyed(HealthCheckRequest {
            service: "nope".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Server streaming: Watch sends the current status, and stays open.
    let mut watch = health
        .watch(keyed(HealthCheckRequest {
            service: "g1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // Bidi streaming: requests sent one at a time, each answered before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut refl = ServerReflectionClient::new(ch);
    let ask = |symbol: &str| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(if symbol.is_empty() {
            MessageRequest::ListServices(String::new())
        } else {
            MessageRequest::FileContainingSymbol(symbol.into())
        }),
    };
    tx.send(ask("")).await.unwrap();
    let mut answers = refl
        .server_reflection_info(keyed(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let a = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = a.message_response else {
        panic!("{a:?}")
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "grpc.health.v1.Health"),
        "{list:?}"
    );
    tx.send(ask("grpc.health.v1.Health")).await.unwrap();
    let a = answers.message().await.unwrap().unwrap();
    assert!(
        matches!(
            a.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "{a:?}"
    );
    drop(tx);
    assert!(
        answers.message().await.unwrap().is_none(),
        "the stream ends"
    );
}

/// A gRPC Health Check sent with the `h2` crate, with `grpc-timeout`: the HTTP status and the
/// `grpc-status` of the answer (a trailers-only response carries it in its head).
async fn raw_call(proxy: &str, timeout: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(proxy.trim_start_matches("http://"))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = hyper::Request::post(format!("{proxy}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .header("x-user", "alice")
        .body(())
        .unwrap();
    let (resp, mut body) = client.send_request(req, false).unwrap();
    // An empty HealthCheckRequest: one uncompressed message of 0 bytes.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let resp = resp.await.unwrap();
    let grpc = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (resp.status().as_u16(), grpc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_streams_both_ways_and_proxy_errors_are_grpc_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let g1 = grpc_backend("g1", None).await;
    let t = Tether::up(dir.path(), &[]).await;
    let b = format!(
        "  - name: g1\n    address: {g1}\n    protocol: h2c\n    probe: fast\n    connect_timeout: 500ms\n"
    );
    t.wait_applied(t.apply(&config(&b))).await;
    t.wait_health("g1", true).await;
    calls_work(&t.proxy).await;

    // Sick: UNAVAILABLE as a gRPC status, not a 503 page.
    t.ok(&["health", "set", "g1", "sick"]);
    t.wait_health("g1", false).await;
    let mut health = HealthClient::new(channel(&t.proxy).await);
    let e = health
        .check(keyed(HealthCheckRequest {
            service: "g1".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("no healthy backend"), "{e:?}");
    t.ok(&["health", "set", "g1", "auto"]);
    t.wait_health("g1", true).await;

    // A backend that accepts and never answers: the client's deadline (grpc-timeout) bounds
    // the proxy's wait, and the answer is DEADLINE_EXCEEDED.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let b = format!("  - name: g1\n    address: {silent_addr}\n    protocol: h2c\n");
    t.wait_applied(t.apply(&config(&b))).await;
    // (A raw HTTP/2 call: tonic would enforce its own deadline first, on its side.)
    let started = Instant::now();
    let (status, grpc_status) =
        tokio::time::timeout(Duration::from_secs(5), raw_call(&t.proxy, "300m"))
            .await
            .expect("the proxy answered within the client's deadline");
    assert_eq!(
        (status, grpc_status.as_str()),
        (200, "4"),
        "DEADLINE_EXCEEDED"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2_with_a_private_ca_is_verified_and_a_wrong_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "backend-ca");
    let leaf = ca.leaf(dir.path(), "g1");
    let identity = Identity::from_pem(
        std::fs::read(&leaf.cert).unwrap(),
        std::fs::read(&leaf.key).unwrap(),
    );
    let g1 = grpc_backend("g1", Some(identity)).await;
    let t = Tether::up(dir.path(), &[]).await;
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    };
    let backend = |protocol: &str, ca_pem: &str| {
        format!(
            "  - name: g1\n    address: {g1}\n    protocol: {protocol}\n    probe: fast\n    connect_timeout: 500ms\n    tls:\n      server_name: localhost\n      ca: |\n{}",
            indent(ca_pem)
        )
    };
    let good = std::fs::read_to_string(&ca.pem).unwrap();
    // `auto` first: the window starts at `initial` (2 of 3), so 3/3 takes its own probes.
    for protocol in ["auto", "h2"] {
        t.wait_applied(t.apply(&config(&backend(protocol, &good))))
            .await;
        // Healthy by its probes (3 good of 3), not by the initial window.
        let mut probed = false;
        for _ in 0..100 {
            if t.state().await["backends"][0]["probe"] == "3/3" {
                probed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(probed, "{protocol}: {}", t.state().await);
        calls_work(&t.proxy).await;
    }

    // Another CA: the probe goes sick, and a request says why.
    let other = Ca::new(dir.path(), "other-ca");
    let wrong = std::fs::read_to_string(&other.pem).unwrap();
    t.wait_applied(t.apply(&config(&backend("h2", &wrong))))
        .await;
    t.wait_health("g1", false).await;
    let state = t.state().await;
    let why = state["backends"][0]["probe_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("UnknownIssuer"), "{state}");
    // With the backend forced healthy, the proxy's own connection fails: 502, with the reason.
    t.ok(&["health", "set", "g1", "healthy"]);
    t.wait_health("g1", true).await;
    let (status, body) = t.request("alice").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("TLS handshake failed"), "{body}");
    assert!(body.contains("UnknownIssuer"), "{body}");
    let e = HealthClient::new(channel(&t.proxy).await)
        .check(keyed(HealthCheckRequest {
            service: "g1".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // verify: false takes any certificate.
    let y = config(&backend("h2", &wrong)).replace(
        "server_name: localhost\n",
        "server_name: localhost\n      verify: false\n",
    );
    t.ok(&["health", "set", "g1", "auto"]);
    t.wait_applied(t.apply(&y)).await;
    t.wait_health("g1", true).await;
    calls_work(&t.proxy).await;

    // Settings that cannot work are refused when written, naming the field.
    for (b, field) in [
        (
            format!("  - name: g1\n    address: {g1}\n    protocol: h2\n"),
            "protocol",
        ),
        (
            format!("  - name: g1\n    address: {g1}\n    protocol: h2c\n    tls: {{}}\n"),
            "protocol",
        ),
        (
            format!("  - name: g1\n    address: {g1}\n    tls: {{ ca: not-a-pem }}\n"),
            "tls.ca",
        ),
    ] {
        let f = dir.path().join("bad.yaml");
        std::fs::write(&f, config(&b)).unwrap();
        let out = t.cli(&["apply", "-f", f.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{b} was taken");
        assert!(err.contains(&format!("backends[0].{field}")), "{b}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_requiring_client_certificates_gets_the_named_certificate_resource() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "backend-ca");
    let leaf = ca.leaf(dir.path(), "g1");
    let clients = Ca::new(dir.path(), "client-ca");
    let client = clients.leaf_for(dir.path(), "proxy-client", &["proxy.test"]);
    // The backend asks for a client certificate signed by `client-ca`.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g1 = l.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("g1", tonic_health::ServingStatus::Serving)
        .await;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            std::fs::read(&leaf.cert).unwrap(),
            std::fs::read(&leaf.key).unwrap(),
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(
            std::fs::read(&clients.pem).unwrap(),
        ));
    let router = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(health);
    tokio::spawn(async move {
        let _keep = reporter;
        let _ = router.serve_with_incoming(TcpListenerStream::new(l)).await;
    });

    let t = Tether::up(dir.path(), &[]).await;
    let indent = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    };
    let certificate = format!(
        "certificates:\n  - name: proxy-client\n    chain: |\n{}    private_key: |\n{}",
        indent(&client.cert),
        indent(&client.key)
    );
    let backend = |extra: &str| {
        format!(
            "  - name: g1\n    address: {g1}\n    protocol: h2\n    probe: fast\n    connect_timeout: 500ms\n    tls:\n      server_name: localhost\n      ca: |\n{}{extra}",
            indent(&ca.pem)
        )
    };
    // Without a client certificate: refused by the backend.
    t.wait_applied(t.apply(&format!("{}{certificate}", config(&backend("")))))
        .await;
    t.wait_health("g1", false).await;
    // With the Certificate resource named: served.
    let with = backend("      client_certificate: proxy-client\n");
    t.wait_applied(t.apply(&format!("{}{certificate}", config(&with))))
        .await;
    t.wait_health("g1", true).await;
    let r = HealthClient::new(channel(&t.proxy).await)
        .check(keyed(HealthCheckRequest {
            service: "g1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);

    // The certificate cannot be deleted while a backend presents it; a backend cannot name a
    // certificate that does not exist.
    let out = t.cli(&["certificate", "delete", "proxy-client"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("tls.client_certificate"), "{err}");
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, config(&backend("      client_certificate: nobody\n"))).unwrap();
    let out = t.cli(&["apply", "-f", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no certificate named \"nobody\""), "{err}");
}
