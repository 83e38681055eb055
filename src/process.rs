//! What the long-running commands (`up`, `controlplane`, `dataplane`) share: binding listeners
//! with a clear error, the token policy, the endpoints file, the proxy thread count, and
//! waiting for Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use tether_controlplane::auth::Tokens;
use tokio::net::TcpListener;

/// Where a data plane listens, and with how many proxy threads.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ProxyArgs {
    /// HTTP proxy address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) proxy: SocketAddr,
    /// Proxy threads, each with its own event loop (default: one per CPU).
    #[arg(long)]
    pub(crate) proxy_threads: Option<usize>,
    /// Admin address (/healthz, /readyz, /metrics, /state, /explain).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub(crate) admin: SocketAddr,
}

/// Binds `addr`, naming the flag to change in the error.
pub(crate) async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for the {what} (use --{what} to pick another address)")
    })
}

/// The API's tokens; refuses a non-loopback API without tokens unless `insecure`.
pub(crate) fn tokens(
    file: Option<&Path>,
    api: SocketAddr,
    insecure: bool,
) -> anyhow::Result<Tokens> {
    let tokens = match file {
        Some(p) => Tokens::load(p)?,
        None => Tokens::none(),
    };
    if tokens.is_empty() && !api.ip().is_loopback() && !insecure {
        bail!(
            "refusing to serve the API on {api} without tokens: give --token-file FILE, or --insecure to accept anyone who can reach it"
        );
    }
    Ok(tokens)
}

/// Writes `<dir>/endpoints.json` with where each listener is bound (ports may have been 0):
/// for scripts and tests.
pub(crate) fn write_endpoints(
    dir: &Path,
    listeners: &[(&str, &TcpListener)],
) -> anyhow::Result<()> {
    let mut map = serde_json::Map::new();
    for (name, l) in listeners {
        map.insert(
            (*name).to_owned(),
            format!("http://{}", l.local_addr()?).into(),
        );
    }
    let file = dir.join("endpoints.json");
    let tmp = dir.join("endpoints.json.tmp");
    std::fs::write(&tmp, format!("{}\n", serde_json::Value::Object(map)))
        .and_then(|()| std::fs::rename(&tmp, &file))
        .with_context(|| format!("cannot write {}", file.display()))
}

/// Proxy threads: as asked, else one per CPU.
pub(crate) fn proxy_threads(asked: Option<usize>) -> usize {
    asked.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Resolves when Ctrl-C or SIGTERM arrives.
pub(crate) async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
