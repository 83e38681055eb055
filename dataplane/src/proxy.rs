//! The HTTP proxy: HTTP/1.1 and HTTP/2 from clients, HTTP/1.1 keep-alive to backends.
//!
//! Per request: load the snapshot → first matching route → key → the route's director picks
//! (alternate 0) → check out a connection → send → stream the response back. A connect failure
//! (nothing sent) moves to the director's next alternate — the shard `alt` chain, so every node
//! retries on the same backend — for any method; a failure after the request was sent is
//! retried only for idempotent requests without a body. [`respond`] is the one place where
//! errors become HTTP responses.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::backend::BackendRef;
use crate::body::{ProxyBody, UpstreamBody, text};
use crate::config::{KeySpec, RouteSpec};
use crate::director::SelectError;
use crate::edge::{ClientBody, ClientBodyError, Edge, InFlight};
use crate::listener::{Tls, serve_http};
use crate::pool::{ConnectError, Dial, Failure as PoolFailure, RequestBody};
use crate::route;
use crate::runtime::Runtime;
use crate::snapshot::Snapshot;
use crate::traffic::Exchange;
use crate::tunnel::Tunnel;
use hyper::upgrade::OnUpgrade;

/// Alternates tried after the first choice fails to connect.
const MAX_RETRIES: u32 = 3;

/// Why the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches.
    #[error("no route matches this request")]
    NoRoute,
    /// The request is malformed in a way routing cannot resolve.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The director has no healthy backend.
    #[error("no healthy backend in director {0:?}")]
    NoBackend(String),
    /// The key does not suit the director.
    #[error("bad key: {0}")]
    Key(#[from] SelectError),
    /// Connecting to the backend failed (on every alternate tried).
    #[error("backend {backend:?}: {source}")]
    Connect {
        /// The last backend tried.
        backend: String,
        /// Why.
        source: ConnectError,
    },
    /// The backend sent no response head within `first_byte`.
    #[error("backend {0:?} did not answer within the first_byte timeout")]
    FirstByte(String),
    /// The client's request body stalled for `body_timeout` while it was being sent.
    #[error("the request body stalled for {0:?} (body timeout)")]
    BodyTimeout(std::time::Duration),
    /// The route does not tunnel this Upgrade protocol.
    #[error("this route does not allow Upgrade: {0} (a route's `upgrades` lists what it tunnels)")]
    UpgradeRefused(String),
    /// The request body is larger than the route's `max_body_bytes`.
    #[error("the request body is larger than this route's limit of {0} bytes")]
    BodyTooLarge(u64),
    /// The backend's response head (status line and headers) is over the limit, or has more
    /// than 100 headers.
    #[error("backend {backend:?} sent a response head over {limit} bytes or 100 headers")]
    ResponseHeadTooLarge {
        /// The backend.
        backend: String,
        /// The limit, bytes.
        limit: usize,
    },
    /// The backend failed after the request was sent.
    #[error("backend {backend:?} failed: {source}")]
    Backend {
        /// The backend.
        backend: String,
        /// Why.
        source: crate::pool::SendError,
    },
}

/// The gRPC status of the proxy's own error (the codes Envoy and grpc-web use for the HTTP
/// statuses, with timeouts as DEADLINE_EXCEEDED).
fn grpc_code(e: &ProxyError) -> u8 {
    match e {
        ProxyError::NoRoute => 12,                           // UNIMPLEMENTED
        ProxyError::Key(_) | ProxyError::BadRequest(_) => 3, // INVALID_ARGUMENT
        ProxyError::UpgradeRefused(_) => 7,                  // PERMISSION_DENIED
        ProxyError::BodyTooLarge(_) => 8,                    // RESOURCE_EXHAUSTED
        ProxyError::BodyTimeout(_)
        | ProxyError::FirstByte(_)
        | ProxyError::Connect {
            source: ConnectError::Timeout(_),
            ..
        } => 4, // DEADLINE_EXCEEDED
        ProxyError::ResponseHeadTooLarge { .. } => 13,       // INTERNAL
        ProxyError::NoBackend(_) | ProxyError::Connect { .. } | ProxyError::Backend { .. } => 14, // UNAVAILABLE
    }
}

/// `grpc-message`: percent-encoded UTF-8 (gRPC over HTTP/2, "Responses").
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.trim_end().bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a request is a gRPC call (its errors are answered as gRPC statuses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The proxy's answer for an error to a gRPC client: a trailers-only response, HTTP 200 with
/// `grpc-status` and `grpc-message` (a gRPC client reads no HTML).
pub fn respond_grpc(e: &ProxyError) -> Response<ProxyBody> {
    let mut r = Response::new(text(""));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(u16::from(grpc_code(e))));
    if let Ok(v) = HeaderValue::try_from(grpc_message(&e.to_string())) {
        h.insert(GRPC_MESSAGE, v);
    }
    r
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(v: &HeaderValue) -> Option<std::time::Duration> {
    use std::time::Duration;
    let b = v.as_bytes();
    let (digits, unit) = b.split_at(b.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The proxy's answer for an error: the status, and a short body saying why.
pub fn respond(e: &ProxyError) -> Response<ProxyBody> {
    let status = status_of(e);
    let mut r = Response::new(text(format!("{e}\n")));
    *r.status_mut() = status;
    if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of that body may still come: the connection cannot carry another request.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The HTTP status of the proxy's own error (for a gRPC client, what its grpc-status stands
/// for: the backend's counters record this either way).
fn status_of(e: &ProxyError) -> StatusCode {
    match e {
        ProxyError::NoRoute => StatusCode::NOT_FOUND,
        ProxyError::NoBackend(_)
        | ProxyError::Connect {
            source: ConnectError::AtLimit(_),
            ..
        } => StatusCode::SERVICE_UNAVAILABLE,
        ProxyError::Key(_) | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ProxyError::UpgradeRefused(_) => StatusCode::FORBIDDEN,
        ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ProxyError::FirstByte(_)
        | ProxyError::Connect {
            source: ConnectError::Timeout(_),
            ..
        } => StatusCode::GATEWAY_TIMEOUT,
        ProxyError::Connect { .. }
        | ProxyError::Backend { .. }
        | ProxyError::ResponseHeadTooLarge { .. } => StatusCode::BAD_GATEWAY,
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// de-facto ones.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, and those the `Connection` header names — but never one in
/// `keep` (Host, and the headers the route matched or keyed on): a client cannot make the
/// backend see a request other than the one that was routed.
fn strip_hop_by_hop<'a>(h: &mut HeaderMap, keep: impl FnOnce() -> Vec<&'a str>) {
    if h.contains_key(header::CONNECTION) {
        let keep = keep();
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .filter(|n| *n != header::HOST && !keep.contains(&n.as_str()))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
}

/// The headers a route reads (lower case): its header matches, and its key's header or the
/// cookie header.
fn route_headers(route: &RouteSpec) -> Vec<&str> {
    fn key(k: &KeySpec) -> Option<&str> {
        match k {
            KeySpec::Header(h) => Some(h.as_str()),
            KeySpec::Cookie(_) => Some("cookie"),
            _ => None,
        }
    }
    route
        .headers
        .iter()
        .map(|m| m.name.as_str())
        .chain(key(&route.key))
        .chain(route.fallback_key.as_ref().and_then(key))
        .collect()
}

/// Refuses a request whose host is ambiguous: two `Host` headers, or an HTTP/2 `:authority`
/// that disagrees with its `host` header (RFC 9113 §8.3.1).
fn check_host(parts: &http::request::Parts) -> Result<(), ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("two Host headers"));
    }
    if parts.version == Version::HTTP_2
        && let (Some(a), Some(h)) = (parts.uri.authority(), first)
        && !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())
    {
        return Err(ProxyError::BadRequest(
            "the :authority and the host header disagree",
        ));
    }
    Ok(())
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The request head sent upstream.
#[derive(Debug, Clone)]
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    fn from_client(
        parts: http::request::Parts,
        client: IpAddr,
        route: &RouteSpec,
        https: bool,
    ) -> Head {
        let mut headers = parts.headers;
        // `TE: trailers` is end to end in effect: gRPC needs it to reach the backend.
        let trailers = headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        strip_hop_by_hop(&mut headers, || route_headers(route));
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        // The authority of an absolute-form URI (RFC 9112 §3.2.2) or of HTTP/2 wins: it is
        // what routing read, so it is what the backend sees.
        if let Some(a) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            headers.insert(header::HOST, v);
        }
        // Room for the forwarded headers at once, rather than growing the map twice.
        headers.reserve(3);
        // Every X-Forwarded-For line, merged in order, then this client.
        let ip = client.to_string();
        let mut lines = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let merged = match lines.next() {
            None => ip,
            Some(first) => {
                let mut m = first.to_owned();
                for l in lines {
                    m.push_str(", ");
                    m.push_str(l);
                }
                m.push_str(", ");
                m.push_str(&ip);
                m
            }
        };
        let forwarded_host = headers.get(header::HOST).cloned();
        if let Ok(v) = HeaderValue::try_from(merged) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
        if let Some(h) = forwarded_host {
            headers.insert(X_FORWARDED_HOST, h);
        }
        let uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        Head {
            method: parts.method,
            uri,
            headers,
        }
    }

    /// The head as sent to a backend whose `host_header` (if any) is `host`.
    fn to_send<'a>(&'a self, host: Option<&'a HeaderValue>) -> crate::h1::Head<'a> {
        crate::h1::Head {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            host,
        }
    }
}

/// The `Upgrade` header of an HTTP/1.1 request that asks for a tunnel: `Connection: upgrade`
/// and an `Upgrade` other than `h2c` (which is answered as a plain request: HTTP/2 reaches
/// backends with the backend's own protocol).
pub fn upgrade_of(req: &Request<Incoming>) -> Option<&HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let h = req.headers();
    let up = h.get(header::UPGRADE)?;
    let asked = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    (asked && upgrade_protocol(up).is_none_or(|p| p != "h2c")).then_some(up)
}

/// The first protocol an `Upgrade` header names, without its version, lower case.
fn upgrade_protocol(v: &HeaderValue) -> Option<String> {
    let first = v.to_str().ok()?.split(',').next()?.trim();
    let name = first.split('/').next()?.trim();
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// `308 Permanent Redirect` (the method and body kept) to the same URL over `https://`: the
/// request's host without its port (the TLS port facing clients is 443 behind most balancers),
/// its path and query.
fn redirect_to_https(host: Option<&str>, uri: &Uri) -> Response<ProxyBody> {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = host.map(|h| format!("https://{h}{pq}"));
    let mut r = Response::new(text(""));
    match location.and_then(|l| HeaderValue::try_from(l).ok()) {
        Some(l) => {
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut().insert(header::LOCATION, l);
        }
        None => {
            *r.status_mut() = StatusCode::BAD_REQUEST;
            *r.body_mut() = text("no host to redirect to https:// with\n");
        }
    }
    r
}

/// Proxies one request. `busy`: the request asks for an Upgrade, and this keeps its client
/// connection busy for the tunnel it may become. The request's [`Exchange`] goes with a
/// backend's body to its end (the proxy's own answers are recorded at once).
pub async fn handle(
    rt: Arc<Runtime>,
    edge: Arc<Edge>,
    https: bool,
    client: SocketAddr,
    req: Request<Incoming>,
    busy: Option<InFlight>,
) -> Response<ProxyBody> {
    let snap = rt.snapshot();
    let grpc = is_grpc(req.headers());
    let mut ex = rt.traffic.begin();
    let mut r = match forward(&rt, &edge, &snap, https, client.ip(), req, busy, &mut ex).await {
        Ok(r) => {
            ex.set_status(r.status().as_u16());
            r
        }
        Err((e, backend)) => {
            let r = if grpc { respond_grpc(&e) } else { respond(&e) };
            // Counted as the HTTP status it stands for, gRPC or not.
            let status = status_of(&e).as_u16();
            ex.set_status(status);
            ex.error(&e);
            match (&e, backend) {
                (ProxyError::NoRoute, _) => {
                    rt.counters.no_route.fetch_add(1, Ordering::Relaxed);
                }
                (ProxyError::NoBackend(_), _) => {
                    rt.counters.no_backend.fetch_add(1, Ordering::Relaxed);
                }
                (ProxyError::BodyTimeout(_), _) => {
                    edge.counters.body_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                (ProxyError::UpgradeRefused(_), _) => {
                    edge.counters
                        .upgrades_refused
                        .fetch_add(1, Ordering::Relaxed);
                }
                (_, Some((b, started))) => {
                    b.counters.record(status, started.elapsed());
                }
                _ => {}
            }
            tracing::debug!(error = %e, status = r.status().as_u16(), "proxy error");
            r
        }
    };
    match r.body_mut() {
        Either::Left(upstream) => upstream.carry(ex),
        Either::Right(own) => {
            ex.sent(own.size_hint().exact().unwrap_or(0) as usize);
            ex.complete();
        }
    }
    r
}

type Failure = (ProxyError, Option<(BackendRef, Instant)>);

/// An Upgrade request on its way: what the backend is asked for, and the client side of the
/// tunnel.
struct Upgrade {
    header: HeaderValue,
    client: OnUpgrade,
    busy: InFlight,
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    rt: &Runtime,
    edge: &Arc<Edge>,
    snap: &Arc<Snapshot>,
    https: bool,
    client: IpAddr,
    req: Request<Incoming>,
    busy: Option<InFlight>,
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, Failure> {
    let upgrade_header = busy.as_ref().and_then(|_| upgrade_of(&req).cloned());
    // A gRPC deadline bounds the wait for the response head too.
    let deadline = req.headers().get(GRPC_TIMEOUT).and_then(grpc_timeout);
    let (mut parts, body) = req.into_parts();
    ex.log_request(https, &parts, client, snap);
    check_host(&parts).map_err(|e| (e, None))?;
    let host = route::request_host(&parts);
    let (ri, d) = snap
        .route_for(https, host.as_deref(), parts.uri.path(), &parts.headers)
        .ok_or((ProxyError::NoRoute, None))?;
    let route = &snap.config.routes[ri];
    ex.routed(&snap.route_counters[ri], ri);
    if route.https_redirect && !https {
        return Ok(redirect_to_https(host.as_deref(), &parts.uri));
    }
    let mut upgrade = match (upgrade_header, busy) {
        (Some(header), Some(busy)) => {
            let protocol = upgrade_protocol(&header).unwrap_or_default();
            if !route.upgrades.contains(&protocol) {
                return Err((ProxyError::UpgradeRefused(protocol), None));
            }
            let client = parts.extensions.remove::<OnUpgrade>().ok_or((
                ProxyError::BadRequest("this connection cannot be upgraded"),
                None,
            ))?;
            Some(Upgrade {
                header,
                client,
                busy,
            })
        }
        _ => None,
    };
    let peer = client;
    let client = edge.config.trusted_proxies.client(peer, &parts.headers);
    ex.client(client);
    // A declared length over the limit is refused before anything reaches a backend.
    if let Some(max) = route.max_body_bytes
        && let Some(n) = body.size_hint().exact()
        && n > max
    {
        return Err((ProxyError::BodyTooLarge(max), None));
    }
    let (key, used) = route::key(route, &parts, client);
    if ex.logging() {
        ex.key(used, || key.to_string());
    }
    let key = key.key();
    // The chain sent on appends the hop that connected to us.
    let mut head = Head::from_client(parts, peer, route, https);
    if let Some(u) = &upgrade {
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(header::UPGRADE, u.header.clone());
    }
    // A request without a body can be replayed; one with a body is streamed, never buffered.
    let replayable = idempotent(&head.method) && body.is_end_stream();
    let mut body: Option<RequestBody> = Some(if body.is_end_stream() {
        Either::Right(Empty::new())
    } else {
        Either::Left(ClientBody::new(
            body,
            edge.config.body_timeout,
            route.max_body_bytes,
            ex.body_counter(),
        ))
    });
    let mut last: Option<Failure> = None;
    let mut alt = 0;
    let arrived = ex.started();
    // A backend's response head gets the limit a client's request head gets.
    let head_limit = edge.config.max_header_bytes;
    // A failure on a reused keep-alive connection (the backend closed it meanwhile) is retried
    // once on another connection to the same backend before moving on: stickiness first.
    let mut fresh_retry_used = false;
    while alt <= MAX_RETRIES {
        let b = match snap.select(d, &key, alt) {
            Ok(Some(b)) => b as usize,
            Ok(None) => break,
            Err(e) => return Err((e.into(), None)),
        };
        let spec = &snap.config.backends[b];
        let state = &snap.backends[b];
        ex.backend(b, alt);
        let started = Instant::now();
        let counters = &state.counters;
        let mut dial = Dial::of(spec, head_limit);
        // The queue timeout counts from the request's arrival, across the alternates tried:
        // a request waits that long in all, not that long per backend.
        dial.queue_timeout = dial.queue_timeout.saturating_sub(arrived.elapsed());
        let conn = if upgrade.is_some() {
            state.pool.open_tunnel(dial).await.map(|c| (c, false))
        } else {
            state.pool.checkout(dial).await
        };
        let (mut conn, reused) = match conn {
            Ok(c) => c,
            Err(source) => {
                tracing::debug!(backend = %spec.name, error = %source, alt, "connect failed, trying next alternate");
                state
                    .pool
                    .counters
                    .failures
                    .add(PoolFailure::of_connect(&source));
                rt.counters.retries.fetch_add(1, Ordering::Relaxed);
                last = Some((
                    ProxyError::Connect {
                        backend: spec.name.clone(),
                        source,
                    },
                    Some((Arc::clone(state), started)),
                ));
                alt += 1;
                continue;
            }
        };
        let Some(b_body) = body.take() else { break };
        let host = spec
            .host_header
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok());
        let first_byte = deadline.map_or(spec.timeouts.first_byte, |d| {
            d.saturating_sub(arrived.elapsed())
                .min(spec.timeouts.first_byte)
        });
        let sent =
            tokio::time::timeout(first_byte, conn.send(head.to_send(host.as_ref()), b_body)).await;
        match sent {
            Err(_) => {
                conn.failed(PoolFailure::FirstByteTimeout);
                return Err((
                    ProxyError::FirstByte(spec.name.clone()),
                    Some((Arc::clone(state), started)),
                ));
            }
            Ok(Ok(resp)) => {
                ex.upstream_head();
                let status = resp.status().as_u16();
                counters.record(status, started.elapsed());
                let upgraded = match upgrade.take() {
                    Some(u) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => Some(u),
                    _ => None,
                };
                let (mut parts, incoming) = resp.into_parts();
                let upgrade_to = parts.headers.get(header::UPGRADE).cloned();
                // A response's Connection header may name any of its headers.
                strip_hop_by_hop(&mut parts.headers, Vec::new);
                if let Some(u) = upgraded {
                    let Some((backend, slot)) = conn.into_tunnel() else {
                        return Err((
                            ProxyError::BadRequest("an HTTP/2 backend cannot be upgraded"),
                            None,
                        ));
                    };
                    parts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    if let Some(v) = upgrade_to {
                        parts.headers.insert(header::UPGRADE, v);
                    }
                    let t = Tunnel {
                        client: u.client,
                        backend,
                        state: Arc::clone(state),
                        busy: u.busy,
                        slot,
                    };
                    tokio::spawn(t.run(Arc::clone(edge)));
                    return Ok(Response::from_parts(parts, text("")));
                }
                let body = UpstreamBody::new(incoming, spec.timeouts.between_bytes, conn);
                return Ok(Response::from_parts(parts, Either::Left(body)));
            }
            Ok(Err(e)) => {
                // The client stalled its body, or sent too much: its fault, not the
                // backend's; not retried.
                match ClientBodyError::of(&e.error) {
                    Some(ClientBodyError::TooLarge(n)) => {
                        return Err((ProxyError::BodyTooLarge(*n), None));
                    }
                    Some(_) => {
                        return Err((
                            ProxyError::BodyTimeout(edge.config.body_timeout),
                            Some((Arc::clone(state), started)),
                        ));
                    }
                    None => {}
                }
                if e.error.is_head_too_large() {
                    // The backend's answer, not a broken connection: not retried elsewhere.
                    state.pool.counters.failures.add(PoolFailure::HeadTooLarge);
                    return Err((
                        ProxyError::ResponseHeadTooLarge {
                            backend: spec.name.clone(),
                            limit: dial.max_head_bytes,
                        },
                        Some((Arc::clone(state), started)),
                    ));
                }
                let failure = |source| {
                    (
                        ProxyError::Backend {
                            backend: spec.name.clone(),
                            source,
                        },
                        Some((Arc::clone(state), started)),
                    )
                };
                let retry_here = reused && !fresh_retry_used;
                // Not counted: a kept-alive connection the backend closed meanwhile, retried
                // on a fresh one (the race every keep-alive client has).
                let count = || {
                    state.pool.counters.failures.add(PoolFailure::BackendFailed);
                };
                if let Some(unsent) = e.body {
                    // Nothing was written: the body is intact, any method may go on.
                    body = Some(unsent);
                } else if replayable {
                    body = Some(Either::Right(Empty::new()));
                } else {
                    count();
                    return Err(failure(e.error));
                }
                last = Some(failure(e.error));
                if retry_here {
                    fresh_retry_used = true;
                } else {
                    count();
                    alt += 1;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        (
            ProxyError::NoBackend(snap.directors.name(d).to_owned()),
            None,
        )
    }))
}

/// Serves the proxy on `listener` until `shutdown` resolves, under `edge`'s timeouts and caps;
/// with `tls`, as the TLS listener (`https` requests).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Tls>,
    rt: Arc<Runtime>,
    edge: Arc<Edge>,
    shutdown: impl Future<Output = ()>,
) {
    let e = Arc::clone(&edge);
    let https = tls.is_some();
    serve_http(listener, edge, tls, shutdown, move |req, client, conn| {
        let busy = upgrade_of(&req).map(|_| InFlight::start(conn));
        handle(Arc::clone(&rt), Arc::clone(&e), https, client, req, busy)
    })
    .await;
}

/// A listening socket of the proxy, plain or TLS.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub socket: std::net::TcpListener,
    /// TLS on it (`--https`).
    pub tls: Option<Tls>,
}

/// Serves the proxy on `threads` threads, each running its own single-threaded runtime that
/// accepts from every listener (as NGINX workers do): no work stealing, and the tasks of a
/// request — client connection, backend connection — stay on one thread. Returns when every
/// thread has started; the threads end when `shutdown` turns true.
pub fn serve_on_threads(
    listeners: &[Listener],
    rt: Arc<Runtime>,
    edge: &Arc<Edge>,
    threads: usize,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    for l in listeners {
        l.socket.set_nonblocking(true)?;
    }
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads.max(1) {
        let mine = listeners
            .iter()
            .map(|l| Ok((l.socket.try_clone()?, l.tls.clone())))
            .collect::<std::io::Result<Vec<_>>>()?;
        let rt = Arc::clone(&rt);
        let edge = Arc::clone(edge);
        let stop = shutdown.clone();
        let local = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(
            std::thread::Builder::new()
                .name(format!("tether-proxy-{i}"))
                .spawn(move || {
                    crate::pool::set_thread_shard(i);
                    local.block_on(async move {
                        let mut all = tokio::task::JoinSet::new();
                        for (l, tls) in mine {
                            let (rt, edge, mut stop) =
                                (Arc::clone(&rt), Arc::clone(&edge), stop.clone());
                            match TcpListener::from_std(l) {
                                Ok(l) => {
                                    all.spawn(serve(l, tls, rt, edge, async move {
                                        let _ = stop.wait_for(|s| *s).await;
                                    }));
                                }
                                Err(e) => tracing::error!(error = %e, "proxy thread cannot listen"),
                            }
                        }
                        while all.join_next().await.is_some() {}
                    });
                })?,
        );
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> http::request::Parts {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn an_ambiguous_host_is_refused() {
        assert!(check_host(&parts(Version::HTTP_11, "/", &["a"])).is_ok());
        assert!(check_host(&parts(Version::HTTP_11, "/", &["a", "b"])).is_err());
        assert!(check_host(&parts(Version::HTTP_2, "http://a.example/", &["a.example"])).is_ok());
        assert!(check_host(&parts(Version::HTTP_2, "http://a.example/", &["A.EXAMPLE"])).is_ok());
        assert!(check_host(&parts(Version::HTTP_2, "http://a.example/", &["b.example"])).is_err());
        assert!(check_host(&parts(Version::HTTP_2, "http://a.example/", &[])).is_ok());
    }
}
