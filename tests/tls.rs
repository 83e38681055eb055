//! TLS on the API through the real binary: the CLI, a data plane following
//! `--controlplane https://` and a Python `grpcio` client all work with the CA; a plaintext
//! client to the TLS port and a client without the CA fail clearly; a certificate rotated on
//! disk is served to the next connection while an open Watch stream keeps going; mTLS refuses
//! a client without a certificate; the dataplane role follows but reads nothing else.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::certs::Ca;
use support::{BIN, Tether};
use tether_controlplane::client::{self, ClientOptions};
use tether_controlplane::tls::ClientTls;
use tether_proto::v1;

const ADMIN: &str = "admin-token-0123456789";
const NODE: &str = "node-token-0123456789";

/// Runs the CLI against `server` with exactly these TETHER_* variables.
fn run(server: &str, env: &[(&str, &Path)], token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).args(["--server", server]);
    for v in ["TETHER_TOKEN", "TETHER_CA", "TETHER_CERT", "TETHER_KEY"] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(t) = token {
        c.env("TETHER_TOKEN", t);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn token_file(dir: &Path) -> std::path::PathBuf {
    let f = dir.join("tokens");
    // The node's token stored as its digest: the file holds no secret for it.
    std::fs::write(
        &f,
        format!("admin:{ADMIN}\ndataplane:sha256:{}\n", sha256_hex(NODE)),
    )
    .unwrap();
    f
}

/// `tether up` serving the API over TLS with `leaf`, and the tokens of [`token_file`].
async fn up_tls(d: &Path, leaf: &support::certs::Leaf, extra: &[&str]) -> Tether {
    let tokens = token_file(d);
    let mut args = vec![
        "--api-cert",
        leaf.cert.to_str().unwrap(),
        "--api-key",
        leaf.key.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Tether::up(d, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_tls_with_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let leaf = ca.leaf(d, "api");
    let t = up_tls(d, &leaf, &[]).await;
    assert!(t.api.starts_with("https://127.0.0.1:"), "{}", t.api);
    let with_ca = [("TETHER_CA", ca.pem.as_path())];
    let create = |name: &str, env: &[(&str, &Path)]| {
        run(
            &t.api,
            env,
            Some(ADMIN),
            &["backend", "create", name, "--address", "127.0.0.1:9"],
        )
    };
    let out = create("b1", &with_ca);
    assert!(out.status.success(), "{}", stderr(&out));

    // Without the CA (the system's roots do not know it), and in plaintext to the TLS port.
    let out = create("b2", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the Tether API"),
        "{}",
        stderr(&out)
    );
    let plain = t.api.replace("https://", "http://");
    let out = run(&plain, &[], Some(ADMIN), &["backend", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("if it serves TLS, use an https://"),
        "{}",
        stderr(&out)
    );

    // The dataplane role follows, and reads nothing else.
    let out = run(&t.api, &with_ca, Some(NODE), &["backend", "list"]);
    assert!(
        stderr(&out).contains("PermissionDenied"),
        "{}",
        stderr(&out)
    );
    let ca_env = ca.pem.to_str().unwrap();
    let node = Tether::dataplane_from_env(
        &d.join("dp"),
        &t.api,
        &[("TETHER_TOKEN", NODE), ("TETHER_CA", ca_env)],
    )
    .await;
    assert_eq!(node.state().await["backends"][0]["name"], "b1");

    // A stock gRPC client: Python grpcio with the CA, no generated code.
    let py = Command::new("python3")
        .arg("-c")
        .arg(
            "import grpc, sys\n\
             creds = grpc.ssl_channel_credentials(root_certificates=open(sys.argv[2], 'rb').read())\n\
             ch = grpc.secure_channel(sys.argv[1], creds)\n\
             call = ch.unary_unary('/tether.v1.Tether/ListBackends')\n\
             sys.stdout.buffer.write(call(b'', metadata=[('authorization', 'Bearer ' + sys.argv[3])], timeout=10))\n",
        )
        .args([t.api.trim_start_matches("https://"), ca_env, ADMIN])
        .output()
        .unwrap();
    assert!(py.status.success(), "python grpcio: {}", stderr(&py));
    {
        use prost::Message;
        let list = v1::ListBackendsResponse::decode(py.stdout.as_slice()).unwrap();
        assert_eq!(list.backends[0].name, "b1");
    }

    // An open Watch stream, on a connection made with the first certificate.
    let opts = ClientOptions {
        url: t.api.clone(),
        token: Some(ADMIN.into()),
        tls: ClientTls {
            ca: Some(ca.pem.clone()),
            identity: None,
        },
        insecure: false,
        node: false,
    };
    let (endpoint, bearer) = opts.endpoint().unwrap();
    let mut api = client::client(endpoint.connect().await.unwrap(), bearer, 1 << 20);
    let mut watch = api
        .watch(v1::WatchRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();

    // Rotated on disk: a certificate from another CA. The next connection gets it...
    let ca2 = Ca::new(d, "ca2");
    ca2.leaf(d, "api");
    let with_ca2 = [("TETHER_CA", ca2.pem.as_path())];
    let out = create("b2", &with_ca2);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = create("b3", &with_ca);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the old CA no longer verifies new connections"
    );
    // ...while the open stream goes on and sees the write.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = watch.message().await.unwrap().unwrap();
            if r.events.iter().any(|e| e.name == "b2") {
                return;
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "the open Watch stream stopped at the rotation"
    );
    // And so does the node that connected before it.
    let start = std::time::Instant::now();
    while node.state().await["backends"].as_array().unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the node stopped following"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let leaf = ca.leaf(d, "api");
    let clients = Ca::new(d, "clients");
    let me = clients.leaf(d, "me");
    let stranger = Ca::new(d, "stranger").leaf(d, "stranger");
    let t = up_tls(
        d,
        &leaf,
        &["--api-client-ca", clients.pem.to_str().unwrap()],
    )
    .await;
    let list = ["backend", "list"];
    let out = run(&t.api, &[("TETHER_CA", &ca.pem)], Some(ADMIN), &list);
    assert_eq!(out.status.code(), Some(1), "no client certificate");
    let with = |l: &support::certs::Leaf| {
        run(
            &t.api,
            &[
                ("TETHER_CA", &ca.pem),
                ("TETHER_CERT", &l.cert),
                ("TETHER_KEY", &l.key),
            ],
            Some(ADMIN),
            &list,
        )
    };
    assert_eq!(
        with(&stranger).status.code(),
        Some(1),
        "a certificate of another CA"
    );
    let out = with(&me);
    assert!(out.status.success(), "{}", stderr(&out));
    // The certificate gets the client through TLS; the token still decides the role.
    let out = run(
        &t.api,
        &[
            ("TETHER_CA", &ca.pem),
            ("TETHER_CERT", &me.cert),
            ("TETHER_KEY", &me.key),
        ],
        None,
        &list,
    );
    assert!(stderr(&out).contains("Unauthenticated"), "{}", stderr(&out));
}
