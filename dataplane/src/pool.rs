//! Keep-alive HTTP/1.1 connections to one backend identity.
//!
//! A connection is checked out for one request as a [`Checkout`] guard, which gives it back
//! when the response body has been read to the end ([`Checkout::release`], called by
//! [`crate::body::UpstreamBody`]); a guard dropped half-way closes it.
//! Connecting is a separate step from sending, so that a connect failure leaves the request
//! untouched and the proxy can retry it on the director's next alternate.
//!
//! Idle connections are kept per proxy thread (as NGINX keeps them per worker): a backend
//! connection's task runs on the thread that opened it, so handing it to another thread would
//! add a cross-thread wake-up to every request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{Address, Host};
use crate::edge::ClientBody;

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

/// A connection that can carry one request.
pub type Conn = SendRequest<RequestBody>;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No address answered within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// Connecting failed.
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/1.1 handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    /// `max_connections` are open.
    #[error("backend at max_connections ({0})")]
    AtLimit(u32),
}

/// One backend's connections.
#[derive(Debug)]
pub struct Pool {
    addresses: Vec<Address>,
    idle: Box<[Mutex<Vec<Conn>>]>,
    open: Arc<AtomicUsize>,
}

/// A checked-out connection. [`Checkout::release`] returns it to its pool (its response was
/// read to the end); dropping the guard instead closes it.
#[derive(Debug)]
pub struct Checkout {
    pool: Arc<Pool>,
    conn: Conn,
}

impl Checkout {
    /// The connection, to send the request on.
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Gives the connection back to its pool for the next request.
    pub fn release(self) {
        self.pool.put(self.conn);
    }
}

/// Decrements the open-connection count when a connection task ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// An empty pool for these addresses (tried in order).
    pub fn new(addresses: Vec<Address>) -> Pool {
        Pool {
            addresses,
            idle: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Open connections (idle and busy).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Idle connections.
    pub fn idle(&self) -> usize {
        self.idle
            .iter()
            .map(|l| l.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn pop(&self) -> Option<Conn> {
        self.idle[shard()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Returns a connection whose response was read to the end.
    fn put(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle[shard()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// An idle connection (`true`: reused), or a new one (`false`). `connected` is called once
    /// per new connection, and `failed` once per failed connect attempt.
    pub async fn checkout(
        self: &Arc<Self>,
        connect_timeout: Duration,
        max_connections: u32,
        connected: impl Fn(),
        failed: impl Fn(),
    ) -> Result<(Checkout, bool), ConnectError> {
        let checkout = |conn| Checkout {
            pool: Arc::clone(self),
            conn,
        };
        while let Some(mut c) = self.pop() {
            if !c.is_closed() && c.ready().await.is_ok() {
                return Ok((checkout(c), true));
            }
        }
        // The slot is reserved before connecting, so concurrent cold requests cannot overshoot
        // `max_connections`; a failed connect gives it back (the guard's drop).
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let slot = OpenGuard(Arc::clone(&self.open));
        if max_connections > 0 && before >= max_connections as usize {
            drop(slot);
            return Err(ConnectError::AtLimit(max_connections));
        }
        let mut last = ConnectError::Timeout(connect_timeout);
        for a in &self.addresses {
            match tokio::time::timeout(connect_timeout, connect(a)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
                    tokio::spawn(async move {
                        // The connection's own errors end it; requests on it see them.
                        let _ = conn.await;
                        drop(slot);
                    });
                    connected();
                    return Ok((checkout(sender), false));
                }
                Ok(Err(e)) => {
                    failed();
                    last = ConnectError::Io(e);
                }
                Err(_) => {
                    failed();
                    last = ConnectError::Timeout(connect_timeout);
                }
            }
        }
        Err(last)
    }
}

async fn connect(a: &Address) -> std::io::Result<TcpStream> {
    match &a.host {
        Host::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, a.port)).await,
        Host::Dns(name) => TcpStream::connect((name.as_str(), a.port)).await,
    }
}
