//! `tether up`: the control plane and the proxy in one process, on the embedded store.
//!
//! Binds the API, proxy and admin listeners (loopback by default), opens the store in the data
//! directory, optionally applies a declarative file, writes the bound addresses to
//! `<data-dir>/endpoints.json`, then runs its tasks until Ctrl-C or SIGTERM (and compacts the
//! store's history to the last 10,000 revisions once a minute): the gRPC server, the follower that turns each store revision into a snapshot, the
//! proxy and the admin listener.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use tether_controlplane::service::Api;
use tether_controlplane::store::embedded::EmbeddedStore;
use tether_controlplane::{node, server};
use tether_proto::keys::Layout;
use tether_proto::v1::tether_server::Tether;
use tokio::sync::watch;

use crate::{client, process};

/// Arguments of `tether up`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) log: process::LogArgs,
    #[command(flatten)]
    api: process::ApiArgs,
    #[command(flatten)]
    listen: process::ProxyArgs,
    /// Where the embedded store keeps its file.
    #[arg(long, default_value = "tether-data")]
    data_dir: PathBuf,
    /// Apply this declarative file (or directory of `*.yaml` files) at start (created or
    /// updated; nothing is pruned).
    #[arg(short = 'f', long = "file", value_name = "FILE|DIR")]
    file: Option<PathBuf>,
    /// Key prefix in the store.
    #[arg(long, default_value = tether_proto::keys::DEFAULT_PREFIX)]
    prefix: String,
}

/// Revisions of history the embedded store keeps for watches that resume (older ones are
/// compacted; a watcher that far behind lists again).
const HISTORY: i64 = 10_000;

/// Compacts the embedded store's history once a minute, keeping the last [`HISTORY`] revisions.
async fn compact_history(store: EmbeddedStore, shutdown: impl std::future::Future<Output = ()>) {
    use tether_controlplane::store::Store;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            () = &mut shutdown => return,
        }
        match store.revision().await {
            Ok(r) if r > HISTORY => {
                if let Err(e) = store.compact(r - HISTORY).await {
                    tracing::warn!(error = %e, "compacting the store's history failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the store's revision failed"),
        }
    }
}

/// Runs `tether up` until a signal.
pub(crate) async fn run(args: Args, insecure: bool) -> anyhow::Result<()> {
    let (tokens, tls) = args.api.security(insecure)?;
    let layout = Layout::new(&args.prefix)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let db = args.data_dir.join("tether.redb");
    let store = EmbeddedStore::open(&db).with_context(|| {
        format!(
            "cannot open the store {} (is another tether up using it?)",
            db.display()
        )
    })?;
    let admin_access = args
        .listen
        .admin_access(args.api.token_file.as_deref(), insecure)?;
    let api_l = process::bind(args.api.api, "api").await?;
    let listeners = process::Listeners::bind(&args.listen).await?;
    let rt = args.listen.runtime()?;
    let edges = args.listen.edges(&rt)?;
    let api = Api::new(store.clone(), layout.clone(), Some(Arc::clone(&rt)));
    api.recover()
        .await
        .context("completing an interrupted split write")?;
    if let Some(f) = &args.file {
        let req = client::apply_paths(std::slice::from_ref(f))?;
        let r = Tether::apply(&api, tonic::Request::new(req))
            .await
            .map_err(client::CallError)
            .with_context(|| format!("applying {}", f.display()))?
            .into_inner();
        tracing::info!(file = %f.display(), revision = r.revision, "applied");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut urls = vec![("api", args.api.url(&api_l)?)];
    urls.extend(listeners.urls()?);
    process::write_endpoints(&args.data_dir, &urls)?;
    tracing::info!(listeners = ?urls, store = %db.display(), "tether up");
    let follower = tokio::spawn(node::run(
        node::StoreSource::new(store.clone(), layout),
        Arc::clone(&rt),
        node::Options::default(),
        None,
        node::Shutdown::new(stop_tx.subscribe()),
    ));
    let (admin_task, proxy_threads) =
        process::serve_listeners(listeners, &rt, &args.listen, edges, admin_access, &stop_tx)?;
    let compactor = tokio::spawn(compact_history(store.clone(), stopped()));
    let token_follower = tokio::spawn(Arc::clone(&tokens).follow(stopped()));
    // The one process is the one replica: it holds the election as soon as a lease left by
    // an earlier run that crashed has run out (a short TTL, so that is soon).
    let mut discovery = tether_controlplane::discovery::Options::new(format!(
        "tether up pid {}",
        std::process::id()
    ));
    discovery.dns.servers = args.listen.dns_server.clone();
    discovery.election_ttl = std::time::Duration::from_secs(3);
    let metrics = api.metrics().discovery();
    rt.add_metrics(metrics.clone());
    let discoverer = tokio::spawn(tether_controlplane::discovery::run(
        api.clone(),
        discovery,
        metrics,
        stopped(),
    ));
    let mut server = tokio::spawn(server::serve(api_l, api, tokens, tls, stopped()));
    let early = tokio::select! {
        () = process::signal() => None,
        r = &mut server => Some(r),
    };
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::join!(follower, admin_task, compactor, token_follower, discoverer);
    for t in proxy_threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    match early {
        Some(r) => {
            r??;
            bail!("the API server stopped unexpectedly")
        }
        None => {
            server.await??;
            Ok(())
        }
    }
}
