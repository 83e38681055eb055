//! The one accept loop, shared by the proxy and the admin listener: accept, set
//! `TCP_NODELAY`, hand the connection to its own task; pause briefly when accepting fails (out
//! of descriptors and the like) instead of spinning. [`serve_http`] runs HTTP/1.1 and HTTP/2
//! (hyper-util's auto builder, configured here once) on each connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

/// How long to wait after a failed accept.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Accepts on `listener` until `shutdown` resolves, running `serve(stream, peer)` as a task for
/// each connection. `what` names the listener in logs.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        // Without it a response written in two parts waits for a delayed ACK (40 ms).
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, peer));
    }
}

/// Serves HTTP on `listener` until `shutdown` resolves: every request of a connection from
/// `peer` is answered by `handler(request, peer)`.
pub async fn serve_http<H, Fut, B>(
    listener: TcpListener,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    accept_loop(listener, what, shutdown, move |stream, peer| {
        let handler = handler.clone();
        let builder = builder.clone();
        async move {
            let svc = service_fn(move |req| {
                let answer = handler(req, peer);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(listener = what, error = %e, "connection ended with an error");
            }
        }
    })
    .await;
}
