//! `tether echo`: a tiny HTTP/1.1 server that answers every request with its own name — the
//! upstream of the quickstart and of the proxy benchmark. Not a production backend.

use std::net::SocketAddr;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Arguments of `tether echo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// The name it answers with (body and `x-backend` header).
    #[arg(long, default_value = "echo")]
    name: String,
}

/// Serves until killed.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let body = Bytes::from(format!("{}\n", args.name));
    let name = hyper::header::HeaderValue::from_str(&args.name)
        .context("--name must be a valid header value")?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (body, name) = (body.clone(), name.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let mut r = hyper::Response::new(Full::new(body.clone()));
                r.headers_mut().insert("x-backend", name.clone());
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
