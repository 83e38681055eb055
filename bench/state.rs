//! A data plane's `/state` as JSON, for the benchmark programs that wait on what nodes
//! applied (`cluster`, `leases`). Included with `#[path]`: examples share no library.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

pub(crate) type Http = Client<HttpConnector, Empty<Bytes>>;

/// GET `url` (an admin listener's `/state…`) as JSON; `Null` when it fails.
pub(crate) async fn state(http: &Http, url: &str) -> serde_json::Value {
    let Ok(resp) = http.get(url.parse().expect("url")).await else {
        return serde_json::Value::Null;
    };
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
}
