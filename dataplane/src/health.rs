//! Health probes with Varnish semantics (`shared/reference/varnish-directors.md` §3).
//!
//! [`Window`] is the pure bit-window (64-bit shift register, `good = popcount(happy & mask)`,
//! healthy ⇔ good ≥ threshold). [`probe_once`] is one attempt. The probe loop that repeats it
//! lives beside its spawner in [`crate::runtime`]: one per backend identity, started when the
//! backend first appears with a probe and ended when the identity leaves the last snapshot (it
//! holds only a weak reference); it reads its probe settings afresh each round, so a probe edit
//! applies without restarting the loop or forgetting the window. This module knows nothing of
//! the backend state it feeds.
//!
//! A probe: connect (with the backend's TLS settings and ALPN), write the request, read until
//! the peer closes, all within `timeout`; success when the first line parses as
//! `HTTP/<n> <status>` with the expected status. A backend that speaks HTTP/2 (`h2c`, `h2`, or
//! `auto` when ALPN picks `h2`) is probed with an HTTP/2 `GET` of the probe's `url` (a raw
//! `request` is sent as its bytes, whatever the protocol).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Host, ProbeRequest, ProbeSpec};
use crate::tls::{self, BackendTls};

/// How a probe reaches its backend: as the proxy does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transport {
    /// TLS settings.
    pub tls: Option<BackendTls>,
    /// The backend speaks only HTTP/2.
    pub h2: bool,
    /// The host of its address (the TLS name when `tls.server_name` is not set).
    pub host: Option<Host>,
}

/// The probe's shift register and its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    happy: u64,
    window: u32,
    threshold: u32,
}

impl Window {
    /// A window primed as Varnish does when a VCL warms: `initial` synthetic successes.
    pub fn new(spec: &ProbeSpec) -> Window {
        let initial = spec.initial.min(spec.threshold).min(64);
        let happy = if initial == 64 {
            u64::MAX
        } else {
            (1u64 << initial) - 1
        };
        Window {
            happy,
            window: spec.window,
            threshold: spec.threshold,
        }
    }

    /// A window continuing a published history (`happy`: bit 0 the last probe), with this
    /// probe's settings.
    pub fn continuing(happy: u64, spec: &ProbeSpec) -> Window {
        Window {
            happy,
            window: spec.window,
            threshold: spec.threshold,
        }
    }

    /// A window whose history says `healthy` throughout (all successes, or none): where a node
    /// that did not probe starts when it must probe on its own, so its verdict does not flip
    /// merely because it starts.
    pub fn primed(healthy: bool, spec: &ProbeSpec) -> Window {
        Window::continuing(if healthy { u64::MAX } else { 0 }, spec)
    }

    /// Where a new owner starts when there is no published history to continue (its
    /// predecessor died before its first report): a fresh window when that says what the node
    /// routes on now (a backend new to the fleet keeps Varnish's `initial`), else primed to
    /// that verdict, so taking the probe over does not flip it.
    pub fn taking_over(healthy: bool, spec: &ProbeSpec) -> Window {
        let fresh = Window::new(spec);
        if fresh.healthy() == healthy {
            fresh
        } else {
            Window::primed(healthy, spec)
        }
    }

    /// The shift register (bit 0: the last probe).
    pub fn happy(&self) -> u64 {
        self.happy
    }

    /// The threshold.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Takes new window and threshold settings, keeping the history.
    pub fn reconfigure(&mut self, spec: &ProbeSpec) {
        self.window = spec.window;
        self.threshold = spec.threshold;
    }

    /// Records one probe result (shift left, success sets bit 0).
    pub fn push(&mut self, ok: bool) {
        self.happy = (self.happy << 1) | u64::from(ok);
    }

    /// Successes among the last `window` probes.
    pub fn good(&self) -> u32 {
        let mask = if self.window >= 64 {
            u64::MAX
        } else {
            (1u64 << self.window) - 1
        };
        (self.happy & mask).count_ones()
    }

    /// Healthy ⇔ good ≥ threshold.
    pub fn healthy(&self) -> bool {
        self.good() >= self.threshold
    }

    /// The window size.
    pub fn size(&self) -> u32 {
        self.window
    }
}

/// The bytes a probe sends (reference §3.1).
pub fn request_bytes(spec: &ProbeSpec, host: &str) -> Vec<u8> {
    match &spec.request {
        ProbeRequest::Url(url) => {
            format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
        }
        ProbeRequest::Raw(lines) => {
            let mut out = String::new();
            for l in lines {
                out.push_str(l);
                out.push_str("\r\n");
            }
            out.push_str("\r\n");
            out.into_bytes()
        }
    }
}

/// The status of a probe response: the first line, cut at CR/LF and at 127 bytes, parsed as
/// `HTTP/<number> <status>`.
pub fn parse_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&c| c == b'\r' || c == b'\n').next()?;
    let line = std::str::from_utf8(&line[..line.len().min(127)]).ok()?;
    let rest = line.strip_prefix("HTTP/")?;
    let (version, rest) = rest.split_once(' ')?;
    if version.is_empty() || !version.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return None;
    }
    let status = rest.trim_start().get(..3)?;
    status.parse().ok()
}

/// Why a probe failed (logged on transitions, counted by result).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The backend's name could not be resolved.
    #[error("resolve: {0}")]
    Resolve(String),
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// Writing the request or reading the response failed.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The whole probe took longer than its timeout.
    #[error("timed out")]
    Timeout,
    /// The response did not start with a status line.
    #[error("no status line in the response")]
    BadResponse,
    /// The status was not the expected one.
    #[error("status {0}")]
    Status(u16),
    /// The HTTP/2 exchange failed.
    #[error("http/2: {0}")]
    H2(hyper::Error),
}

/// One probe against `address`, sent as `transport` says.
pub async fn probe_once(
    peer: SocketAddr,
    spec: &ProbeSpec,
    host: &str,
    transport: &Transport,
) -> Result<(), ProbeError> {
    let req = request_bytes(spec, host);
    let attempt = async {
        let tcp = TcpStream::connect(peer)
            .await
            .map_err(ProbeError::Connect)?;
        let name = transport.host.clone().unwrap_or(Host::Ip(peer.ip()));
        // ALPN as the backend's protocol says: an `auto` backend may speak HTTP/2 only.
        let mut s = tls::wrap(tcp, transport.tls.as_ref(), &name, false)
            .await
            .map_err(ProbeError::Connect)?;
        let h2 = transport.h2 || s.alpn_h2();
        if let (true, ProbeRequest::Url(url)) = (h2, &spec.request) {
            let scheme = if transport.tls.is_some() {
                "https"
            } else {
                "http"
            };
            return h2_status(s, &format!("{scheme}://{host}{url}"), spec).await;
        }
        s.write_all(&req).await.map_err(ProbeError::Io)?;
        let mut buf = Vec::with_capacity(512);
        // Read until EOF, but keep only what the status line needs.
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.map_err(ProbeError::Io)?;
            if n == 0 {
                break;
            }
            if buf.len() < 512 {
                buf.extend_from_slice(&chunk[..n.min(512 - buf.len())]);
            }
        }
        match parse_status(&buf) {
            None => Err(ProbeError::BadResponse),
            Some(s) if s == spec.expected_status => Ok(()),
            Some(s) => Err(ProbeError::Status(s)),
        }
    };
    tokio::time::timeout(spec.timeout, attempt)
        .await
        .unwrap_or(Err(ProbeError::Timeout))
}

/// An HTTP/2 `GET uri` on `io`: the response status against the expected one.
async fn h2_status(io: tls::BackendIo, uri: &str, spec: &ProbeSpec) -> Result<(), ProbeError> {
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(ProbeError::H2)?;
    // The connection ends with the probe (this task is dropped at its timeout).
    let conn = tokio::spawn(conn);
    let req = http::Request::get(uri)
        .body(Empty::<Bytes>::new())
        .map_err(|_| ProbeError::BadResponse)?;
    let r = send.send_request(req).await;
    conn.abort();
    match r.map_err(ProbeError::H2)?.status().as_u16() {
        s if s == spec.expected_status => Ok(()),
        s => Err(ProbeError::Status(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(window: u32, threshold: u32, initial: u32) -> ProbeSpec {
        ProbeSpec {
            window,
            threshold,
            initial,
            ..ProbeSpec::new("p")
        }
    }

    #[test]
    fn defaults_start_sick_and_one_good_probe_heals() {
        let mut w = Window::new(&spec(8, 3, 2));
        assert_eq!(w.good(), 2);
        assert!(!w.healthy());
        w.push(true);
        assert!(w.healthy());
    }

    #[test]
    fn health_is_successes_in_the_window() {
        let mut w = Window::new(&spec(8, 3, 0));
        for ok in [true, true, true] {
            w.push(ok);
        }
        assert!(w.healthy());
        for _ in 0..5 {
            w.push(false);
        }
        assert_eq!(
            w.good(),
            3,
            "the three successes are still inside the window of 8"
        );
        assert!(w.healthy());
        w.push(false);
        assert_eq!(w.good(), 2);
        assert!(!w.healthy());
        let mut full = Window::new(&spec(64, 64, 64));
        assert!(full.healthy());
        full.push(false);
        assert!(!full.healthy());
    }

    #[test]
    fn requests_and_status_lines() {
        let s = ProbeSpec::new("p");
        assert_eq!(
            request_bytes(&s, "b0"),
            b"GET / HTTP/1.1\r\nHost: b0\r\nConnection: close\r\n\r\n"
        );
        let raw = ProbeSpec {
            request: ProbeRequest::Raw(vec!["HEAD /x HTTP/1.1".into(), "Host: y".into()]),
            ..s
        };
        assert_eq!(
            request_bytes(&raw, "b0"),
            b"HEAD /x HTTP/1.1\r\nHost: y\r\n\r\n"
        );
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/2 503\n"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status(b"SSH-2.0\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
