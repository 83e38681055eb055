//! Shared health, the data plane's side (DESIGN §6): where this node's probe verdicts come
//! from, and the outbox of probe results this node owes the fleet.
//!
//! - [`Source::Local`] (`tether up`, `--shared-health=false`, and any node cut off from the
//!   store for longer than the grace): every backend's verdict is this node's own probe window,
//!   as before shared health.
//! - [`Source::Fleet`]: a backend's verdict is the fleet verdict the node agent computed from
//!   the owners' stored reports (`BackendRuntime::set_fleet`); only the backends this node
//!   owns are probed here, and their results go to the [`FleetHealth::outbox`], which the agent
//!   publishes.
//!
//! The node agent (`tether_controlplane::node::fleet`) decides ownership, computes verdicts and
//! switches the source; this module only holds what the probe loops and the proxy read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::config::Address;

/// Where verdicts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This node's own probes.
    Local,
    /// The fleet verdict from the store.
    Fleet,
}

impl Source {
    /// As `/metrics`, `/state` and the node record name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Fleet => "fleet",
        }
    }
}

/// What this node does for one probed backend while verdicts come from the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Routes on the fleet verdict; does not probe it.
    #[default]
    Follow,
    /// One of its owners: probes it, posts each outcome for publishing, and routes on the
    /// fleet verdict (its own results come back through the store, as every node's do).
    Own,
    /// Probes it and routes on its own window, because no owner has reported on it and this
    /// node cannot be one (a follower of `--controlplane`, which holds no lease).
    Alone,
}

impl Role {
    /// As `/state` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follow => "follow",
            Role::Own => "own",
            Role::Alone => "alone",
        }
    }
}

/// One probe result of an owned backend, as the agent publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The identity probed (its addresses).
    pub addresses: Vec<Address>,
    /// The window's shift register after the probe.
    pub happy: u64,
    /// Window size.
    pub window: u32,
    /// Threshold.
    pub threshold: u32,
    /// Successes in the window.
    pub good: u32,
    /// The window's verdict.
    pub healthy: bool,
    /// Why the probe failed, if it did.
    pub last_error: Option<String>,
}

/// The runtime's shared-health state.
#[derive(Debug, Default)]
pub struct FleetHealth {
    fleet: AtomicBool,
    /// The latest outcome per owned backend name, not yet taken by the publisher (one entry
    /// per backend however many probes ran: bounded by the configuration).
    outbox: Mutex<FxHashMap<String, Outcome>>,
    /// Wakes the publisher.
    pub posted: Notify,
    /// Probes this node sent.
    pub probes_sent: AtomicU64,
    /// Reports the agent published.
    pub published: AtomicU64,
    /// Times the source switched (to local when the store went unseen, back to fleet).
    pub source_changes: AtomicU64,
}

impl FleetHealth {
    /// Where verdicts come from now.
    pub fn source(&self) -> Source {
        if self.fleet.load(Ordering::Acquire) {
            Source::Fleet
        } else {
            Source::Local
        }
    }

    /// Sets the source; whether it changed. (Backends re-read it through
    /// `Runtime::set_health_source`, which calls this.)
    pub(crate) fn set_source(&self, source: Source) -> bool {
        let changed =
            self.fleet.swap(source == Source::Fleet, Ordering::AcqRel) != (source == Source::Fleet);
        if changed {
            self.source_changes.fetch_add(1, Ordering::Relaxed);
        }
        changed
    }

    /// Posts an owned backend's probe outcome for publishing.
    pub(crate) fn post(&self, backend: &str, outcome: Outcome) {
        self.outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(backend.to_owned(), outcome);
        self.posted.notify_one();
    }

    /// Takes every posted outcome.
    pub fn take(&self) -> FxHashMap<String, Outcome> {
        std::mem::take(&mut *self.outbox.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
