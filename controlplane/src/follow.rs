//! The data-plane follower: keeps a [`Runtime`] on the store's latest revision.
//!
//! A state machine (see `docs/architecture.md`):
//! `Listing` — list the root at revision R, build and apply the snapshot, mark ready — then
//! `Watching{R}` — watch from R+1 and apply each revision's events together. When the watch
//! ends or fails it re-watches from the last applied revision + 1 after a jittered backoff;
//! when that history is compacted it lists again. A revision that does not validate is not
//! applied: the previous snapshot keeps serving, and the failure is logged and counted.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tether_dataplane::runtime::Runtime;
use tether_proto::keys::Layout;

use crate::convert;
use crate::state::State;
use crate::store::{Store, StoreError};

/// Jittered exponential backoff: 100 ms doubling to 10 s, reset after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// The next delay: a random point in [d/2, d], then d doubles (up to 10 s).
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(10));
        d.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

fn apply(rt: &Runtime, state: &State) {
    match convert::validate(&state.resources()) {
        Ok(v) => match rt.apply(state.revision, v.config) {
            Ok(()) => tracing::debug!(revision = state.revision, "applied"),
            Err(e) => {
                rt.counters
                    .rejected_revisions
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(revision = state.revision, error = %e, "revision not applied; keeping the previous snapshot");
            }
        },
        Err(e) => {
            rt.counters
                .rejected_revisions
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(revision = state.revision, error = %e, "stored configuration is invalid; keeping the previous snapshot");
        }
    }
    rt.saw_revision(state.revision);
}

fn log_decode_errors(rt: &Runtime, errors: Vec<crate::state::DecodeError>) {
    for e in errors {
        rt.counters
            .rejected_revisions
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "stored object does not decode; left out");
    }
}

/// Follows the store until `shutdown` resolves.
pub async fn run<S: Store>(
    store: S,
    layout: Layout,
    rt: Arc<Runtime>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Backoff::default();
    let mut state: Option<State> = None;
    loop {
        // Listing, unless a watch can resume from the applied revision.
        let current = match state.take() {
            Some(s) => s,
            None => match store.list(layout.root()).await {
                Ok(listing) => {
                    let (s, errors) = State::from_listing(&layout, &listing);
                    log_decode_errors(&rt, errors);
                    apply(&rt, &s);
                    rt.set_ready();
                    s
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing the store failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.delay()) => continue,
                        () = &mut shutdown => return,
                    }
                }
            },
        };
        let mut s = current;
        // Watching.
        let mut rx = match store.watch(layout.root(), s.revision + 1).await {
            Ok(rx) => rx,
            Err(StoreError::Compacted { .. }) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watch failed; retrying");
                state = Some(s);
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay()) => continue,
                    () = &mut shutdown => return,
                }
            }
        };
        backoff.reset();
        loop {
            let batch = tokio::select! {
                b = rx.recv() => b,
                () = &mut shutdown => return,
            };
            match batch {
                Some(Ok(b)) => {
                    let errors = s.apply_events(&layout, b.revision, &b.events);
                    log_decode_errors(&rt, errors);
                    apply(&rt, &s);
                }
                Some(Err(StoreError::Compacted { .. })) => {
                    tracing::warn!("watch history compacted; listing again");
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch failed; resuming");
                    state = Some(s);
                    break;
                }
                None => {
                    state = Some(s);
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.delay()) => {}
            () = &mut shutdown => return,
        }
    }
}
