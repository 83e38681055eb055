//! The write path's copy of the stored configuration, kept current by a watch: a write starts
//! from it instead of listing the whole store (at 10,000 backends the listing was most of a
//! one-backend change's time on etcd).
//!
//! Used only when it is provably current: at least at the store's revision read when the
//! write begins (a cheap call), so the write validates exactly what a fresh listing would
//! have given — the serial compare at commit then guards the rest, as before. When it is
//! behind for longer than [`CATCH_UP`] (the watch is slow, or other prefixes of a shared etcd
//! move the store's revision without events under ours) or its watch ended, the write lists
//! the store as it always did and the cache starts again from that listing.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tether_proto::keys::Layout;

use crate::state::State;
use crate::store::Store;

/// How long a write waits for the cache to reach the store's revision before it lists.
const CATCH_UP: Duration = Duration::from_millis(50);

/// The cache (shared by an [`super::Api`]'s clones).
#[derive(Debug, Default)]
pub(super) struct StateCache {
    inner: Mutex<Option<Cached>>,
    moved: tokio::sync::Notify,
    /// Seeds so far: a watch applies its events only to the state it was started for (one
    /// replaced, but not yet stopped, must not touch its successor).
    seeds: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Cached {
    generation: u64,
    state: State,
    /// The watch ended (an error, compaction): the cache is not used again.
    dead: bool,
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for Cached {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl StateCache {
    fn with<T>(&self, f: impl FnOnce(&mut Option<Cached>) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The cached state if it reaches `revision` within [`CATCH_UP`]; `None`: list.
    pub(super) async fn at_least(&self, revision: i64) -> Option<State> {
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            // Registered before looking, so a move between the look and the wait is seen.
            moved.as_mut().enable();
            let ready = self.with(|c| match c {
                Some(c) if !c.dead && c.state.revision >= revision => Some(Some(c.state.clone())),
                Some(c) if !c.dead => None,
                _ => Some(None),
            });
            if let Some(s) = ready {
                return s;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return None;
            }
        }
    }

    /// Starts again from `state` (a fresh listing), watching `store` from its revision on.
    pub(super) fn seed<S: Store>(self: &Arc<Self>, state: State, store: &S, layout: &Layout) {
        let weak = Arc::downgrade(self);
        let (store, layout) = (store.clone(), layout.clone());
        let from = state.revision + 1;
        let generation = self
            .seeds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Stored before the watch starts, so its first batch finds it.
        self.with(|c| {
            let watch = tokio::spawn(follow(weak, store, layout, from, generation));
            *c = Some(Cached {
                generation,
                state,
                dead: false,
                watch,
            });
        });
    }
}

/// Applies the store's changes under the layout's root to the cache, from `from` on, until
/// the watch ends (then marks the cache dead) or the cache is dropped.
async fn follow<S: Store>(
    cache: Weak<StateCache>,
    store: S,
    layout: Layout,
    from: i64,
    generation: u64,
) {
    let mut rx = match store.watch(layout.root(), from).await {
        Ok(rx) => rx,
        Err(e) => {
            tracing::debug!(error = %e, "the write path's cache could not watch; writes list the store");
            mark_dead(&cache, generation);
            return;
        }
    };
    while let Some(batch) = rx.recv().await {
        let Some(c) = cache.upgrade() else { return };
        match batch {
            Ok(b) => {
                c.with(|slot| {
                    if let Some(cached) = slot.as_mut().filter(|c| c.generation == generation)
                        && b.revision > cached.state.revision
                    {
                        // Undecodable objects are left out, as a listing leaves them out.
                        let _ = cached.state.apply_events(&layout, b.revision, &b.events);
                    }
                });
                c.moved.notify_waiters();
            }
            Err(e) => {
                tracing::debug!(error = %e, "the write path's cache stopped; writes list the store");
                break;
            }
        }
    }
    mark_dead(&cache, generation);
}

fn mark_dead(cache: &Weak<StateCache>, generation: u64) {
    if let Some(c) = cache.upgrade() {
        c.with(|slot| {
            if let Some(cached) = slot.as_mut().filter(|c| c.generation == generation) {
                cached.dead = true;
            }
        });
        c.moved.notify_waiters();
    }
}
