//! HTTP/1.1 Upgrade tunnels (WebSocket and the like): after the backend's `101`, the client's
//! connection and the backend's are spliced into one bidirectional byte stream.
//!
//! A tunnel ends when both sides have closed, when nothing has crossed it in either direction
//! for `tunnel_idle_timeout`, or `tunnel_drain_timeout` after its backend was drained or left
//! the configuration (the deadline is cancelled if the backend comes back first). While it is
//! open it holds its client connection as busy (the edge's head and idle timers do not apply
//! to tunnel bytes) and its backend connection's place under `max_connections`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::backend::BackendRef;
use crate::edge::{Edge, InFlight};
use crate::pool::TunnelSlot;

/// Both sides of an upgrade, handed over once the `101` is on its way to the client.
#[derive(Debug)]
pub struct Tunnel {
    /// The client's connection, once hyper has written the `101`.
    pub client: OnUpgrade,
    /// The backend's connection, after its `101`.
    pub backend: crate::h1::Upgraded,
    /// The backend (for its drain signal).
    pub state: BackendRef,
    /// Keeps the client connection busy for the tunnel's life.
    pub busy: InFlight,
    /// The backend connection's place under `max_connections`.
    pub slot: TunnelSlot,
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Idle,
    Drained,
}

impl Tunnel {
    /// Runs the tunnel to its end (spawned by the proxy as it returns the `101`).
    pub async fn run(self, edge: Arc<Edge>) {
        let Tunnel {
            client,
            backend,
            state,
            busy,
            slot,
        } = self;
        let c = &edge.counters;
        c.tunnels_opened.fetch_add(1, Ordering::Relaxed);
        let end = splice(client, backend, &state, &edge).await;
        // The client connection is no longer busy, the backend's place is free.
        drop((busy, slot));
        c.tunnels_closed.fetch_add(1, Ordering::Relaxed);
        match end {
            Ok(End::Idle) => c.tunnel_idle_timeouts.fetch_add(1, Ordering::Relaxed),
            Ok(End::Drained) => c.tunnels_drained.fetch_add(1, Ordering::Relaxed),
            Ok(End::Closed) | Err(_) => 0,
        };
        if let Err(e) = end {
            tracing::debug!(backend = %state.name, error = %e, "tunnel ended with an error");
        }
    }
}

async fn splice(
    client: OnUpgrade,
    backend: crate::h1::Upgraded,
    state: &BackendRef,
    edge: &Edge,
) -> io::Result<End> {
    let client = client.await.map_err(io::Error::other)?;
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Active::new(TokioIo::new(client), started, &last);
    let mut backend = Active::new(backend, started, &last);
    let idle = edge.config.tunnel_idle_timeout;
    let drain = drained(state.draining(), edge.config.tunnel_drain_timeout);
    tokio::pin!(drain);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
    tokio::pin!(copy);
    let mut deadline = started + idle;
    loop {
        tokio::select! {
            r = &mut copy => return r.map(|_| End::Closed),
            () = &mut drain => return Ok(End::Drained),
            () = tokio::time::sleep_until(deadline) => {
                let at = started + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                if at <= Instant::now() {
                    return Ok(End::Idle);
                }
                deadline = at;
            }
        }
    }
}

/// Resolves `deadline` after the backend started draining, unless it stopped meanwhile.
/// (The sender lives in the backend's state, which the tunnel holds: it is never dropped
/// first.)
async fn drained(mut draining: tokio::sync::watch::Receiver<bool>, deadline: Duration) {
    loop {
        if draining.wait_for(|d| *d).await.is_err() {
            return std::future::pending().await;
        }
        let undrained = async { draining.wait_for(|d| !*d).await.is_ok() };
        tokio::select! {
            () = tokio::time::sleep(deadline) => return,
            ok = undrained => if !ok {
                return std::future::pending().await;
            },
        }
    }
}

/// An IO that records when bytes last moved through it (milliseconds since the tunnel
/// started, shared by both sides), for the idle timeout: one relaxed store per read or write,
/// rather than a timer reset.
struct Active<T> {
    io: T,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Active<T> {
    fn new(io: T, started: Instant, last: &Arc<AtomicU64>) -> Active<T> {
        Active {
            io,
            started,
            last: Arc::clone(last),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
