//! Shared health (DESIGN §6), the node agent's side: who probes which backend, what the fleet
//! verdict is, and publishing this node's reports.
//!
//! - **Reports**: each owner keeps one report per backend it owns under
//!   `<prefix>/v1/health/<backend>/<node>` ([`Layout::health_key`]), a `v1::HealthReport`
//!   (verdict, the window's shift register, the identity probed), put under the owner's
//!   registration lease. One key per owner rather than one per backend: owners never contend
//!   for a key, and a dead owner's report is deleted by etcd when its lease expires — at one
//!   revision, the same for every watcher.
//! - **Fleet verdict** ([`verdict`]), a pure function of the reports stored for a backend at a
//!   revision: reports of another identity (older addresses) do not count; no report → the
//!   backend's last report of this identity, withdrawn since (an owner that died or handed it
//!   over: its word stands until a new owner reports, and that owner continues its window), or
//!   `None` when there was none since this node listed (the node then uses the probe's
//!   fresh-window verdict, Varnish's `initial`); otherwise sick
//!   if and only if strictly more reports say sick than healthy (a tie is healthy: one owner's
//!   trouble reaching a backend does not take it out of the whole fleet). Every node computes
//!   it from the same revision, so all switch together. It does not depend on `k`.
//! - **Owners** ([`owners`]): the `k` registered nodes with the highest rendezvous score
//!   (SHA-256 of node id and backend identity) — the same on every node from the same
//!   registrations, and a node joining or leaving moves only the backends it wins or held. A new
//!   owner continues the most recent published window of that identity. A node that stops
//!   owning a backend deletes its report.
//! - **Source** ([`Shared::check_source`]): verdicts come from the fleet while the store
//!   answered within the grace period; after it, the node probes every backend itself (windows
//!   primed with the verdict it routed on), and returns to the fleet verdict once the store
//!   answers again.
//!
//! Data flow: store events → [`HealthEvent`] (decoded with the configuration's, in
//! [`super::source`]) → the follower hands them to [`Shared`] after each revision → verdicts
//! and ownership set on each `BackendRuntime` → probe loops of owned backends post outcomes to
//! `FleetHealth` → [`publish`] writes them under the lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message;
use rustc_hash::{FxHashMap, FxHashSet};
use sha2::Digest;
use tether_dataplane::backend::BackendRef;
use tether_dataplane::config::BackendSpec;
use tether_dataplane::fleet::{Outcome, Role, Source};
use tether_dataplane::runtime::Runtime;
use tether_proto::keys::{Kind, Layout};
use tether_proto::v1;
use tokio::sync::watch;

use super::shutdown::Shutdown;
use crate::store::etcd::EtcdStore;
use crate::store::{Event, KeyValue};

/// Default number of owners per backend.
pub const DEFAULT_OWNERS: u16 = 2;
/// Default grace: how long a node keeps routing on the fleet verdict after the store last
/// answered it (the registration renews its lease every 3 s, so a healthy node hears from the
/// store at least that often).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// How often the publisher checks the source and retries what failed.
const TICK: Duration = Duration::from_millis(250);

/// Shared-health settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Owners per backend (`k`).
    pub owners: usize,
    /// How long the last fleet verdict stands without the store.
    pub grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            owners: usize::from(DEFAULT_OWNERS),
            grace: DEFAULT_GRACE,
        }
    }
}

/// A store event that shared health follows.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthEvent {
    /// An owner's report was written.
    Report {
        /// Its key's backend.
        backend: String,
        /// Its key's node.
        node: String,
        /// The report.
        report: v1::HealthReport,
        /// The revision that wrote it (the most recent report continues a window).
        revision: i64,
    },
    /// An owner's report was deleted (withdrawn, or its lease expired).
    Withdrawn {
        /// Its key's backend.
        backend: String,
        /// Its key's node.
        node: String,
    },
    /// A node is registered (or its record was refreshed).
    NodeUp(String),
    /// A node's registration is gone.
    NodeDown(String),
}

impl HealthEvent {
    /// The event a stored key's put makes, if it is a report or a registration. A report that
    /// does not decode is left out (as if absent) with a log line.
    pub fn from_kv(layout: &Layout, kv: &KeyValue) -> Option<HealthEvent> {
        if let Some((backend, node)) = layout.parse_health(&kv.key) {
            return match v1::HealthReport::decode(kv.value.as_slice()) {
                Ok(report) => Some(HealthEvent::Report {
                    backend: backend.to_owned(),
                    node: node.to_owned(),
                    report,
                    revision: kv.mod_revision,
                }),
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "health report does not decode; left out");
                    None
                }
            };
        }
        match layout.parse(&kv.key) {
            Some((Kind::Node, id)) => Some(HealthEvent::NodeUp(id.to_owned())),
            _ => None,
        }
    }

    /// The event a store event makes, if shared health follows that key.
    pub fn from_event(layout: &Layout, event: &Event) -> Option<HealthEvent> {
        match event {
            Event::Put(kv) => HealthEvent::from_kv(layout, kv),
            Event::Delete { key, .. } => {
                if let Some((backend, node)) = layout.parse_health(key) {
                    return Some(HealthEvent::Withdrawn {
                        backend: backend.to_owned(),
                        node: node.to_owned(),
                    });
                }
                match layout.parse(key) {
                    Some((Kind::Node, id)) => Some(HealthEvent::NodeDown(id.to_owned())),
                    _ => None,
                }
            }
        }
    }
}

/// The Watch stream's kind for shared-health reports.
pub const WATCH_KIND: &str = "health";

impl HealthEvent {
    /// As the control plane's Watch stream carries it (reports only: a follower of the
    /// control plane never owns, so registrations do not concern it).
    pub fn into_watch_event(self) -> Option<v1::WatchEvent> {
        let (backend, node, action, health) = match self {
            HealthEvent::Report {
                backend,
                node,
                report,
                ..
            } => (backend, node, v1::Action::Update, Some(report)),
            HealthEvent::Withdrawn { backend, node } => (backend, node, v1::Action::Delete, None),
            HealthEvent::NodeUp(_) | HealthEvent::NodeDown(_) => return None,
        };
        Some(v1::WatchEvent {
            kind: WATCH_KIND.to_owned(),
            name: format!("{backend}/{node}"),
            action: action as i32,
            health,
            ..v1::WatchEvent::default()
        })
    }

    /// A Watch stream's shared-health event at `revision`, if `e` is one.
    pub fn from_watch_event(e: &v1::WatchEvent, revision: i64) -> Option<HealthEvent> {
        if e.kind != WATCH_KIND {
            return None;
        }
        let (backend, node) = e.name.split_once('/')?;
        let (backend, node) = (backend.to_owned(), node.to_owned());
        Some(match &e.health {
            Some(report) if e.action != v1::Action::Delete as i32 => HealthEvent::Report {
                backend,
                node,
                report: report.clone(),
                revision,
            },
            _ => HealthEvent::Withdrawn { backend, node },
        })
    }

    /// A report in a snapshot taken at `revision`.
    pub fn from_report(report: v1::HealthReport, revision: i64) -> HealthEvent {
        HealthEvent::Report {
            backend: report.backend.clone(),
            node: report.node.clone(),
            report,
            revision,
        }
    }
}

/// The reports among stored `kvs`, each with the backend and node its key names (a report
/// that does not decode is left out, logged).
pub fn stored_reports<'a>(
    layout: &'a Layout,
    kvs: &'a [KeyValue],
) -> impl Iterator<Item = v1::HealthReport> + 'a {
    kvs.iter()
        .filter_map(|kv| match HealthEvent::from_kv(layout, kv) {
            Some(HealthEvent::Report {
                backend,
                node,
                mut report,
                ..
            }) => {
                report.backend = backend;
                report.node = node;
                Some(report)
            }
            _ => None,
        })
}

/// A stored report and the revision that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The report.
    pub report: v1::HealthReport,
    /// Its revision.
    pub revision: i64,
}

/// The fleet as the store shows it: registered nodes and reports by backend, then node.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    nodes: BTreeSet<String>,
    reports: BTreeMap<String, BTreeMap<String, Stored>>,
    /// A backend's last report, once it has none (its owner withdrew, or died and its lease
    /// expired): the fleet's last word stands until a new owner reports, and that owner
    /// continues its window.
    last: BTreeMap<String, Stored>,
    /// Bumped whenever the node set changes (ownership is cached per generation).
    generation: u64,
}

impl FleetView {
    /// Applies events; the backends whose reports changed, and whether the node set did.
    pub fn apply(&mut self, events: Vec<HealthEvent>) -> (BTreeSet<String>, bool) {
        let mut touched = BTreeSet::new();
        let mut nodes = false;
        for e in events {
            match e {
                HealthEvent::Report {
                    backend,
                    node,
                    report,
                    revision,
                } => {
                    self.last.remove(&backend);
                    self.reports
                        .entry(backend.clone())
                        .or_default()
                        .insert(node, Stored { report, revision });
                    touched.insert(backend);
                }
                HealthEvent::Withdrawn { backend, node } => {
                    if let Some(r) = self.reports.get_mut(&backend) {
                        let gone = r.remove(&node);
                        if r.is_empty() {
                            self.reports.remove(&backend);
                            if let Some(gone) = gone {
                                self.last.insert(backend.clone(), gone);
                            }
                        }
                    }
                    touched.insert(backend);
                }
                HealthEvent::NodeUp(id) => nodes |= self.nodes.insert(id),
                HealthEvent::NodeDown(id) => nodes |= self.nodes.remove(&id),
            }
        }
        if nodes {
            self.generation += 1;
        }
        (touched, nodes)
    }

    /// The reports stored for a backend, by node.
    pub fn reports(&self, backend: &str) -> Option<&BTreeMap<String, Stored>> {
        self.reports.get(backend)
    }

    /// The registered nodes.
    pub fn nodes(&self) -> &BTreeSet<String> {
        &self.nodes
    }

    /// The last report of a backend that has none now, if it was of identity `addresses`.
    pub fn last_word(&self, backend: &str, addresses: &[String]) -> Option<&Stored> {
        self.last
            .get(backend)
            .filter(|s| s.report.addresses == addresses)
    }
}

/// A backend identity's addresses as reports carry them.
pub fn identity_addresses(spec: &BackendSpec) -> Vec<String> {
    spec.addresses().map(ToString::to_string).collect()
}

/// The fleet verdict of a backend identity (`addresses`) from the reports stored for it (see
/// the module doc): `None` when none of them is of this identity; else sick if and only if
/// strictly more say sick than healthy.
pub fn verdict<'a>(
    reports: impl IntoIterator<Item = &'a v1::HealthReport>,
    addresses: &[String],
) -> Option<bool> {
    let (mut healthy, mut sick) = (0u32, 0u32);
    for r in reports.into_iter().filter(|r| r.addresses == addresses) {
        if r.healthy {
            healthy += 1;
        } else {
            sick += 1;
        }
    }
    (healthy + sick > 0).then_some(sick <= healthy)
}

/// The rendezvous score of `node` for a backend identity: the first 8 bytes of
/// SHA-256(`node` NUL `name` NUL `address` NUL …), big-endian.
fn score(node: &str, name: &str, addresses: &[String]) -> u64 {
    let mut h = sha2::Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    for a in addresses {
        h.update([0]);
        h.update(a.as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The `k` owners of a backend identity among `nodes`: highest score first (ties by id).
pub fn owners<'a>(
    name: &str,
    addresses: &[String],
    nodes: impl IntoIterator<Item = &'a str>,
    k: usize,
) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = nodes
        .into_iter()
        .map(|n| (score(n, name, addresses), n))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().take(k).map(|(_, n)| n).collect()
}

/// What the agent remembers of one backend between revisions.
#[derive(Debug, Clone)]
struct Known {
    /// The runtime state it last set (a new identity is a new state).
    state: BackendRef,
    /// The node-set generation its ownership was computed at.
    generation: u64,
    role: Role,
}

#[derive(Debug, Default)]
struct Inner {
    view: FleetView,
    known: FxHashMap<String, Known>,
    /// Backends whose report this node must delete (it no longer owns them).
    withdraw: BTreeSet<String>,
    listed: bool,
}

/// Shared health of one node: its view of the fleet and what it owes it.
#[derive(Debug)]
pub struct Shared {
    me: String,
    settings: Settings,
    /// A node that cannot own (no lease: a follower of `--controlplane`): it routes on the
    /// fleet verdict where owners report, and probes alone the backends nobody reports on.
    observer: bool,
    inner: Mutex<Inner>,
}

impl Shared {
    /// Shared health for registered node `me`: an owner candidate.
    pub fn new(me: String, settings: Settings) -> Arc<Shared> {
        Arc::new(Shared {
            me,
            settings,
            observer: false,
            inner: Mutex::default(),
        })
    }

    /// Shared health for a node that follows the fleet's reports but is never an owner.
    pub fn observer(settings: Settings) -> Arc<Shared> {
        Arc::new(Shared {
            me: String::new(),
            settings,
            observer: true,
            inner: Mutex::default(),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A full listing: the view starts over from its events.
    pub fn listed(&self, rt: &Runtime, events: Vec<HealthEvent>) {
        let mut inner = self.inner();
        let generation = inner.view.generation + 1;
        inner.view = FleetView {
            generation,
            ..FleetView::default()
        };
        inner.view.apply(events);
        inner.listed = true;
        self.sync(&mut inner, rt, None);
    }

    /// One revision's events (after its configuration, if any, was applied).
    pub fn batch(&self, rt: &Runtime, events: Vec<HealthEvent>) {
        let mut inner = self.inner();
        let (touched, _) = inner.view.apply(events);
        self.sync(&mut inner, rt, Some(&touched));
    }

    /// Whether this node owns `backend` now.
    pub fn owns(&self, backend: &str) -> bool {
        self.inner()
            .known
            .get(backend)
            .is_some_and(|k| k.role == Role::Own)
    }

    /// The reports this node must delete.
    fn take_withdrawals(&self) -> BTreeSet<String> {
        std::mem::take(&mut self.inner().withdraw)
    }

    /// Sets verdict and ownership on every backend of the applied snapshot whose reports were
    /// `touched` (all when `None`), whose state is new, or whose ownership may have moved.
    fn sync(&self, inner: &mut Inner, rt: &Runtime, touched: Option<&BTreeSet<String>>) {
        let snap = rt.snapshot();
        let Inner {
            view,
            known,
            withdraw,
            ..
        } = inner;
        let mut present: FxHashSet<&str> = FxHashSet::default();
        for (spec, state) in snap.config.backends.iter().zip(&snap.backends) {
            if spec.probe.is_none() {
                continue;
            }
            present.insert(spec.name.as_str());
            let prev = known.get(&spec.name);
            let same = prev
                .is_some_and(|k| Arc::ptr_eq(&k.state, state) && k.generation == view.generation);
            if same && touched.is_some_and(|t| !t.contains(&spec.name)) {
                continue;
            }
            let addresses = identity_addresses(spec);
            let reports = view.reports(&spec.name);
            let live = verdict(
                reports
                    .into_iter()
                    .flat_map(|r| r.values().map(|s| &s.report)),
                &addresses,
            );
            let last = view.last_word(&spec.name, &addresses);
            let v = live.or_else(|| last.map(|s| s.report.healthy));
            let role = if self.observer {
                // Nobody reports on it now: probe it here (from the verdict it routes on).
                if live.is_some() {
                    Role::Follow
                } else {
                    Role::Alone
                }
            } else {
                let owned = match prev {
                    Some(k) if same => k.role == Role::Own,
                    _ => owners(
                        &spec.name,
                        &addresses,
                        view.nodes.iter().map(String::as_str),
                        self.settings.owners,
                    )
                    .contains(&self.me.as_str()),
                };
                if owned { Role::Own } else { Role::Follow }
            };
            // A new owner continues the most recent window published for this identity.
            let continue_from = reports
                .into_iter()
                .flat_map(|r| r.values())
                .filter(|s| s.report.addresses == addresses)
                .max_by_key(|s| s.revision)
                .or(last)
                .map(|s| s.report.happy);
            if prev.is_none_or(|k| k.role != role) {
                tracing::debug!(backend = %spec.name, role = role.as_str(), verdict = ?v, reports = reports.map_or(0, BTreeMap::len), last_word = last.is_some(), continue_from = ?continue_from, "shared-health role");
            }
            state.set_fleet(v, role, continue_from);
            let was_owned = prev.is_some_and(|k| k.role == Role::Own);
            if was_owned && role != Role::Own {
                withdraw.insert(spec.name.clone());
            } else if role == Role::Own {
                withdraw.remove(&spec.name);
            }
            known.insert(
                spec.name.clone(),
                Known {
                    state: Arc::clone(state),
                    generation: view.generation,
                    role,
                },
            );
        }
        view.last.retain(|b, _| present.contains(b.as_str()));
        if known.len() > present.len() {
            // Backends gone (or no longer probed): their reports go too.
            known.retain(|name, k| {
                let keep = present.contains(name.as_str());
                if !keep && k.role == Role::Own {
                    withdraw.insert(name.clone());
                }
                keep
            });
        }
    }

    /// Switches the runtime's verdict source as the store's reachability says: the fleet's
    /// while the store answered within the grace period (and the view was listed), this
    /// node's own probes otherwise.
    pub fn check_source(&self, rt: &Runtime) {
        let seen = rt
            .contact_age()
            .is_some_and(|age| age <= self.settings.grace);
        let source = if seen && self.inner().listed {
            Source::Fleet
        } else {
            Source::Local
        };
        if rt.set_health_source(source) && source == Source::Fleet {
            // Back on the fleet: every verdict afresh from the view.
            let mut inner = self.inner();
            self.sync(&mut inner, rt, None);
        }
    }
}

/// Switches the verdict source each [`TICK`] until `shutdown`, for a node that publishes
/// nothing ([`publish`] does it for the others).
pub async fn watch_source(shared: &Shared, rt: &Runtime, shutdown: Shutdown) {
    loop {
        shared.check_source(rt);
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.wait() => return,
        }
    }
}

/// The report of one outcome.
fn report(me: &str, backend: &str, o: &Outcome) -> v1::HealthReport {
    v1::HealthReport {
        backend: backend.to_owned(),
        node: me.to_owned(),
        addresses: o.addresses.iter().map(ToString::to_string).collect(),
        healthy: o.healthy,
        happy: o.happy,
        window: o.window,
        threshold: o.threshold,
        good: o.good,
        last_error: o.last_error.clone().unwrap_or_default(),
        updated_unix_ms: super::register::unix_ms_now(),
    }
}

/// What a published report said (a report is written again only when this changes).
type Said = (bool, u32, Vec<String>);

/// Publishes this node's reports until `shutdown`: the outcomes of owned backends when their
/// verdict or window count changed, deletions of reports it no longer owes, all under the
/// registration's lease (`lease`: `None` while the node is not registered; a new lease means
/// the old reports went with the old one, so everything is published again). Also switches the
/// verdict source each [`TICK`].
pub async fn publish(
    shared: Arc<Shared>,
    store: EtcdStore,
    layout: Layout,
    rt: Arc<Runtime>,
    mut lease: watch::Receiver<Option<i64>>,
    shutdown: Shutdown,
) {
    let mut said: FxHashMap<String, Said> = FxHashMap::default();
    let mut pending: FxHashMap<String, Outcome> = FxHashMap::default();
    let mut withdrawing: BTreeSet<String> = BTreeSet::new();
    let mut lease_used: Option<i64> = None;
    loop {
        tokio::select! {
            () = rt.fleet.posted.notified() => {}
            () = tokio::time::sleep(TICK) => {}
            r = lease.changed() => if r.is_err() { return },
            () = shutdown.wait() => return,
        }
        shared.check_source(&rt);
        let current = *lease.borrow_and_update();
        if current != lease_used {
            said.clear();
            lease_used = current;
        }
        pending.extend(rt.fleet.take());
        withdrawing.extend(shared.take_withdrawals());
        let Some(lease_id) = current else { continue };
        if rt.fleet.source() != Source::Fleet {
            // Cut off, or not yet listed: nothing to say to the fleet; the outcomes of this
            // interval are superseded by the next.
            pending.clear();
            continue;
        }
        for name in std::mem::take(&mut withdrawing) {
            if shared.owns(&name) {
                continue;
            }
            match store.delete(&layout.health_key(&name, &shared.me)).await {
                Ok(()) => {
                    said.remove(&name);
                    rt.mark_contact();
                }
                Err(e) => {
                    tracing::debug!(backend = %name, error = %e, "health report not withdrawn; retrying");
                    withdrawing.insert(name);
                }
            }
        }
        for (name, o) in std::mem::take(&mut pending) {
            if !shared.owns(&name) {
                continue;
            }
            let r = report(&shared.me, &name, &o);
            let now: Said = (o.healthy, o.good, r.addresses.clone());
            if said.get(&name) == Some(&now) {
                continue;
            }
            let key = layout.health_key(&name, &shared.me);
            match store.put_leased(&key, r.encode_to_vec(), lease_id).await {
                Ok(()) => {
                    said.insert(name, now);
                    rt.fleet.published.fetch_add(1, Ordering::Relaxed);
                    rt.mark_contact();
                }
                Err(e) => {
                    tracing::debug!(backend = %name, error = %e, "health report not published; retrying");
                    pending.insert(name, o);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(node: &str, healthy: bool, addresses: &[&str]) -> v1::HealthReport {
        v1::HealthReport {
            node: node.into(),
            healthy,
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_verdict_is_a_majority_of_this_identitys_reports_ties_healthy() {
        let id = vec!["127.0.0.1:1".to_owned()];
        let a = ["127.0.0.1:1"];
        assert_eq!(verdict([], &id), None);
        assert_eq!(verdict([&r("n1", false, &a)], &id), Some(false));
        assert_eq!(
            verdict([&r("n1", false, &a), &r("n2", true, &a)], &id),
            Some(true),
            "a tie is healthy"
        );
        assert_eq!(
            verdict(
                [&r("n1", false, &a), &r("n2", true, &a), &r("n3", false, &a)],
                &id
            ),
            Some(false)
        );
        // A report of the backend's earlier addresses does not count.
        assert_eq!(verdict([&r("n1", false, &["127.0.0.1:2"])], &id), None);
    }

    #[test]
    fn owners_are_deterministic_and_move_minimally() {
        let nodes: Vec<String> = (0..10).map(|i| format!("node-{i}")).collect();
        let backends: Vec<(String, Vec<String>)> = (0..1000)
            .map(|i| (format!("b{i}"), vec![format!("10.0.0.1:{}", 1000 + i)]))
            .collect();
        let of = |nodes: &[String]| -> Vec<Vec<String>> {
            backends
                .iter()
                .map(|(n, a)| {
                    owners(n, a, nodes.iter().map(String::as_str), 2)
                        .into_iter()
                        .map(str::to_owned)
                        .collect()
                })
                .collect()
        };
        let before = of(&nodes);
        // The order nodes are listed in does not matter.
        let mut reversed = nodes.clone();
        reversed.reverse();
        assert_eq!(of(&reversed), before);
        // Every node owns some; each backend has two distinct owners.
        for n in &nodes {
            assert!(before.iter().any(|o| o.contains(n)), "{n} owns nothing");
        }
        assert!(before.iter().all(|o| o.len() == 2 && o[0] != o[1]));
        // A node leaving moves only the backends it owned, to one new owner each.
        let gone = "node-3";
        let fewer: Vec<String> = nodes.iter().filter(|n| *n != gone).cloned().collect();
        let after = of(&fewer);
        for (b, a) in before.iter().zip(&after) {
            if b.iter().any(|n| n == gone) {
                let kept: Vec<_> = b.iter().filter(|n| *n != gone).collect();
                assert!(kept.iter().all(|n| a.contains(n)), "{b:?} → {a:?}");
            } else {
                assert_eq!(b, a, "a backend that {gone} did not own moved");
            }
        }
        // Adding it back restores exactly the first assignment.
        assert_eq!(of(&nodes), before);
        // With k = 2, about 2/10 of the backends are owned by each node.
        let share = before.iter().filter(|o| o.contains(&nodes[0])).count();
        assert!((120..=280).contains(&share), "{share}");
    }

    #[test]
    fn the_view_follows_reports_and_nodes() {
        let mut v = FleetView::default();
        let (t, nodes) = v.apply(vec![
            HealthEvent::NodeUp("n1".into()),
            HealthEvent::Report {
                backend: "b".into(),
                node: "n1".into(),
                report: r("n1", true, &[]),
                revision: 5,
            },
        ]);
        assert!(nodes && t.contains("b"));
        // A refreshed registration is not a membership change.
        let (_, nodes) = v.apply(vec![HealthEvent::NodeUp("n1".into())]);
        assert!(!nodes);
        let (t, _) = v.apply(vec![HealthEvent::Withdrawn {
            backend: "b".into(),
            node: "n1".into(),
        }]);
        assert!(t.contains("b") && v.reports("b").is_none());
        // Its last word stands, for this identity only, until a new report arrives.
        assert_eq!(v.last_word("b", &[]).map(|s| s.revision), Some(5));
        assert!(v.last_word("b", &["127.0.0.1:9".into()]).is_none());
        let (_, nodes) = v.apply(vec![HealthEvent::NodeDown("n1".into())]);
        assert!(nodes && v.nodes().is_empty());
        v.apply(vec![HealthEvent::Report {
            backend: "b".into(),
            node: "n2".into(),
            report: r("n2", false, &[]),
            revision: 9,
        }]);
        assert!(v.last_word("b", &[]).is_none());
    }

    #[test]
    fn an_owners_handover_keeps_the_verdict_and_the_window() {
        let mut v = FleetView::default();
        let mut report = r("n1", false, &["127.0.0.1:1"]);
        report.happy = 0b1010;
        v.apply(vec![
            HealthEvent::Report {
                backend: "b".into(),
                node: "n1".into(),
                report,
                revision: 3,
            },
            HealthEvent::Withdrawn {
                backend: "b".into(),
                node: "n1".into(),
            },
        ]);
        let id = vec!["127.0.0.1:1".to_owned()];
        let last = v.last_word("b", &id).unwrap();
        assert!(!last.report.healthy);
        assert_eq!(last.report.happy, 0b1010);
    }
}
