//! What the cluster, leases and discovery benchmark programs share: a data plane's `/state`
//! as JSON, waiting for a backend to appear on (or leave) every node, and percentiles.
//! Included with `#[path]`: examples share no library.

#![allow(dead_code)]

use std::time::{Duration, Instant};

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

/// The backend names a node routes to.
pub(crate) async fn names(http: &Http, admin: &str) -> Vec<String> {
    state(http, &format!("{admin}/state")).await["backends"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every node has (`present`) or lacks `name`.
pub(crate) async fn until(http: &Http, admins: &[String], name: &str, present: bool) {
    let start = Instant::now();
    for a in admins {
        while names(http, a).await.iter().any(|n| n == name) != present {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{a}: {name} present={present} never held"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}

pub(crate) fn summary(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{what}: p50 {:.1?}  p99 {:.1?}  max {:.1?}  (n={})",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
        times.len()
    );
}
