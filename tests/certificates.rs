//! Certificate resources through the real binaries: provisioned with `tether certificate
//! create -f`, served by every node (two following etcd, one following the control plane's
//! Watch) at the same revision; replaced through the API, the next handshake on every node
//! gets the new one while an open connection keeps working; the private key is never returned
//! by any read path but a node's; bad certificates are refused naming the field.

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use support::certs::{Ca, Leaf};
use support::etcd::Etcd;
use support::{ControlPlane, Tether, apply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = "backends:\n  - name: b1\n    address: ADDR\ndirectors:\n  - name: d\n    shard: {}\n    members: [{ backend: b1 }]\nroutes:\n  - name: app\n    director: d\n    key: { url: true }\n";

/// The YAML of certificate `name` from `leaf`'s files.
fn cert_yaml(name: &str, leaf: &Leaf) -> String {
    let indent = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    };
    format!(
        "name: {name}\nchain: |\n{}private_key: |\n{}",
        indent(&leaf.cert),
        indent(&leaf.key)
    )
}

/// Whether curl to `https://a.test` on the node's TLS port verifies against `ca`.
fn verifies(node: &Tether, ca: &Path) -> bool {
    let https = node.endpoint("https");
    let port = https.rsplit(':').next().unwrap();
    Command::new("curl")
        .args(["-sS", "--max-time", "3", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .arg(format!("https://a.test:{port}/"))
        .output()
        .unwrap()
        .status
        .success()
}

async fn until_verifies(nodes: &[Tether], ca: &Path) {
    for (i, n) in nodes.iter().enumerate() {
        let mut ok = false;
        for _ in 0..50 {
            if verifies(n, ca) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            ok,
            "node {i} never served the certificate of {}",
            ca.display()
        );
    }
}

/// A TLS connection for a.test kept open, trusting `ca`; one request on it per call of
/// [`get_on`].
async fn open(https: &str, ca: &Path) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(https.trim_start_matches("https://"))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("a.test".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

async fn get_on(s: &mut tokio_rustls::client::TlsStream<TcpStream>) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reach_every_node_are_replaced_live_and_keys_stay_secret() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let b = support::Backend::start("b1").await;
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let https = ["--https", "127.0.0.1:0"];
    let nodes = vec![
        Tether::dataplane_args(
            &dir.path().join("dp0"),
            ["--etcd", &etcd.urls()],
            true,
            &[],
            &https,
        )
        .await,
        Tether::dataplane_args(
            &dir.path().join("dp1"),
            ["--etcd", &etcd.urls()],
            true,
            &[],
            &https,
        )
        .await,
        Tether::dataplane_args(
            &dir.path().join("dp2"),
            ["--controlplane", &cp.api],
            true,
            &[],
            &https,
        )
        .await,
    ];
    apply(
        &cp.api,
        dir.path(),
        &ROUTES.replace("ADDR", &b.addr.to_string()),
        true,
    );

    let ca1 = Ca::new(dir.path(), "ca1");
    let leaf1 = ca1.leaf_for(dir.path(), "a1", &["a.test"]);
    let f = dir.path().join("a.yaml");
    std::fs::write(&f, cert_yaml("a", &leaf1)).unwrap();
    let out = support::ok(
        &cp.api,
        &["certificate", "create", "-f", f.to_str().unwrap()],
    );
    assert!(out.contains("created"), "{out}");
    until_verifies(&nodes, &ca1.pem).await;

    // Every read path shows the names, expiry and fingerprint, never the key.
    let key = std::fs::read_to_string(&leaf1.key).unwrap();
    let secret = key.lines().nth(1).unwrap().to_owned();
    let list = support::ok(&cp.api, &["certificate", "list"]);
    assert!(
        list.contains("a.test") && list.contains("NOT AFTER"),
        "{list}"
    );
    let mut reads = vec![
        list,
        support::ok(&cp.api, &["certificate", "list", "-o", "json"]),
        support::ok(&cp.api, &["certificate", "get", "a"]),
        support::ok(&cp.api, &["certificate", "get", "a", "-o", "json"]),
    ];
    let watch = Command::new(support::BIN)
        .args(["watch", "--from", "1", "-o", "json", "--server", &cp.api])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = Command::new("kill").arg(watch.id().to_string()).status();
    let watched = watch.wait_with_output().unwrap();
    let watched = String::from_utf8_lossy(&watched.stdout).into_owned();
    assert!(watched.contains("certificate"), "{watched}");
    reads.push(watched);
    // GetSnapshot and GetCertificate straight from the API, as any caller but a node.
    let mut api = tether_proto::v1::tether_client::TetherClient::connect(cp.api.clone())
        .await
        .unwrap();
    let snap = api
        .get_snapshot(tether_proto::v1::GetSnapshotRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snap.certificates.len(), 1);
    assert!(snap.certificates[0].private_key.is_empty());
    assert!(!snap.certificates[0].chain.is_empty());
    let got = api
        .get_certificate(tether_proto::v1::GetRequest { name: "a".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(got.private_key.is_empty());
    assert_eq!(got.names, ["a.test"]);
    assert_eq!(got.fingerprint.len(), 64);
    reads.push(format!("{snap:?}{got:?}"));
    for r in &reads {
        assert!(
            !r.contains(&secret),
            "a read path returned the private key:\n{r}"
        );
        assert!(!r.contains("PRIVATE KEY"), "{r}");
    }
    // A node, saying so, gets it.
    let mut node_api = tether_proto::v1::tether_client::TetherClient::with_interceptor(
        tonic::transport::Channel::from_shared(cp.api.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
        |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("tether-node", "1".parse().unwrap());
            Ok(r)
        },
    );
    let snap = node_api
        .get_snapshot(tether_proto::v1::GetSnapshotRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(snap.certificates[0].private_key.contains(&secret));

    // Replaced through the API: open connections keep working; the next handshake on every
    // node gets the new certificate.
    let mut kept = open(&nodes[0].endpoint("https"), &ca1.pem).await;
    assert!(get_on(&mut kept).await.starts_with("HTTP/1.1 200"));
    let ca2 = Ca::new(dir.path(), "ca2");
    let leaf2 = ca2.leaf_for(dir.path(), "a2", &["a.test"]);
    std::fs::write(&f, cert_yaml("a", &leaf2)).unwrap();
    support::ok(
        &cp.api,
        &["certificate", "update", "-f", f.to_str().unwrap()],
    );
    until_verifies(&nodes, &ca2.pem).await;
    for n in &nodes {
        assert!(!verifies(n, &ca1.pem));
    }
    assert!(get_on(&mut kept).await.starts_with("HTTP/1.1 200"));

    // Bad certificates are refused, naming the field; nothing changes.
    let other = Ca::new(dir.path(), "ca3").leaf_for(dir.path(), "x", &["a.test"]);
    let mismatched = cert_yaml(
        "a",
        &Leaf {
            cert: leaf2.cert.clone(),
            key: other.key.clone(),
        },
    );
    for (yaml, field) in [
        (mismatched, "certificate.private_key"),
        (
            "name: a\nchain: |\n  not a pem\nprivate_key: |\n  x\n".to_owned(),
            "certificate.chain",
        ),
        (
            cert_yaml("a", &leaf2)
                .split("private_key:")
                .next()
                .unwrap()
                .to_owned(),
            "certificate.private_key",
        ),
    ] {
        std::fs::write(&f, yaml).unwrap();
        let out = support::cli(
            &cp.api,
            &["certificate", "update", "-f", f.to_str().unwrap()],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(field), "{field}: {err}");
    }
    until_verifies(&nodes, &ca2.pem).await;
    let m = nodes[2].admin_get("/metrics").await.1;
    assert!(
        m.contains("tether_tls_certificate_expiry_seconds{certificate=\"a\",source=\"api\"}"),
        "{m}"
    );
}
