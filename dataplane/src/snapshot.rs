//! One immutable snapshot per applied revision: the configuration, its built directors and
//! routes, and — by `Arc` — the runtime state of each backend identity. The request path loads
//! it once per request; health is read live from the backend states, so a probe flip needs no
//! new snapshot.

use std::net::IpAddr;
use std::time::Duration;

use std::sync::Arc;

use crate::backend::BackendRef;
use crate::config::{AdminHealth, BackendSpec, Config, KeySpec};
use crate::director::{
    BackendId, DirectorId, Directors, HealthView, Key, SelectError, SelectOpts, Target,
};
use crate::traffic::RouteCounters;

/// An applied revision.
#[derive(Debug)]
pub struct Snapshot {
    /// The store revision it was built from (0: the empty start).
    pub revision: i64,
    /// The configuration.
    pub config: Config,
    /// Built directors.
    pub directors: Directors,
    /// Runtime state per backend, indexed by [`BackendId`].
    pub backends: Vec<BackendRef>,
    /// Per route (same order as `config.routes`): its director.
    pub route_directors: Vec<DirectorId>,
    /// Per route (same order): its request counters.
    pub route_counters: Vec<Arc<RouteCounters>>,
    /// The last [`Snapshot::fingerprint`] with the verdicts it was computed for (one bit per
    /// backend): the node record's check asks every 250 ms, and at 10,000 backends encoding
    /// and hashing them is milliseconds where reading the verdicts is microseconds.
    pub(crate) fingerprint_memo: std::sync::Mutex<Option<(Vec<u64>, String)>>,
}

/// What a director picks for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The director.
    pub director: String,
    /// The chosen backend, if any is available.
    pub backend: Option<String>,
    /// Members in the order the director tries them for the key (whatever their health).
    pub alternates: Vec<String>,
}

/// Why an explain request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// No such route.
    #[error("no route named {0:?}")]
    NoRoute(String),
    /// No such director.
    #[error("no director named {0:?}")]
    NoDirector(String),
    /// The key does not suit the director.
    #[error(transparent)]
    Key(#[from] SelectError),
}

/// Route or director.
#[derive(Debug, Clone, Copy)]
pub enum ExplainTarget<'a> {
    /// A route (its key source decides how the key is read: an IP for `client_ip`).
    Route(&'a str),
    /// A director.
    Director(&'a str),
}

/// Whether a backend takes new requests: not draining, then the admin override, then the probe.
pub fn backend_healthy(spec: &BackendSpec, state: &BackendRef) -> bool {
    if spec.drain {
        return false;
    }
    match spec.admin_health {
        AdminHealth::Healthy => true,
        AdminHealth::Sick => false,
        AdminHealth::Auto => state.probe_healthy(),
    }
}

impl HealthView for Snapshot {
    #[inline]
    fn is_healthy(&self, b: BackendId) -> bool {
        backend_healthy(
            &self.config.backends[b as usize],
            &self.backends[b as usize],
        )
    }

    fn since_change(&self, b: BackendId) -> Duration {
        self.backends[b as usize].since_change()
    }
}

impl Snapshot {
    /// The first route that takes a request, and its director.
    pub fn route_for(
        &self,
        https: bool,
        host: Option<&str>,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Option<(usize, DirectorId)> {
        self.config
            .routes
            .iter()
            .position(|r| crate::route::matches(r, https, host, path, headers))
            .map(|i| (i, self.route_directors[i]))
    }

    /// The backend a director picks for `key` on alternate `alt`.
    pub fn select(
        &self,
        d: DirectorId,
        key: &Key<'_>,
        alt: u32,
    ) -> Result<Option<BackendId>, SelectError> {
        self.directors
            .select(d, key, SelectOpts { alt, healthy: None }, self)
    }

    /// A hash of this node's routing state: routes, every director's policy and members
    /// (targets, weights, idents, slots), every backend's addresses and weight, and which
    /// backends take requests now — over the stable encoding of [`crate::fingerprint`]. Two
    /// nodes with the same fingerprint send every key to the same backend.
    pub fn fingerprint(&self) -> String {
        let mut verdicts = vec![0u64; self.backends.len().div_ceil(64)];
        for (i, (spec, state)) in self.config.backends.iter().zip(&self.backends).enumerate() {
            if backend_healthy(spec, state) {
                verdicts[i / 64] |= 1 << (i % 64);
            }
        }
        let mut memo = self
            .fingerprint_memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, fingerprint)) = memo.as_ref()
            && *seen == verdicts
        {
            return fingerprint.clone();
        }
        let fingerprint = crate::fingerprint::of(&crate::fingerprint::encode(&self.config, |i| {
            verdicts[i / 64] & (1 << (i % 64)) != 0
        }));
        *memo = Some((verdicts, fingerprint.clone()));
        fingerprint
    }

    /// Which backend a route or director picks for `key` with live health, with up to
    /// `alternates` members in try order.
    pub fn explain(
        &self,
        target: ExplainTarget<'_>,
        key: &str,
        alternates: usize,
    ) -> Result<Explanation, ExplainError> {
        explain(&self.config, &self.directors, self, target, key, alternates)
    }
}

/// Which backend a route or director of `config` picks for `key` given `health`, with up to
/// `alternates` members in try order. A route whose key source is the client IP reads `key`
/// as an IP address.
pub fn explain<H: HealthView + ?Sized>(
    config: &Config,
    directors: &Directors,
    health: &H,
    target: ExplainTarget<'_>,
    key: &str,
    alternates: usize,
) -> Result<Explanation, ExplainError> {
    let (director, by_ip) = match target {
        ExplainTarget::Director(n) => (n, false),
        ExplainTarget::Route(n) => {
            let r = config
                .routes
                .iter()
                .find(|r| r.name == n)
                .ok_or_else(|| ExplainError::NoRoute(n.to_owned()))?;
            (r.director.as_str(), r.key == KeySpec::ClientIp)
        }
    };
    let d = directors
        .id(director)
        .ok_or_else(|| ExplainError::NoDirector(director.to_owned()))?;
    let ip: Option<IpAddr> = if by_ip { key.parse().ok() } else { None };
    let key = match ip {
        Some(ip) => Key::ip(ip),
        None => Key::str(key),
    };
    let backend = directors
        .select(d, &key, SelectOpts::default(), health)?
        .map(|b| directors.backend_name(b).to_owned());
    let alternates = directors
        .order(d, &key, alternates)?
        .into_iter()
        .map(|t: Target| directors.target_name(t).to_owned())
        .collect();
    Ok(Explanation {
        director: directors.name(d).to_owned(),
        backend,
        alternates,
    })
}
