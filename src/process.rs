//! What the long-running commands (`up`, `controlplane`, `dataplane`) share: binding listeners
//! with a clear error, the proxy and admin listeners' flags (addresses, threads, the client
//! edge's timeouts and caps), the token policy, the endpoints file, the proxy thread count, and
//! waiting for Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tether_controlplane::auth::{TokenFile, Tokens};
use tether_controlplane::convert::MAX_DURATION;
use tether_controlplane::duration;
use tether_controlplane::tls::{ServerTls, TlsFiles};
use tether_dataplane::client_ip::{Cidr, TrustedProxies};
use tether_dataplane::edge::{self, Edge, EdgeConfig};
use tether_dataplane::resolve::DnsConfig;
use tether_dataplane::runtime::Runtime;
use tether_dataplane::traffic::{AccessLog, LogTarget};
use tether_dataplane::{admin, listener, proxy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where a data plane listens, and with how many proxy threads.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ProxyArgs {
    /// HTTP proxy address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) proxy: SocketAddr,
    /// HTTPS proxy address (TLS 1.2/1.3, SNI, ALPN h2 and http/1.1), serving the Certificate
    /// resources and the files of --cert-dir.
    #[arg(long, value_name = "ADDR")]
    pub(crate) https: Option<SocketAddr>,
    /// Certificates for --https, re-read when the directory changes: NAME.pem files holding a
    /// chain and its key, or NAME.crt with NAME.key.
    #[arg(long, value_name = "DIR", requires = "https")]
    pub(crate) cert_dir: Option<PathBuf>,
    /// Proxy threads, each with its own event loop (default: one per CPU).
    #[arg(long)]
    pub(crate) proxy_threads: Option<usize>,
    /// Admin address (/healthz, /readyz, /metrics, /state, /explain).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub(crate) admin: SocketAddr,
    /// A request head must arrive whole within this, from its first byte (from the accept for a
    /// connection's first request); else 408 and close. Also on the admin listener.
    #[arg(long, default_value = "10s", value_parser = edge_duration)]
    pub(crate) header_timeout: Duration,
    /// Close a keep-alive connection with no request in progress (HTTP/2: no open stream)
    /// after this.
    #[arg(long, default_value = "60s", value_parser = edge_duration)]
    pub(crate) idle_timeout: Duration,
    /// Disconnect a client that takes no response bytes for this long (its backend connection
    /// is closed with it).
    #[arg(long, default_value = "30s", value_parser = edge_duration)]
    pub(crate) send_timeout: Duration,
    /// The longest gap between two parts of a request body; then 408 and close.
    #[arg(long, default_value = "30s", value_parser = edge_duration)]
    pub(crate) body_timeout: Duration,
    /// Close a WebSocket (or other Upgrade) tunnel after this long with no bytes either way.
    #[arg(long, default_value = "1h", value_parser = edge_duration)]
    pub(crate) tunnel_idle_timeout: Duration,
    /// Tunnels to a backend that is drained or removed are closed this long after the drain.
    #[arg(long, default_value = "60s", value_parser = edge_duration)]
    pub(crate) tunnel_drain_timeout: Duration,
    /// Open client connections at most; more are accepted and closed at once (default: from
    /// the open-files limit, leaving one descriptor per connection for its backend and 128
    /// for probes, the store and the admin listener).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: Option<u32>,
    /// Open connections per client address at most (default: no limit).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections_per_ip: Option<u32>,
    /// Largest request head, request line and headers, in bytes; larger: 431. Also the largest
    /// response head taken from a backend; larger: 502.
    #[arg(long, default_value_t = 32 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    pub(crate) max_header_bytes: u32,
    /// Every connection to the proxy starts with a PROXY protocol header (v1 or v2, as an L4
    /// load balancer sends): its source address is the client (for client_ip keys and
    /// X-Forwarded-For). Connections without one are closed.
    #[arg(long)]
    pub(crate) proxy_protocol: bool,
    /// Address blocks of proxies whose X-Forwarded-For is believed for client_ip keys
    /// (comma-separated, as 10.0.0.0/8,2001:db8::/32): the client is the rightmost untrusted hop.
    #[arg(long, value_delimiter = ',')]
    pub(crate) trusted_proxies: Vec<Cidr>,
    /// Tokens for the admin listener (the API's token-file format; any role reads). Needed
    /// when --admin is not a loopback address, unless --insecure. /healthz and /readyz stay
    /// open (orchestrator probes). `tether up` falls back to its --token-file.
    #[arg(long, value_name = "FILE")]
    pub(crate) admin_token_file: Option<std::path::PathBuf>,
    /// Serve /metrics on the admin listener without a token (scrapers), the rest still with one.
    #[arg(long)]
    pub(crate) admin_metrics_public: bool,
    /// Longest request line in bytes; longer: 414.
    #[arg(long, default_value_t = 8 * 1024, value_parser = clap::value_parser!(u32).range(64..=1024 * 1024))]
    pub(crate) max_uri_bytes: u32,
    /// Name servers for backends with DNS names, as IP or IP:PORT (comma-separated; default:
    /// those of /etc/resolv.conf).
    #[arg(long, value_delimiter = ',', value_parser = name_server)]
    pub(crate) dns_server: Vec<SocketAddr>,
    /// A backend name's answer is kept at least this long, whatever its TTL.
    #[arg(long, default_value = "1s", value_parser = edge_duration)]
    pub(crate) dns_min_ttl: Duration,
    /// And at most this long: a backend name is asked again within this.
    #[arg(long, default_value = "60s", value_parser = edge_duration)]
    pub(crate) dns_max_ttl: Duration,
    /// An access log: one JSON line per request, to FILE (appended; reopened on SIGHUP, after
    /// log rotation) or `-` (standard output). Off by default.
    #[arg(long, value_name = "PATH|-")]
    pub(crate) access_log: Option<LogTarget>,
    /// With --access-log: each line carries the raw key too (a session id, a user name), not
    /// only where it came from.
    #[arg(long, requires = "access_log")]
    pub(crate) access_log_keys: bool,
}

/// A discovery election TTL: whole seconds, 2 s to 60 s.
pub(crate) fn election_ttl(s: &str) -> Result<Duration, String> {
    let d = duration::parse(s).map_err(|e| e.to_string())?;
    if d.subsec_nanos() != 0 || !(2..=60).contains(&d.as_secs()) {
        return Err(format!("{s:?}: must be whole seconds from 2s to 60s"));
    }
    Ok(d)
}

/// A name server: `IP` (port 53) or `IP:PORT`.
pub(crate) fn name_server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("{s:?}: expected an IP address or IP:PORT"))
}

/// Client connections the admin listener takes at most (it serves operators and scrapers).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// A duration flag of the edge: 1 ms to one day.
fn edge_duration(s: &str) -> Result<Duration, String> {
    let d = duration::parse(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) || d > MAX_DURATION {
        return Err(format!("{s:?}: must be between 1ms and 24h"));
    }
    Ok(d)
}

impl ProxyArgs {
    /// Who may read the admin listener: the holders of `--admin-token-file`'s tokens (else of
    /// `fallback`, the API's token file). Refuses a non-loopback admin listener without tokens
    /// unless `insecure`, as the API's rule does.
    pub(crate) fn admin_access(
        &self,
        fallback: Option<&Path>,
        insecure: bool,
    ) -> anyhow::Result<AdminAccess> {
        let file = match self.admin_token_file.as_deref().or(fallback) {
            Some(p) => Some(TokenFile::load(p).context("--admin-token-file")?),
            None => None,
        };
        let tokens = file
            .as_ref()
            .map_or_else(|| Arc::new(Tokens::none()), |f| f.tokens());
        if tokens.is_empty() && !self.admin.ip().is_loopback() && !insecure {
            bail!(
                "refusing to serve the admin listener on {} without a token: give --admin-token-file FILE, or --insecure to let anyone who can reach it read /state and /explain",
                self.admin
            );
        }
        let access = if tokens.is_empty() {
            admin::Access::open()
        } else {
            admin::Access::digests(tokens.digests(), self.admin_metrics_public)
        };
        Ok(AdminAccess { access, file })
    }

    /// The data plane's runtime, resolving backend names as the `--dns-*` flags say.
    pub(crate) fn runtime(&self) -> anyhow::Result<Arc<Runtime>> {
        if self.dns_min_ttl > self.dns_max_ttl {
            bail!(
                "--dns-min-ttl ({:?}) cannot exceed --dns-max-ttl ({:?})",
                self.dns_min_ttl,
                self.dns_max_ttl
            );
        }
        let rt = Runtime::with_dns(DnsConfig {
            servers: self.dns_server.clone(),
            min_ttl: self.dns_min_ttl,
            max_ttl: self.dns_max_ttl,
            cache: true,
        });
        if let Some(target) = &self.access_log {
            let log =
                AccessLog::open(target.clone(), self.access_log_keys).context("--access-log")?;
            rt.traffic.set_access_log(log);
        }
        Ok(rt)
    }

    /// The proxy's and the admin listener's edges (timeouts and caps), registered with `rt`
    /// for `/metrics`.
    pub(crate) fn edges(&self, rt: &Runtime) -> anyhow::Result<(Arc<Edge>, Arc<Edge>)> {
        if self.max_uri_bytes > self.max_header_bytes {
            bail!(
                "--max-uri-bytes ({}) cannot exceed --max-header-bytes ({})",
                self.max_uri_bytes,
                self.max_header_bytes
            );
        }
        let max_connections = match self.max_connections {
            Some(n) => n as usize,
            None => EdgeConfig::connections_for_descriptors(edge::descriptor_limit()),
        };
        let mut cfg = EdgeConfig::with_max_connections(max_connections);
        cfg.header_timeout = self.header_timeout;
        cfg.idle_timeout = self.idle_timeout;
        cfg.send_timeout = self.send_timeout;
        cfg.body_timeout = self.body_timeout;
        cfg.tunnel_idle_timeout = self.tunnel_idle_timeout;
        cfg.tunnel_drain_timeout = self.tunnel_drain_timeout;
        cfg.max_connections_per_ip = self.max_connections_per_ip.map(|n| n as usize);
        cfg.max_header_bytes = self.max_header_bytes as usize;
        cfg.max_uri_bytes = self.max_uri_bytes as usize;
        cfg.proxy_protocol = self.proxy_protocol;
        cfg.trusted_proxies = TrustedProxies::new(self.trusted_proxies.clone());
        let admin = EdgeConfig {
            max_connections: ADMIN_MAX_CONNECTIONS,
            max_connections_per_ip: None,
            proxy_protocol: false,
            trusted_proxies: TrustedProxies::default(),
            ..cfg
        };
        tracing::info!(
            max_connections,
            header_timeout = ?cfg.header_timeout,
            idle_timeout = ?cfg.idle_timeout,
            "client edge"
        );
        let (proxy, admin) = (Edge::new("proxy", cfg), Edge::new("admin", admin));
        rt.add_listener(Arc::clone(&proxy));
        rt.add_listener(Arc::clone(&admin));
        Ok((proxy, admin))
    }
}

/// Who may read the admin listener, and the token file it follows (re-read on change and on
/// SIGHUP, as the API's).
#[derive(Debug)]
pub(crate) struct AdminAccess {
    access: admin::Access,
    file: Option<Arc<TokenFile>>,
}

/// Starts a data plane's listeners — the admin listener as a task, the proxy on its threads
/// (`--proxy-threads`) — each under its edge, until `stop` turns true.
pub(crate) fn serve_listeners(
    Listeners {
        proxy: proxy_l,
        https: https_l,
        admin: admin_l,
    }: Listeners,
    rt: &Arc<Runtime>,
    listen: &ProxyArgs,
    (proxy_edge, admin_edge): (Arc<Edge>, Arc<Edge>),
    AdminAccess { access, file }: AdminAccess,
    stop: &watch::Sender<bool>,
) -> anyhow::Result<(JoinHandle<()>, Vec<std::thread::JoinHandle<()>>)> {
    if let Some(file) = file {
        let (access, mut stopped) = (access.clone(), stop.subscribe());
        tokio::spawn(file.follow_with(
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            move |t| access.replace(t.digests()),
        ));
    }
    #[cfg(unix)]
    if rt.traffic.access_log().is_some() {
        // SIGHUP reopens the access log (logrotate's `postrotate`, as NGINX's USR1).
        let (rt, mut stopped) = (Arc::clone(rt), stop.subscribe());
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("SIGHUP for --access-log")?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        if let Some(log) = rt.traffic.access_log() {
                            log.reopen();
                        }
                    }
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
        });
    }
    let mut admin_stop = stop.subscribe();
    let admin_task = tokio::spawn(admin::serve(
        admin_l,
        Arc::clone(rt),
        access,
        admin_edge,
        async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        },
    ));
    let mut sockets = vec![proxy::Listener {
        socket: proxy_l.into_std()?,
        tls: None,
    }];
    if let Some(l) = https_l {
        if let Some(dir) = &listen.cert_dir {
            let mut stopped = stop.subscribe();
            let follow = tether_dataplane::certs::follow_dir(dir.clone(), Arc::clone(&rt.certs));
            tokio::spawn(async move {
                tokio::select! {
                    () = follow => {}
                    _ = stopped.wait_for(|s| *s) => {}
                }
            });
        }
        let config = rt.certs.server_config().context("--https")?;
        sockets.push(proxy::Listener {
            socket: l.into_std()?,
            tls: Some(listener::Tls {
                config,
                certs: Arc::clone(&rt.certs),
            }),
        });
    }
    let threads = proxy::serve_on_threads(
        &sockets,
        Arc::clone(rt),
        &proxy_edge,
        proxy_threads(listen.proxy_threads),
        stop.subscribe(),
    )?;
    Ok((admin_task, threads))
}

/// The bound sockets of a data plane.
#[derive(Debug)]
pub(crate) struct Listeners {
    pub(crate) proxy: TcpListener,
    pub(crate) https: Option<TcpListener>,
    pub(crate) admin: TcpListener,
}

impl Listeners {
    /// Binds `--proxy`, `--https` (if given) and `--admin`.
    pub(crate) async fn bind(args: &ProxyArgs) -> anyhow::Result<Listeners> {
        let proxy = bind(args.proxy, "proxy").await?;
        let https = match args.https {
            Some(a) => Some(bind(a, "https").await?),
            None => None,
        };
        let admin = bind(args.admin, "admin").await?;
        Ok(Listeners {
            proxy,
            https,
            admin,
        })
    }

    /// Their URLs, named for `endpoints.json`.
    pub(crate) fn urls(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        let mut urls = vec![("proxy", http_url(&self.proxy)?)];
        if let Some(h) = &self.https {
            urls.push(("https", format!("https://{}", h.local_addr()?)));
        }
        urls.push(("admin", http_url(&self.admin)?));
        Ok(urls)
    }
}

/// Binds `addr`, naming the flag to change in the error.
pub(crate) async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for the {what} (use --{what} to pick another address)")
    })
}

/// Where the API listens, who may call it and how it is encrypted: the flags `tether up` and
/// `tether controlplane` share.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ApiArgs {
    /// gRPC API address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub(crate) api: SocketAddr,
    /// Bearer tokens, one `ROLE:TOKEN` or `ROLE:sha256:HEX` per line, ROLE one of admin,
    /// read-only, dataplane. Re-read when it changes and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) of the API; re-read when it changes.
    #[arg(long, value_name = "FILE", requires = "api_key")]
    pub(crate) api_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "api_cert")]
    pub(crate) api_key: Option<PathBuf>,
    /// CA certificates (PEM): clients must present a certificate one of them signed (mTLS;
    /// tokens still decide the role).
    #[arg(long, value_name = "FILE", requires = "api_cert")]
    pub(crate) api_client_ca: Option<PathBuf>,
}

impl ApiArgs {
    /// The API's tokens and TLS. Off loopback both are required unless `insecure`: without
    /// TLS, tokens and every configuration cross the network in clear; without tokens, anyone
    /// who can reach the port rewrites the routing.
    pub(crate) fn security(
        &self,
        insecure: bool,
    ) -> anyhow::Result<(Arc<TokenFile>, Option<Arc<ServerTls>>)> {
        let tokens = match &self.token_file {
            Some(p) => TokenFile::load(p).context("--token-file")?,
            None => TokenFile::none(),
        };
        let tls = match (&self.api_cert, &self.api_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                ServerTls::load(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.api_client_ca.clone(),
                })
                .context("--api-cert/--api-key")?,
            )),
            _ => None,
        };
        let api = self.api;
        if !api.ip().is_loopback() && !insecure {
            if tls.is_none() {
                bail!(
                    "refusing to serve the API on {api} without TLS: tokens and configuration would cross the network in clear. Give --api-cert FILE --api-key FILE, or --insecure"
                );
            }
            if self.token_file.is_none() {
                bail!(
                    "refusing to serve the API on {api} without tokens: give --token-file FILE, or --insecure to accept anyone who can reach it"
                );
            }
        }
        Ok((tokens, tls))
    }

    /// The API's URL once bound.
    pub(crate) fn url(&self, l: &TcpListener) -> std::io::Result<String> {
        let scheme = if self.api_cert.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(format!("{scheme}://{}", l.local_addr()?))
    }
}

/// The `http://` URL of a bound listener.
pub(crate) fn http_url(l: &TcpListener) -> std::io::Result<String> {
    Ok(format!("http://{}", l.local_addr()?))
}

/// Writes `<dir>/endpoints.json` with each listener's URL (ports may have been 0): for
/// scripts and tests.
pub(crate) fn write_endpoints(dir: &Path, urls: &[(&str, String)]) -> anyhow::Result<()> {
    let mut map = serde_json::Map::new();
    for (name, url) in urls {
        map.insert((*name).to_owned(), url.clone().into());
    }
    let file = dir.join("endpoints.json");
    let tmp = dir.join("endpoints.json.tmp");
    std::fs::write(&tmp, format!("{}\n", serde_json::Value::Object(map)))
        .and_then(|()| std::fs::rename(&tmp, &file))
        .with_context(|| format!("cannot write {}", file.display()))
}

/// Proxy threads: as asked, else one per CPU.
pub(crate) fn proxy_threads(asked: Option<usize>) -> usize {
    asked.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Resolves when Ctrl-C or SIGTERM arrives.
pub(crate) async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// How the server commands write their log (standard error).
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct LogArgs {
    /// `text` (coloured on a terminal only) or `json` (one object per line, for log
    /// collectors). The level is `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// A log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

/// Starts the process log on standard error.
pub(crate) fn init_log(args: LogArgs) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => log.json().with_current_span(false).init(),
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
