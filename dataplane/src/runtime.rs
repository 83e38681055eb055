//! The data plane's state: the current [`Snapshot`] behind an `ArcSwap`, and the registry of
//! backend runtime states by identity.
//!
//! [`Runtime::install`] is called by the one task that follows the store (the node agent's
//! follower, `tether_controlplane::node`), with the directors it built while validating;
//! [`Runtime::apply`] builds them itself. Either builds everything a request needs —
//! directors, routes, backend states — *before* the swap, reusing the state of every identity
//! that is still there, so an unchanged backend keeps its connections, probe window and
//! counters. The probe loop of each identity is started here too (`probe_loop`).

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak, mpsc};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::backend::{BackendRef, BackendRuntime, Identity};
use crate::certs::ServerCerts;
use crate::config::{BackendSpec, Config, Host, ProbeSpec};
use crate::director::{BuildError, Directors};
use crate::edge::Edge;
use crate::fleet::{FleetHealth, Source};
use crate::health;
use crate::histogram::Histogram;
use crate::resolve::{Dns, DnsConfig};
use crate::snapshot::Snapshot;
use crate::traffic::Traffic;

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
    /// Restarts of the node agent's follower by its supervisor.
    pub follower_restarts: AtomicU64,
    /// Restarts of the node agent's registration loop by its supervisor.
    pub registration_restarts: AtomicU64,
    /// Restarts of the shared-health publisher by its supervisor.
    pub publisher_restarts: AtomicU64,
}

/// The data plane's state.
#[derive(Debug)]
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    registry: Mutex<HashMap<Identity, BackendRef>>,
    ready: AtomicBool,
    /// Revision of the last store event seen (applied or not), for staleness.
    seen_revision: AtomicI64,
    /// The configuration revision of the applied state (the last change to a resource).
    config_revision: AtomicI64,
    /// Proxy-wide counters.
    pub counters: ProxyCounters,
    /// Client requests: per-route counters, in flight, the access log.
    pub traffic: Arc<Traffic>,
    /// From a change's commit in the store to its application here.
    pub apply_delay: Histogram,
    /// When the store last confirmed that the applied state is current.
    confirmed: Mutex<Option<Instant>>,
    /// Whether the applied state came from the local cache.
    from_cache: AtomicBool,
    /// When a state from the cache stops counting as ready (`--cache-max-age`).
    cache_stale_at: Mutex<Option<SystemTime>>,
    /// The listeners' edges (connection counts and counters, for `/metrics`).
    listeners: Mutex<Vec<Arc<Edge>>>,
    /// Where replaced snapshots go to be freed (`None`: freed in place, if the thread could
    /// not be started).
    reclaim: Option<mpsc::Sender<Arc<Snapshot>>>,
    /// Resolves backends' DNS names (shared by their pools).
    dns: Arc<Dns>,
    /// What the TLS listener serves.
    pub certs: Arc<ServerCerts>,
    /// Shared health: where verdicts come from, and what this node owes the fleet.
    pub fleet: Arc<FleetHealth>,
    /// When the store last answered this node (a watch event, a lease renewal, a write).
    contact: Mutex<Option<Instant>>,
    /// Metrics of the control plane running in the same process (`tether up`).
    extra_metrics: Mutex<Vec<Arc<dyn crate::exposition::MetricsSource>>>,
}

impl Runtime {
    /// An empty runtime (no routes: every request is a 404) that is not ready yet, resolving
    /// backend names with the system's resolver configuration.
    pub fn new() -> Arc<Runtime> {
        Runtime::with_dns(DnsConfig::default())
    }

    /// Adds `source`'s metrics to this node's `/metrics` page.
    pub fn add_metrics(&self, source: Arc<dyn crate::exposition::MetricsSource>) {
        self.extra_metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Appends the added sources' metrics ([`Runtime::add_metrics`]) to `w`.
    pub fn write_extra_metrics(&self, w: &mut String) {
        let sources = self
            .extra_metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for s in sources {
            s.write(w);
        }
    }

    /// An empty runtime, resolving backend names as `dns` says.
    pub fn with_dns(dns: DnsConfig) -> Arc<Runtime> {
        let empty = Snapshot {
            revision: 0,
            config: Config::default(),
            directors: Directors::empty(),
            backends: Vec::new(),
            route_directors: Vec::new(),
            route_counters: Vec::new(),
            fingerprint_memo: std::sync::Mutex::default(),
        };
        // Replaced snapshots are freed on a thread of their own: at 10,000 backends freeing
        // one (ring, director specs, names) takes about half a millisecond that applying the
        // next revision need not wait for. The thread ends with the runtime.
        let (tx, rx) = mpsc::channel::<Arc<Snapshot>>();
        let reclaim = std::thread::Builder::new()
            .name("tether-reclaim".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .map_err(
                |e| tracing::warn!(error = %e, "no reclaim thread; snapshots are freed in place"),
            )
            .ok()
            .map(|_| tx);
        Arc::new(Runtime {
            current: ArcSwap::from_pointee(empty),
            registry: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            seen_revision: AtomicI64::new(0),
            config_revision: AtomicI64::new(0),
            counters: ProxyCounters::default(),
            traffic: Arc::default(),
            apply_delay: Histogram::default(),
            extra_metrics: Mutex::default(),
            confirmed: Mutex::new(None),
            from_cache: AtomicBool::new(false),
            cache_stale_at: Mutex::new(None),
            listeners: Mutex::new(Vec::new()),
            reclaim,
            dns: Arc::new(Dns::new(dns)),
            certs: ServerCerts::new(),
            fleet: Arc::default(),
            contact: Mutex::new(None),
        })
    }

    /// Backend identities with a runtime state.
    #[cfg(test)]
    fn registered(&self) -> usize {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether the first full snapshot has been applied — and, for a state from the cache,
    /// whether it is younger than the cache's maximum age.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.cache_is_stale()
    }

    /// Whether the applied state came from the cache and is older than it may be.
    pub fn cache_is_stale(&self) -> bool {
        self.from_cache()
            && self
                .cache_stale_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|t| SystemTime::now() >= t)
    }

    /// Marks the runtime ready (after the first full listing is applied).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Adds a listener's edge to what `/metrics` reports.
    pub fn add_listener(&self, edge: Arc<Edge>) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(edge);
    }

    /// The listeners' edges.
    pub fn listeners(&self) -> Vec<Arc<Edge>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Marks the runtime not ready (its follower is down; the snapshot still serves).
    pub fn clear_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// Records the configuration revision of the state just installed.
    pub fn set_config_revision(&self, revision: i64) {
        self.config_revision.store(revision, Ordering::Release);
    }

    /// The configuration revision of the applied state: the last change to a resource (not
    /// moved by writes to other keys, such as node records).
    pub fn config_revision(&self) -> i64 {
        self.config_revision.load(Ordering::Acquire)
    }

    /// Records the latest revision seen in the store.
    pub fn saw_revision(&self, revision: i64) {
        self.seen_revision.fetch_max(revision, Ordering::AcqRel);
    }

    /// Records that the store answered this node (any call that reached it).
    pub fn mark_contact(&self) {
        *self.contact.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Time since the store last answered this node; `None` before it ever did.
    pub fn contact_age(&self) -> Option<Duration> {
        self.contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|t| t.elapsed())
    }

    /// Switches where probe verdicts come from ([`crate::fleet`]); every backend follows at
    /// once. Whether it changed.
    pub fn set_health_source(&self, source: Source) -> bool {
        if !self.fleet.set_source(source) {
            return false;
        }
        tracing::info!(
            source = source.as_str(),
            "health verdicts now come from here"
        );
        for b in &self.snapshot().backends {
            b.source_changed(source);
        }
        true
    }

    /// Records that the store just confirmed the applied state is current (a listing, a
    /// watch event or a progress notification), and that it no longer comes from the cache.
    pub fn mark_confirmed(&self) {
        self.mark_contact();
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

    /// Marks the applied state as loaded from the local cache; it stops counting as ready at
    /// `stale_at` (never, if `None`) unless the store confirms a state first.
    pub fn set_from_cache(&self, stale_at: Option<SystemTime>) {
        *self
            .cache_stale_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = stale_at;
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
        let probes: FxHashMap<&str, &ProbeSpec> =
            config.probes.iter().map(|p| (p.name.as_str(), p)).collect();
        let old_probes: FxHashMap<&str, &ProbeSpec> = prev
            .config
            .probes
            .iter()
            .map(|p| (p.name.as_str(), p))
            .collect();
        let probes_unchanged = prev.config.probes == config.probes;
        if prev.config.certificates != config.certificates {
            // Before the swap: the first request of the new revision may be a handshake.
            self.certs.set(
                crate::certs::Source::Api,
                config
                    .certificates
                    .iter()
                    .map(|c| Arc::clone(&c.loaded))
                    .collect(),
            );
        }
        let old = &prev.config.backends;
        let mut matcher = PrevMatcher::new(old);
        let mut reused = vec![false; old.len()];
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut backends = Vec::with_capacity(config.backends.len());
        // Identities of the backends that were not carried over as they were.
        let mut kept: FxHashMap<&str, Identity> = FxHashMap::default();
        for spec in &config.backends {
            let found = matcher.find(spec, |spec| registry.contains_key(&Identity::of(spec)));
            if let Some(i) = found
                && !reused[i]
                && (Arc::ptr_eq(&old[i], spec) || old[i] == *spec)
                && (probes_unchanged || probe_of(&old_probes, &old[i]) == probe_of(&probes, spec))
            {
                // Unchanged, probe included: the same state, nothing to reconfigure. (A
                // one-backend change at 10,000 backends takes this path 9,999 times, comparing
                // pointers.)
                reused[i] = true;
                backends.push(Arc::clone(&prev.backends[i]));
                continue;
            }
            let id = Identity::of(spec);
            let state = match registry.get(&id) {
                Some(s) => {
                    if let Some(old) = found.map(|i| &old[i])
                        && (old.tls != spec.tls || old.protocol != spec.protocol)
                    {
                        // Connections made with the old settings are not reused.
                        s.pool.reset();
                        tracing::info!(backend = %spec.name, protocol = ?spec.protocol, tls = spec.tls.is_some(), "connection settings changed");
                    }
                    if let Some(old) = found.map(|i| &old[i])
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
                    Arc::clone(s)
                }
                None => {
                    let s = Arc::new(BackendRuntime::new(spec, &self.dns, &self.fleet));
                    registry.insert(id.clone(), Arc::clone(&s));
                    s
                }
            };
            let host = spec
                .host_header
                .clone()
                .unwrap_or_else(|| match &spec.address.host {
                    Host::Ip(ip) => ip.to_string(),
                    Host::Dns(d) => d.clone(),
                });
            state.set_draining(spec.drain);
            let transport = health::Transport {
                tls: spec.tls.clone(),
                h2: spec.protocol.always_h2(),
                host: Some(spec.address.host.clone()),
            };
            if state.set_probe(probe_of(&probes, spec), host, transport) {
                tokio::spawn(probe_loop(Arc::downgrade(&state)));
            }
            kept.insert(spec.name.as_str(), id);
            backends.push(state);
        }
        // Identities not in this revision are dropped here: their probe loops end and their
        // idle connections close. Only backends not carried over can be gone: deleted ones,
        // and changed ones whose identity (addresses) changed.
        for (old_spec, _) in old.iter().zip(&reused).filter(|(_, r)| !**r) {
            if !kept
                .get(old_spec.name.as_str())
                .is_some_and(|id| id.is(old_spec))
                && let Some(gone) = registry.remove(&Identity::of(old_spec))
            {
                // Its tunnels (which still hold it) drain.
                gone.set_draining(true);
            }
        }
        drop(registry);
        let route_counters = self.traffic.routes_for(&config.routes);
        let old = self.current.swap(Arc::new(Snapshot {
            revision,
            config,
            directors,
            backends,
            route_directors,
            route_counters,
            fingerprint_memo: std::sync::Mutex::default(),
        }));
        self.saw_revision(revision);
        // The replaced snapshot is freed elsewhere (unless a request still holds it, whose
        // thread then frees it).
        drop(prev);
        if let Some(tx) = &self.reclaim {
            // A send fails only if the thread is gone; the snapshot is then freed here.
            let _ = tx.send(old);
        }
        Ok(())
    }
}

/// The probe `spec` uses, from the probes by name.
fn probe_of<'a>(
    probes: &FxHashMap<&str, &'a ProbeSpec>,
    spec: &BackendSpec,
) -> Option<&'a ProbeSpec> {
    spec.probe.as_deref().and_then(|p| probes.get(p).copied())
}

/// Finds a backend's previous position by walking the previous list alongside the new one:
/// lists come in the same (name) order, so the next previous entry, or the one after it (a
/// deletion), is usually the one — found by comparing pointers, without reading either spec.
/// A backend whose identity has no state is new (or its addresses changed): nothing to find.
/// Anything else (a reordered list) falls back to a map by name, built once when first needed.
struct PrevMatcher<'a> {
    old: &'a [Arc<BackendSpec>],
    next: usize,
    by_name: Option<FxHashMap<&'a str, usize>>,
}

impl<'a> PrevMatcher<'a> {
    fn new(old: &'a [Arc<BackendSpec>]) -> PrevMatcher<'a> {
        PrevMatcher {
            old,
            next: 0,
            by_name: None,
        }
    }

    /// The previous index of the backend named as `spec` is, if there is one whose state
    /// `spec` could keep; `has_state` says whether `spec`'s identity has a state.
    fn find(
        &mut self,
        spec: &Arc<BackendSpec>,
        has_state: impl FnOnce(&BackendSpec) -> bool,
    ) -> Option<usize> {
        let (old, j) = (self.old, self.next);
        let at = |i: usize| old.get(i).is_some_and(|o| Arc::ptr_eq(o, spec));
        let found = if at(j) {
            Some(j)
        } else if at(j + 1) {
            Some(j + 1)
        } else if old.get(j).is_some_and(|o| o.name == spec.name) {
            Some(j)
        } else if !has_state(spec) {
            // A new backend (an addition at 10,000 backends must not hash all the names).
            return None;
        } else {
            self.by_name
                .get_or_insert_with(|| {
                    old.iter()
                        .enumerate()
                        .map(|(i, b)| (b.name.as_str(), i))
                        .collect()
                })
                .get(spec.name.as_str())
                .copied()
        };
        if let Some(i) = found {
            self.next = i + 1;
        }
        found
    }
}

/// The probe loop of one backend identity. Ends when the backend is gone from every snapshot,
/// or when it no longer has a probe (a later snapshot that adds one starts a new loop).
async fn probe_loop(backend: Weak<BackendRuntime>) {
    loop {
        let Some(b) = backend.upgrade() else { return };
        let Some((spec, host, transport)) = b.probe_settings() else {
            return;
        };
        if !b.should_probe() {
            // Shared health, not an owner: the fleet's verdict is used. Asked again each
            // interval (ownership moves when nodes come and go).
            drop(b);
            tokio::time::sleep(spec.interval.max(Duration::from_millis(10))).await;
            continue;
        }
        // The probe goes where the proxy connects: the first address (a name: its answer's
        // first address).
        let result = match b.pool.targets(spec.timeout).await {
            Ok(t) => match t.first() {
                Some(peer) => health::probe_once(*peer, &spec, &host, &transport).await,
                None => Err(health::ProbeError::Timeout),
            },
            Err(e) => Err(health::ProbeError::Resolve(e.to_string())),
        };
        b.fleet.probes_sent.fetch_add(1, Ordering::Relaxed);
        b.record_probe(&spec, result);
        drop(b);
        tokio::time::sleep(spec.interval.max(Duration::from_millis(10))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, port: u16) -> Arc<BackendSpec> {
        let address = format!("127.0.0.1:{port}").parse().expect("address");
        Arc::new(BackendSpec::new(name, address))
    }

    fn config(backends: &[&Arc<BackendSpec>]) -> Config {
        Config {
            backends: backends.iter().map(|b| Arc::clone(b)).collect(),
            ..Config::default()
        }
    }

    #[test]
    fn unchanged_backends_keep_their_state_and_gone_identities_are_dropped() {
        let rt = Runtime::new();
        let (a, b, c) = (spec("a", 1), spec("b", 2), spec("c", 3));
        rt.apply(1, config(&[&a, &b, &c])).expect("apply");
        let first = rt.snapshot();
        // b's weight changes (same identity), bb is inserted before c.
        let mut heavier = (*b).clone();
        heavier.weight = 2.0;
        let (b2, bb) = (Arc::new(heavier), spec("bb", 9));
        rt.apply(2, config(&[&a, &b2, &bb, &c])).expect("apply");
        let second = rt.snapshot();
        assert!(Arc::ptr_eq(&first.backends[0], &second.backends[0]));
        assert!(Arc::ptr_eq(&first.backends[1], &second.backends[1]));
        assert!(Arc::ptr_eq(&first.backends[2], &second.backends[3]));
        assert_eq!(rt.registered(), 4);
        // a deleted, c's address changed: a new state for c, the old identities gone.
        let c4 = spec("c", 4);
        rt.apply(3, config(&[&b2, &bb, &c4])).expect("apply");
        let third = rt.snapshot();
        assert!(Arc::ptr_eq(&second.backends[1], &third.backends[0]));
        assert!(Arc::ptr_eq(&second.backends[2], &third.backends[1]));
        assert!(!Arc::ptr_eq(&second.backends[3], &third.backends[2]));
        assert_eq!(rt.registered(), 3);
        // A reordered list finds every previous state by name.
        rt.apply(4, config(&[&c4, &bb, &b2])).expect("apply");
        let fourth = rt.snapshot();
        for (i, j) in [(0, 2), (1, 1), (2, 0)] {
            assert!(Arc::ptr_eq(&third.backends[i], &fourth.backends[j]));
        }
        assert_eq!(rt.registered(), 3);
    }

    #[test]
    fn the_fingerprint_follows_what_routes_keys() {
        let fingerprint = |backends: &[&Arc<BackendSpec>]| {
            let rt = Runtime::new();
            let mut cfg = config(backends);
            cfg.directors.push(Arc::new(crate::config::DirectorSpec {
                name: "d".into(),
                policy: crate::config::Policy::Shard(crate::config::ShardSpec::default()),
                members: backends
                    .iter()
                    .map(|b| {
                        crate::config::MemberSpec::new(crate::config::TargetRef::Backend(
                            b.name.clone(),
                        ))
                    })
                    .collect(),
            }));
            rt.apply(1, cfg).expect("apply");
            rt.snapshot().fingerprint()
        };
        let (a, b) = (spec("a", 1), spec("b", 2));
        assert_eq!(fingerprint(&[&a, &b]), fingerprint(&[&a, &b]));
        // A backend's weight is its members' weight when they give none: it moves keys.
        let mut heavier = (*b).clone();
        heavier.weight = 2.0;
        assert_ne!(
            fingerprint(&[&a, &b]),
            fingerprint(&[&a, &Arc::new(heavier)])
        );
        assert_ne!(fingerprint(&[&a, &b]), fingerprint(&[&a, &spec("b", 3)]));
    }

    // On a current-thread runtime with no await: the probe loop the apply spawns never runs,
    // so only the results recorded here move the verdict.
    #[tokio::test]
    async fn the_remembered_fingerprint_follows_health() {
        let rt = Runtime::new();
        let probe = crate::config::ProbeSpec::new("p");
        let mut b = (*spec("b", 1)).clone();
        b.probe = Some(probe.name.clone());
        let mut cfg = config(&[&spec("a", 1), &Arc::new(b)]);
        cfg.probes = vec![probe.clone()];
        rt.apply(1, cfg).expect("apply");
        let snap = rt.snapshot();
        let state = &snap.backends[1];
        for _ in 0..probe.threshold {
            state.record_probe(&probe, Ok(()));
        }
        let healthy = snap.fingerprint();
        assert_eq!(snap.fingerprint(), healthy, "asked again, unchanged");
        for _ in 0..probe.window {
            state.record_probe(&probe, Err(crate::health::ProbeError::Status(500)));
        }
        let sick = snap.fingerprint();
        assert_ne!(
            sick, healthy,
            "a verdict moved: the remembered fingerprint is not used"
        );
        for _ in 0..probe.window {
            state.record_probe(&probe, Ok(()));
        }
        assert_eq!(snap.fingerprint(), healthy);
    }
}
