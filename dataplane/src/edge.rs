//! The client-facing edge of a listener: what no client may do to a node — hold it with idle
//! or half-sent requests, stall it by not reading, or exhaust its descriptors.
//!
//! - [`EdgeConfig`]: the timeouts and limits (the `--header-timeout`, `--idle-timeout`,
//!   `--send-timeout`, `--body-timeout`, `--max-connections`, `--max-connections-per-ip`,
//!   `--max-header-bytes`, `--max-uri-bytes` flags), with HAProxy/NGINX-like defaults.
//! - [`Edge`]: one listener's configuration, open-connection counts and counters (metrics).
//! - [`Guarded`]: the IO wrapper every accepted connection runs through. It watches the bytes
//!   of each HTTP/1 request head as they arrive, so it can answer a head that is too slow with
//!   `408`, a request line that is too long with `414`, a head that is too large with `431` and
//!   one with ambiguous framing (Content-Length with Transfer-Encoding, or Content-Length
//!   twice: the request-smuggling shapes) with `400` (and close), and it closes a connection idle between requests for `idle_timeout` and one
//!   whose client stops reading a response for `send_timeout`. HTTP/2 connections (told by their
//!   preface) are watched for idleness and stalled writes only; their limits are hyper's.
//! - [`InFlight`]: counts a connection's requests in progress (held by the response body), so
//!   the wrapper knows "idle" from "busy".
//! - [`ClientBody`]: a client's request body with the gap timeout between its bytes.
//!
//! Why an IO wrapper rather than hyper's own header timeout: hyper starts that timer when it
//! begins waiting for a head, which is also the keep-alive wait, so it cannot give "10 s for a
//! head, 60 s between requests"; and it closes without a `408`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client_ip::TrustedProxies;
use tokio::time::{Instant, Sleep};

/// Timeouts and limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// The whole request head must arrive within this, from its first byte (from the accept
    /// for a connection's first request); else `408` and close.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress (HTTP/2: no open stream) is closed
    /// after this.
    pub idle_timeout: Duration,
    /// A client that accepts no response bytes for this long is disconnected (its backend
    /// connection is closed with it, freeing the backend's `max_connections` slot).
    pub send_timeout: Duration,
    /// The longest gap between two parts of a request body; then `408` and close.
    pub body_timeout: Duration,
    /// Open client connections at most; further ones are accepted and closed at once.
    pub max_connections: usize,
    /// Open connections per client address at most (`None`: no limit).
    pub max_connections_per_ip: Option<usize>,
    /// Largest request head (request line and headers); larger: `431`.
    pub max_header_bytes: usize,
    /// Largest request line; longer: `414`. (More than 100 header fields is `431` too:
    /// hyper's limit, kept at its default because setting it moves headers to the heap.)
    pub max_uri_bytes: usize,
    /// HTTP/2: most concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Every connection starts with a PROXY protocol header (v1 or v2) whose source address is
    /// the client ([`crate::proxy_protocol`]).
    pub proxy_protocol: bool,
    /// Peers whose `X-Forwarded-For` is believed for `client_ip` keys ([`crate::client_ip`]).
    pub trusted_proxies: TrustedProxies,
    /// A tunnel with no bytes either way for this long is closed ([`crate::tunnel`]).
    pub tunnel_idle_timeout: Duration,
    /// A tunnel to a drained (or removed) backend is closed this long after the drain.
    pub tunnel_drain_timeout: Duration,
}

/// Descriptors kept for everything but client connections: backend connections get one per
/// client connection on top of this (see [`EdgeConfig::connections_for_descriptors`]).
pub const RESERVED_DESCRIPTORS: u64 = 128;

impl EdgeConfig {
    /// The defaults (HAProxy/NGINX practice): header 10 s, idle 60 s, send 30 s, body 30 s,
    /// head 32 KiB, request line 8 KiB, 100 headers, 100 HTTP/2 streams, tunnels idle 1 h
    /// (HAProxy's usual `timeout tunnel`) and drained within 60 s; connections from the
    /// descriptor limit.
    pub fn with_max_connections(max_connections: usize) -> EdgeConfig {
        EdgeConfig {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_connections,
            max_connections_per_ip: None,
            max_header_bytes: 32 * 1024,
            max_uri_bytes: 8 * 1024,
            max_concurrent_streams: 100,
            proxy_protocol: false,
            trusted_proxies: TrustedProxies::default(),
            tunnel_idle_timeout: Duration::from_secs(3600),
            tunnel_drain_timeout: Duration::from_secs(60),
        }
    }

    /// The client connections a process with `descriptors` open files may take: each may need
    /// a backend connection too, and [`RESERVED_DESCRIPTORS`] are kept for probes, the store,
    /// the admin listener and the API — as HAProxy derives `maxconn` from `ulimit -n`.
    pub fn connections_for_descriptors(descriptors: u64) -> usize {
        let usable = descriptors.saturating_sub(RESERVED_DESCRIPTORS) / 2;
        usize::try_from(usable.max(16)).unwrap_or(usize::MAX)
    }
}

/// The soft limit on open files of this process (`/proc/self/limits`; 1024 when unreadable).
pub fn descriptor_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|soft| {
            if soft == "unlimited" {
                Some(u64::MAX)
            } else {
                soft.parse().ok()
            }
        })
        .unwrap_or(1024)
}

/// What a listener counts (exported on `/metrics` with its name).
#[derive(Debug, Default)]
pub struct EdgeCounters {
    /// Connections accepted and closed at once because `max_connections` were open.
    pub refused_max_connections: AtomicU64,
    /// Connections accepted and closed at once because their address had
    /// `max_connections_per_ip` open.
    pub refused_per_ip: AtomicU64,
    /// Heads not complete within `header_timeout` (408).
    pub header_timeouts: AtomicU64,
    /// Keep-alive connections closed after `idle_timeout`.
    pub idle_timeouts: AtomicU64,
    /// Clients disconnected after `send_timeout`.
    pub send_timeouts: AtomicU64,
    /// Request bodies stalled for `body_timeout` (408).
    pub body_timeouts: AtomicU64,
    /// Request lines over `max_uri_bytes` (414).
    pub uri_too_long: AtomicU64,
    /// Request heads over `max_header_bytes` (431).
    pub head_too_large: AtomicU64,
    /// Request heads with ambiguous framing: Content-Length with Transfer-Encoding, or
    /// Content-Length twice (400; the request-smuggling shapes).
    pub ambiguous_framing: AtomicU64,
    /// Connections closed because their PROXY protocol header was missing, malformed or late.
    pub bad_proxy_header: AtomicU64,
    /// Upgrade requests refused because their route does not tunnel that protocol (403).
    pub upgrades_refused: AtomicU64,
    /// Tunnels opened (a backend answered an Upgrade with 101).
    pub tunnels_opened: AtomicU64,
    /// Tunnels closed, for any reason.
    pub tunnels_closed: AtomicU64,
    /// Of those, closed after `tunnel_idle_timeout` without traffic.
    pub tunnel_idle_timeouts: AtomicU64,
    /// Of those, closed at the drain deadline of their backend.
    pub tunnels_drained: AtomicU64,
}

/// One listener's edge: its configuration, its open connections and its counters.
#[derive(Debug)]
pub struct Edge {
    /// `proxy` or `admin`: the `listener` label of its metrics.
    pub name: &'static str,
    /// Timeouts and limits.
    pub config: EdgeConfig,
    /// Counters.
    pub counters: EdgeCounters,
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// An accepted connection's place under the caps; released when dropped.
#[derive(Debug)]
pub struct Permit {
    edge: Arc<Edge>,
    ip: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.edge.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut by_ip = self
                .edge
                .by_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
    }
}

impl Edge {
    /// A listener's edge.
    pub fn new(name: &'static str, config: EdgeConfig) -> Arc<Edge> {
        Arc::new(Edge {
            name,
            config,
            counters: EdgeCounters::default(),
            open: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Open client connections.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A place for a connection from `ip`, or `None` (counted) when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let max = self.config.max_connections;
        // Reserve first, then check: concurrent accepts on several threads cannot overshoot.
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.counters
                .refused_max_connections
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let Some(per_ip) = self.config.max_connections_per_ip else {
            return Some(Permit {
                edge: Arc::clone(self),
                ip: None,
            });
        };
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= per_ip {
            drop(by_ip);
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.counters.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(Permit {
            edge: Arc::clone(self),
            ip: Some(ip),
        })
    }
}

/// A connection's requests in progress, shared by its [`Guarded`] IO and its responses.
///
/// Nothing is woken when the last one ends: a response's last bytes are written (and flushed)
/// in the same poll of the connection's task, and the [`Guarded`] IO notices there that the
/// connection became idle. (Waking the reader from inside that poll cost a second poll of the
/// task per request: about 10% of a proxied request's CPU.)
#[derive(Debug, Default)]
pub struct ConnState {
    in_flight: AtomicUsize,
}

/// One request in progress on a connection: held by its response body, so the request counts
/// until its response has been sent (or abandoned).
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl InFlight {
    /// Counts a request that starts on the connection.
    pub fn start(conn: &Arc<ConnState>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(conn))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in progress until it is dropped.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _request: InFlight,
}

impl<B> Tracked<B> {
    /// `inner`, counted by `request` until dropped.
    pub fn new(inner: B, request: InFlight) -> Tracked<B> {
        Tracked {
            inner,
            _request: request,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the read side of a connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head, followed byte by byte.
    Head(HeadScan),
    /// A request in progress (its body, or nothing: the response is being made).
    Busy,
    /// Between requests.
    Idle,
}

/// How much of a request head has arrived, and what the edge must know of it: its size, the
/// end of its request line, the blank line that ends it, and the framing headers
/// (`Content-Length`, `Transfer-Encoding`) — hyper silently drops a Content-Length next to a
/// Transfer-Encoding, or a repeated one, so only the raw bytes show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeadScan {
    seen: usize,
    line_done: bool,
    /// The last three bytes, to find the blank line.
    tail: [u8; 3],
    /// The current header line's name so far (lower case), while it is short enough to be one
    /// of the names that matter.
    name: [u8; NAME_MAX],
    name_len: usize,
    name_done: bool,
    content_lengths: u8,
    transfer_encoding: bool,
}

const NAME_MAX: usize = 17;

const HEAD_START: Phase = Phase::Head(HeadScan {
    seen: 0,
    line_done: false,
    tail: [0; 3],
    name: [0; NAME_MAX],
    name_len: 0,
    name_done: false,
    content_lengths: 0,
    transfer_encoding: false,
});

/// How a head broke the edge's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// 400: both Content-Length and Transfer-Encoding, or Content-Length twice.
    Framing,
    /// 408: not complete within the header timeout.
    Timeout,
    /// 414: a request line over `max_uri_bytes`.
    UriTooLong,
    /// 431: a head over `max_header_bytes`.
    TooLarge,
}

impl HeadScan {
    /// Takes one byte; `Some(true)` when the head ended with it, `Err` when it broke a limit.
    fn push(&mut self, b: u8, cfg: &EdgeConfig) -> Result<bool, Broken> {
        self.seen += 1;
        if !self.line_done && self.seen > cfg.max_uri_bytes && b != b'\n' {
            return Err(Broken::UriTooLong);
        }
        if self.seen > cfg.max_header_bytes {
            return Err(Broken::TooLarge);
        }
        let t = self.tail;
        self.tail = [t[1], t[2], b];
        if b == b'\n' {
            // The head ends at an empty line: "\r\n\r\n" (or a bare "\n\n").
            let ended = self.line_done && (t[2] == b'\n' || (t[2] == b'\r' && t[1] == b'\n'));
            self.line_done = true;
            self.name_len = 0;
            self.name_done = false;
            if ended {
                if self.content_lengths > 1 || (self.content_lengths > 0 && self.transfer_encoding)
                {
                    return Err(Broken::Framing);
                }
                return Ok(true);
            }
            return Ok(false);
        }
        if !self.line_done || self.name_done {
            return Ok(false);
        }
        if b == b':' {
            self.name_done = true;
            match &self.name[..self.name_len.min(NAME_MAX)] {
                b"content-length" => self.content_lengths = self.content_lengths.saturating_add(1),
                b"transfer-encoding" => self.transfer_encoding = true,
                _ => {}
            }
        } else if self.name_len < NAME_MAX {
            self.name[self.name_len] = b.to_ascii_lowercase();
            self.name_len += 1;
        } else {
            // Longer than any name that matters.
            self.name_len = NAME_MAX + 1;
        }
        Ok(false)
    }
}

/// Why the read-side timer is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadTimer {
    Head,
    Idle,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An accepted connection under the edge's timeouts and head limits (see the module doc).
#[derive(Debug)]
pub struct Guarded<S> {
    io: S,
    edge: Arc<Edge>,
    conn: Arc<ConnState>,
    phase: Phase,
    /// `None` until the first bytes tell HTTP/1 from HTTP/2.
    h2: Option<bool>,
    /// What the read side waits for, and until when.
    read_deadline: Option<(ReadTimer, Instant)>,
    /// One timer for the connection's life, reset to each new read deadline (never dropped
    /// and re-created: that allocated twice per request). Moving it earlier (a request head
    /// starts) re-files it in tokio's wheel; moving it later (the connection goes idle) is a
    /// compare-and-swap. A deadline that ended without firing (a head that completed) leaves
    /// it where it is; when it fires it is re-checked against the current deadline.
    read_sleep: Pin<Box<Sleep>>,
    /// The instant `read_sleep` is set to; `None` once it fired.
    sleep_at: Option<Instant>,
    send_timer: Option<Pin<Box<Sleep>>>,
    /// A response the edge itself sends before closing (408, 414, 431), and how much of it is
    /// written.
    refusal: Option<(&'static [u8], usize)>,
    _permit: Permit,
}

/// The edge's own answers, built once: `(status line, why)`.
static REFUSALS: LazyLock<[Vec<u8>; 4]> = LazyLock::new(|| {
    [
        (
            "400 Bad Request",
            "the request has both Content-Length and Transfer-Encoding, or two Content-Length",
        ),
        ("408 Request Timeout", "the request head did not arrive in time"),
        ("414 URI Too Long", "the request line is longer than allowed"),
        (
            "431 Request Header Fields Too Large",
            "the request head is larger than allowed",
        ),
    ]
    .map(|(status, why)| {
        format!(
            "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{why}\n",
            why.len() + 1
        )
        .into_bytes()
    })
});

fn refusal(why: Broken) -> &'static [u8] {
    let i = match why {
        Broken::Framing => 0,
        Broken::Timeout => 1,
        Broken::UriTooLong => 2,
        Broken::TooLarge => 3,
    };
    &REFUSALS[i]
}

impl<S> Guarded<S> {
    /// `io`, accepted at `accepted` under `permit`; requests in progress are counted in
    /// `conn`. The first request head is due `header_timeout` after the accept, whatever came
    /// before it (a PROXY protocol header, a TLS handshake).
    pub fn new(
        io: S,
        edge: Arc<Edge>,
        conn: Arc<ConnState>,
        permit: Permit,
        accepted: Instant,
    ) -> Guarded<S> {
        let deadline = accepted + edge.config.header_timeout;
        Guarded {
            io,
            edge,
            conn,
            phase: HEAD_START,
            h2: None,
            read_deadline: Some((ReadTimer::Head, deadline)),
            read_sleep: Box::pin(tokio::time::sleep_until(deadline)),
            sleep_at: Some(deadline),
            send_timer: None,
            refusal: None,
            _permit: permit,
        }
    }

    fn arm_read(&mut self, why: ReadTimer, after: Duration) {
        let deadline = Instant::now() + after;
        self.read_deadline = Some((why, deadline));
        // Always to the exact deadline: moving a registered timer later is a compare-and-swap
        // in tokio (the wheel re-files it when the old instant comes, without waking this
        // task), so an idle connection is not woken at its accept's header deadline.
        self.read_sleep.as_mut().reset(deadline);
        self.sleep_at = Some(deadline);
    }

    /// The read-side deadline that has passed, if any. Registers this task with the timer
    /// otherwise.
    fn poll_read_deadline(&mut self, cx: &mut Context<'_>) -> Option<ReadTimer> {
        loop {
            self.sleep_at?;
            if self.read_sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
            self.sleep_at = None;
            let (why, deadline) = self.read_deadline?;
            if Instant::now() >= deadline {
                return Some(why);
            }
            // The deadline moved on since the timer was set: follow it.
            self.read_sleep.as_mut().reset(deadline);
            self.sleep_at = Some(deadline);
        }
    }

    /// Follows the connection's requests: busy while one is in progress, idle (timer armed)
    /// when the last one ended.
    fn follow_requests(&mut self) {
        let busy = self.conn.in_flight.load(Ordering::Acquire) > 0;
        match self.phase {
            Phase::Busy if !busy => {
                self.phase = Phase::Idle;
                self.arm_read(ReadTimer::Idle, self.edge.config.idle_timeout);
            }
            Phase::Idle if busy => {
                self.phase = Phase::Busy;
                self.read_deadline = None;
            }
            // HTTP/2: streams open while the preface or settings are still arriving.
            Phase::Head(_) if busy && self.h2 == Some(true) => {
                self.phase = Phase::Busy;
                self.read_deadline = None;
            }
            _ => {}
        }
    }

    /// Looks at newly read bytes: tells HTTP/2 from HTTP/1, and follows an HTTP/1 head.
    /// `Some(status)` when the head breaks a limit.
    fn saw(&mut self, bytes: &[u8]) -> Option<Broken> {
        if self.h2.is_none() {
            let n = bytes.len().min(H2_PREFACE.len());
            self.h2 = Some(bytes[..n] == H2_PREFACE[..n]);
        }
        if self.h2 == Some(true) {
            if matches!(self.phase, Phase::Head(_)) {
                // The preface arrived: from now on, idle means no open stream.
                self.phase = Phase::Idle;
                self.arm_read(ReadTimer::Idle, self.edge.config.idle_timeout);
            }
            return None;
        }
        if self.phase == Phase::Idle {
            self.phase = HEAD_START;
            self.arm_read(ReadTimer::Head, self.edge.config.header_timeout);
        }
        let Phase::Head(mut head) = self.phase else {
            return None;
        };
        for &b in bytes {
            match head.push(b, &self.edge.config) {
                Ok(false) => {}
                Ok(true) => {
                    // Bytes after the head (a body, a pipelined request) are not followed:
                    // hyper's own buffer limit bounds a pipelined head.
                    self.phase = Phase::Busy;
                    self.read_deadline = None;
                    return None;
                }
                Err(why) => return Some(why),
            }
        }
        self.phase = Phase::Head(head);
        None
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("client {what} timeout"))
}

impl<S> Guarded<S> {
    /// Counts a head broken as `why` and queues the edge's answer to it.
    fn refuse(&mut self, why: Broken) {
        let c = &self.edge.counters;
        match why {
            Broken::Framing => &c.ambiguous_framing,
            Broken::Timeout => &c.header_timeouts,
            Broken::UriTooLong => &c.uri_too_long,
            Broken::TooLarge => &c.head_too_large,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.refusal = Some((refusal(why), 0));
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// Writes the edge's own refusal, then fails the read (hyper closes the connection).
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((msg, done)) = self.refusal {
            match Pin::new(&mut self.io).poll_write(cx, &msg[done..]) {
                Poll::Ready(Ok(n)) if n > 0 && done + n < msg.len() => {
                    self.refusal = Some((msg, done + n));
                }
                Poll::Ready(Ok(_)) | Poll::Ready(Err(_)) => {
                    self.refusal = None;
                    let _ = Pin::new(&mut self.io).poll_flush(cx);
                    return Poll::Ready(Err(io::Error::other("request refused at the edge")));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Err(io::Error::other("request refused at the edge")))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.refusal.is_some() {
            return this.poll_refuse(cx);
        }
        this.follow_requests();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                if filled.len() > before
                    && let Some(why) = this.saw(&filled[before..])
                {
                    // Nothing of this head reaches hyper: the edge answers and closes.
                    buf.set_filled(before);
                    this.refuse(why);
                    return this.poll_refuse(cx);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(why) = this.poll_read_deadline(cx) else {
                    return Poll::Pending;
                };
                let c = &this.edge.counters;
                match (why, this.phase) {
                    (ReadTimer::Head, Phase::Head(h)) if h.seen > 0 => {
                        this.read_deadline = None;
                        this.refuse(Broken::Timeout);
                        this.poll_refuse(cx)
                    }
                    (ReadTimer::Head, _) => {
                        // Connected and sent nothing: closed without an answer.
                        c.header_timeouts.fetch_add(1, Ordering::Relaxed);
                        Poll::Ready(Err(timed_out("header")))
                    }
                    (ReadTimer::Idle, _) => {
                        c.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                        Poll::Ready(Err(timed_out("idle")))
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// A write-side result: a write that cannot proceed arms the send timer; one that does
    /// disarms it. A response's last write is where a connection becomes idle: the idle timer
    /// is armed (and registered with this task) here.
    fn sending<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if self.phase == Phase::Busy {
            self.follow_requests();
            if self.phase == Phase::Idle
                && self.sleep_at.is_some()
                && self.read_sleep.as_mut().poll(cx).is_ready()
            {
                // Registered, or already due: make sure the read side looks soon.
                cx.waker().wake_by_ref();
            }
        }
        match r {
            Poll::Pending => {
                let send = self.edge.config.send_timeout;
                let sleep = self
                    .send_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
                if sleep.as_mut().poll(cx).is_ready() {
                    self.edge
                        .counters
                        .send_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Err(timed_out("send")));
                }
                Poll::Pending
            }
            ready => {
                self.send_timer = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.sending(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.sending(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.sending(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The longest pause allowed between two parts of a body (a client's request body, a
/// backend's response body). Its timer is armed the first time the body makes us wait — most
/// small bodies never do — and pushed back by every part that arrives.
#[derive(Debug)]
pub struct Gap {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Gap {
    /// A gap of at most `limit`.
    pub fn new(limit: Duration) -> Gap {
        Gap { limit, sleep: None }
    }

    /// The gap allowed.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// A part arrived: the next may take `limit` from now.
    pub fn progress(&mut self) {
        if let Some(s) = &mut self.sleep {
            s.as_mut().reset(Instant::now() + self.limit);
        }
    }

    /// The body is waiting: `Ready` when the gap is over.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let limit = self.limit;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)))
            .as_mut()
            .poll(cx)
    }
}

/// Why a client's request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// Nothing arrived for `body_timeout`.
    #[error("the client sent nothing of its request body for {0:?} (body timeout)")]
    Timeout(Duration),
    /// More than the route's `max_body_bytes` arrived.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    /// The client connection failed.
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
}

impl ClientBodyError {
    /// The client-body error behind `e` (an error of the backend request this body was sent
    /// with), when it is the client's fault: a stalled or oversized body.
    pub fn of<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(c) = err.downcast_ref::<ClientBodyError>()
                && !matches!(c, ClientBodyError::Client(_))
            {
                return Some(c);
            }
            cur = err.source();
        }
        None
    }
}

/// A client's request body, streamed through, with `body_timeout` between its parts and the
/// route's `max_body_bytes` counted as it flows.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    gap: Gap,
    /// Bytes still allowed (`None`: no limit).
    left: Option<u64>,
    limit: u64,
    /// Bytes read so far (the request's [`crate::traffic::Exchange`] reports them).
    read: Arc<AtomicU64>,
}

impl ClientBody {
    /// `inner`, cut when nothing arrives for `gap` or when more than `limit` bytes do; what
    /// is read is added to `read`.
    pub fn new(
        inner: Incoming,
        gap: Duration,
        limit: Option<u64>,
        read: Arc<AtomicU64>,
    ) -> ClientBody {
        ClientBody {
            inner,
            gap: Gap::new(gap),
            left: limit,
            limit: limit.unwrap_or(u64::MAX),
            read,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.gap.progress();
                if let Some(Ok(frame)) = &r
                    && let Some(data) = frame.data_ref()
                {
                    let n = data.len() as u64;
                    if let Some(left) = &mut this.left {
                        if n > *left {
                            return Poll::Ready(Some(Err(ClientBodyError::TooLarge(this.limit))));
                        }
                        *left -= n;
                    }
                    this.read.fetch_add(n, Ordering::Relaxed);
                }
                Poll::Ready(r.map(|f| f.map_err(ClientBodyError::from)))
            }
            Poll::Pending => match this.gap.poll_expired(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(ClientBodyError::Timeout(this.gap.limit()))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_descriptors_for_backends_and_the_rest() {
        assert_eq!(EdgeConfig::connections_for_descriptors(1024), 448);
        assert_eq!(EdgeConfig::connections_for_descriptors(1_048_576), 524_224);
        assert_eq!(EdgeConfig::connections_for_descriptors(100), 16);
    }

    #[test]
    fn caps_are_exact_and_released() {
        let mut cfg = EdgeConfig::with_max_connections(3);
        cfg.max_connections_per_ip = Some(2);
        let edge = Edge::new("proxy", cfg);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = edge.admit(a).unwrap();
        let _p2 = edge.admit(a).unwrap();
        assert!(edge.admit(a).is_none(), "per-address cap");
        let _p3 = edge.admit(b).unwrap();
        assert!(edge.admit(b).is_none(), "node cap");
        assert_eq!(edge.open(), 3);
        drop(p1);
        assert!(edge.admit(a).is_some());
        assert_eq!(edge.counters.refused_per_ip.load(Ordering::Relaxed), 1);
        assert_eq!(
            edge.counters
                .refused_max_connections
                .load(Ordering::Relaxed),
            1
        );
    }

    fn scan(head: &[u8], cfg: &EdgeConfig) -> Result<Option<usize>, Broken> {
        let Phase::Head(mut h) = HEAD_START else {
            unreachable!()
        };
        for (i, &b) in head.iter().enumerate() {
            if h.push(b, cfg)? {
                return Ok(Some(i + 1));
            }
        }
        Ok(None)
    }

    #[test]
    fn the_head_scanner_finds_the_end_and_every_broken_rule() {
        let cfg = EdgeConfig::with_max_connections(1);
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(scan(get, &cfg), Ok(Some(get.len() - 4)));
        assert_eq!(scan(b"GET / HTTP/1.1\r\n\r\n", &cfg), Ok(Some(18)));
        assert_eq!(scan(b"GET / HTTP/1.1\nHost: a\n\n", &cfg), Ok(Some(24)));
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\r\n", &cfg), Ok(None));
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        assert_eq!(scan(long_line.as_bytes(), &cfg), Err(Broken::UriTooLong));
        let big = format!("GET / HTTP/1.1\r\nX-a: {}\r\n\r\n", "a".repeat(40_000));
        assert_eq!(scan(big.as_bytes(), &cfg), Err(Broken::TooLarge));
        let both = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(both, &cfg), Err(Broken::Framing));
        let twice = b"POST / HTTP/1.1\r\ncontent-length: 4\r\nCONTENT-LENGTH: 4\r\n\r\n";
        assert_eq!(scan(twice, &cfg), Err(Broken::Framing));
        // A header merely named like one, or carrying the name in its value, is not one.
        let fine = b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\nA: transfer-encoding:\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(scan(fine, &cfg), Ok(Some(_))));
    }

    #[test]
    fn the_descriptor_limit_is_read() {
        assert!(descriptor_limit() >= 16);
    }
}
