//! DNS discovery figures for docs/benchmarks.md (run by `bench/discovery.sh`, against etcd with
//! three data planes and against `tether up`): a DNS answer changing → every node routing
//! with the added address's backend, and without the removed one's (grace 0), over 20
//! rounds each (p50, p99, max). The name server is in this program (`tests/support/dns.rs`,
//! on 127.0.0.1:15353, TTL 1 s); the Discovery refreshes every second (its floor), so the
//! figures are the refresh wait (0-1 s, plus up to the resolver's 500 ms listing tick) and
//! then the write's propagation — reported on its own too: from the API's Watch stream
//! delivering the backend's create (or delete) to every node routing by it.
//!
//! Usage: discovery API ADMIN_URL...

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tether_proto::v1::{self, tether_client::TetherClient};

#[path = "shared.rs"]
mod shared;
use shared::{Http, summary, until};

#[allow(clippy::unwrap_used, dead_code, unreachable_pub)]
#[path = "../tests/support/dns.rs"]
mod dns;

const NAME: &str = "bench.tether.test";

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let api = args[0].clone();
    let admins = args[1..].to_vec();
    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let base: Vec<Ipv4Addr> = (1..=3).map(|n| Ipv4Addr::new(127, 0, 1, n)).collect();
    let server = dns::DnsServer::start_at("127.0.0.1:15353".parse()?, NAME, &base, 1).await;
    let mut c = TetherClient::connect(api).await?;
    c.apply(v1::ApplyRequest {
        discoveries: vec![v1::Discovery {
            name: "bench".into(),
            dns_name: NAME.into(),
            port: 80,
            labels: [("app".to_owned(), "bench".to_owned())].into(),
            refresh: secs(1),
            min_refresh: secs(1),
            grace: secs(0),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await?;
    until(&http, &admins, "bench-127-0-1-3-80", true).await;
    // When the Watch stream delivered each backend event: (name, created) → when.
    let events: Arc<Mutex<HashMap<(String, bool), Instant>>> = Arc::default();
    let mut watch = c
        .watch(v1::WatchRequest { from_revision: 0 })
        .await?
        .into_inner();
    let seen = Arc::clone(&events);
    tokio::spawn(async move {
        while let Ok(Some(msg)) = watch.message().await {
            let now = Instant::now();
            for e in msg.events.into_iter().filter(|e| e.kind == "backend") {
                let created = e.action == v1::Action::Create as i32;
                seen.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert((e.name, created), now);
            }
        }
    });
    let since_event = |name: &str, created: bool| {
        let at = events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(name.to_owned(), created))
            .copied();
        at.map(|t| t.elapsed())
    };
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let mut propagation = Vec::new();
    for i in 0..20u8 {
        let extra = Ipv4Addr::new(127, 0, 2, 1 + i);
        let name = format!("bench-127-0-2-{}-80", 1 + i);
        let mut answer = base.clone();
        answer.push(extra);
        let start = Instant::now();
        server.set(&answer);
        until(&http, &admins, &name, true).await;
        added.push(start.elapsed());
        propagation.extend(since_event(&name, true));
        let start = Instant::now();
        server.set(&base);
        until(&http, &admins, &name, false).await;
        removed.push(start.elapsed());
        propagation.extend(since_event(&name, false));
        // Off the refresh's phase, so the rounds sample the whole wait.
        tokio::time::sleep(Duration::from_millis(137)).await;
    }
    let n = admins.len();
    summary(
        &format!("DNS answer +1 address → {n} node(s) with its backend"),
        added,
    );
    summary(
        &format!("DNS answer -1 address (grace 0) → {n} node(s) without it"),
        removed,
    );
    summary(
        &format!("of which: the write's Watch event → {n} node(s) routing by it"),
        propagation,
    );
    c.delete_discovery(v1::DeleteRequest {
        name: "bench".into(),
        revision: 0,
    })
    .await?;
    Ok(())
}
