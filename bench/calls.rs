//! The API's capped calls at their caps, for docs/benchmarks.md (run by `bench/calls.sh`,
//! which starts `tether up` with a token file): with a read-only token against a 5,000-member
//! hash director, each call's latency (median and max of 20), or "timed out" past the
//! client's deadline — what the calls cost before they were capped.
//!
//! Usage: calls API READ_ONLY_TOKEN ADMIN_TOKEN

use std::time::{Duration, Instant};

use tether_proto::v1::{self, tether_client::TetherClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Client = TetherClient<InterceptedService<Channel, Bearer>>;

#[derive(Clone)]
struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

async fn client(api: &str, token: &str) -> Result<Client, Box<dyn std::error::Error>> {
    let channel = Channel::from_shared(api.to_owned())?.connect().await?;
    Ok(
        TetherClient::with_interceptor(channel, Bearer(format!("Bearer {token}").parse()?))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20),
    )
}

/// Runs `call` 20 times (each under `deadline`); prints median and max, and the outcome.
async fn measure<F, Fut, T>(what: &str, deadline: Duration, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut times = Vec::new();
    let mut outcome = String::new();
    for _ in 0..20 {
        let start = Instant::now();
        match tokio::time::timeout(deadline, call()).await {
            Err(_) => {
                println!("{what}: timed out after {deadline:?} (not answered)");
                return;
            }
            Ok(Ok(_)) => outcome = "answered".into(),
            Ok(Err(s)) => outcome = format!("{:?}", s.code()),
        }
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "{what}: {outcome}, median {:.2?}, max {:.2?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (api, reader, admin) = (&args[0], &args[1], &args[2]);
    let mut a = client(api, admin).await?;
    let names: Vec<String> = (0..5000).map(|i| format!("b{i:04}")).collect();
    a.apply(v1::ApplyRequest {
        backends: names
            .iter()
            .map(|n| v1::Backend {
                name: n.clone(),
                address: "127.0.0.1:9".into(),
                ..Default::default()
            })
            .collect(),
        directors: vec![v1::Director {
            name: "h".into(),
            policy: Some(v1::director::Policy::Hash(v1::Hash {})),
            members: names
                .iter()
                .map(|n| v1::Member {
                    target: Some(v1::member::Target::Backend(n.clone())),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        prune: true,
        ..Default::default()
    })
    .await?;
    let r = client(api, reader).await?;
    let deadline = Duration::from_secs(10);
    let explain = |alternates, key: String| v1::ExplainRequest {
        target: Some(v1::explain_request::Target::Director("h".into())),
        key,
        alternates,
    };
    measure("ListHealth, a 1 MiB pattern of '*'", deadline, || {
        let mut r = r.clone();
        async move {
            r.list_health(v1::ListHealthRequest {
                pattern: "*".repeat(1 << 20),
            })
            .await
        }
    })
    .await;
    measure("ListHealth, '*' (every backend, 5,000)", deadline, || {
        let mut r = r.clone();
        async move {
            r.list_health(v1::ListHealthRequest {
                pattern: "*".into(),
            })
            .await
        }
    })
    .await;
    measure(
        "Explain, alternates = 4294967295, 5,000-member hash director",
        deadline,
        || {
            let mut r = r.clone();
            let req = explain(u32::MAX, "user-1".into());
            async move { r.explain(req).await }
        },
    )
    .await;
    measure(
        "Explain, alternates = 100 (the cap), 5,000-member hash director",
        deadline,
        || {
            let mut r = r.clone();
            let req = explain(100, "user-1".into());
            async move { r.explain(req).await }
        },
    )
    .await;
    measure("Explain, an 8 KiB key (the cap)", deadline, || {
        let mut r = r.clone();
        let req = explain(3, "k".repeat(8192));
        async move { r.explain(req).await }
    })
    .await;
    measure(
        "ListBackends, page_size 10,000 (the cap; 5,000 stored)",
        deadline,
        || {
            let mut r = r.clone();
            async move {
                r.list_backends(v1::ListRequest {
                    page_size: 10_000,
                    ..Default::default()
                })
                .await
            }
        },
    )
    .await;
    // Watch streams: 1,000 over 10 connections (the per-token cap), then one more.
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(client(api, reader).await?);
    }
    let mut open = Vec::new();
    let start = Instant::now();
    let mut refused = None;
    for i in 0..1001 {
        let t = Instant::now();
        match conns[i % 10]
            .watch(v1::WatchRequest { from_revision: 0 })
            .await
        {
            Ok(s) => open.push(s.into_inner()),
            Err(s) => {
                refused = Some((i, s.code(), t.elapsed()));
                break;
            }
        }
    }
    println!(
        "Watch: {} streams opened in {:.2?}; then {}",
        open.len(),
        start.elapsed(),
        match refused {
            Some((i, code, t)) => format!("stream {i} refused with {code:?} in {t:.2?}"),
            None => "no refusal".into(),
        }
    );
    measure(
        "ListBackends while 1,000 Watch streams are open",
        deadline,
        || {
            let mut r = r.clone();
            async move { r.list_backends(v1::ListRequest::default()).await }
        },
    )
    .await;
    Ok(())
}
