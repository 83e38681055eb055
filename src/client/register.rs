//! `tether backend register NAME --address ADDR [--label k=v]… --ttl 10s`: a backend that
//! lives as long as this process does, for a provisioning script to run beside the instance
//! it announces (a sidecar). It grants a lease, creates (or takes over) the backend bound to
//! it, and renews the lease over one KeepAlive stream every third of its TTL. On Ctrl-C or
//! SIGTERM it revokes the lease, so the backend goes at once; killed outright, the backend
//! goes when the lease expires (TTL + at most ~1 s). A lost connection is retried with the
//! same lease (it outlives a restart of the control plane for its TTL); a lease that ended
//! meanwhile is granted again and the backend registered again.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tether_proto::v1;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::conn::{CallError, Client, Conn, connect};
use super::input::InputError;
use super::output::{Output, print_value};

/// What `backend register` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct RegisterFlags {
    /// The backend's name.
    name: String,
    /// host:port.
    #[arg(long)]
    address: String,
    /// One label (repeatable): `--label app=web`.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Probe name.
    #[arg(long)]
    probe: Option<String>,
    /// Default member weight.
    #[arg(long)]
    weight: Option<f64>,
    /// The lease's TTL: how long the backend outlives this process if it is killed outright
    /// (whole seconds, at least 2 s).
    #[arg(long, default_value = "10s")]
    ttl: String,
}

/// How long to wait before reconnecting after a failure.
const RETRY: Duration = Duration::from_secs(1);
/// How long a revocation at exit may take before the lease is left to expire.
const REVOKE_LIMIT: Duration = Duration::from_secs(3);

/// Why a keep-alive session ended.
enum Ended {
    /// The lease is gone (expired or revoked by someone else).
    Gone,
    /// The connection or the stream failed.
    Failed(String),
}

fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

pub(crate) async fn register(conn: &Conn, f: RegisterFlags) -> anyhow::Result<()> {
    let ttl = tether_controlplane::duration::parse(&f.ttl)
        .map_err(|e| InputError(format!("--ttl {:?}: {e}", f.ttl)))?;
    let backend = v1::Backend {
        name: f.name,
        address: f.address,
        probe: f.probe.unwrap_or_default(),
        weight: f.weight,
        labels: f
            .labels
            .iter()
            .map(|l| super::resources::label_flag(l))
            .collect::<Result<_, _>>()?,
        ..Default::default()
    };
    let out = conn.output;
    let lease = AtomicI64::new(0);
    // The first registration's errors (a bad field, a name taken) end the command.
    let mut c = connect(conn).await?;
    register_once(&mut c, &backend, ttl, &lease, out).await?;
    let body = async {
        loop {
            let id = lease.load(Ordering::Relaxed);
            match keep_alive(&mut c, id, ttl).await {
                Ended::Gone => {
                    eprintln!("lease {id:x} ended; registering {} again", backend.name);
                    loop {
                        match register_once(&mut c, &backend, ttl, &lease, out).await {
                            Ok(()) => break,
                            // A refusal (the name taken meanwhile, a bad field) ends the
                            // command; an unreachable API is waited for.
                            Err(e)
                                if e.downcast_ref::<InputError>().is_some()
                                    || e.downcast_ref::<CallError>()
                                        .is_some_and(|c| !transient(&c.0)) =>
                            {
                                return Err(e);
                            }
                            Err(e) => {
                                eprintln!("registering failed: {e:#}; retrying");
                                tokio::time::sleep(RETRY).await;
                                if let Ok(n) = connect(conn).await {
                                    c = n;
                                }
                            }
                        }
                    }
                }
                Ended::Failed(why) => {
                    eprintln!("keep-alive of lease {id:x} failed: {why}; reconnecting");
                    tokio::time::sleep(RETRY).await;
                    if let Ok(n) = connect(conn).await {
                        c = n;
                    }
                }
            }
        }
    };
    let result: anyhow::Result<()> = tokio::select! {
        r = body => r,
        () = crate::process::signal() => Ok(()),
    };
    let id = lease.load(Ordering::Relaxed);
    let revoked = tokio::time::timeout(REVOKE_LIMIT, async {
        let mut c = connect(conn).await?;
        c.revoke_lease(v1::RevokeLeaseRequest { id })
            .await
            .map_err(CallError)?;
        anyhow::Ok(())
    })
    .await;
    match revoked {
        Ok(Ok(())) => report(out, "revoked", &backend.name, id, None),
        Ok(Err(e)) => {
            eprintln!("lease {id:x} not revoked ({e:#}): the backend goes when it expires")
        }
        Err(_) => eprintln!("lease {id:x} not revoked in time: the backend goes when it expires"),
    }
    result
}

fn report(out: Output, what: &str, name: &str, lease: i64, revision: Option<i64>) {
    match (out, revision) {
        (Output::Table, Some(r)) => {
            outln!("{what} backend {name} under lease {lease:x} at revision {r}");
        }
        (Output::Table, None) => outln!("{what} lease {lease:x} of backend {name}"),
        _ => print_value(
            out,
            serde_json::json!({ what: true, "backend": name, "lease": format!("{lease:x}"), "revision": revision }),
        ),
    }
}

/// Grants a lease and creates the backend bound to it, or takes over a backend a previous
/// registration left (bound to a lease that may still be running out). A backend of that
/// name bound to no lease is someone else's: refused.
async fn register_once(
    c: &mut Client,
    backend: &v1::Backend,
    ttl: Duration,
    lease: &AtomicI64,
    out: Output,
) -> anyhow::Result<()> {
    let granted = c
        .grant_lease(v1::GrantLeaseRequest {
            ttl: Some(prost_types::Duration {
                seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(ttl.subsec_nanos()).unwrap_or(0),
            }),
        })
        .await
        .map_err(CallError)?
        .into_inner();
    lease.store(granted.id, Ordering::Relaxed);
    let mut b = backend.clone();
    b.lease = granted.id;
    let created = c
        .create_backend(v1::CreateBackendRequest {
            backend: Some(b.clone()),
        })
        .await;
    let stored = match created {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::AlreadyExists => {
            let old = c
                .get_backend(v1::GetRequest {
                    name: b.name.clone(),
                })
                .await
                .map_err(CallError)?
                .into_inner();
            if old.lease == 0 {
                let _ = c
                    .revoke_lease(v1::RevokeLeaseRequest { id: granted.id })
                    .await;
                return Err(InputError(format!(
                    "backend {} exists and is bound to no lease (it was not registered): delete it or register another name",
                    b.name
                ))
                .into());
            }
            b.revision = old.revision;
            c.update_backend(v1::UpdateBackendRequest {
                backend: Some(b),
                update_mask: None,
            })
            .await
            .map_err(CallError)?
            .into_inner()
        }
        Err(s) => {
            let _ = c
                .revoke_lease(v1::RevokeLeaseRequest { id: granted.id })
                .await;
            return Err(CallError(s)).context("registering the backend");
        }
    };
    report(
        out,
        "registered",
        &stored.name,
        granted.id,
        Some(stored.revision),
    );
    Ok(())
}

/// Renews `id` every third of `ttl` over one KeepAlive stream until the lease is gone or the
/// stream fails (including no answer for a whole TTL).
async fn keep_alive(c: &mut Client, id: i64, ttl: Duration) -> Ended {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    if tx.send(v1::KeepAliveRequest { id }).await.is_err() {
        return Ended::Failed("stream closed".into());
    }
    let mut answers = match c.keep_alive(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Ended::Failed(s.message().to_owned()),
    };
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut answered = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if answered.elapsed() > ttl {
                    return Ended::Failed(format!("no answer for {ttl:?}"));
                }
                if tx.send(v1::KeepAliveRequest { id }).await.is_err() {
                    return Ended::Failed("stream closed".into());
                }
            }
            m = answers.message() => match m {
                Ok(Some(l)) if l.ttl > 0 => answered = tokio::time::Instant::now(),
                Ok(Some(_)) => return Ended::Gone,
                Ok(None) => return Ended::Failed("stream ended".into()),
                Err(s) => return Ended::Failed(s.message().to_owned()),
            },
        }
    }
}
