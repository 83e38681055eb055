//! Keep-alive HTTP/1.1 connections to one backend identity (spoken by [`crate::h1`], in the
//! request's task), and shared HTTP/2 ones (hyper's client, a task per connection).
//!
//! A connection is checked out for one request as a [`Checkout`] guard, which gives it back
//! when the response body has been read to the end ([`Checkout::release`], called by
//! [`crate::body::UpstreamBody`]); a guard dropped half-way closes it.
//! Connecting is a separate step from sending, so that a connect failure leaves the request
//! untouched and the proxy can retry it on the director's next alternate.
//!
//! Idle connections are kept per proxy thread (as NGINX keeps them per worker): a backend
//! connection's socket is registered with the event loop of the thread that opened it (and
//! an HTTP/2 connection's task runs there), so handing it to another thread adds a
//! cross-thread wake-up to every request on it. A thread with no idle connection of its own
//! opens one — unless that would pass `max_connections`: it then takes one idle on another
//! thread, and failing that waits up to the backend's `queue_timeout` for one to be given
//! back or closed (HAProxy's `timeout queue`), so the limit is per node and exact: a slot is
//! reserved before connecting, so concurrent cold requests cannot overshoot it.
//!
//! Addresses with a DNS name are resolved through [`crate::resolve::Dns`]; the pool keeps
//! each name's last answer and refreshes it in the background after four fifths of its TTL
//! (requests on idle connections never wait for DNS, and a pool in use has the next answer
//! before the current one expires). A new connection waits for a lookup only when the name
//! has no answer yet or its answer expired, and then at most its connect timeout; when the
//! name servers fail or are slow, the kept answer is used and asked for again after
//! `--dns-min-ttl`. Idle connections to addresses that left the answer are closed. Connections older than the
//! backend's `max_connection_lifetime` are closed instead of reused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri, Version, header, uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::config::{Address, BackendSpec, Host, Protocol};
use crate::edge::ClientBody;
use crate::h1;
use crate::resolve::{Answer, Dns, ResolveError};
use crate::tls::{self, BackendTls};

/// What the proxy sends to a backend: the client's body streamed through, or nothing (a
/// request without a body, which can then be replayed on another backend).
pub type RequestBody = Either<ClientBody, Empty<Bytes>>;

/// Idle connections kept per backend and proxy thread; more are closed when returned.
const MAX_IDLE: usize = 256;
/// Idle lists per backend; proxy threads beyond this share lists.
const SHARDS: usize = 16;

thread_local! {
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes the calling thread use idle list `index` (proxy threads call this once at start;
/// other threads use list 0).
pub fn set_thread_shard(index: usize) {
    SHARD.with(|s| s.set(index % SHARDS));
}

fn shard() -> usize {
    SHARD.with(std::cell::Cell::get)
}

/// HTTP/2 to a backend: pings after 20 s without frames, answered within 20 s.
const H2_PING: Duration = Duration::from_secs(20);

/// An HTTP/2 connection's streams: open now, and the most the backend allows (its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`, followed as it changes).
#[derive(Debug)]
struct Streams {
    open: AtomicUsize,
    max: AtomicUsize,
}

/// A shared HTTP/2 connection.
#[derive(Debug, Clone)]
struct Shared {
    conn: http2::SendRequest<RequestBody>,
    streams: Arc<Streams>,
    born: Instant,
    peer: SocketAddr,
}

impl Shared {
    /// A stream on it, if one is free.
    fn stream(&self) -> Option<StreamGuard> {
        let s = &self.streams;
        let max = s.max.load(Ordering::Acquire).max(1);
        s.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(StreamGuard(Arc::clone(&self.streams)))
    }
}

/// One request's stream on a shared connection; frees it when dropped.
#[derive(Debug)]
struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No address answered within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// Connecting failed.
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    /// The TLS handshake failed (an unknown CA, a name the certificate does not carry…).
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// An Upgrade to a backend that speaks HTTP/2 only.
    #[error("the backend speaks HTTP/2 (protocol {0:?}); an Upgrade tunnel needs HTTP/1.1")]
    NoUpgrade(Protocol),
    /// `max_connections` are open (and none came free within `queue_timeout`).
    #[error("backend at max_connections ({0})")]
    AtLimit(u32),
    /// A DNS name could not be resolved, and there is no earlier answer to fall back on.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// How a checkout may get its connection: the backend's settings in the current revision, and
/// the largest response head accepted (a larger one fails the request: `502`).
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    /// HTTP/1.1, HTTP/2 or either.
    pub protocol: Protocol,
    /// TLS settings (`None`: plain TCP).
    pub tls: Option<&'a BackendTls>,
    /// Resolving and connecting, per attempt.
    pub connect_timeout: Duration,
    /// Open connections at most (0: unlimited).
    pub max_connections: u32,
    /// How long to wait for a connection at the limit.
    pub queue_timeout: Duration,
    /// Connections older than this are not reused.
    pub max_lifetime: Option<Duration>,
    /// Largest response head (status line and headers), bytes.
    pub max_head_bytes: usize,
}

impl Dial<'_> {
    /// The settings of `spec`, with this response-head limit.
    pub fn of(spec: &BackendSpec, max_head_bytes: usize) -> Dial<'_> {
        Dial {
            protocol: spec.protocol,
            tls: spec.tls.as_ref(),
            connect_timeout: spec.timeouts.connect,
            max_connections: spec.max_connections,
            queue_timeout: spec.queue_timeout,
            max_lifetime: spec.max_connection_lifetime,
            max_head_bytes,
        }
    }
}

/// A pool's counters, exported by `/metrics`.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Connections opened.
    pub connects: AtomicU64,
    /// Connect attempts that failed.
    pub connect_failures: AtomicU64,
    /// Requests that found the backend at `max_connections` and waited (`queue_timeout`).
    pub queued: AtomicU64,
    /// Of those, the ones no connection came free for in time (`503`).
    pub queue_timeouts: AtomicU64,
    /// Lookups of the backend's names that failed (an earlier answer was used if there was one).
    pub resolve_failures: AtomicU64,
    /// Failed exchanges with the backend, by cause (each alternate tried counts).
    pub failures: Failures,
}

/// Why an exchange with a backend failed: the causes behind the proxy's 502, 503 and 504s, and
/// behind responses cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connecting (TCP, TLS, the HTTP/2 handshake, DNS) failed: 502.
    ConnectFailed,
    /// No address answered within the connect timeout: 504.
    ConnectTimeout,
    /// `max_connections` were open and none came free in time: 503.
    AtLimit,
    /// No response head within `first_byte`: 504.
    FirstByteTimeout,
    /// The connection failed after the request was sent (reset, closed): 502.
    BackendFailed,
    /// The response head was over the limit: 502.
    HeadTooLarge,
    /// The response body stalled for `between_bytes` (the response is cut short).
    BetweenBytesTimeout,
    /// The response body failed midway (the response is cut short).
    BodyFailed,
}

impl Failure {
    /// Every cause, in the order of [`Failures`]' slots.
    pub const ALL: [Failure; 8] = [
        Failure::ConnectFailed,
        Failure::ConnectTimeout,
        Failure::AtLimit,
        Failure::FirstByteTimeout,
        Failure::BackendFailed,
        Failure::HeadTooLarge,
        Failure::BetweenBytesTimeout,
        Failure::BodyFailed,
    ];

    /// The cause's `/metrics` label.
    pub fn label(self) -> &'static str {
        match self {
            Failure::ConnectFailed => "connect_failed",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::AtLimit => "at_limit",
            Failure::FirstByteTimeout => "first_byte_timeout",
            Failure::BackendFailed => "backend_failed",
            Failure::HeadTooLarge => "head_too_large",
            Failure::BetweenBytesTimeout => "between_bytes_timeout",
            Failure::BodyFailed => "body_failed",
        }
    }

    /// The cause of a connect error.
    pub fn of_connect(e: &ConnectError) -> Failure {
        match e {
            ConnectError::Timeout(_) => Failure::ConnectTimeout,
            ConnectError::AtLimit(_) => Failure::AtLimit,
            _ => Failure::ConnectFailed,
        }
    }
}

/// Failures by cause.
#[derive(Debug, Default)]
pub struct Failures([AtomicU64; Failure::ALL.len()]);

impl Failures {
    /// Counts one.
    pub fn add(&self, f: Failure) {
        self.0[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for `f`.
    pub fn get(&self, f: Failure) -> u64 {
        self.0[f as usize].load(Ordering::Relaxed)
    }
}

/// An idle HTTP/1.1 connection, with what decides whether it may still be used.
#[derive(Debug)]
struct Idle {
    conn: h1::Conn,
    born: Instant,
    peer: SocketAddr,
    /// The pool's generation when it was opened (see [`Pool::reset`]).
    generation: u64,
    /// Its place under `max_connections`: freed when the connection is dropped (closed).
    slot: SlotGuard,
}

/// A response head from a backend, and how its body is read.
#[derive(Debug)]
pub enum Upstream {
    /// HTTP/1.1: the body is read from the checkout's connection ([`Checkout::poll_h1`]).
    H1(h1::Framing),
    /// HTTP/2: hyper's stream.
    H2(Incoming),
}

/// Why a request failed on a checked-out connection.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// HTTP/1.1.
    #[error(transparent)]
    H1(#[from] h1::Error),
    /// HTTP/2.
    #[error(transparent)]
    H2(#[from] hyper::Error),
}

impl SendError {
    /// The backend's response head was over the limit (its answer, not a broken connection).
    pub fn is_head_too_large(&self) -> bool {
        match self {
            SendError::H1(e) => matches!(e, h1::Error::HeadTooLarge(_)),
            SendError::H2(e) => e.is_parse_too_large(),
        }
    }
}

/// A failed send, and the request's body when none of it was used (the request may go
/// elsewhere as it is).
#[derive(Debug)]
pub struct Unsent {
    /// Why.
    pub error: SendError,
    /// The body, intact.
    pub body: Option<RequestBody>,
}

/// The open count, shared with the connections (an HTTP/1.1 connection's [`SlotGuard`] goes
/// with it, an HTTP/2 one's with its task: closing frees the slot), and the signal queued
/// requests wait on: a connection came free (given back, or closed).
#[derive(Debug, Default)]
struct Slots {
    open: AtomicUsize,
    freed: Notify,
}

/// One backend's connections.
#[derive(Debug)]
pub struct Pool {
    addresses: Vec<Address>,
    dns: Arc<Dns>,
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// HTTP/2 connections, per proxy thread like the idle lists.
    shared: Box<[Mutex<Vec<Shared>>]>,
    slots: Arc<Slots>,
    /// The last answer for each address with a DNS name (`None`: not resolved yet, or an IP).
    answers: Mutex<Vec<Option<Answer>>>,
    /// Whether any address has a DNS name (IP-only pools skip every DNS check).
    named: bool,
    /// A background refresh of expired answers is running.
    refreshing: AtomicBool,
    /// Bumped by [`Pool::reset`]: connections of an earlier generation are not reused.
    generation: AtomicU64,
    /// Counters.
    pub counters: PoolCounters,
}

/// A checked-out connection. [`Checkout::release`] returns it to its pool (its response was
/// read to the end); dropping the guard instead closes it.
#[derive(Debug)]
pub struct Checkout {
    pool: Arc<Pool>,
    held: Held,
    /// When it stops being reused (`max_connection_lifetime` from its checkout).
    retire_at: Option<Instant>,
    /// Over TLS (the scheme of HTTP/2 requests).
    tls: bool,
    /// Opened for an Upgrade ([`Pool::open_tunnel`]): never given back to the idle lists.
    tunnel: bool,
}

/// What a checkout holds.
#[derive(Debug)]
enum Held {
    /// An HTTP/1.1 connection, to itself.
    H1(Idle),
    /// A stream on a shared HTTP/2 connection.
    H2 {
        conn: http2::SendRequest<RequestBody>,
        /// Freed when the checkout ends.
        _stream: StreamGuard,
    },
}

impl Checkout {
    /// Counts a failure of the exchange on this connection.
    pub fn failed(&self, f: Failure) {
        self.pool.counters.failures.add(f);
    }

    fn h1(pool: &Arc<Pool>, idle: Idle, retire_at: Option<Instant>, tls: bool) -> Checkout {
        Checkout {
            pool: Arc::clone(pool),
            held: Held::H1(idle),
            retire_at,
            tls,
            tunnel: false,
        }
    }

    fn h2(pool: &Arc<Pool>, shared: &Shared, stream: StreamGuard, dial: &Dial<'_>) -> Checkout {
        Checkout {
            pool: Arc::clone(pool),
            held: Held::H2 {
                conn: shared.conn.clone(),
                _stream: stream,
            },
            retire_at: dial.max_lifetime.map(|l| shared.born + l),
            tls: dial.tls.is_some(),
            tunnel: false,
        }
    }

    /// Whether this is a stream on an HTTP/2 connection.
    pub fn is_h2(&self) -> bool {
        matches!(self.held, Held::H2 { .. })
    }

    /// Sends `head` (HTTP/1.1-shaped: a relative URI and a `Host`) and `body`; on HTTP/2 the
    /// URI becomes absolute (`:scheme`, `:authority` from the `Host`; the head is copied into
    /// hyper's request). A body that was not used comes back in the error.
    pub async fn send(
        &mut self,
        head: h1::Head<'_>,
        body: RequestBody,
    ) -> Result<Response<Upstream>, Unsent> {
        match &mut self.held {
            Held::H1(idle) => match idle.conn.send(head, body).await {
                Ok((parts, framing)) => Ok(Response::from_parts(parts, Upstream::H1(framing))),
                Err(h1::Failed { error, unsent }) => Err(Unsent {
                    error: error.into(),
                    body: unsent,
                }),
            },
            Held::H2 { conn, .. } => {
                let scheme = if self.tls {
                    uri::Scheme::HTTPS
                } else {
                    uri::Scheme::HTTP
                };
                let mut req = Request::new(body);
                *req.method_mut() = head.method.clone();
                *req.uri_mut() = head.uri.clone();
                *req.headers_mut() = head.headers.clone();
                if let Some(h) = head.host {
                    req.headers_mut().insert(header::HOST, h.clone());
                }
                h2_uri(&mut req, scheme);
                match conn.try_send_request(req).await {
                    Ok(r) => Ok(r.map(Upstream::H2)),
                    Err(mut e) => Err(Unsent {
                        body: e.take_message().map(Request::into_body),
                        error: e.into_error().into(),
                    }),
                }
            }
        }
    }

    /// The next part of an HTTP/1.1 response body (see [`h1::Conn::poll_frame`]); `None` on
    /// an HTTP/2 stream.
    pub fn poll_h1(
        &mut self,
        cx: &mut std::task::Context<'_>,
        framing: &mut h1::Framing,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, h1::Error>>> {
        match &mut self.held {
            Held::H1(idle) => idle.conn.poll_frame(cx, framing),
            Held::H2 { .. } => std::task::Poll::Ready(None),
        }
    }

    /// The connection as a tunnel after a `101`, with its place under `max_connections`
    /// (`None` for an HTTP/2 stream, which cannot be upgraded).
    pub fn into_tunnel(self) -> Option<(h1::Upgraded, TunnelSlot)> {
        match self.held {
            Held::H1(idle) => Some((idle.conn.into_upgraded(), TunnelSlot { _slot: idle.slot })),
            Held::H2 { .. } => None,
        }
    }

    /// Gives the connection back to its pool for the next request, unless it is too old or
    /// its address left the DNS answer (or it was opened for an Upgrade: never reused).
    pub fn release(self) {
        let Held::H1(idle) = self.held else {
            // A stream: dropping its guard frees it; the connection stays shared.
            return;
        };
        if self.tunnel || !idle.conn.reusable() {
            return;
        }
        if self.retire_at.is_some_and(|t| Instant::now() >= t) || !self.pool.current(idle.peer) {
            return;
        }
        self.pool.put(idle);
    }
}

/// Makes an HTTP/1.1-shaped request an HTTP/2 one: version 2, and an absolute URI whose
/// authority is the `Host` header (which HTTP/2 carries as `:authority`).
fn h2_uri(req: &mut Request<RequestBody>, scheme: uri::Scheme) {
    *req.version_mut() = Version::HTTP_2;
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| uri::Authority::try_from(h.as_bytes()).ok());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let Some(a) = authority {
        parts.authority = Some(a);
    }
    if parts.authority.is_some() {
        parts.scheme = Some(scheme);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(uri::PathAndQuery::from_static("/"));
        }
    }
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
}

/// Frees a connection's slot when it closes, and tells a queued request.
#[derive(Debug)]
struct SlotGuard(Arc<Slots>);

/// A tunnel's place under its backend's `max_connections`, given back when dropped.
#[derive(Debug)]
pub struct TunnelSlot {
    _slot: SlotGuard,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// The configured addresses (the backend identity's), in order.
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// An empty pool for these addresses (tried in order), resolving names with `dns`.
    pub fn new(addresses: Vec<Address>, dns: Arc<Dns>) -> Pool {
        let named = addresses.iter().any(|a| matches!(a.host, Host::Dns(_)));
        Pool {
            answers: Mutex::new(vec![None; addresses.len()]),
            addresses,
            dns,
            idle: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            shared: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            slots: Arc::new(Slots::default()),
            named,
            refreshing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            counters: PoolCounters::default(),
        }
    }

    /// Open connections (idle and busy).
    pub fn open(&self) -> usize {
        self.slots.open.load(Ordering::Acquire)
    }

    /// Idle connections.
    pub fn idle(&self) -> usize {
        self.idle.iter().map(|l| lock(l).len()).sum()
    }

    /// Returns a connection whose response was read to the end.
    fn put(&self, idle: Idle) {
        if idle.generation != self.generation.load(Ordering::Acquire) {
            return;
        }
        let mut list = lock(&self.idle[shard()]);
        if list.len() < MAX_IDLE {
            list.push(idle);
            drop(list);
            self.slots.freed.notify_one();
        }
    }

    /// Stops reusing every connection open now (idle ones are closed, busy ones when their
    /// request ends; HTTP/2 ones take no new streams): the backend's TLS settings or protocol
    /// changed, and connections must be made anew with the new ones.
    pub fn reset(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for (idle, shared) in self.idle.iter().zip(self.shared.iter()) {
            let gone = std::mem::take(&mut *lock(idle));
            let streams = std::mem::take(&mut *lock(shared));
            // Dropped outside the locks.
            drop((gone, streams));
        }
    }

    /// Whether `peer` is still in its name's answer (always, for IP addresses).
    fn current(&self, peer: SocketAddr) -> bool {
        if !self.named {
            return true;
        }
        let answers = lock(&self.answers);
        self.addresses
            .iter()
            .zip(answers.iter())
            .any(|(a, answer)| match (&a.host, answer) {
                (Host::Ip(ip), _) => SocketAddr::new(*ip, a.port) == peer,
                (Host::Dns(_), Some(ans)) => {
                    a.port == peer.port() && ans.addresses.contains(&peer.ip())
                }
                (Host::Dns(_), None) => false,
            })
    }

    /// An idle connection from list `i` that may still be used; unusable ones are closed.
    fn take(self: &Arc<Self>, i: usize, dial: &Dial<'_>) -> Option<Checkout> {
        loop {
            let mut idle = lock(&self.idle[i]).pop()?;
            let retire_at = dial.max_lifetime.map(|l| idle.born + l);
            if !idle.conn.is_live()
                || retire_at.is_some_and(|t| Instant::now() >= t)
                || !self.current(idle.peer)
            {
                continue;
            }
            return Some(Checkout::h1(self, idle, retire_at, dial.tls.is_some()));
        }
    }

    /// A free stream on an HTTP/2 connection of list `i`; closed and retired connections
    /// are dropped from the list.
    fn take_stream(self: &Arc<Self>, i: usize, dial: &Dial<'_>) -> Option<Checkout> {
        let mut list = lock(&self.shared[i]);
        let now = Instant::now();
        list.retain(|c| {
            !c.conn.is_closed()
                && dial.max_lifetime.is_none_or(|l| now < c.born + l)
                && self.current(c.peer)
        });
        list.iter()
            .find_map(|c| c.stream().map(|g| Checkout::h2(self, c, g, dial)))
    }

    /// An idle connection (or free HTTP/2 stream) from any thread's list, this thread's first.
    fn take_any(self: &Arc<Self>, dial: &Dial<'_>) -> Option<Checkout> {
        let own = shard();
        for k in 0..SHARDS {
            let i = (own + k) % SHARDS;
            if dial.protocol != Protocol::Http1
                && let Some(c) = self.take_stream(i, dial)
            {
                return Some(c);
            }
            if let Some(c) = self.take(i, dial) {
                return Some(c);
            }
        }
        None
    }

    /// A slot for one more connection, unless `max` are open (0: no limit).
    fn reserve(&self, max: u32) -> Option<SlotGuard> {
        let before = self.slots.open.fetch_add(1, Ordering::AcqRel);
        if max > 0 && before >= max as usize {
            // Given back without waking anyone: nothing came free.
            self.slots.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SlotGuard(Arc::clone(&self.slots)))
    }

    /// An idle connection (`true`: reused), or a new one (`false`).
    pub async fn checkout(
        self: &Arc<Self>,
        dial: Dial<'_>,
    ) -> Result<(Checkout, bool), ConnectError> {
        if self.named {
            self.refresh_if_due();
        }
        if dial.protocol != Protocol::Http1
            && let Some(c) = self.take_stream(shard(), &dial)
        {
            return Ok((c, true));
        }
        if !dial.protocol.always_h2()
            && let Some(c) = self.take(shard(), &dial)
        {
            return Ok((c, true));
        }
        // Boxed: connecting (TCP, TLS, DNS, the queue) is the cold path, and its state would
        // otherwise make every request's future — and each client connection's, which hyper
        // keeps allocated for the next request — that much larger.
        Box::pin(self.slot_or_wait(&dial, false)).await
    }

    /// A new connection for an HTTP/1.1 Upgrade request, never taken from or given back to
    /// the idle lists (a tunnel is a connection of its own, as in HAProxy), counted under
    /// `max_connections` for as long as it or the tunnel it becomes is open. At the limit it
    /// waits for a slot like any request, up to `queue_timeout`.
    pub async fn open_tunnel(self: &Arc<Self>, dial: Dial<'_>) -> Result<Checkout, ConnectError> {
        if dial.protocol.always_h2() {
            return Err(ConnectError::NoUpgrade(dial.protocol));
        }
        if self.named {
            self.refresh_if_due();
        }
        Box::pin(self.slot_or_wait(&dial, true))
            .await
            .map(|(c, _)| c)
    }

    /// A new connection in a free slot, or (not for a `tunnel`) one idle on any thread; at
    /// `max_connections`, waits for one to be given back or closed up to `queue_timeout`.
    async fn slot_or_wait(
        self: &Arc<Self>,
        dial: &Dial<'_>,
        tunnel: bool,
    ) -> Result<(Checkout, bool), ConnectError> {
        let deadline = tokio::time::Instant::now() + dial.queue_timeout;
        let mut queued = false;
        loop {
            // Registered before looking, so a connection freed in between is not missed.
            let freed = self.slots.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.reserve(dial.max_connections) {
                return self.connect(slot, dial, tunnel).await.map(|c| (c, false));
            }
            if !tunnel && let Some(c) = self.take_any(dial) {
                return Ok((c, true));
            }
            if dial.queue_timeout.is_zero() {
                return Err(ConnectError::AtLimit(dial.max_connections));
            }
            if !queued {
                queued = true;
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                self.counters.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(ConnectError::AtLimit(dial.max_connections));
            }
        }
    }

    /// Opens a connection in `slot`: the addresses in order (a name's answer in its sorted
    /// order), each within the connect timeout. `upgrades`: the connection may become a tunnel
    /// (its slot is then shared with the [`Checkout`]).
    async fn connect(
        self: &Arc<Self>,
        slot: SlotGuard,
        dial: &Dial<'_>,
        upgrades: bool,
    ) -> Result<Checkout, ConnectError> {
        let timeout = dial.connect_timeout;
        let targets = self.targets(timeout).await?;
        let mut last = ConnectError::Timeout(timeout);
        for peer in targets {
            // TCP and TLS together within the connect timeout.
            let io = match tokio::time::timeout(timeout, self.dial_one(peer, dial, upgrades)).await
            {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    self.counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    last = e;
                    continue;
                }
                Err(_) => {
                    self.counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    last = ConnectError::Timeout(timeout);
                    continue;
                }
            };
            let h2 = !upgrades
                && match dial.protocol {
                    Protocol::H2c | Protocol::H2 => true,
                    Protocol::Auto => io.alpn_h2(),
                    Protocol::Http1 => false,
                };
            self.counters.connects.fetch_add(1, Ordering::Relaxed);
            let born = Instant::now();
            let generation = self.generation.load(Ordering::Acquire);
            if h2 {
                return self.handshake_h2(io, slot, dial, peer, born).await;
            }
            let mut c = Checkout::h1(
                self,
                Idle {
                    // A larger response head is an error, answered 502.
                    conn: h1::Conn::new(io, dial.max_head_bytes),
                    born,
                    peer,
                    generation,
                    slot,
                },
                dial.max_lifetime.map(|l| born + l),
                dial.tls.is_some(),
            );
            c.tunnel = upgrades;
            return Ok(c);
        }
        Err(last)
    }

    /// A connection to `peer`, over TLS when the backend has it (`upgrades`: ALPN http/1.1
    /// only). The TLS name is that of the address `peer` came from: its IP literal, else the
    /// DNS name with its port.
    async fn dial_one(
        &self,
        peer: SocketAddr,
        dial: &Dial<'_>,
        upgrades: bool,
    ) -> Result<tls::BackendIo, ConnectError> {
        let stream = TcpStream::connect(peer).await?;
        let _ = stream.set_nodelay(true);
        let from = |a: &&Address| a.port == peer.port();
        let host = self
            .addresses
            .iter()
            .filter(from)
            .find(|a| a.host == Host::Ip(peer.ip()))
            .or_else(|| {
                self.addresses
                    .iter()
                    .filter(from)
                    .find(|a| matches!(a.host, Host::Dns(_)))
            })
            .map_or(Host::Ip(peer.ip()), |a| a.host.clone());
        tls::wrap(stream, dial.tls, &host, upgrades)
            .await
            .map_err(ConnectError::Tls)
    }

    /// The HTTP/2 handshake on `io`; the connection is shared from this thread's list, and
    /// its task follows the backend's stream limit.
    async fn handshake_h2(
        self: &Arc<Self>,
        io: tls::BackendIo,
        slot: SlotGuard,
        dial: &Dial<'_>,
        peer: SocketAddr,
        born: Instant,
    ) -> Result<Checkout, ConnectError> {
        let (conn, mut task) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING)
            .keep_alive_timeout(H2_PING)
            .max_header_list_size(u32::try_from(dial.max_head_bytes).unwrap_or(u32::MAX))
            .handshake(TokioIo::new(io))
            .await?;
        let streams = Arc::new(Streams {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(task.current_max_send_streams()),
        });
        let limit = Arc::clone(&streams);
        tokio::spawn(async move {
            // Runs the connection, publishing the backend's stream limit as its SETTINGS
            // change it.
            let _ = std::future::poll_fn(|cx| {
                let r = std::pin::Pin::new(&mut task).poll(cx);
                limit
                    .max
                    .store(task.current_max_send_streams(), Ordering::Release);
                r
            })
            .await;
            drop(slot);
        });
        let shared = Shared {
            conn,
            streams,
            born,
            peer,
        };
        let stream = shared.stream().ok_or(ConnectError::AtLimit(0))?;
        let c = Checkout::h2(self, &shared, stream, dial);
        lock(&self.shared[shard()]).push(shared);
        Ok(c)
    }

    /// Where to connect, in order: every address, a DNS name by its answer. A name is looked
    /// up (waiting at most `wait`) when it has no answer or its answer expired; a kept answer
    /// is used when that lookup fails or takes longer.
    /// (The background refresh is started by [`Pool::checkout`], once per checkout.)
    pub async fn targets(&self, wait: Duration) -> Result<Vec<SocketAddr>, ConnectError> {
        let mut out = Vec::with_capacity(self.addresses.len());
        let mut last_error = None;
        for (i, a) in self.addresses.iter().enumerate() {
            match &a.host {
                Host::Ip(ip) => out.push(SocketAddr::new(*ip, a.port)),
                Host::Dns(name) => match self.answer(i, name, wait).await {
                    Ok(ips) => out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, a.port))),
                    Err(e) => last_error = Some(e),
                },
            }
        }
        match last_error {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// The addresses of name `i`: the kept answer while it holds, else a fresh one (looked up
    /// within `wait`), else the expired one.
    async fn answer(
        &self,
        i: usize,
        name: &str,
        wait: Duration,
    ) -> Result<Vec<std::net::IpAddr>, ConnectError> {
        let kept = lock(&self.answers)[i].clone();
        if let Some(a) = &kept
            && Instant::now() < a.valid_until
        {
            return Ok(a.addresses.clone());
        }
        match tokio::time::timeout(wait, self.resolve(i, name)).await {
            Ok(Ok(ips)) => Ok(ips),
            Ok(Err(e)) => Err(e.into()),
            // Slow name servers: the kept answer, if there is one.
            Err(_) => self.keep_answer(i).ok_or(ConnectError::Timeout(wait)),
        }
    }

    /// Looks name `i` up and keeps the answer (closing idle connections to addresses that left
    /// it). On failure a kept answer is used for another [`Dns::retry_after`].
    async fn resolve(&self, i: usize, name: &str) -> Result<Vec<std::net::IpAddr>, ResolveError> {
        match self.dns.lookup(name).await {
            Ok(fresh) => {
                let ips = fresh.addresses.clone();
                let old = lock(&self.answers)[i].replace(fresh);
                if old.is_none_or(|k| k.addresses != ips) {
                    tracing::info!(name, addresses = ?ips, "backend name resolved");
                    self.close_departed();
                }
                Ok(ips)
            }
            Err(e) => {
                tracing::warn!(error = %e, "DNS lookup failed; using the previous answer if any");
                self.keep_answer(i).ok_or(e)
            }
        }
    }

    /// After a failed or slow lookup of name `i`: counts it, and keeps its previous answer (if
    /// any) for another [`Dns::retry_after`], so new connections do not each wait for DNS.
    fn keep_answer(&self, i: usize) -> Option<Vec<std::net::IpAddr>> {
        self.counters
            .resolve_failures
            .fetch_add(1, Ordering::Relaxed);
        let mut answers = lock(&self.answers);
        let k = answers[i].as_mut()?;
        let now = Instant::now();
        k.fetched_at = now;
        k.valid_until = now + self.dns.retry_after();
        Some(k.addresses.clone())
    }

    /// Closes idle connections whose address is no longer in its name's answer.
    fn close_departed(&self) {
        for list in self.idle.iter() {
            let mut gone = Vec::new();
            {
                let mut l = lock(list);
                let (keep, drop_): (Vec<Idle>, Vec<Idle>) =
                    l.drain(..).partition(|c| self.current(c.peer));
                *l = keep;
                gone.extend(drop_);
            }
            // Dropped outside the lock: closing frees their slots and wakes queued requests.
            drop(gone);
        }
    }

    /// Starts a background refresh when an answer nears its expiry (and none is running), so
    /// that a pool in use has the next answer before new connections need it and requests on
    /// kept connections never wait for DNS.
    fn refresh_if_due(self: &Arc<Self>) {
        let now = Instant::now();
        let due = lock(&self.answers)
            .iter()
            .any(|a| a.as_ref().is_some_and(|a| now >= a.refresh_at()));
        if !due || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let now = Instant::now();
            for (i, a) in pool.addresses.iter().enumerate() {
                let due = lock(&pool.answers)[i]
                    .as_ref()
                    .is_some_and(|k| now >= k.refresh_at());
                if let (Host::Dns(name), true) = (&a.host, due) {
                    let _ = pool.resolve(i, name).await;
                }
            }
            pool.refreshing.store(false, Ordering::Release);
        });
    }
}
