//! The cluster-mode processes on etcd: `tether controlplane` (the API; any number of
//! replicas) and `tether dataplane` (a proxy node following etcd — registered under a lease —
//! or a control plane's Watch stream, with a local snapshot cache).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use tether_controlplane::node::remote::RemoteSource;
use tether_controlplane::service::Api;
use tether_controlplane::store::etcd::{EtcdOptions, EtcdStore};
use tether_controlplane::{node, server};
use tether_proto::keys::Layout;
use tokio::sync::watch;

use crate::{client, process};

/// How to reach etcd.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EtcdArgs {
    /// etcd client URLs, comma-separated (as http://127.0.0.1:2379,http://10.0.0.2:2379).
    #[arg(long, env = "TETHER_ETCD", value_name = "URLS")]
    etcd: Option<String>,
    /// etcd user, when etcd has authentication enabled (password in TETHER_ETCD_PASSWORD).
    #[arg(long, env = "TETHER_ETCD_USER")]
    etcd_user: Option<String>,
    /// etcd password.
    #[arg(
        long,
        env = "TETHER_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    etcd_password: Option<String>,
    /// CA certificate (PEM) that signed etcd's certificate: TLS to etcd (use https:// URLs).
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), when etcd requires client certificates.
    #[arg(long, value_name = "FILE", requires = "etcd_ca", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Key prefix in etcd (several installations can share one etcd).
    #[arg(long, default_value = tether_proto::keys::DEFAULT_PREFIX)]
    prefix: String,
}

impl EtcdArgs {
    fn connect(&self) -> anyhow::Result<(EtcdStore, Layout)> {
        let Some(urls) = &self.etcd else {
            bail!("--etcd URLS is required");
        };
        let mut opts = EtcdOptions::new(urls);
        if opts.endpoints.is_empty() {
            bail!("--etcd: no endpoint given");
        }
        if let Some(u) = &self.etcd_user {
            opts.user = Some((u.clone(), self.etcd_password.clone().unwrap_or_default()));
        }
        if let Some(ca) = &self.etcd_ca {
            let read = |p: &PathBuf| {
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let identity = match (&self.etcd_cert, &self.etcd_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            opts.tls = Some(tether_controlplane::store::etcd::EtcdTls {
                ca: read(ca)?,
                identity,
            });
        }
        let store = EtcdStore::connect(&opts).context("--etcd")?;
        Ok((store, Layout::new(&self.prefix)?))
    }
}

/// Arguments of `tether controlplane`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("store").required(true).args(["etcd"])))]
pub(crate) struct ControlPlaneArgs {
    #[command(flatten)]
    pub(crate) log: process::LogArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    api: process::ApiArgs,
    /// Admin address: /healthz, /readyz (the store answers), /metrics.
    #[arg(long, default_value = "127.0.0.1:7071")]
    admin: std::net::SocketAddr,
    /// Write `endpoints.json` (the bound addresses) into this directory.
    #[arg(long, value_name = "DIR")]
    endpoints_dir: Option<PathBuf>,
    /// Name servers Discovery resources are resolved with, as IP or IP:PORT (comma-separated;
    /// default: those of /etc/resolv.conf).
    #[arg(long, value_delimiter = ',', value_parser = process::name_server)]
    dns_server: Vec<std::net::SocketAddr>,
    /// TTL of the lease by which one replica at a time holds the job of resolving every
    /// Discovery: a replica that dies holds it this long at most (whole seconds, 2s-60s).
    #[arg(long, default_value = "10s", value_parser = process::election_ttl)]
    discovery_election_ttl: std::time::Duration,
}

/// Runs `tether controlplane` until a signal.
pub(crate) async fn controlplane(args: ControlPlaneArgs, insecure: bool) -> anyhow::Result<()> {
    let (tokens, tls) = args.api.security(insecure)?;
    let (store, layout) = args.etcd.connect()?;
    let api_l = process::bind(args.api.api, "api").await?;
    let url = args.api.url(&api_l)?;
    let admin_l = process::bind(args.admin, "admin").await?;
    let admin_url = format!("http://{}", admin_l.local_addr()?);
    if let Some(d) = &args.endpoints_dir {
        std::fs::create_dir_all(d)?;
        process::write_endpoints(d, &[("api", url.clone()), ("admin", admin_url.clone())])?;
    }
    tracing::info!(api = %url, admin = %admin_url, etcd = ?args.etcd.etcd, "tether controlplane");
    let api = Api::new(store, layout, None);
    // A split write a crash interrupted is completed now (and before every write).
    if let Err(e) = api.recover().await {
        tracing::warn!(error = %e, "could not look for interrupted split writes; the next write will");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(Arc::clone(&tokens).follow(stopped()));
    tokio::spawn(tether_controlplane::admin::serve(
        admin_l,
        api.clone(),
        stopped(),
    ));
    let mut discovery = tether_controlplane::discovery::Options::new(format!(
        "controlplane {url} pid {}",
        std::process::id()
    ));
    discovery.dns.servers = args.dns_server.clone();
    discovery.election_ttl = args.discovery_election_ttl;
    let discoverer = tokio::spawn(tether_controlplane::discovery::run(
        api.clone(),
        discovery,
        api.metrics().discovery(),
        stopped(),
    ));
    let mut server = tokio::spawn(server::serve(api_l, api, tokens, tls, stopped()));
    tokio::select! {
        () = process::signal() => {
            let _ = stop_tx.send(true);
            let _ = discoverer.await;
            server.await??;
            Ok(())
        }
        r = &mut server => {
            r??;
            bail!("the API server stopped unexpectedly")
        }
    }
}

/// Arguments of `tether dataplane`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["etcd", "controlplane"])))]
pub(crate) struct DataPlaneArgs {
    #[command(flatten)]
    pub(crate) log: process::LogArgs,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Follow a control plane's Watch stream instead of etcd (no etcd credentials needed;
    /// the node is then not registered for `tether nodes`). Sends `--token`/`TETHER_TOKEN`
    /// (a dataplane token is enough); an https:// URL is checked with `--ca` (and `--cert`/
    /// `--key` for mTLS).
    #[arg(long, value_name = "URL", conflicts_with = "etcd")]
    controlplane: Option<String>,
    #[command(flatten)]
    listen: process::ProxyArgs,
    /// Where the snapshot cache and endpoints.json live.
    #[arg(long, default_value = "tether-dataplane")]
    data_dir: PathBuf,
    /// This node's id in `tether nodes` (default: host name and proxy port).
    #[arg(long)]
    node_id: Option<String>,
    /// A node serving only its snapshot cache (the store not reached since it started)
    /// reports not ready on /readyz once the store last confirmed that cache this long ago
    /// (default: ready however old; it keeps serving either way).
    #[arg(long, value_parser = cache_age)]
    cache_max_age: Option<std::time::Duration>,
    /// Shared health (with --etcd): each probed backend is probed by --health-owners nodes,
    /// which publish their results; every node routes on the one fleet verdict.
    /// `--shared-health=false`: every node probes every backend itself. Followers of
    /// --controlplane route on the fleet verdict where one is published.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    shared_health: bool,
    /// Shared health: owner nodes per backend (1 to 16).
    #[arg(long, default_value_t = node::fleet::DEFAULT_OWNERS, value_parser = clap::value_parser!(u16).range(1..=16))]
    health_owners: u16,
    /// Shared health: how long a node keeps routing on the last fleet verdict once the store
    /// stops answering it, before it probes every backend itself (1s to 1h).
    #[arg(long, default_value = "10s", value_parser = grace)]
    shared_health_grace: std::time::Duration,
}

/// `--shared-health-grace`: one second to an hour.
fn grace(s: &str) -> Result<std::time::Duration, String> {
    let d = tether_controlplane::duration::parse(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("{s:?}: must be between 1s and 1h"));
    }
    Ok(d)
}

/// `--cache-max-age`: one second to 30 days.
fn cache_age(s: &str) -> Result<std::time::Duration, String> {
    let d = tether_controlplane::duration::parse(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(30 * 86_400) {
        return Err(format!("{s:?}: must be between 1s and 720h"));
    }
    Ok(d)
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Runs `tether dataplane` until a signal.
pub(crate) async fn dataplane(args: DataPlaneArgs, conn: &client::Conn) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let admin_access = args.listen.admin_access(None, conn.insecure)?;
    let listeners = process::Listeners::bind(&args.listen).await?;
    let urls = listeners.urls()?;
    process::write_endpoints(&args.data_dir, &urls)?;
    tracing::info!(
        listeners = ?urls,
        etcd = ?args.etcd.etcd,
        controlplane = ?args.controlplane,
        "tether dataplane"
    );
    let me = node::Identity {
        id: args.node_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                host_name(),
                listeners.proxy.local_addr().map_or(0, |a| a.port())
            )
        }),
        proxy: format!("http://{}", listeners.proxy.local_addr()?),
        admin: format!("http://{}", listeners.admin.local_addr()?),
    };
    tether_dataplane::config::validate_name(&me.id).context("--node-id")?;
    let rt = args.listen.runtime()?;
    let edges = args.listen.edges(&rt)?;
    let stop_tx = watch::Sender::new(false);
    let settings = node::fleet::Settings {
        owners: usize::from(args.health_owners),
        grace: args.shared_health_grace,
    };
    // A follower of the control plane holds no lease: it follows the fleet's reports, never
    // owns.
    let shared = args.shared_health.then(|| match args.controlplane {
        Some(_) => node::fleet::Shared::observer(settings),
        None => node::fleet::Shared::new(me.id.clone(), settings),
    });
    let opts = node::Options {
        cache: Some(args.data_dir.join("snapshot.cache")),
        cache_max_age: args.cache_max_age,
        shared,
    };
    let shutdown = node::Shutdown::new(stop_tx.subscribe());
    let agent = match &args.controlplane {
        Some(url) => {
            let options = tether_controlplane::client::ClientOptions {
                node: true,
                ..conn.options(url)
            };
            let source = RemoteSource::connect(&options).context("--controlplane")?;
            tokio::spawn(node::run(source, Arc::clone(&rt), opts, None, shutdown))
        }
        None => {
            let (store, layout) = args.etcd.connect()?;
            let registration = node::Registration {
                store: store.clone(),
                layout: layout.clone(),
                me,
            };
            let source = node::StoreSource::new(store, layout);
            tokio::spawn(node::run(
                source,
                Arc::clone(&rt),
                opts,
                Some(registration),
                shutdown,
            ))
        }
    };
    let (admin_task, threads) =
        process::serve_listeners(listeners, &rt, &args.listen, edges, admin_access, &stop_tx)?;
    process::signal().await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(agent, admin_task);
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    Ok(())
}
