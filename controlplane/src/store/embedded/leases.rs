//! Leases of the embedded store, with etcd's semantics: a grant is stored (its id and TTL), a
//! renewal only moves the deadline in memory (no write, no fsync: 1,000 leases renewed every
//! few seconds cost no disk), and expiry or revocation deletes every key bound to the lease at
//! one revision. On open every stored lease gets its full TTL again (etcd does the same when a
//! new leader takes over), so a restart of `tether up` never expires a lease whose holder is
//! renewing it; a holder that died meanwhile loses it one TTL after the restart.
//!
//! A reaper thread (holding the store weakly, so it ends with the store) revokes leases past
//! their deadline every [`REAP_TICK`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, Table, WriteTransaction};

use super::{
    Inner, KEY_LEASE, KV, LEASE_KEYS, LEASES, LeaseStatus, META, REVISION, StoreError, record,
    remove, storage,
};

/// How often the reaper looks for expired leases: the most an expiry can be late by.
const REAP_TICK: Duration = Duration::from_millis(100);
/// The most leases the store holds at once (each a stored row and a deadline in memory): a
/// grant beyond is refused, so a client granting in a loop cannot grow them without bound.
pub const MAX_LEASES: usize = 100_000;
/// The meta key holding the last lease id granted.
const LAST_LEASE: &str = "lease";

#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl: i64,
    deadline: Instant,
}

/// The live leases and their deadlines, and how many may live at once.
#[derive(Debug)]
pub(super) struct Live(Mutex<HashMap<i64, Lease>>, AtomicUsize);

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

impl Live {
    /// The stored leases, each with its full TTL from now.
    pub(super) fn load(db: &Database) -> Result<Live, StoreError> {
        let r = db.begin_read().map_err(storage)?;
        let table = r.open_table(LEASES).map_err(storage)?;
        let now = Instant::now();
        let mut map = HashMap::new();
        for entry in table.iter().map_err(storage)? {
            let (id, ttl) = entry.map_err(storage)?;
            let ttl = ttl.value();
            map.insert(
                id.value(),
                Lease {
                    ttl,
                    deadline: now + secs(ttl),
                },
            );
        }
        Ok(Live(Mutex::new(map), AtomicUsize::new(MAX_LEASES)))
    }

    /// Lowers the limit, for a test of it (100,000 grants would take minutes of fsyncs).
    #[cfg(test)]
    pub(super) fn limit_to(&self, n: usize) {
        self.1.store(n, Ordering::Relaxed);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Lease>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is
        // one insert or remove), so a poisoned lock is still good to use.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn alive(&self, id: i64) -> bool {
        self.map()
            .get(&id)
            .is_some_and(|l| l.deadline > Instant::now())
    }

    /// Renews `id` to its full TTL: the TTL, or 0 when it is gone (or expired, not yet reaped).
    pub(super) fn renew(&self, id: i64) -> i64 {
        let now = Instant::now();
        match self.map().get_mut(&id) {
            Some(l) if l.deadline > now => {
                l.deadline = now + secs(l.ttl);
                l.ttl
            }
            _ => 0,
        }
    }

    pub(super) fn status(&self, id: i64) -> Option<LeaseStatus> {
        let now = Instant::now();
        self.map()
            .get(&id)
            .filter(|l| l.deadline > now)
            .map(|l| LeaseStatus {
                id,
                granted_ttl: l.ttl,
                // Rounded up, as etcd does: a lease with 0.4 s left has 1 s, not 0 (gone).
                remaining: i64::try_from(l.deadline.saturating_duration_since(now).as_millis())
                    .map_or(l.ttl, |ms| (ms + 999) / 1000),
            })
    }

    fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        self.map()
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The key ↔ lease tables inside one write transaction.
pub(super) struct Bindings<'t> {
    leases: Table<'t, i64, i64>,
    key_lease: Table<'t, &'static str, i64>,
    lease_keys: Table<'t, (i64, &'static str), ()>,
}

impl<'t> Bindings<'t> {
    pub(super) fn open(w: &'t WriteTransaction) -> Result<Bindings<'t>, StoreError> {
        Ok(Bindings {
            leases: w.open_table(LEASES).map_err(storage)?,
            key_lease: w.open_table(KEY_LEASE).map_err(storage)?,
            lease_keys: w.open_table(LEASE_KEYS).map_err(storage)?,
        })
    }

    /// Binds `key` to `lease` (`None`: to no lease, as a plain put or a delete leaves it),
    /// releasing any lease it had. [`StoreError::LeaseNotFound`] when `lease` is gone: checked
    /// against the stored table, which a revocation changes in its own write transaction, so
    /// a key can never be bound to a lease whose revocation has already run.
    pub(super) fn bind(
        &mut self,
        key: &str,
        lease: Option<i64>,
        live: &Live,
    ) -> Result<(), StoreError> {
        if let Some(id) = lease
            && (self.leases.get(id).map_err(storage)?.is_none() || !live.alive(id))
        {
            return Err(StoreError::LeaseNotFound(id));
        }
        let old = self.key_lease.get(key).map_err(storage)?.map(|v| v.value());
        if old == lease {
            return Ok(());
        }
        if let Some(old) = old {
            self.lease_keys.remove((old, key)).map_err(storage)?;
            self.key_lease.remove(key).map_err(storage)?;
        }
        if let Some(id) = lease {
            self.lease_keys.insert((id, key), ()).map_err(storage)?;
            self.key_lease.insert(key, id).map_err(storage)?;
        }
        Ok(())
    }
}

impl Inner {
    pub(super) fn lease_grant(&self, ttl: i64) -> Result<i64, StoreError> {
        let w = self.db.begin_write().map_err(storage)?;
        // Grants are serialised by the write transaction, so the count cannot overshoot by
        // more than the grants between a commit and its insert below.
        let limit = self.leases.1.load(Ordering::Relaxed);
        if self.leases.map().len() >= limit {
            return Err(StoreError::LeaseLimit(limit));
        }
        let id = {
            let mut meta = w.open_table(META).map_err(storage)?;
            let id = meta
                .get(LAST_LEASE)
                .map_err(storage)?
                .map_or(0, |v| v.value())
                + 1;
            meta.insert(LAST_LEASE, id).map_err(storage)?;
            w.open_table(LEASES)
                .map_err(storage)?
                .insert(id, ttl)
                .map_err(storage)?;
            id
        };
        w.commit().map_err(storage)?;
        self.leases.map().insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + secs(ttl),
            },
        );
        Ok(id)
    }

    /// Revokes `id`: its keys deleted at one new revision (none if it had no keys). False when
    /// there was no such lease.
    pub(super) fn lease_revoke(&self, id: i64) -> Result<bool, StoreError> {
        let w = self.db.begin_write().map_err(storage)?;
        let revision = {
            let mut leases = w.open_table(LEASES).map_err(storage)?;
            if leases.remove(id).map_err(storage)?.is_none() {
                drop(leases);
                drop(w);
                self.leases.map().remove(&id);
                return Ok(false);
            }
            let mut lease_keys = w.open_table(LEASE_KEYS).map_err(storage)?;
            let mut key_lease = w.open_table(KEY_LEASE).map_err(storage)?;
            let mut kv = w.open_table(KV).map_err(storage)?;
            let mut meta = w.open_table(META).map_err(storage)?;
            let keys: Vec<String> = lease_keys
                .range((id, "")..(id.saturating_add(1), ""))
                .map_err(storage)?
                .map(|e| e.map(|(k, _)| k.value().1.to_owned()).map_err(storage))
                .collect::<Result<_, _>>()?;
            let revision = meta
                .get(REVISION)
                .map_err(storage)?
                .map_or(0, |v| v.value())
                + 1;
            let mut events = Vec::with_capacity(keys.len());
            for key in &keys {
                lease_keys.remove((id, key.as_str())).map_err(storage)?;
                key_lease.remove(key.as_str()).map_err(storage)?;
                events.extend(remove(&mut kv, key, revision)?);
            }
            record(&w, &mut meta, revision, &events)?.then_some(revision)
        };
        w.commit().map_err(storage)?;
        self.leases.map().remove(&id);
        if let Some(revision) = revision {
            let _ = self.notify.send(revision);
        }
        Ok(true)
    }
}

/// Starts the thread that revokes expired leases; it ends when the store is dropped.
pub(super) fn spawn_reaper(store: Weak<Inner>) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("tether-leases".into())
        .spawn(move || {
            loop {
                std::thread::sleep(REAP_TICK);
                let Some(inner) = store.upgrade() else {
                    return;
                };
                for id in inner.leases.expired() {
                    if let Err(e) = inner.lease_revoke(id) {
                        // Tried again next tick: the lease stays expired (renewals refuse it).
                        tracing::warn!(lease = id, error = %e, "expiring a lease failed");
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|e| StoreError::Storage(format!("starting the lease reaper: {e}")))
}
