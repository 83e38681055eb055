//! The node agent: what a proxy node runs to follow the store.
//!
//! It lives in the control-plane crate because it needs the stored model — protobuf
//! decoding, validation ([`crate::convert`]), the [`crate::store::Store`] trait — that the
//! data-plane crate deliberately does not depend on; the data plane gets only a
//! [`Runtime`] to install snapshots into.
//!
//! Modules:
//! - [`source`]: the narrow [`Source`] trait the follower reads (list; watch from a revision),
//!   implemented over any store by [`StoreSource`] (embedded, etcd) and by
//!   [`remote::RemoteSource`] over a control plane's `GetSnapshot` + `Watch`;
//! - [`follower`]: the state machine `Listing → Watching { revision }` that turns each revision
//!   into a snapshot ([`follower::apply`]) — the only writer of it;
//! - [`cache`]: the snapshot cache on the node's disk (start from it while the store is down);
//! - [`register`]: the node's record under a lease (cluster mode);
//! - [`fleet`]: shared health (cluster mode) — probe ownership by rendezvous over the
//!   registered nodes, the fleet verdict from the owners' reports, publishing this node's;
//! - [`supervise`]: restarts a task that ended early, counts it, clears readiness;
//! - [`backoff`]: the one jittered backoff, reset only after a healthy period;
//! - [`shutdown`]: the signal every task watches.
//!
//! Data flow: [`Source`] → [`source::Batch`] of decoded [`crate::state::Change`]s →
//! [`crate::state::State`] → `convert::validate_leaving_out` → `Runtime::install` → the proxy's
//! next request; node registrations and health reports go from the same batches to
//! [`fleet::Shared`], which sets each backend's verdict. [`run`] starts the follower (and the
//! registration and the health publisher) under supervisors.

pub mod backoff;
pub mod cache;
pub mod fleet;
pub mod follower;
pub mod register;
pub mod remote;
pub mod shutdown;
pub mod source;
pub mod supervise;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tether_dataplane::runtime::Runtime;

pub use follower::{Follower, Options};
pub use register::{Identity, Registration};
pub use shutdown::Shutdown;
pub use source::{Source, StoreSource};

/// Runs the node agent until `shutdown`: the follower of `source` feeding `rt` and, in cluster
/// mode, the node's registration, each under a supervisor. While the follower is down (between
/// an early end and its restart) the node is not ready; the restarted follower lists again
/// and marks it ready.
pub async fn run<S: Source + Clone>(
    source: S,
    rt: Arc<Runtime>,
    opts: Options,
    registration: Option<Registration>,
    shutdown: Shutdown,
) {
    let shared = opts.shared.clone();
    let follower = {
        let rt = Arc::clone(&rt);
        supervise::supervise(
            "follower",
            shutdown.clone(),
            down(&rt, Task::Follower),
            move |s| Follower::new(source.clone(), Arc::clone(&rt), opts.clone()).run(s),
        )
    };
    let (lease_tx, lease_rx) = tokio::sync::watch::channel(None);
    let publisher = {
        let (rt, reg, shutdown) = (Arc::clone(&rt), registration.clone(), shutdown.clone());
        async move {
            let Some(shared) = shared else { return };
            let Some(reg) = reg else {
                // No lease to publish under (a follower of the control plane): only the
                // verdict source to keep.
                fleet::watch_source(&shared, &rt, shutdown).await;
                return;
            };
            let down = down(&rt, Task::Publisher);
            supervise::supervise("health publisher", shutdown, down, move |s| {
                fleet::publish(
                    Arc::clone(&shared),
                    reg.store.clone(),
                    reg.layout.clone(),
                    Arc::clone(&rt),
                    lease_rx.clone(),
                    s,
                )
            })
            .await;
        }
    };
    let registration = async {
        if let Some(reg) = registration.clone() {
            let down = down(&rt, Task::Registration);
            supervise::supervise("registration", shutdown.clone(), down, move |s| {
                register::register(reg.clone(), Arc::clone(&rt), lease_tx.clone(), s)
            })
            .await;
        }
    };
    tokio::join!(follower, registration, publisher);
}

/// The node agent's supervised tasks.
#[derive(Debug, Clone, Copy)]
enum Task {
    Follower,
    Registration,
    Publisher,
}

/// What happens when a supervised task ends early: it is counted, and — for the follower, whose
/// absence freezes the configuration — the node stops being ready until it has listed again.
fn down(rt: &Arc<Runtime>, task: Task) -> impl Fn() + use<> {
    let rt = Arc::clone(rt);
    move || {
        let c = &rt.counters;
        match task {
            Task::Follower => {
                c.follower_restarts.fetch_add(1, Ordering::Relaxed);
                rt.clear_ready();
            }
            Task::Registration => {
                c.registration_restarts.fetch_add(1, Ordering::Relaxed);
            }
            Task::Publisher => {
                c.publisher_restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
