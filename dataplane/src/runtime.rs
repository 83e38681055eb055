//! The data plane's state: the current [`Snapshot`] behind an `ArcSwap`, and the registry of
//! backend runtime states by identity.
//!
//! [`Runtime::apply`] is called by the one task that follows the store (see
//! `tether_controlplane::follow`); it builds everything a request needs — directors, routes,
//! backend states — *before* the swap, reusing the state of every identity that is still
//! there, so an unchanged backend keeps its connections, probe window and counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::backend::{BackendRef, BackendRuntime, Histogram, Identity};
use crate::config::{Config, Host};
use crate::director::{BuildError, Directors};
use crate::health;
use crate::snapshot::Snapshot;

/// Proxy-wide counters (per-backend ones live in [`crate::backend::Counters`]).
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// Requests that matched no route (404).
    pub no_route: AtomicU64,
    /// Requests for which no backend was available (503).
    pub no_backend: AtomicU64,
    /// Retries on the next alternate after a connect failure.
    pub retries: AtomicU64,
    /// Revisions that could not be applied (the previous snapshot stayed).
    pub rejected_revisions: AtomicU64,
    /// Full listings of the store after the first (compaction, restored store).
    pub relists: AtomicU64,
    /// Stored objects left out because they do not decode or validate.
    pub invalid_objects: AtomicU64,
}

/// The data plane's state.
#[derive(Debug)]
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    registry: Mutex<HashMap<Identity, BackendRef>>,
    ready: AtomicBool,
    /// Revision of the last store event seen (applied or not), for staleness.
    seen_revision: AtomicI64,
    /// Proxy-wide counters.
    pub counters: ProxyCounters,
    /// From a change's commit in the store to its application here.
    pub apply_delay: Histogram,
    /// When the store last confirmed that the applied state is current.
    confirmed: Mutex<Option<Instant>>,
    /// Whether the applied state came from the local cache.
    from_cache: AtomicBool,
}

impl Runtime {
    /// An empty runtime (no routes: every request is a 404) that is not ready yet.
    pub fn new() -> Arc<Runtime> {
        let empty = Snapshot {
            revision: 0,
            config: Config::default(),
            directors: Directors::empty(),
            backends: Vec::new(),
            route_directors: Vec::new(),
        };
        Arc::new(Runtime {
            current: ArcSwap::from_pointee(empty),
            registry: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            seen_revision: AtomicI64::new(0),
            counters: ProxyCounters::default(),
            apply_delay: Histogram::default(),
            confirmed: Mutex::new(None),
            from_cache: AtomicBool::new(false),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether the first full snapshot has been applied.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the runtime ready (after the first full listing is applied).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Records the latest revision seen in the store.
    pub fn saw_revision(&self, revision: i64) {
        self.seen_revision.fetch_max(revision, Ordering::AcqRel);
    }

    /// Records that the store just confirmed the applied state is current (a listing, a
    /// watch event or a progress notification), and that it no longer comes from the cache.
    pub fn mark_confirmed(&self) {
        *self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.from_cache.store(false, Ordering::Release);
    }

    /// Time since the store last confirmed the applied state; `None` before it ever did.
    pub fn confirmed_age(&self) -> Option<Duration> {
        self.confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|t| t.elapsed())
    }

    /// Marks the applied state as loaded from the local cache.
    pub fn set_from_cache(&self) {
        self.from_cache.store(true, Ordering::Release);
    }

    /// Whether the applied state came from the local cache.
    pub fn from_cache(&self) -> bool {
        self.from_cache.load(Ordering::Acquire)
    }

    /// The latest revision seen in the store.
    pub fn seen_revision(&self) -> i64 {
        self.seen_revision.load(Ordering::Acquire)
    }

    /// Builds and swaps in the snapshot of `revision`. Must run inside a tokio runtime (it
    /// starts probe loops). On error the current snapshot stays.
    pub fn apply(&self, revision: i64, config: Config) -> Result<(), BuildError> {
        let directors = Directors::build(&config, Some(&self.snapshot().directors))?;
        self.install(revision, config, directors)
    }

    /// [`Runtime::apply`] with directors already built from `config` (by a caller that built
    /// them to validate it, reusing this runtime's current directors as `prev`).
    pub fn install(
        &self,
        revision: i64,
        config: Config,
        directors: Directors,
    ) -> Result<(), BuildError> {
        let prev = self.snapshot();
        let route_directors = config
            .routes
            .iter()
            .map(|r| {
                directors
                    .id(&r.director)
                    .ok_or_else(|| BuildError::Unknown {
                        director: r.director.clone(),
                        field: format!("route {:?}.director", r.name),
                        kind: "director",
                        name: r.director.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let probes: HashMap<&str, _> = config.probes.iter().map(|p| (p.name.as_str(), p)).collect();
        let old_specs: HashMap<&str, _> = prev
            .config
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b))
            .collect();
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity(config.backends.len());
        let mut backends = Vec::with_capacity(config.backends.len());
        for spec in &config.backends {
            let id = Identity::of(spec);
            let state = match registry.remove(&id) {
                Some(s) => {
                    if let Some(old) = old_specs.get(spec.name.as_str())
                        && (old.admin_health != spec.admin_health || old.drain != spec.drain)
                    {
                        s.mark_changed();
                        tracing::info!(
                            backend = %spec.name,
                            admin_health = ?spec.admin_health,
                            drain = spec.drain,
                            "admin state changed"
                        );
                    }
                    s
                }
                None => Arc::new(BackendRuntime::new(spec)),
            };
            let host = spec
                .host_header
                .clone()
                .unwrap_or_else(|| match &spec.address.host {
                    Host::Ip(ip) => ip.to_string(),
                    Host::Dns(d) => d.clone(),
                });
            let probe = spec.probe.as_deref().and_then(|p| probes.get(p).copied());
            if state.set_probe(probe, host) {
                tokio::spawn(health::run(Arc::downgrade(&state)));
            }
            backends.push(Arc::clone(&state));
            next.insert(id, state);
        }
        // Identities not in this revision are dropped here: their probe loops end and their
        // idle connections close.
        *registry = next;
        drop(registry);
        self.current.store(Arc::new(Snapshot {
            revision,
            config,
            directors,
            backends,
            route_directors,
        }));
        self.saw_revision(revision);
        Ok(())
    }
}
