//! The one accept loop, shared by the proxy and the admin listener, and [`serve_http`] on top
//! of it. Every accepted connection: admitted under the listener's caps ([`Edge::admit`]: at
//! `max_connections` — or `max_connections_per_ip` — it is accepted and closed at once, and
//! counted, so the kernel's backlog does not fill with clients that will never be served), TCP
//! keep-alive and `TCP_NODELAY` set, then run in a task of its own through the edge's
//! [`Guarded`] IO. A failed accept (out of descriptors and the like) pauses the loop briefly
//! instead of spinning.
//!
//! HTTP/1.1 and HTTP/2 come from hyper-util's auto builder, configured here once: no hyper
//! header timer (the edge's timeouts replace it), HTTP/2 keep-alive pings, a stream cap, a
//! header-list cap, and explicit bounds on reset streams (the rapid-reset attack).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};

use crate::edge::{ConnState, Edge, Guarded, InFlight, Permit, Tracked};
use crate::proxy_protocol;

/// How long to wait after a failed accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// TCP keep-alive on client connections: first probe after this idle time.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// HTTP/2 keep-alive: a PING after this long without frames, answered within the same.
const H2_PING: Duration = Duration::from_secs(20);
/// HTTP/2: streams a client may reset before the server accepts them (rapid reset), and
/// streams the server may reset for a client's protocol errors, before the connection is
/// closed.
const H2_RESETS: usize = 20;

/// Accepts on `listener` until `shutdown` resolves, running `serve(stream, peer, permit)` as a
/// task for each connection admitted under `edge`'s caps.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    edge: &Arc<Edge>,
    shutdown: impl Future<Output = ()>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, Permit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(listener = edge.name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Some(permit) = edge.admit(peer.ip()) else {
            // Closed at once: over the cap, the connection costs nothing but this accept.
            drop(stream);
            continue;
        };
        // Without it a response written in two parts waits for a delayed ACK (40 ms).
        let _ = stream.set_nodelay(true);
        let _ =
            SockRef::from(&stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(TCP_KEEPALIVE));
        tokio::spawn(serve(stream, peer, permit));
    }
}

/// The HTTP server settings every listener shares (see the module doc).
fn builder(edge: &Edge) -> auto::Builder<TokioExecutor> {
    let cfg = &edge.config;
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper's header timer would also run during keep-alive waits; the edge keeps time.
    b.http1().header_read_timeout(None);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING))
        .keep_alive_timeout(H2_PING)
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(H2_RESETS))
        .max_local_error_reset_streams(Some(H2_RESETS));
    b
}

/// TLS on a listener: its configuration, and the certificates whose counters its handshakes
/// feed.
#[derive(Debug, Clone)]
pub struct Tls {
    /// SNI, ALPN, resumption: [`crate::certs::ServerCerts::server_config`].
    pub config: Arc<rustls::ServerConfig>,
    /// Counters.
    pub certs: Arc<crate::certs::ServerCerts>,
}

/// Serves HTTP on `listener` until `shutdown` resolves: every request of a connection from
/// `peer` is answered by `handler(request, peer, connection)`, under `edge`'s timeouts and
/// limits (`connection`: to keep it busy past the response, as a tunnel does). With `tls`,
/// each connection's TLS handshake comes first (after a PROXY protocol header), within the
/// header timeout.
pub async fn serve_http<H, Fut, B>(
    listener: TcpListener,
    edge: Arc<Edge>,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr, &Arc<ConnState>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = builder(&edge);
    let name = edge.name;
    accept_loop(listener, &Arc::clone(&edge), shutdown, move |mut stream, peer, permit| {
        let handler = handler.clone();
        let builder = builder.clone();
        let conn = Arc::new(ConnState::default());
        let edge = Arc::clone(&edge);
        let tls = tls.clone();
        async move {
            let accepted = tokio::time::Instant::now();
            let mut peer = peer;
            if edge.config.proxy_protocol {
                match proxy_protocol::read(&mut stream, peer, edge.config.header_timeout).await {
                    Ok(client) => peer = client,
                    Err(e) => {
                        edge.counters
                            .bad_proxy_header
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = name, %peer, error = %e, "connection closed");
                        return;
                    }
                }
            }
            let svc = {
                let conn = Arc::clone(&conn);
                service_fn(move |req| {
                    let request = InFlight::start(&conn);
                    // Boxed: hyper keeps the slot of a request's future allocated with the
                    // connection, idle or not; boxed, that slot is a pointer, and the
                    // request's state lives only while it runs.
                    let answer = Box::pin(handler(req, peer, &conn));
                    async move {
                        Ok::<_, Infallible>(answer.await.map(|b| Tracked::new(b, request)))
                    }
                })
            };
            // With upgrades: a `101` hands the connection to a tunnel ([`crate::tunnel`]).
            let served = match tls {
                None => {
                    let io = Guarded::new(stream, edge, conn, permit, accepted);
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(io), svc)
                        .await
                }
                // Boxed: rustls' state and the TLS stream's serving future would otherwise
                // size every connection's task, plain ones too.
                Some(tls) => Box::pin(async move {
                    let c = &tls.certs.counters;
                    let shake = tokio_rustls::TlsAcceptor::from(tls.config).accept(stream);
                    let by = accepted + edge.config.header_timeout;
                    let stream = match tokio::time::timeout_at(by, shake).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            c.failed(&e);
                            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                            return Ok(());
                        }
                        Err(_) => {
                            c.timeouts.fetch_add(1, Ordering::Relaxed);
                            return Ok(());
                        }
                    };
                    c.handshakes.fetch_add(1, Ordering::Relaxed);
                    let io = Guarded::new(stream, edge, conn, permit, accepted);
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(io), svc)
                        .await
                })
                .await,
            };
            if let Err(e) = served {
                tracing::debug!(listener = name, error = %e, "connection ended with an error");
            }
        }
    })
    .await;
}
