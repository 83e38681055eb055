//! What the cluster and leases benchmark programs share: a data plane's `/state`
//! as JSON, and percentiles. Included with `#[path]`: examples share no library.

use std::time::Duration;

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

/// The `p` quantile (0 to 1) of sorted durations, nearest rank.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
