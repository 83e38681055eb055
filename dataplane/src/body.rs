//! Response bodies the proxy sends: a backend's body streamed through ([`UpstreamBody`]) or
//! the proxy's own short text ([`ProxyBody`]'s right side).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::edge::Gap;
use crate::h1;
use crate::pool::{Checkout, Failure, Upstream};
use crate::traffic::Exchange;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};

/// What the proxy answers with.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Why a backend's body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Nothing arrived for `between_bytes`.
    #[error("backend sent nothing for {0:?} (between_bytes timeout)")]
    Timeout(Duration),
    /// The backend connection failed (HTTP/2).
    #[error("backend body: {0}")]
    Backend(#[from] hyper::Error),
    /// The backend connection failed, or its body's framing was broken (HTTP/1.1).
    #[error("backend body: {0}")]
    H1(#[from] h1::Error),
}

/// A backend's response body, streamed frame by frame, with the between-bytes timeout. When it
/// ends cleanly its connection goes back to the pool; when it is dropped early or fails, the
/// connection is closed. It carries the request's [`Exchange`], which counts the bytes and is
/// recorded when the body is dropped.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Upstream,
    /// The between-bytes timeout.
    gap: Gap,
    conn: Option<Checkout>,
    exchange: Option<Exchange>,
}

impl UpstreamBody {
    /// Wraps `inner` (read from `conn` when HTTP/1.1); `conn` returns to its pool at the end.
    pub fn new(inner: Upstream, timeout: Duration, conn: Checkout) -> Self {
        let mut body = UpstreamBody {
            inner,
            gap: Gap::new(timeout),
            conn: Some(conn),
            exchange: None,
        };
        if body.is_end_stream() {
            // The server may never poll an empty body: give the connection back now.
            body.release();
        }
        body
    }

    /// Carries `ex` to the body's end (complete already if the body is empty).
    pub fn carry(&mut self, mut ex: Exchange) {
        if self.is_end_stream() {
            ex.complete();
        }
        self.exchange = Some(ex);
    }

    fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            c.release();
        }
        if let Some(ex) = self.exchange.as_mut() {
            ex.complete();
        }
    }

    /// The backend failed the body: its connection is closed.
    fn fail(&mut self, f: Failure) {
        if let Some(c) = self.conn.take() {
            c.failed(f);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Upstream::H2(incoming) => Pin::new(incoming).poll_frame(cx).map_err(BodyError::from),
            Upstream::H1(framing) => match this.conn.as_mut() {
                Some(conn) => conn.poll_h1(cx, framing).map_err(BodyError::from),
                None => Poll::Ready(None),
            },
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(ex), Some(data)) = (this.exchange.as_mut(), frame.data_ref()) {
                    ex.sent(data.len());
                }
                if this.is_end_stream() {
                    // A server stops polling once a body reports its end (a known length was
                    // read): give the connection back now, not at a `None` that never comes.
                    this.release();
                } else {
                    this.gap.progress();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fail(Failure::BodyFailed);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Pending => match this.gap.poll_expired(cx) {
                Poll::Ready(()) => {
                    this.fail(Failure::BetweenBytesTimeout);
                    Poll::Ready(Some(Err(BodyError::Timeout(this.gap.limit()))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Upstream::H2(incoming) => incoming.is_end_stream(),
            Upstream::H1(framing) => framing.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Upstream::H2(incoming) => incoming.size_hint(),
            Upstream::H1(framing) => framing
                .remaining()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

/// The proxy's own short answer.
pub fn text(s: impl Into<Bytes>) -> ProxyBody {
    Either::Right(Full::new(s.into()))
}
