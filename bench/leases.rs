//! Lease figures for docs/benchmarks.md (run by `bench/leases.sh`, against etcd with three
//! data planes and against `tether up`):
//!
//! 1. revocation → every node routing without the backend, over 50 leases (p50, p99, max);
//! 2. expiry: 20 leases of 2 s granted at once and never renewed → from each lease's deadline
//!    (grant + TTL) to every node without its backend (p50, p99, max): the store's expiry
//!    latency plus propagation;
//! 3. 1,000 lease-bound backends renewed by one KeepAlive stream every 3.3 s (the rate of a
//!    10 s TTL renewed at a third of it; the leases have 60 s, so that creating the 1,000
//!    backends one by one cannot outlast the first ones) for 30 s: the CPU of the process
//!    serving the API (and of etcd, when given), against 30 s idle just before.
//!
//! Usage: leases API API_PID [ETCD_PID|-] ADMIN_URL...

use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tether_proto::v1::{self, tether_client::TetherClient};
use tokio_stream::StreamExt;

#[path = "shared.rs"]
mod shared;
use shared::{Http, names, summary, until};
type Api = TetherClient<tonic::transport::Channel>;

async fn grant(c: &mut Api, secs: i64) -> Result<i64, tonic::Status> {
    Ok(c.grant_lease(v1::GrantLeaseRequest {
        ttl: Some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        }),
    })
    .await?
    .into_inner()
    .id)
}

async fn create(c: &mut Api, name: &str, lease: i64) -> Result<(), tonic::Status> {
    c.create_backend(v1::CreateBackendRequest {
        backend: Some(v1::Backend {
            name: name.into(),
            address: "127.0.0.1:9".into(),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            lease,
            ..Default::default()
        }),
    })
    .await?;
    Ok(())
}

/// utime + stime of a process, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the state field.
    n(11) + n(12)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (api, api_pid, etcd_pid) = (args[0].clone(), args[1].clone(), args[2].clone());
    let admins = args[3..].to_vec();
    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut c = TetherClient::connect(api).await?;

    // 1. Revocation.
    let mut times = Vec::new();
    for i in 0..50 {
        let name = format!("r{i}");
        let lease = grant(&mut c, 30).await?;
        create(&mut c, &name, lease).await?;
        until(&http, &admins, &name, true).await;
        let start = Instant::now();
        c.revoke_lease(v1::RevokeLeaseRequest { id: lease }).await?;
        until(&http, &admins, &name, false).await;
        times.push(start.elapsed());
    }
    summary(
        &format!("revoke → {} node(s) without the backend", admins.len()),
        times,
    );

    // 2. Expiry of unrenewed leases.
    let ttl = Duration::from_secs(2);
    let mut pending = Vec::new();
    for i in 0..20 {
        let name = format!("e{i}");
        let granted = Instant::now();
        let lease = grant(&mut c, 2).await?;
        create(&mut c, &name, lease).await?;
        pending.push((name, granted + ttl));
    }
    let mut times = Vec::new();
    while !pending.is_empty() {
        let now = Instant::now();
        let mut seen: Vec<Vec<String>> = Vec::new();
        for a in &admins {
            seen.push(names(&http, a).await);
        }
        pending.retain(|(name, deadline)| {
            let gone = seen.iter().all(|s| !s.contains(name));
            if gone {
                times.push(now.saturating_duration_since(*deadline));
            }
            !gone
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    summary(
        &format!(
            "expiry (deadline → {} node(s) without the backend)",
            admins.len()
        ),
        times,
    );

    // 3. 1,000 leases on one KeepAlive stream.
    let mut leases = Vec::new();
    for i in 0..1000 {
        let lease = grant(&mut c, 60).await?;
        create(&mut c, &format!("k{i}"), lease).await?;
        leases.push(lease);
    }
    let window = Duration::from_secs(30);
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let mut answers = c
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    // One round first, so no lease runs out during the idle window.
    for &id in &leases {
        tx.send(v1::KeepAliveRequest { id }).await?;
    }
    for _ in &leases {
        answers.next().await;
    }
    let (api0, etcd0) = (cpu_ticks(&api_pid), cpu_ticks(&etcd_pid));
    tokio::time::sleep(window).await;
    let idle = (cpu_ticks(&api_pid) - api0, cpu_ticks(&etcd_pid) - etcd0);
    let (api1, etcd1) = (cpu_ticks(&api_pid), cpu_ticks(&etcd_pid));
    let start = Instant::now();
    let mut renewals = 0u64;
    let mut lost = 0u64;
    while start.elapsed() < window {
        let round = Instant::now();
        for &id in &leases {
            tx.send(v1::KeepAliveRequest { id }).await?;
        }
        for _ in &leases {
            match answers.next().await {
                Some(Ok(l)) if l.ttl > 0 => renewals += 1,
                _ => lost += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(3333).saturating_sub(round.elapsed())).await;
    }
    let busy = (cpu_ticks(&api_pid) - api1, cpu_ticks(&etcd_pid) - etcd1);
    let ms = |ticks: u64| ticks as f64 * 10.0;
    let per_s = |ticks: u64| ms(ticks) / window.as_secs_f64();
    println!(
        "1,000 leases renewed every 3.3 s on one KeepAlive stream ({renewals} renewals, {lost} lost) for {window:?}: API process {:.1} ms CPU/s (idle {:.1}), {:.1} µs per renewal over idle",
        per_s(busy.0),
        per_s(idle.0),
        (ms(busy.0) - ms(idle.0)).max(0.0) * 1000.0 / renewals.max(1) as f64
    );
    if etcd_pid != "-" {
        println!(
            "  etcd: {:.1} ms CPU/s (idle {:.1})",
            per_s(busy.1),
            per_s(idle.1)
        );
    }
    drop(tx);
    for id in leases {
        match c.revoke_lease(v1::RevokeLeaseRequest { id }).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
    }
    Ok(())
}
