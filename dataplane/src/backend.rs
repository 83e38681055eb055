//! Runtime state of one backend identity — `(name, addresses)`, DESIGN §3 — that outlives
//! configuration revisions: the connection pool, the probe window and verdict, the time of the
//! last health change (for rampup) and the counters. A snapshot refers to these by `Arc`; the
//! [`crate::runtime::Runtime`] hands the same `Arc` to every snapshot in which the identity is
//! unchanged, and drops it (ending its probe loop and closing its idle connections) when the
//! identity leaves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{Address, BackendSpec, ProbeSpec};
use crate::fleet::{FleetHealth, Outcome, Role, Source};
use crate::health::{ProbeError, Transport, Window};
use crate::histogram::Histogram;
use crate::pool::Pool;
use crate::resolve::Dns;

/// The identity of a backend's runtime state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Backend name.
    pub name: String,
    /// Its addresses, in order.
    pub addresses: Vec<Address>,
}

impl Identity {
    /// The identity of a configured backend.
    pub fn of(spec: &BackendSpec) -> Identity {
        Identity {
            name: spec.name.clone(),
            addresses: spec.addresses().cloned().collect(),
        }
    }

    /// Whether this is the identity of `spec` (without building that identity).
    pub fn is(&self, spec: &BackendSpec) -> bool {
        self.name == spec.name && self.addresses.iter().eq(spec.addresses())
    }
}

/// Status codes counted without a lock per backend; others go to a locked map.
const STATUS_SLOTS: usize = 8;

/// Responses by status: a few lock-free slots, claimed by the first statuses seen (a backend
/// answers with few distinct ones), then a locked map for the rest.
#[derive(Debug, Default)]
pub struct StatusCounts {
    codes: [std::sync::atomic::AtomicU16; STATUS_SLOTS],
    counts: [AtomicU64; STATUS_SLOTS],
    rest: Mutex<BTreeMap<u16, u64>>,
}

impl StatusCounts {
    /// Counts one response.
    pub fn add(&self, status: u16) {
        for (code, count) in self.codes.iter().zip(&self.counts) {
            let mut c = code.load(Ordering::Acquire);
            if c == 0 {
                c = match code.compare_exchange(0, status, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => status,
                    Err(taken) => taken,
                };
            }
            if c == status {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        *self
            .rest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(status)
            .or_default() += 1;
    }

    /// Every status with its count, in status order.
    pub fn snapshot(&self) -> BTreeMap<u16, u64> {
        let mut out = self
            .rest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (code, count) in self.codes.iter().zip(&self.counts) {
            let c = code.load(Ordering::Acquire);
            if c != 0 {
                *out.entry(c).or_default() += count.load(Ordering::Relaxed);
            }
        }
        out
    }
}

/// Per-backend counters, exported by `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Responses by status (including the proxy's own 502/504 for this backend).
    pub by_status: StatusCounts,
    /// Latency to the response head.
    pub latency: Histogram,
    /// Good probes.
    pub probes_good: AtomicU64,
    /// Failed probes.
    pub probes_bad: AtomicU64,
    /// Health transitions (probe or admin).
    pub transitions: AtomicU64,
}

impl Counters {
    /// Records one response.
    pub fn record(&self, status: u16, latency: Duration) {
        self.by_status.add(status);
        self.latency.observe(latency);
    }
}

#[derive(Debug)]
struct ProbeState {
    spec: Option<ProbeSpec>,
    host: String,
    transport: Arc<Transport>,
    window: Option<Window>,
    running: bool,
    last_error: Option<String>,
    /// The fleet verdict (shared health): `None` while no owner has reported.
    fleet_verdict: Option<bool>,
    /// What this node does for it under fleet health.
    role: Role,
}

impl ProbeState {
    /// The probe verdict to route on, from `source`: this node's window when it decides
    /// itself (local health, or fleet health on a backend it probes [`Role::Alone`]); the
    /// fleet's otherwise. For an identity nobody has reported on yet (the fleet just
    /// started), an owner goes by its own window (its report is on its way) and any other
    /// node keeps the verdict it routes on now (`current`) — a node that probed it alone
    /// before it listed the fleet's reports must not flip it to a fresh window's verdict — or,
    /// for a backend new to it (`current` `None`), a fresh window's: Varnish's `initial`.
    fn verdict(&self, source: Source, current: Option<bool>) -> Option<bool> {
        let spec = self.spec.as_ref()?;
        let own = || self.window.as_ref().is_some_and(Window::healthy);
        Some(if self.decides_here(source) {
            own()
        } else {
            match (self.fleet_verdict, self.role) {
                (Some(v), _) => v,
                (None, Role::Own) => own(),
                (None, _) => current.unwrap_or_else(|| Window::new(spec).healthy()),
            }
        })
    }

    /// Whether this node's own window is the verdict.
    fn decides_here(&self, source: Source) -> bool {
        source == Source::Local || self.role == Role::Alone
    }
}

/// The runtime state of one backend identity.
#[derive(Debug)]
pub struct BackendRuntime {
    /// Name (part of the identity).
    pub name: String,
    /// First address (probes and connections start here).
    pub address: Address,
    /// Keep-alive connections.
    pub pool: Arc<Pool>,
    /// Counters.
    pub counters: Counters,
    probe: Mutex<ProbeState>,
    /// Probe verdict; true when there is no probe.
    probe_healthy: AtomicBool,
    changed: Mutex<Instant>,
    /// Drained (`drain: true`) or gone from the configuration: its open tunnels close after
    /// the drain deadline.
    draining: tokio::sync::watch::Sender<bool>,
    /// The runtime's shared-health state (where verdicts come from; the outbox).
    pub(crate) fleet: Arc<FleetHealth>,
}

impl BackendRuntime {
    /// Fresh state for a new identity.
    pub fn new(spec: &BackendSpec, dns: &Arc<Dns>, fleet: &Arc<FleetHealth>) -> BackendRuntime {
        BackendRuntime {
            name: spec.name.clone(),
            address: spec.address.clone(),
            pool: Arc::new(Pool::new(
                spec.addresses().cloned().collect(),
                Arc::clone(dns),
            )),
            counters: Counters::default(),
            probe: Mutex::new(ProbeState {
                spec: None,
                host: String::new(),
                transport: Arc::default(),
                window: None,
                running: false,
                last_error: None,
                fleet_verdict: None,
                role: Role::Follow,
            }),
            probe_healthy: AtomicBool::new(true),
            changed: Mutex::new(Instant::now()),
            draining: tokio::sync::watch::Sender::new(spec.drain),
            fleet: Arc::clone(fleet),
        }
    }

    /// Marks the backend drained (or gone), or not: open tunnels follow it.
    pub fn set_draining(&self, draining: bool) {
        self.draining
            .send_if_modified(|d| std::mem::replace(d, draining) != draining);
    }

    /// Follows [`BackendRuntime::set_draining`].
    pub fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining.subscribe()
    }

    fn probe_state(&self) -> std::sync::MutexGuard<'_, ProbeState> {
        self.probe.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the probe of this revision. Returns true when a probe loop must be started.
    /// A backend that gains a probe starts with `initial` good probes (sick with the
    /// defaults, until its first good probe); one that keeps its probe keeps its window.
    pub fn set_probe(&self, spec: Option<&ProbeSpec>, host: String, transport: Transport) -> bool {
        let mut p = self.probe_state();
        p.host = host;
        if *p.transport != transport {
            p.transport = Arc::new(transport);
        }
        match spec {
            None => {
                p.spec = None;
                p.window = None;
                drop(p);
                self.set_probe_healthy(true, "probe removed");
                false
            }
            Some(s) => {
                let fresh = p.window.is_none();
                match &mut p.window {
                    Some(w) => w.reconfigure(s),
                    None => p.window = Some(Window::new(s)),
                }
                p.spec = Some(s.clone());
                let current = (!fresh).then(|| self.probe_healthy());
                let healthy = p.verdict(self.fleet.source(), current).unwrap_or(true);
                let start = !p.running;
                p.running = true;
                drop(p);
                if fresh {
                    // Not a transition: the initial state of a newly probed backend.
                    self.probe_healthy.store(healthy, Ordering::Release);
                } else {
                    self.set_probe_healthy(healthy, "probe settings changed");
                }
                start
            }
        }
    }

    /// The probe and the Host header to send; `None` when the probe was removed, which also
    /// marks the loop as ended (under the same lock, so a probe added meanwhile starts a new
    /// loop rather than finding this one gone).
    pub fn probe_settings(&self) -> Option<(ProbeSpec, String, Arc<Transport>)> {
        let mut p = self.probe_state();
        match p.spec.clone() {
            Some(s) => Some((s, p.host.clone(), Arc::clone(&p.transport))),
            None => {
                p.running = false;
                None
            }
        }
    }

    /// Records one probe result.
    pub fn record_probe(&self, spec: &ProbeSpec, result: Result<(), ProbeError>) {
        let ok = result.is_ok();
        let counter = if ok {
            &self.counters.probes_good
        } else {
            &self.counters.probes_bad
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut p = self.probe_state();
        if p.spec.is_none() {
            return;
        }
        let Some(w) = p.window.as_mut() else { return };
        w.reconfigure(spec);
        w.push(ok);
        let w = *w;
        p.last_error = result.err().map(|e| e.to_string());
        if !p.decides_here(self.fleet.source()) {
            // The verdict comes back through the store, as every node's does.
            if p.role == Role::Own {
                let outcome = Outcome {
                    addresses: self.pool.addresses().to_vec(),
                    happy: w.happy(),
                    window: w.size(),
                    threshold: w.threshold(),
                    good: w.good(),
                    healthy: w.healthy(),
                    last_error: p.last_error.clone(),
                };
                // Until the fleet's first report on it, an owner routes on its own window.
                let unreported = p.fleet_verdict.is_none();
                drop(p);
                self.fleet.post(&self.name, outcome);
                if unreported {
                    self.set_probe_healthy(w.healthy(), "own probe, before the first report");
                }
            }
            return;
        }
        let why = match &p.last_error {
            Some(e) => format!("probe {}/{}, last: {e}", w.good(), w.size()),
            None => format!("probe {}/{}", w.good(), w.size()),
        };
        drop(p);
        self.set_probe_healthy(w.healthy(), &why);
    }

    /// Whether this node probes the backend now: always on local health; on fleet health as
    /// one of its owners, or alone while nobody reports on it.
    pub fn should_probe(&self) -> bool {
        self.fleet.source() == Source::Local || self.probe_state().role != Role::Follow
    }

    /// Takes the fleet's word on this backend (shared health): its verdict (`None`: no owner
    /// has reported), this node's role, and — for a node that just became an owner — the
    /// published window to continue (`None`: [`Window::taking_over`] from the verdict it
    /// routes on). A node that starts probing alone starts from the verdict it routed on, so
    /// nothing flips merely because it starts probing.
    pub fn set_fleet(&self, verdict: Option<bool>, role: Role, continue_from: Option<u64>) {
        let mut p = self.probe_state();
        p.fleet_verdict = verdict;
        if role != p.role
            && let Some(spec) = p.spec.clone()
        {
            match role {
                Role::Own => {
                    p.window = Some(match continue_from {
                        Some(happy) => Window::continuing(happy, &spec),
                        None => Window::taking_over(self.probe_healthy(), &spec),
                    });
                }
                Role::Alone => p.window = Some(Window::primed(self.probe_healthy(), &spec)),
                Role::Follow => {}
            }
        }
        p.role = role;
        let v = p.verdict(self.fleet.source(), Some(self.probe_healthy()));
        drop(p);
        if let Some(v) = v {
            self.set_probe_healthy(v, "fleet verdict");
        }
    }

    /// Follows a change of the runtime's verdict source. A node falling back to its own probes
    /// starts the windows it did not keep (backends it only followed) from the verdict it
    /// routed on, so nothing flips merely because it starts probing.
    pub(crate) fn source_changed(&self, source: Source) {
        let mut p = self.probe_state();
        if source == Source::Local
            && p.role == Role::Follow
            && let Some(spec) = p.spec.clone()
        {
            p.window = Some(Window::primed(self.probe_healthy(), &spec));
        }
        let v = p.verdict(source, Some(self.probe_healthy()));
        drop(p);
        if let Some(v) = v {
            self.set_probe_healthy(v, source.as_str());
        }
    }

    /// Whether this node owns the backend's probe (shared health).
    pub fn owned(&self) -> bool {
        self.role() == Role::Own
    }

    /// What this node does for it under fleet health.
    pub fn role(&self) -> Role {
        self.probe_state().role
    }

    /// The fleet's verdict as this node last received it (shared health; `None` before any
    /// owner's report).
    pub fn fleet_verdict(&self) -> Option<bool> {
        self.probe_state().fleet_verdict
    }

    /// The window's shift register, for a fallback or a new owner to continue.
    pub fn probe_bits(&self) -> Option<u64> {
        self.probe_state().window.as_ref().map(Window::happy)
    }

    fn set_probe_healthy(&self, healthy: bool, why: &str) {
        if self.probe_healthy.swap(healthy, Ordering::AcqRel) != healthy {
            self.mark_changed();
            let state = if healthy { "healthy" } else { "sick" };
            tracing::info!(backend = %self.name, %why, "backend went {state}");
        }
    }

    /// Records a health change (probe, admin override or drain), for rampup and the counter.
    pub fn mark_changed(&self) {
        *self.changed.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.counters.transitions.fetch_add(1, Ordering::Relaxed);
    }

    /// The probe verdict (true without a probe).
    pub fn probe_healthy(&self) -> bool {
        self.probe_healthy.load(Ordering::Acquire)
    }

    /// `good/window` of the probe, if any, as Varnish's `backend.list` shows it.
    pub fn probe_window(&self) -> Option<(u32, u32)> {
        let p = self.probe_state();
        p.spec.as_ref()?;
        p.window.as_ref().map(|w| (w.good(), w.size()))
    }

    /// Why the last probe failed (`None` when it succeeded, or there is no probe).
    pub fn probe_error(&self) -> Option<String> {
        self.probe_state().last_error.clone()
    }

    /// Time since the last health change.
    pub fn since_change(&self) -> Duration {
        self.changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
    }
}

/// Shared handle.
pub type BackendRef = Arc<BackendRuntime>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::DnsConfig;

    /// Varnish's defaults: a fresh window is sick (initial 2 < threshold 3).
    fn state(role: Role, fleet_verdict: Option<bool>, good_probes: usize) -> ProbeState {
        let spec = ProbeSpec::new("p");
        let mut w = Window::new(&spec);
        for _ in 0..good_probes {
            w.push(true);
        }
        ProbeState {
            spec: Some(spec),
            host: String::new(),
            transport: Arc::default(),
            window: Some(w),
            running: true,
            last_error: None,
            fleet_verdict,
            role,
        }
    }

    #[test]
    fn before_the_first_report_nothing_flips_to_a_fresh_window() {
        use Source::{Fleet, Local};
        // Healthy from its own probes (as on local health before the fleet was listed):
        // a follower keeps the verdict it routes on; a backend new to it starts as `initial`.
        let follower = state(Role::Follow, None, 0);
        assert_eq!(follower.verdict(Fleet, Some(true)), Some(true));
        assert_eq!(follower.verdict(Fleet, Some(false)), Some(false));
        assert_eq!(follower.verdict(Fleet, None), Some(false));
        // An owner goes by its own window until its report comes back.
        assert_eq!(
            state(Role::Own, None, 1).verdict(Fleet, Some(false)),
            Some(true)
        );
        assert_eq!(
            state(Role::Own, None, 0).verdict(Fleet, Some(true)),
            Some(false)
        );
        // Once reported, the fleet's verdict is the verdict, whatever the node saw itself.
        assert_eq!(
            state(Role::Own, Some(false), 5).verdict(Fleet, Some(true)),
            Some(false)
        );
        assert_eq!(
            state(Role::Follow, Some(true), 0).verdict(Fleet, None),
            Some(true)
        );
        // On local health the node's own window decides.
        assert_eq!(
            state(Role::Follow, Some(true), 0).verdict(Local, Some(true)),
            Some(false)
        );
    }

    /// A probed backend on fleet health, never probed yet.
    fn probed() -> BackendRuntime {
        let spec = BackendSpec::new("b", "127.0.0.1:1".parse().unwrap());
        let fleet = Arc::new(FleetHealth::default());
        fleet.set_source(Source::Fleet);
        let b = BackendRuntime::new(&spec, &Arc::new(Dns::new(DnsConfig::default())), &fleet);
        let probe = ProbeSpec::new("p");
        b.set_probe(Some(&probe), String::new(), Transport::default());
        b
    }

    #[test]
    fn a_new_owner_with_no_report_to_continue_keeps_the_verdict_it_routes_on() {
        // Healthy by the fleet's last word, then its owner died before anyone kept a report:
        // the node that takes the probe over stays healthy until its own probes say otherwise.
        let b = probed();
        b.set_fleet(Some(true), Role::Follow, None);
        assert!(b.probe_healthy());
        b.set_fleet(None, Role::Own, None);
        assert!(
            b.probe_healthy(),
            "taking the probe over flipped the verdict"
        );
        // A backend new to the fleet starts as Varnish's `initial` says (sick by default)...
        let fresh = probed();
        fresh.set_fleet(None, Role::Own, None);
        assert!(!fresh.probe_healthy());
        // ...and its first good probes count from there, as a new probe's do.
        let spec = ProbeSpec::new("p");
        let needed = spec.threshold - spec.initial.min(spec.threshold);
        for _ in 0..needed {
            fresh.record_probe(&spec, Ok(()));
        }
        assert!(fresh.probe_healthy());
    }
}
