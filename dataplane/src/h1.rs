//! HTTP/1.1 to backends, driven in the request's own task.
//!
//! A [`Conn`] is a backend connection and the bytes read past the last response. The proxy
//! writes a request on it ([`Conn::send`]: the head in one write, the body streamed after it,
//! `Content-Length` or chunked), reads the response head (parsed by `httparse`, within the
//! head limit) and then the body frame by frame ([`Conn::poll_frame`]) through the
//! [`Framing`] the head chose (RFC 9112 §6.3). Nothing runs between requests: an idle
//! connection is its socket and no buffer (the read buffer is let go whenever it is empty),
//! and no task, channel or wake-up sits between the request and its backend — hyper's client
//! ran a task per connection and handed every request and body chunk across a channel.
//!
//! Why hand-written rather than hyper's client: that task-and-channel shape is the cost (see
//! issue 18's profile and `docs/benchmarks.md`); HTTP/2 to backends stays on hyper.
//!
//! Whether a connection may carry another request ([`Conn::reusable`]) follows the response:
//! not after `Connection: close`, an HTTP/1.0 answer without keep-alive, a close-delimited
//! body, a response with both `Transfer-Encoding` and `Content-Length`, bytes past the
//! response's end, or any error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version, response};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::pool::RequestBody;
use crate::tls::BackendIo;

/// Most response headers (as for requests: hyper's default, and HAProxy's order of size).
const MAX_HEADERS: usize = 100;
/// The first read of a response; a body is read in parts of at most [`MAX_READ`].
const FIRST_READ: usize = 4096;
const MAX_READ: usize = 64 * 1024;
/// A chunk-size line (size, extensions) longer than this is malformed.
const MAX_CHUNK_LINE: usize = 4096;

/// Why an exchange on a backend connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the connection failed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The backend closed the connection before any byte of a response.
    #[error("the backend closed the connection before answering")]
    Closed,
    /// The backend closed the connection in the middle of a response.
    #[error("the backend closed the connection in the middle of its response")]
    Incomplete,
    /// The response is not HTTP/1.x as RFC 9112 has it.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The response head is over the limit, or has more than 100 headers.
    #[error("response head over {0} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge(usize),
    /// The client's request body failed while it was being sent.
    #[error("request body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// How a response body is delimited (RFC 9112 §6.3), and how far it has been read.
#[derive(Debug)]
pub enum Framing {
    /// No body (or the end of one reached).
    Done,
    /// `Content-Length`: this many bytes remain (never 0: the last byte read makes it `Done`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunk),
    /// Until the backend closes the connection.
    Close,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy)]
pub enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data: this many bytes remain.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers (possibly none) and the final CRLF.
    Trailers,
    /// After the trailers (reported as a frame): the end.
    Finished,
}

impl Framing {
    /// Whether the body has been read to its end.
    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Done)
    }

    /// The bytes left, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Framing::Done => Some(0),
            Framing::Length(n) => Some(*n),
            Framing::Chunked(_) | Framing::Close => None,
        }
    }
}

/// An HTTP/1.1 backend connection.
#[derive(Debug)]
pub struct Conn {
    io: BackendIo,
    /// Bytes read and not yet used: part of the current response. Unallocated while idle.
    buf: BytesMut,
    /// The largest response head (and trailer section) taken.
    head_limit: usize,
    reusable: bool,
}

/// A request head to send, borrowed: a retry sends the same one, and no copy is made.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The method.
    pub method: &'a Method,
    /// Relative (origin-form): its path and query are sent.
    pub uri: &'a Uri,
    /// The headers, hop-by-hop ones removed.
    pub headers: &'a HeaderMap,
    /// Sent instead of the `Host` in `headers` (a backend's `host_header`).
    pub host: Option<&'a HeaderValue>,
}

/// A request that failed, and — when nothing of it reached the backend in a usable form —
/// its body, to be sent elsewhere.
#[derive(Debug)]
pub struct Failed {
    /// Why.
    pub error: Error,
    /// The body, when it was not read from yet.
    pub unsent: Option<RequestBody>,
}

impl Conn {
    /// A connection on `io` whose response heads may take `head_limit` bytes.
    pub fn new(io: BackendIo, head_limit: usize) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            head_limit,
            reusable: true,
        }
    }

    /// Whether the connection may carry another request (its last response read to the end).
    pub fn reusable(&self) -> bool {
        self.reusable && self.buf.is_empty()
    }

    /// Whether an idle connection is still open: a read that would block. Closed by the
    /// backend (end of stream, an error) or with bytes nobody asked for, it is not.
    pub fn is_live(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// The connection for a tunnel after a `101`: its stream, and the bytes the backend sent
    /// past the `101`'s head.
    pub fn into_upgraded(self) -> Upgraded {
        Upgraded {
            prefix: self.buf.freeze(),
            io: self.io,
        }
    }

    /// Sends `head` and `body` and reads the response head, skipping `1xx` answers but a
    /// `101`. The response's body is then read with [`Conn::poll_frame`] through the returned
    /// [`Framing`].
    pub async fn send(
        &mut self,
        head: Head<'_>,
        mut body: RequestBody,
    ) -> Result<(response::Parts, Framing), Failed> {
        self.reusable = false;
        let chunked = !body.is_end_stream() && body.size_hint().exact().is_none();
        let bytes = encode_head(head, &body, chunked);
        if let Err(e) = self.io.write_all(&bytes).await {
            return Err(Failed {
                error: e.into(),
                unsent: Some(body),
            });
        }
        let failed = |error| Failed {
            error,
            unsent: None,
        };
        self.send_body(&mut body, chunked).await.map_err(failed)?;
        self.io.flush().await.map_err(|e| failed(e.into()))?;
        self.read_head(head.method).await.map_err(failed)
    }

    /// Streams `body` (chunk-encoded when `chunked`, trailers included).
    async fn send_body(&mut self, body: &mut RequestBody, chunked: bool) -> Result<(), Error> {
        if body.is_end_stream() {
            return Ok(());
        }
        let mut body = Pin::new(body);
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            let frame = frame.map_err(Error::Body)?;
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) if chunked => {
                    // One write per chunk (size line, data, CRLF): not three small packets.
                    let mut chunk = Vec::with_capacity(data.len() + 20);
                    chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    chunk.extend_from_slice(&data);
                    chunk.extend_from_slice(b"\r\n");
                    self.io.write_all(&chunk).await?;
                }
                Ok(data) => self.io.write_all(&data).await?,
                Err(frame) => {
                    if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
                        let mut t = b"0\r\n".to_vec();
                        encode_fields(&mut t, &trailers);
                        t.extend_from_slice(b"\r\n");
                        self.io.write_all(&t).await?;
                        return Ok(());
                    }
                }
            }
        }
        if chunked {
            self.io.write_all(b"0\r\n\r\n").await?;
        }
        Ok(())
    }

    /// Reads until a whole response head is in the buffer (1xx heads but `101` skipped: as
    /// many as come, within the caller's first-byte timeout), and takes it.
    async fn read_head(&mut self, method: &Method) -> Result<(response::Parts, Framing), Error> {
        loop {
            match self.parse_head(method)? {
                Parsed::Head(parts, framing) => return Ok((parts, framing)),
                Parsed::Interim => continue,
                Parsed::Partial => {}
            }
            if self.buf.len() >= self.head_limit {
                return Err(Error::HeadTooLarge(self.head_limit));
            }
            let before = self.buf.len();
            let n = self.read_more(FIRST_READ).await?;
            if n == 0 {
                return Err(if before == 0 {
                    Error::Closed
                } else {
                    Error::Incomplete
                });
            }
        }
    }

    async fn read_more(&mut self, want: usize) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx, want)).await
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// A response head from the buffer, if a whole one is there.
    fn parse_head(&mut self, method: &Method) -> Result<Parsed, Error> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        let len = match resp.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::HeadTooLarge(self.head_limit));
            }
            Err(_) => return Err(Error::Malformed("not an HTTP/1.x response head")),
        };
        if len > self.head_limit {
            return Err(Error::HeadTooLarge(self.head_limit));
        }
        let code = resp.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Malformed("invalid status code"))?;
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Where each field sits in the head, so that names and values can share its bytes.
        let base = self.buf.as_ptr() as usize;
        let spans: Vec<(usize, usize, usize, usize)> = resp
            .headers
            .iter()
            .map(|h| {
                let n = h.name.as_ptr() as usize - base;
                let v = h.value.as_ptr() as usize - base;
                (n, n + h.name.len(), v, v + h.value.len())
            })
            .collect();
        let head = self.buf.split_to(len).freeze();
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: the real answer follows.
            return Ok(Parsed::Interim);
        }
        let mut headers = HeaderMap::with_capacity(spans.len());
        for (n0, n1, v0, v1) in spans {
            let name = HeaderName::from_bytes(&head[n0..n1])
                .map_err(|_| Error::Malformed("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(v0..v1))
                .map_err(|_| Error::Malformed("invalid header value"))?;
            headers.append(name, value);
        }
        let framing = self.framing(method, status, version, &mut headers)?;
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        Ok(Parsed::Head(parts, framing))
    }

    /// The body's framing (RFC 9112 §6.3), and whether the connection stays open after it.
    /// With `Transfer-Encoding`, any `Content-Length` is removed: the client side frames the
    /// body anew, and must not be told a length the backend did not mean.
    fn framing(
        &mut self,
        method: &Method,
        status: StatusCode,
        version: Version,
        headers: &mut HeaderMap,
    ) -> Result<Framing, Error> {
        let tokens = |name: header::HeaderName, token: &str, h: &HeaderMap| {
            h.get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        self.reusable = if version == Version::HTTP_10 {
            tokens(header::CONNECTION, "keep-alive", headers)
        } else {
            !tokens(header::CONNECTION, "close", headers)
        };
        if status == StatusCode::SWITCHING_PROTOCOLS {
            self.reusable = false;
            return Ok(Framing::Done);
        }
        if *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Done);
        }
        if headers.contains_key(header::TRANSFER_ENCODING) {
            let length = headers.remove(header::CONTENT_LENGTH).is_some();
            let last = headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim);
            if last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
                // Both headers: a smuggling shape; this response is read, the connection not
                // trusted with another.
                self.reusable &= !length;
                return Ok(Framing::Chunked(Chunk::Size));
            }
            self.reusable = false;
            return Ok(Framing::Close);
        }
        let mut length: Option<u64> = None;
        for v in headers.get_all(header::CONTENT_LENGTH) {
            for part in v.to_str().unwrap_or("x").split(',') {
                let p = part.trim();
                let n = (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| p.parse::<u64>().ok())
                    .flatten()
                    .ok_or(Error::Malformed("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Malformed("two different Content-Length values"));
                }
                length = Some(n);
            }
        }
        match length {
            Some(0) => Ok(Framing::Done),
            Some(n) => Ok(Framing::Length(n)),
            None => {
                self.reusable = false;
                Ok(Framing::Close)
            }
        }
    }

    /// The next part of the response body: data, then trailers (chunked bodies may have
    /// them), then `None`. `framing` is advanced; at the end it is [`Framing::Done`].
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
        framing: &mut Framing,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let r = self.poll_frame_inner(cx, framing);
        if matches!(r, Poll::Ready(Some(Err(_)))) {
            self.reusable = false;
            *framing = Framing::Done;
        }
        if framing.is_done() && self.buf.is_empty() {
            // Idle from here: no buffer held.
            self.buf = BytesMut::new();
        }
        r
    }

    fn poll_frame_inner(
        &mut self,
        cx: &mut Context<'_>,
        framing: &mut Framing,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(rest) => {
                    if !self.buf.is_empty() {
                        let k = usize::try_from(*rest)
                            .map_or(self.buf.len(), |r| r.min(self.buf.len()));
                        *rest -= k as u64;
                        if *rest == 0 {
                            // Done as soon as the last byte is read: a server stops polling
                            // a body that reports its end.
                            *framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(self.buf.split_to(k).freeze()))));
                    }
                    let want = usize::try_from(*rest).map_or(MAX_READ, |r| r.min(MAX_READ));
                    match self.poll_read_more(cx, want) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(Error::Incomplete))),
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Framing::Close => {
                    if !self.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(self.buf.split().freeze()))));
                    }
                    match self.poll_read_more(cx, MAX_READ) {
                        Poll::Ready(Ok(0)) => {
                            *framing = Framing::Done;
                            return Poll::Ready(None);
                        }
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Framing::Chunked(state) => match self.step_chunked(state) {
                    Ok(Step::Frame(f)) => return Poll::Ready(Some(Ok(f))),
                    Ok(Step::End) => {
                        *framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Step::Again) => {}
                    Ok(Step::More) => match self.poll_read_more(cx, FIRST_READ) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(Error::Incomplete))),
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        Poll::Pending => return Poll::Pending,
                    },
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
            }
        }
    }

    /// One step of the chunked decoder over the buffer.
    fn step_chunked(&mut self, state: &mut Chunk) -> Result<Step, Error> {
        match *state {
            Chunk::Size => {
                let Some(eol) = find_crlf(&self.buf) else {
                    return if self.buf.len() > MAX_CHUNK_LINE {
                        Err(Error::Malformed("chunk-size line too long"))
                    } else {
                        Ok(Step::More)
                    };
                };
                let line = &self.buf[..eol];
                let digits = line
                    .iter()
                    .position(|b| !b.is_ascii_hexdigit())
                    .unwrap_or(line.len());
                let rest = &line[digits..];
                if digits == 0
                    || digits > 15
                    || !(rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t'))
                {
                    return Err(Error::Malformed("invalid chunk size"));
                }
                let size = line[..digits].iter().fold(0u64, |n, &b| {
                    n * 16 + u64::from(char::from(b).to_digit(16).unwrap_or(0))
                });
                self.buf.advance(eol + 2);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
                Ok(Step::Again)
            }
            Chunk::Data(rest) => {
                if self.buf.is_empty() {
                    return Ok(Step::More);
                }
                let k = usize::try_from(rest).map_or(self.buf.len(), |r| r.min(self.buf.len()));
                *state = if k as u64 == rest {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rest - k as u64)
                };
                Ok(Step::Frame(Frame::data(self.buf.split_to(k).freeze())))
            }
            Chunk::DataEnd => {
                if self.buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(Error::Malformed("chunk data not followed by CRLF"));
                }
                self.buf.advance(2);
                *state = Chunk::Size;
                Ok(Step::Again)
            }
            Chunk::Finished => Ok(Step::End),
            Chunk::Trailers => {
                if self.buf.starts_with(b"\r\n") {
                    self.buf.advance(2);
                    return Ok(Step::End);
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(&self.buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for f in fields.iter() {
                            let name = HeaderName::from_bytes(f.name.as_bytes())
                                .map_err(|_| Error::Malformed("invalid trailer name"))?;
                            let value = HeaderValue::from_bytes(f.value)
                                .map_err(|_| Error::Malformed("invalid trailer value"))?;
                            trailers.append(name, value);
                        }
                        // `len` takes the section's final CRLF too: the body ends here.
                        self.buf.advance(len);
                        *state = Chunk::Finished;
                        Ok(Step::Frame(Frame::trailers(trailers)))
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() <= self.head_limit => {
                        Ok(Step::More)
                    }
                    Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                        Err(Error::HeadTooLarge(self.head_limit))
                    }
                    Err(_) => Err(Error::Malformed("invalid trailers")),
                }
            }
        }
    }
}

/// What the buffer held at a response head.
enum Parsed {
    /// A whole final head.
    Head(response::Parts, Framing),
    /// A `1xx` head (not `101`), taken: another head follows.
    Interim,
    /// Not a whole head yet.
    Partial,
}

/// What one step of the chunked decoder found.
enum Step {
    Frame(Frame<Bytes>),
    End,
    /// The state moved on: step again.
    Again,
    /// The buffer holds too little: read more.
    More,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// The request line and header section, with the body's framing: `Content-Length` when the
/// body's length is known and the head has none, `Transfer-Encoding: chunked` otherwise (and
/// then no `Content-Length`).
fn encode_head(head: Head<'_>, body: &RequestBody, chunked: bool) -> Vec<u8> {
    let pq = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(64 + pq.len() + head.headers.len() * 40);
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(pq.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let skip = |name: &HeaderName| {
        (chunked && name == header::CONTENT_LENGTH) || (head.host.is_some() && name == header::HOST)
    };
    for (name, value) in head.headers {
        if !skip(name) {
            field(&mut out, name, value);
        }
    }
    if let Some(host) = head.host {
        field(&mut out, &header::HOST, host);
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(n) = body.size_hint().exact()
        && n > 0
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn encode_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        field(out, name, value);
    }
}

/// A backend connection after a `101`: the bytes it sent past the `101`'s head first, then
/// the stream itself.
#[derive(Debug)]
pub struct Upgraded {
    prefix: Bytes,
    io: BackendIo,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let k = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(k));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::{Either, Empty};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A backend that reads one request head, answers with `parts` (one write each, a pause
    /// between them so they arrive as separate reads), then closes if `close`, else stays
    /// open. Its task returns the request head it read.
    async fn backend(
        parts: Vec<&'static [u8]>,
        close: bool,
    ) -> (Conn, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                assert!(n > 0, "the request head ends");
                req.extend_from_slice(&b[..n]);
            }
            for p in parts {
                s.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if !close {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            req
        });
        let io = BackendIo::Plain(TcpStream::connect(addr).await.unwrap());
        (Conn::new(io, 1024), task)
    }

    /// `method /a?b` with `Host: x`, no body.
    async fn send(c: &mut Conn, method: Method) -> Result<(response::Parts, Framing), Failed> {
        let uri: Uri = "/a?b".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("x"));
        let head = Head {
            method: &method,
            uri: &uri,
            headers: &headers,
            host: None,
        };
        c.send(head, Either::Right(Empty::new())).await
    }

    /// The whole body: its data, and its trailers.
    async fn body(
        conn: &mut Conn,
        mut framing: Framing,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(f) = std::future::poll_fn(|cx| conn.poll_frame(cx, &mut framing)).await {
            match f?.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        assert!(framing.is_done());
        Ok((data, trailers))
    }

    #[tokio::test]
    async fn a_length_delimited_response_in_parts_leaves_the_connection_reusable_and_unbuffered() {
        let (mut c, task) = backend(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Len",
                b"gth: 11\r\nX-A: 1\r\n\r\nhello",
                b" world",
            ],
            false,
        )
        .await;
        let (parts, framing) = send(&mut c, Method::GET).await.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["x-a"], "1");
        assert_eq!(framing.remaining(), Some(11));
        let (data, trailers) = body(&mut c, framing).await.unwrap();
        assert_eq!(data, b"hello world");
        assert!(trailers.is_none());
        assert!(c.reusable());
        assert_eq!(c.buf.capacity(), 0, "an idle connection holds no buffer");
        assert!(c.is_live());
        task.abort();
        let _ = task.await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!c.is_live(), "closed by the backend");
    }

    #[tokio::test]
    async fn the_request_head_is_sent_as_asked() {
        let (mut c, task) = backend(vec![b"HTTP/1.1 204 No Content\r\n\r\n"], true).await;
        let (parts, framing) = send(&mut c, Method::GET).await.unwrap();
        assert_eq!(parts.status, StatusCode::NO_CONTENT);
        assert!(framing.is_done());
        assert_eq!(task.await.unwrap(), b"GET /a?b HTTP/1.1\r\nhost: x\r\n\r\n");
    }

    #[test]
    fn a_backend_host_header_replaces_the_client_host_and_chunked_drops_the_length() {
        let uri: Uri = "/p".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("client.example"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let backend = HeaderValue::from_static("backend.internal");
        let head = Head {
            method: &Method::POST,
            uri: &uri,
            headers: &headers,
            host: Some(&backend),
        };
        let empty: RequestBody = Either::Right(Empty::new());
        assert_eq!(
            String::from_utf8(encode_head(head, &empty, false)).unwrap(),
            "POST /p HTTP/1.1\r\ncontent-length: 5\r\nx-a: 1\r\nhost: backend.internal\r\n\r\n"
        );
        assert_eq!(
            String::from_utf8(encode_head(head, &empty, true)).unwrap(),
            "POST /p HTTP/1.1\r\nx-a: 1\r\nhost: backend.internal\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_chunked_body_with_extensions_and_trailers_is_decoded() {
        let (mut c, _task) = backend(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel",
                b"lo\r\n6\r\n world\r",
                b"\n0\r\nGrpc-Status: 0\r\n",
                b"\r\n",
            ],
            false,
        )
        .await;
        let (_, framing) = send(&mut c, Method::GET).await.unwrap();
        assert_eq!(framing.remaining(), None);
        let (data, trailers) = body(&mut c, framing).await.unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert!(c.reusable());
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let (mut c, _task) = backend(
            vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            false,
        )
        .await;
        let (parts, framing) = send(&mut c, Method::GET).await.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert!(!parts.headers.contains_key(header::LINK));
        assert_eq!(body(&mut c, framing).await.unwrap().0, b"ok");
    }

    #[tokio::test]
    async fn a_flood_of_interim_heads_in_one_read_is_taken_in_a_loop() {
        // One stack frame per head (a 100-field array each) would take megabytes here.
        let mut flood = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1000);
        flood.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let flood: &'static [u8] = Box::leak(flood.into_boxed_slice());
        let (mut c, _task) = backend(vec![flood], false).await;
        let (parts, framing) = send(&mut c, Method::GET).await.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert!(framing.is_done());
    }

    #[tokio::test]
    async fn transfer_encoding_with_content_length_drops_the_length_and_the_connection() {
        let (mut c, _task) = backend(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
            false,
        )
        .await;
        let (parts, framing) = send(&mut c, Method::GET).await.unwrap();
        assert!(!parts.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(body(&mut c, framing).await.unwrap().0, b"ok");
        assert!(!c.reusable());
    }

    #[tokio::test]
    async fn a_head_answer_has_no_body_whatever_its_length() {
        let (mut c, _task) = backend(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"],
            false,
        )
        .await;
        let (parts, framing) = send(&mut c, Method::HEAD).await.unwrap();
        assert_eq!(parts.headers[header::CONTENT_LENGTH], "100");
        assert!(framing.is_done());
        assert!(c.reusable());
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close() {
        let (mut c, _task) = backend(
            vec![b"HTTP/1.1 200 OK\r\n\r\nall of it", b" and more"],
            true,
        )
        .await;
        let (_, framing) = send(&mut c, Method::GET).await.unwrap();
        assert_eq!(
            body(&mut c, framing).await.unwrap().0,
            b"all of it and more"
        );
        assert!(!c.reusable());
    }

    #[tokio::test]
    async fn http_1_0_and_connection_close_are_not_kept_alive() {
        for head in [
            &b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        ] {
            let (mut c, _task) = backend(vec![head], false).await;
            let (_, framing) = send(&mut c, Method::GET).await.unwrap();
            assert!(framing.is_done());
            assert!(!c.reusable());
        }
        let (mut c, _task) = backend(
            vec![b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"],
            false,
        )
        .await;
        send(&mut c, Method::GET).await.unwrap();
        assert!(c.reusable());
    }

    #[tokio::test]
    async fn broken_responses_are_errors() {
        type Expected = fn(&Error) -> bool;
        let cases: [(&'static [u8], Expected); 6] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                |e| matches!(e, Error::Malformed(_)),
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", |e| {
                matches!(e, Error::Malformed(_))
            }),
            (b"HTTP/1.1 2000 OK\r\n\r\n", |e| {
                matches!(e, Error::Malformed(_))
            }),
            (b"SSH-2.0-OpenSSH\r\n\r\n", |e| {
                matches!(e, Error::Malformed(_))
            }),
            (b"HTTP/1.1 200 OK\r\nX: ", |e| {
                matches!(e, Error::Incomplete)
            }),
            (b"", |e| matches!(e, Error::Closed)),
        ];
        for (answer, expected) in cases {
            let (mut c, _task) = backend(vec![answer], true).await;
            let e = send(&mut c, Method::GET).await.unwrap_err().error;
            assert!(expected(&e), "{answer:?}: {e}");
        }
    }

    #[tokio::test]
    async fn a_response_head_over_the_limit_is_refused() {
        let big: &'static [u8] = Box::leak(
            format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(2000))
                .into_bytes()
                .into_boxed_slice(),
        );
        let (mut c, _task) = backend(vec![big], false).await;
        let e = send(&mut c, Method::GET).await.unwrap_err().error;
        assert!(matches!(e, Error::HeadTooLarge(1024)), "{e}");
    }

    #[tokio::test]
    async fn broken_chunked_bodies_are_errors_and_the_connection_is_not_reused() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ] {
            let (mut c, _task) = backend(vec![answer], true).await;
            let (_, framing) = send(&mut c, Method::GET).await.unwrap();
            assert!(body(&mut c, framing).await.is_err(), "{answer:?}");
            assert!(!c.reusable());
        }
    }

    #[tokio::test]
    async fn bytes_after_a_101_reach_the_tunnel() {
        let (mut c, _task) = backend(
            vec![b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nfirst frame"],
            false,
        )
        .await;
        let (parts, framing) = send(&mut c, Method::GET).await.unwrap();
        assert_eq!(parts.status, StatusCode::SWITCHING_PROTOCOLS);
        assert!(framing.is_done());
        assert!(!c.reusable());
        let mut up = c.into_upgraded();
        let mut got = vec![0u8; 11];
        up.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"first frame");
    }
}
