//! WebSocket through the proxy: an echo backend (tokio-tungstenite) that prefixes every text
//! message with its name, and a client that connects with a key header.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket echo server: text `m` comes back as `"<name>:m"`.
pub struct WsBackend {
    pub name: String,
    pub addr: SocketAddr,
    /// Sessions open now.
    pub open: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

impl WsBackend {
    pub async fn start(name: &str) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let (n, o) = (name.to_owned(), Arc::clone(&open));
        tasks.spawn(async move {
            let mut sessions = JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                let (n, o) = (n.clone(), Arc::clone(&o));
                sessions.spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    o.fetch_add(1, Ordering::SeqCst);
                    while let Some(Ok(m)) = ws.next().await {
                        let reply = match m {
                            Message::Text(t) => Message::text(format!("{n}:{t}")),
                            Message::Binary(b) => Message::Binary(b),
                            Message::Close(_) => break,
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        WsBackend {
            name: name.to_owned(),
            addr,
            open,
            tasks,
        }
    }

    /// Stops accepting and closes every session.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `proxy` (`http://host:port`) with `x-user: key`.
pub async fn connect(proxy: &str, key: &str) -> Result<Ws, String> {
    let url = format!("{}/ws", proxy.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert("x-user", key.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// Sends `msg` and returns the backend's answer (its `"<name>:msg"`).
pub async fn echo(ws: &mut Ws, msg: &str) -> Option<String> {
    ws.send(Message::text(msg)).await.ok()?;
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// The backend a session reached: the name before `:` in an echo.
pub async fn backend_of(ws: &mut Ws) -> Option<String> {
    let answer = echo(ws, "who").await?;
    answer.strip_suffix(":who").map(str::to_owned)
}
