//! The programs bench/protocols.sh runs (as `cargo run --release --example protocols -- …`):
//!
//! - `grpc-backend PORT`: a tonic server with grpc.health.v1 (service `bench` SERVING), h2c;
//! - `grpc-load URL CALLS CONCURRENCY`: unary Health/Check calls over one HTTP/2 connection,
//!   CONCURRENCY in flight; prints `calls=N seconds=S errors=E`;
//! - `ws-backend PORT`: a WebSocket echo server;
//! - `ws-rtt URL MESSAGES`: one WebSocket session, MESSAGES round trips of a 32-byte text one
//!   after another; prints `p50_us=… p99_us=…`.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark tool: a failed setup should panic

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "grpc-backend" => grpc_backend(arg(1).parse().unwrap()).await,
        "grpc-load" => grpc_load(&arg(1), arg(2).parse().unwrap(), arg(3).parse().unwrap()).await,
        "ws-backend" => ws_backend(arg(1).parse().unwrap()).await,
        "ws-rtt" => ws_rtt(&arg(1), arg(2).parse().unwrap()).await,
        other => panic!("unknown command {other:?}"),
    }
}

async fn grpc_backend(port: u16) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("bench", tonic_health::ServingStatus::Serving)
        .await;
    tonic::transport::Server::builder()
        .add_service(health)
        .serve(([127, 0, 0, 1], port).into())
        .await
        .unwrap();
}

async fn grpc_load(url: &str, calls: usize, concurrency: usize) {
    let ch = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let per = calls / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut c = HealthClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = 0usize;
            for _ in 0..per {
                let mut r = tonic::Request::new(HealthCheckRequest {
                    service: "bench".into(),
                });
                r.metadata_mut().insert("x-user", "k".parse().unwrap());
                if c.check(r).await.is_err() {
                    errors += 1;
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap();
    }
    println!(
        "calls={} seconds={:.3} errors={errors}",
        per * concurrency,
        started.elapsed().as_secs_f64()
    );
}

async fn ws_backend(port: u16) {
    let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    while let Ok((s, _)) = l.accept().await {
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() || ws.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn ws_rtt(url: &str, messages: usize) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let payload = "x".repeat(32);
    let mut rtts = Vec::with_capacity(messages);
    for _ in 0..messages {
        let t = Instant::now();
        ws.send(Message::text(payload.clone())).await.unwrap();
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(_))) => break,
                Some(Ok(_)) => {}
                other => panic!("the session ended: {other:?}"),
            }
        }
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let at = |q: f64| -> Duration { rtts[((rtts.len() as f64 * q) as usize).min(rtts.len() - 1)] };
    println!(
        "p50_us={} p99_us={}",
        at(0.50).as_micros(),
        at(0.99).as_micros()
    );
}
