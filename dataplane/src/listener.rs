//! The one accept loop, shared by the proxy and the admin listener: accept, set
//! `TCP_NODELAY`, hand the connection to its own task; pause briefly when accepting fails (out
//! of descriptors and the like) instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

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
