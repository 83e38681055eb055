//! DNS names of backends, resolved by hickory's asynchronous resolver (never a blocking
//! `getaddrinfo` on a proxy thread) with its cache, whose record TTLs are clamped to
//! `[min_ttl, max_ttl]`: a TTL of 0 cannot turn every connect into a query, and a day-long TTL
//! cannot pin a backend that moved. The resolver is built on first use, so a configuration
//! of IP literals never reads `/etc/resolv.conf`.
//!
//! [`crate::pool::Pool`] keeps the last answer per name, uses it while a refresh is in
//! flight or when the name servers fail (as HAProxy's `hold obsolete`), and closes idle
//! connections to addresses that left the answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};

/// Where and how names are resolved.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Name servers (UDP, then TCP); empty: those of `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// Answers are cached at least this long, whatever their TTL.
    pub min_ttl: Duration,
    /// And at most this long.
    pub max_ttl: Duration,
    /// Keep answers (hickory's cache) for the clamped TTL. Off for a caller that schedules
    /// its own lookups by the TTL (DNS discovery), so each lookup asks the name servers.
    pub cache: bool,
}

impl Default for DnsConfig {
    /// The system's name servers; TTLs clamped to 1 s – 60 s.
    fn default() -> DnsConfig {
        DnsConfig {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            cache: true,
        }
    }
}

/// Why a name could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The resolver could not be built (no usable `/etc/resolv.conf`, say).
    #[error("no DNS resolver: {0}")]
    Setup(String),
    /// The lookup failed.
    #[error("resolving {name}: {reason}")]
    Lookup {
        /// The name.
        name: String,
        /// What the resolver said.
        reason: String,
    },
    /// The answer held no address.
    #[error("resolving {0}: no addresses")]
    Empty(String),
}

/// One answer: its addresses, sorted (so every node tries them in the same order), and until
/// when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The addresses.
    pub addresses: Vec<IpAddr>,
    /// When it was looked up.
    pub fetched_at: Instant,
    /// When it expires.
    pub valid_until: Instant,
}

impl Answer {
    /// When to refresh it ahead of its expiry: after four fifths of its lifetime, so a pool
    /// in use has the next answer before this one runs out.
    pub fn refresh_at(&self) -> Instant {
        self.fetched_at + (self.valid_until - self.fetched_at) * 4 / 5
    }
}

/// An SRV answer: `(target, port)` pairs, sorted, and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvAnswer {
    /// Targets and ports.
    pub targets: Vec<(String, u16)>,
    /// When it expires.
    pub valid_until: Instant,
}

/// The process's resolver.
#[derive(Debug)]
pub struct Dns {
    config: DnsConfig,
    resolver: OnceLock<Result<TokioResolver, ResolveError>>,
}

impl Default for Dns {
    fn default() -> Dns {
        Dns::new(DnsConfig::default())
    }
}

impl Dns {
    /// A resolver with this configuration, built on first use.
    pub fn new(config: DnsConfig) -> Dns {
        Dns {
            config,
            resolver: OnceLock::new(),
        }
    }

    fn build(&self) -> Result<TokioResolver, ResolveError> {
        let setup = |e: &dyn std::fmt::Display| ResolveError::Setup(e.to_string());
        let mut builder = if self.config.servers.is_empty() {
            Resolver::builder_tokio().map_err(|e| setup(&e))?
        } else {
            let servers = self
                .config
                .servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.positive_min_ttl = Some(self.config.min_ttl);
        opts.positive_max_ttl = Some(self.config.max_ttl);
        // A name that does not exist is asked again no later than the floor.
        opts.negative_max_ttl = Some(self.config.min_ttl);
        if !self.config.cache {
            opts.cache_size = 0;
        }
        builder.build().map_err(|e| setup(&e))
    }

    /// How long a kept answer is used again after a failed lookup before the next attempt.
    pub fn retry_after(&self) -> Duration {
        self.config.min_ttl
    }

    fn resolver(&self) -> Result<&TokioResolver, ResolveError> {
        self.resolver
            .get_or_init(|| self.build())
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Resolves `name`'s SRV records (from the cache while they hold): each target and port,
    /// sorted, and until when the answer holds (clamped as [`Dns::lookup`]'s). The targets'
    /// addresses are [`Dns::lookup`]'s to find.
    pub async fn lookup_srv(&self, name: &str) -> Result<SrvAnswer, ResolveError> {
        let found = self
            .resolver()?
            .srv_lookup(name)
            .await
            .map_err(|e| ResolveError::Lookup {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        let mut targets: Vec<(String, u16)> = found
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::SRV(srv) => {
                    Some((srv.target.to_ascii(), srv.port))
                }
                _ => None,
            })
            // RFC 2782: a target of "." means the service is not offered here.
            .filter(|(t, _)| t != ".")
            .collect();
        targets.sort_unstable();
        targets.dedup();
        if targets.is_empty() {
            return Err(ResolveError::Empty(name.to_owned()));
        }
        let now = Instant::now();
        Ok(SrvAnswer {
            targets,
            valid_until: found
                .valid_until()
                .clamp(now + self.config.min_ttl, now + self.config.max_ttl),
        })
    }

    /// Resolves `name` (from the cache while its answer holds).
    pub async fn lookup(&self, name: &str) -> Result<Answer, ResolveError> {
        let resolver = self.resolver()?;
        // Search domains and `ndots` apply as in /etc/resolv.conf (Kubernetes service
        // names rely on them).
        let found = resolver
            .lookup_ip(name)
            .await
            .map_err(|e| ResolveError::Lookup {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        let mut addresses: Vec<IpAddr> = found.iter().collect();
        addresses.sort_unstable();
        addresses.dedup();
        if addresses.is_empty() {
            return Err(ResolveError::Empty(name.to_owned()));
        }
        // The cache clamps TTLs already; clamping here too keeps the pool's refresh time
        // within the same bounds for answers that came from /etc/hosts.
        let now = Instant::now();
        let valid_until = found
            .valid_until()
            .clamp(now + self.config.min_ttl, now + self.config.max_ttl);
        Ok(Answer {
            addresses,
            fetched_at: now,
            valid_until,
        })
    }
}
