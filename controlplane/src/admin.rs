//! The control plane's admin listener (`tether controlplane --admin`): `/healthz` (the process
//! answers), `/readyz` (the store answers within 2 s: 503 otherwise, so a load balancer or
//! Kubernetes sends no calls to a replica cut off from etcd) and `/metrics`
//! ([`crate::metrics`]). Served by the data plane's HTTP listener code, under the same edge
//! timeouts and connection cap as every listener.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use tether_dataplane::edge::{Edge, EdgeConfig};
use tokio::net::TcpListener;

use crate::service::Api;
use crate::store::Store;

/// Connections the admin listener takes at once (scrapers and probes, not clients).
const MAX_CONNECTIONS: usize = 256;

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the admin endpoints for `api` on `listener` until `shutdown` resolves.
pub async fn serve<S: Store>(
    listener: TcpListener,
    api: Api<S>,
    shutdown: impl Future<Output = ()>,
) {
    let edge = Edge::new("admin", EdgeConfig::with_max_connections(MAX_CONNECTIONS));
    tether_dataplane::listener::serve_http(listener, edge, None, shutdown, move |req, _, _| {
        let api = api.clone();
        async move {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            handle(&api, req.method(), req.uri().path(), accept).await
        }
    })
    .await;
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle<S: Store>(
    api: &Api<S>,
    method: &Method,
    path: &str,
    accept: Option<&str>,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match tokio::time::timeout(READY_TIMEOUT, api.store_ready()).await {
            Ok(Ok(revision)) => text(
                StatusCode::OK,
                format!("ready: store at revision {revision}\n"),
            ),
            Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: the store did not answer within {READY_TIMEOUT:?}\n"),
            ),
        },
        "/metrics" => {
            let page = api.metrics().render(api.watches_open());
            let (content_type, page) = tether_dataplane::exposition::negotiate(accept, page);
            let mut r = text(StatusCode::OK, page);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /healthz, /readyz or /metrics\n".into(),
        ),
    }
}
