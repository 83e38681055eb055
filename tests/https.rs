//! The TLS listener through the real binary (`tether up --https --cert-dir`): curl with
//! `--resolve` for two names gets each its certificate, HTTP/2 and HTTP/1.1 by ALPN, TLS 1.2
//! and 1.3, session resumption (openssl s_client), a certificate replaced on disk served to
//! the next handshake while an open connection keeps working, X-Forwarded-Proto, routes by
//! scheme, the redirect to https, and the TLS metrics.

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use support::certs::{Ca, Leaf};
use support::{Tether, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A plain HTTP backend that answers every request with its head as received.
async fn head_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", head.len());
                    if s.write_all(r.as_bytes()).await.is_err() || s.write_all(&head).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

const CONFIG: &str = r#"
backends:
  - name: b1
    address: ADDR
directors:
  - name: d
    shard: {}
    members: [{ backend: b1 }]
routes:
  - name: a-secure
    path_prefix: /secure
    scheme: https
    director: d
    key: { url: true }
  - name: b-moved
    path_prefix: /moved
    https_redirect: true
    director: d
    key: { url: true }
  - name: c-plain-only
    path_prefix: /secure
    scheme: http
    director: d
    key: { url: true }
  - name: z-app
    director: d
    key: { url: true }
"#;

fn port(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// curl for `https://NAME:PORT/PATH` resolved to loopback, trusting `ca`; (exit ok, stdout).
fn curl(name: &str, https: &str, path: &str, ca: &Path, extra: &[&str]) -> (bool, String) {
    let p = port(https);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{name}:{p}:127.0.0.1")])
        .args(extra)
        .arg(format!("https://{name}:{p}{path}"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write_pair(dir: &Path, name: &str, leaf: &Leaf, combined: bool) {
    let cert = std::fs::read_to_string(&leaf.cert).unwrap();
    let key = std::fs::read_to_string(&leaf.key).unwrap();
    if combined {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, format!("{cert}{key}")).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{name}.pem"))).unwrap();
    } else {
        std::fs::write(dir.join(format!("{name}.key")), key).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert).unwrap();
    }
}

/// A TLS connection to the proxy for `name`, trusting `ca`, ALPN http/1.1, its handshake
/// started `delay` after connecting.
async fn tls_client(
    https: &str,
    name: &str,
    ca: &Path,
    delay: Duration,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(https.trim_start_matches("https://"))
        .await
        .unwrap();
    tokio::time::sleep(delay).await;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name.to_owned().try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// One keep-alive request on `s`; the response's head and body as text.
async fn request_on(s: &mut tokio_rustls::client::TlsStream<TcpStream>, host: &str) -> String {
    s.write_all(format!("GET /kept HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the connection closed");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse::<usize>().ok())
            && body.len() >= len
        {
            return text.into_owned();
        }
    }
}

/// An empty certificate directory under `dir`, and the CA its certificates will come from.
fn cert_dir(dir: &Path) -> (std::path::PathBuf, Ca) {
    let certs = dir.join("certs");
    std::fs::create_dir(&certs).unwrap();
    (certs, Ca::new(dir, "edge-ca"))
}

/// `tether up` with `--https` serving `certs`, and `extra` flags.
async fn up_https(dir: &Path, certs: &Path, extra: &[&str]) -> Tether {
    let mut args = vec![
        "--https",
        "127.0.0.1:0",
        "--cert-dir",
        certs.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Tether::up(dir, &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_resumption_reload_scheme_routes_and_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, ca) = cert_dir(dir.path());
    write_pair(
        &certs,
        "a",
        &ca.leaf_for(dir.path(), "a", &["a.test"]),
        false,
    );
    write_pair(
        &certs,
        "b",
        &ca.leaf_for(dir.path(), "b", &["*.b.test"]),
        true,
    );
    let backend = head_echo().await;
    let t = up_https(dir.path(), &certs, &[]).await;
    let https = t.endpoint("https");
    t.wait_applied(t.apply(&CONFIG.replace("ADDR", &backend.to_string())))
        .await;

    // Each name gets its certificate (curl checks the name against the CA-signed chain),
    // over HTTP/2 and HTTP/1.1, TLS 1.3 and 1.2; the backend sees X-Forwarded-Proto: https.
    for (name, version, proto) in [
        ("a.test", "--http2", "--tlsv1.3"),
        ("x.b.test", "--http1.1", "--tlsv1.2"),
    ] {
        let (ok, out) = curl(
            name,
            &https,
            "/",
            &ca.pem,
            &[version, proto, "-w", "\nVERSION %{http_version}"],
        );
        assert!(ok, "{name}: {out}");
        let out = out.to_ascii_lowercase();
        assert!(out.contains("x-forwarded-proto: https"), "{out}");
        let want = if version == "--http2" {
            "version 2"
        } else {
            "version 1.1"
        };
        assert!(out.contains(want), "{name}: {out}");
    }
    // A name with no certificate gets the default (the first, `a`): curl refuses the name.
    let (ok, out) = curl("c.test", &https, "/", &ca.pem, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("a.test") || out.contains("match"), "{out}");

    // Session resumption (TLS 1.2, where openssl shows it plainly).
    let sess = dir.path().join("sess");
    let s_client = |extra: &[&str]| {
        let out = Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(https.trim_start_matches("https://"))
            .args(["-servername", "a.test", "-tls1_2", "-CAfile"])
            .arg(&ca.pem)
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = s_client(&["-sess_out", sess.to_str().unwrap()]);
    assert!(first.contains("Verify return code: 0"), "{first}");
    let again = s_client(&["-sess_in", sess.to_str().unwrap()]);
    assert!(again.contains("Reused, TLSv1.2"), "{again}");

    // X-Forwarded-Proto on the plain listener; scheme routes: /secure over https reaches the
    // `secure` route, over http the `plain-only` one; /moved over http is redirected.
    let plain = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-i", "-H", "host: a.test"])
            .arg(format!("{}{path}", t.proxy))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    let r = plain("/");
    assert!(r.contains("x-forwarded-proto: http\r\n"), "{r}");
    let r = plain("/moved/x?y=1");
    assert!(r.starts_with("http/1.1 308"), "{r}");
    assert!(r.contains("location: https://a.test/moved/x?y=1"), "{r}");
    let (ok, out) = curl("a.test", &https, "/moved/x?y=1", &ca.pem, &[]);
    assert!(ok && out.contains("GET /moved/x?y=1"), "{out}");

    // Replace `a` with a certificate of another CA: an open connection keeps working, the
    // next handshake gets the new one.
    let mut kept = tls_client(&https, "a.test", &ca.pem, Duration::ZERO).await;
    assert!(request_on(&mut kept, "a.test").await.contains("200 OK"));
    let ca2 = Ca::new(dir.path(), "edge-ca-2");
    write_pair(
        &certs,
        "a",
        &ca2.leaf_for(dir.path(), "a2", &["a.test"]),
        false,
    );
    let mut served = false;
    for _ in 0..40 {
        if curl("a.test", &https, "/", &ca2.pem, &[]).0 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the new certificate was not served");
    assert!(!curl("a.test", &https, "/", &ca.pem, &[]).0);
    assert!(request_on(&mut kept, "a.test").await.contains("200 OK"));

    // Plain HTTP to the TLS port: a failed handshake, counted by reason.
    let mut s = TcpStream::connect(https.trim_start_matches("https://"))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut sink)).await;
    let m = t.admin_get("/metrics").await.1;
    assert!(metric(&m, "tether_tls_handshakes_total") >= 5, "{m}");
    assert!(
        metric(
            &m,
            "tether_tls_handshake_failures_total{reason=\"bad_message\"}"
        ) >= 1,
        "{m}"
    );
    let left = metric(
        &m,
        "tether_tls_certificate_expiry_seconds{certificate=\"b\",source=\"dir\"}",
    );
    assert!(left > 86_400, "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_and_the_first_head_share_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, ca) = cert_dir(dir.path());
    write_pair(
        &certs,
        "a",
        &ca.leaf_for(dir.path(), "a", &["a.test"]),
        true,
    );
    let t = up_https(dir.path(), &certs, &["--header-timeout", "1s"]).await;
    let https = t.endpoint("https");
    // Connects and never starts a handshake: closed at the timeout, counted.
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(https.trim_start_matches("https://"))
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Handshakes after 700 ms, then sends nothing: closed 1 s after the accept, not 1 s after
    // the handshake (1.7 s).
    let started = std::time::Instant::now();
    let mut idle = tls_client(&https, "a.test", &ca.pem, Duration::from_millis(700)).await;
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    let took = started.elapsed();
    assert!(matches!(r, Ok(Ok(0) | Err(_))), "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "closed after {took:?}"
    );
    let m = t.admin_get("/metrics").await.1;
    assert_eq!(
        support::metric(
            &m,
            "tether_tls_handshake_failures_total{reason=\"timeout\"}"
        ),
        1,
        "{m}"
    );
}
