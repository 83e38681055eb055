//! Response bodies the proxy sends: a backend's body streamed through ([`UpstreamBody`]) or
//! the proxy's own short text ([`ProxyBody`]'s right side).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::pool::Checkout;

/// What the proxy answers with.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Why a backend's body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Nothing arrived for `between_bytes`.
    #[error("backend sent nothing for {0:?} (between_bytes timeout)")]
    Timeout(Duration),
    /// The backend connection failed.
    #[error("backend body: {0}")]
    Backend(#[from] hyper::Error),
}

/// A backend's response body, streamed frame by frame, with the between-bytes timeout. When it
/// ends cleanly its connection goes back to the pool; when it is dropped early or fails, the
/// connection is closed.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    timeout: Duration,
    /// Armed the first time the backend makes us wait (most small bodies never do).
    sleep: Option<Pin<Box<Sleep>>>,
    conn: Option<Checkout>,
}

impl UpstreamBody {
    /// Wraps `inner`; `conn` returns to its pool at the end.
    pub fn new(inner: Incoming, timeout: Duration, conn: Checkout) -> Self {
        let mut body = UpstreamBody {
            inner,
            timeout,
            sleep: None,
            conn: Some(conn),
        };
        if body.inner.is_end_stream() {
            // The server may never poll an empty body: give the connection back now.
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            c.release();
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    // A server stops polling once a body reports its end (a known length was
                    // read): give the connection back now, not at a `None` that never comes.
                    this.release();
                } else if let Some(sleep) = &mut this.sleep {
                    sleep.as_mut().reset(Instant::now() + this.timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Pending => match this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.timeout)))
                .as_mut()
                .poll(cx)
            {
                Poll::Ready(()) => {
                    this.conn = None;
                    Poll::Ready(Some(Err(BodyError::Timeout(this.timeout))))
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

/// The proxy's own short answer.
pub fn text(s: impl Into<Bytes>) -> ProxyBody {
    Either::Right(Full::new(s.into()))
}
