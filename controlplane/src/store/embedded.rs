//! [`EmbeddedStore`]: the [`Store`] of `tether up`, one redb file on local disk.
//!
//! Tables:
//! - `kv`: key → `create_revision ‖ mod_revision ‖ value` (little-endian i64s);
//! - `log`: revision → that revision's events (for watches that resume from a revision);
//! - `meta`: `revision` (the current one), `compacted` (the oldest revision in `log`) and
//!   `lease` (the last lease id granted);
//! - `leases`: lease id → TTL; `key_lease`: key → its lease; `lease_keys`: (lease, key) → ().
//!
//! Leases follow etcd's semantics (see [`leases`]): a renewal is not a write and is not
//! persisted, and on open every stored lease gets its full TTL again, as etcd does when a new
//! leader takes over, so a restart never expires a lease its holder is still renewing.
//!
//! A write is one redb write transaction (compares, ops, new revision, log entry), committed
//! with redb's default immediate durability, so it survives a crash or `kill -9` once `txn`
//! returns. Watchers are woken through a broadcast channel but always read from `log`, so a
//! missed or lagged wake-up costs latency, never an event.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc};

use super::{
    Compare, Event, KeyValue, LeaseStatus, Listing, Op, Store, StoreError, Txn, TxnOutcome,
    WatchBatch, WatchReceiver,
};

mod leases;
pub use leases::MAX_LEASES;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
const KEY_LEASE: TableDefinition<&str, i64> = TableDefinition::new("key_lease");
const LEASE_KEYS: TableDefinition<(i64, &str), ()> = TableDefinition::new("lease_keys");
const REVISION: &str = "revision";
const COMPACTED: &str = "compacted";

/// Revisions a watch reads from the log per round.
const WATCH_PAGE: usize = 256;
/// Batches a watch may have queued for a slow reader.
const WATCH_QUEUE: usize = 64;

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

#[derive(Debug)]
struct Inner {
    db: Database,
    /// Carries each new revision to watchers.
    notify: broadcast::Sender<i64>,
    /// The live leases' deadlines (renewals are kept in memory only, as etcd keeps them).
    leases: leases::Live,
}

/// A durable store in one file.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Database::create(path).map_err(storage)?;
        // Create the tables so that readers never meet a missing one.
        let w = db.begin_write().map_err(storage)?;
        {
            w.open_table(KV).map_err(storage)?;
            w.open_table(LOG).map_err(storage)?;
            w.open_table(LEASES).map_err(storage)?;
            w.open_table(KEY_LEASE).map_err(storage)?;
            w.open_table(LEASE_KEYS).map_err(storage)?;
            let mut meta = w.open_table(META).map_err(storage)?;
            if meta.get(COMPACTED).map_err(storage)?.is_none() {
                meta.insert(COMPACTED, 1).map_err(storage)?;
                meta.insert(REVISION, 0).map_err(storage)?;
            }
        }
        w.commit().map_err(storage)?;
        let leases = leases::Live::load(&db)?;
        let (notify, _) = broadcast::channel(16);
        let inner = Arc::new(Inner { db, notify, leases });
        leases::spawn_reaper(Arc::downgrade(&inner))?;
        Ok(EmbeddedStore { inner })
    }
}

impl Inner {
    fn meta(&self) -> Result<(i64, i64), StoreError> {
        let r = self.db.begin_read().map_err(storage)?;
        let meta = r.open_table(META).map_err(storage)?;
        let get = |k| -> Result<i64, StoreError> {
            Ok(meta.get(k).map_err(storage)?.map_or(0, |v| v.value()))
        };
        Ok((get(REVISION)?, get(COMPACTED)?))
    }

    /// Batches under `prefix` from revision `from`, at most [`WATCH_PAGE`] revisions, and the
    /// next revision to read.
    fn read_log(&self, prefix: &str, from: i64) -> Result<(Vec<WatchBatch>, i64), StoreError> {
        let r = self.db.begin_read().map_err(storage)?;
        let meta = r.open_table(META).map_err(storage)?;
        let compacted = meta
            .get(COMPACTED)
            .map_err(storage)?
            .map_or(1, |v| v.value());
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compact_revision: compacted,
            });
        }
        let log = r.open_table(LOG).map_err(storage)?;
        let mut out = Vec::new();
        let mut next = from;
        for entry in log.range(from..).map_err(storage)?.take(WATCH_PAGE) {
            let (rev, bytes) = entry.map_err(storage)?;
            let revision = rev.value();
            let events: Vec<Event> = decode_events(bytes.value(), revision)?
                .into_iter()
                .filter(|e| e.key().starts_with(prefix))
                .collect();
            if !events.is_empty() {
                out.push(WatchBatch { revision, events });
            }
            next = revision + 1;
        }
        Ok((out, next))
    }
}

fn decode_kv(key: &str, v: &[u8]) -> Result<KeyValue, StoreError> {
    if v.len() < 16 {
        return Err(StoreError::Corrupt(format!(
            "value of {key:?} is {} bytes",
            v.len()
        )));
    }
    let i = |b: &[u8]| i64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    Ok(KeyValue {
        key: key.to_owned(),
        create_revision: i(&v[0..8]),
        mod_revision: i(&v[8..16]),
        value: v[16..].to_vec(),
    })
}

fn encode_kv(create: i64, modified: i64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + value.len());
    v.extend_from_slice(&create.to_le_bytes());
    v.extend_from_slice(&modified.to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// Log record: per event, a tag (1 put, 2 delete, 3 delete with the last value), the key (u32
/// length + bytes) and, for a put, the create revision and the value (u32 length + bytes); for
/// tag 3, the deleted key's create and mod revisions and its last value. (Tag 2 is what files
/// written before deletes kept their value hold; it still reads.)
fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    };
    for e in events {
        match e {
            Event::Put(kv) => {
                out.push(1);
                bytes(&mut out, kv.key.as_bytes());
                out.extend_from_slice(&kv.create_revision.to_le_bytes());
                bytes(&mut out, &kv.value);
            }
            Event::Delete {
                key, prev: None, ..
            } => {
                out.push(2);
                bytes(&mut out, key.as_bytes());
            }
            Event::Delete {
                key,
                prev: Some(prev),
                ..
            } => {
                out.push(3);
                bytes(&mut out, key.as_bytes());
                out.extend_from_slice(&prev.create_revision.to_le_bytes());
                out.extend_from_slice(&prev.mod_revision.to_le_bytes());
                bytes(&mut out, &prev.value);
            }
        }
    }
    out
}

fn decode_events(mut b: &[u8], revision: i64) -> Result<Vec<Event>, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("log entry {revision}"));
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, StoreError> {
        if b.len() < n {
            return Err(corrupt());
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h.to_vec())
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        let tag = take(&mut b, 1)?[0];
        let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().map_err(|_| corrupt())?) as usize;
        let key = String::from_utf8(take(&mut b, len)?).map_err(|_| corrupt())?;
        match tag {
            1 => {
                let create =
                    i64::from_le_bytes(take(&mut b, 8)?.try_into().map_err(|_| corrupt())?);
                let vlen = u32::from_le_bytes(take(&mut b, 4)?.try_into().map_err(|_| corrupt())?)
                    as usize;
                let value = take(&mut b, vlen)?;
                out.push(Event::Put(KeyValue {
                    key,
                    value,
                    create_revision: create,
                    mod_revision: revision,
                }));
            }
            2 => out.push(Event::Delete {
                key,
                mod_revision: revision,
                prev: None,
            }),
            3 => {
                let create =
                    i64::from_le_bytes(take(&mut b, 8)?.try_into().map_err(|_| corrupt())?);
                let modified =
                    i64::from_le_bytes(take(&mut b, 8)?.try_into().map_err(|_| corrupt())?);
                let vlen = u32::from_le_bytes(take(&mut b, 4)?.try_into().map_err(|_| corrupt())?)
                    as usize;
                let value = take(&mut b, vlen)?;
                out.push(Event::Delete {
                    prev: Some(KeyValue {
                        key: key.clone(),
                        value,
                        create_revision: create,
                        mod_revision: modified,
                    }),
                    key,
                    mod_revision: revision,
                });
            }
            _ => return Err(corrupt()),
        }
    }
    Ok(out)
}

/// Removes `key` in a write transaction at `revision`: its delete event, with its last value,
/// when it was there.
fn remove(
    kv: &mut redb::Table<&str, &[u8]>,
    key: &str,
    revision: i64,
) -> Result<Option<Event>, StoreError> {
    let Some(old) = kv.remove(key).map_err(storage)? else {
        return Ok(None);
    };
    Ok(Some(Event::Delete {
        key: key.to_owned(),
        mod_revision: revision,
        prev: Some(decode_kv(key, old.value())?),
    }))
}

/// Makes `events` revision `revision` in a write transaction (its log entry, the current
/// revision); false, writing nothing, when there are none (nothing changed: no new revision).
fn record(
    w: &redb::WriteTransaction,
    meta: &mut redb::Table<&str, i64>,
    revision: i64,
    events: &[Event],
) -> Result<bool, StoreError> {
    if events.is_empty() {
        return Ok(false);
    }
    w.open_table(LOG)
        .map_err(storage)?
        .insert(revision, encode_events(events).as_slice())
        .map_err(storage)?;
    meta.insert(REVISION, revision).map_err(storage)?;
    Ok(true)
}

/// The blocking implementations; [`Store`] runs them on tokio's blocking pool.
impl Inner {
    fn revision(&self) -> Result<i64, StoreError> {
        Ok(self.meta()?.0)
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self.db.begin_read().map_err(storage)?;
        let kv = r.open_table(KV).map_err(storage)?;
        kv.get(key)
            .map_err(storage)?
            .map(|v| decode_kv(key, v.value()))
            .transpose()
    }

    fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        // One read transaction: the keys and the revision come from the same snapshot.
        let r = self.db.begin_read().map_err(storage)?;
        let meta = r.open_table(META).map_err(storage)?;
        let revision = meta
            .get(REVISION)
            .map_err(storage)?
            .map_or(0, |v| v.value());
        let kv = r.open_table(KV).map_err(storage)?;
        let mut kvs = Vec::new();
        for entry in kv.range(prefix..).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            kvs.push(decode_kv(k.value(), v.value())?);
        }
        Ok(Listing { revision, kvs })
    }

    fn txn(&self, txn: &Txn) -> Result<TxnOutcome, StoreError> {
        let w = self.db.begin_write().map_err(storage)?;
        let outcome = {
            let mut kv = w.open_table(KV).map_err(storage)?;
            let mut meta = w.open_table(META).map_err(storage)?;
            let current = meta
                .get(REVISION)
                .map_err(storage)?
                .map_or(0, |v| v.value());
            let mod_rev = |kv: &redb::Table<&str, &[u8]>, key: &str| -> Result<i64, StoreError> {
                Ok(match kv.get(key).map_err(storage)? {
                    Some(v) => decode_kv(key, v.value())?.mod_revision,
                    None => 0,
                })
            };
            let mut failed = None;
            for (i, c) in txn.compares.iter().enumerate() {
                let ok = match c {
                    Compare::Exists(k) => mod_rev(&kv, k)? != 0,
                    Compare::Missing(k) => mod_rev(&kv, k)? == 0,
                    Compare::ModRevision(k, r) => mod_rev(&kv, k)? == *r,
                };
                if !ok {
                    failed = Some(i);
                    break;
                }
            }
            if let Some(compare) = failed {
                TxnOutcome::Failed {
                    compare: Some(compare),
                }
            } else {
                let revision = current + 1;
                let mut events = Vec::new();
                let mut bindings = leases::Bindings::open(&w)?;
                for op in &txn.ops {
                    match op {
                        Op::Put(k, v) | Op::PutLeased(k, v, _) => {
                            // A lease that is gone fails the whole transaction: dropping `w`
                            // uncommitted aborts every op before this one.
                            bindings.bind(k, op.lease(), &self.leases)?;
                            let create = match kv.get(k.as_str()).map_err(storage)? {
                                Some(old) => decode_kv(k, old.value())?.create_revision,
                                None => revision,
                            };
                            kv.insert(k.as_str(), encode_kv(create, revision, v).as_slice())
                                .map_err(storage)?;
                            events.push(Event::Put(KeyValue {
                                key: k.clone(),
                                value: v.clone(),
                                create_revision: create,
                                mod_revision: revision,
                            }));
                        }
                        Op::Delete(k) => {
                            bindings.bind(k, None, &self.leases)?;
                            events.extend(remove(&mut kv, k, revision)?);
                        }
                    }
                }
                if record(&w, &mut meta, revision, &events)? {
                    TxnOutcome::Committed { revision }
                } else {
                    TxnOutcome::Committed { revision: current }
                }
            }
        };
        w.commit().map_err(storage)?;
        if let TxnOutcome::Committed { revision } = outcome {
            // No receiver is not an error: nobody watches.
            let _ = self.notify.send(revision);
        }
        Ok(outcome)
    }

    fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(storage)?;
        {
            let mut meta = w.open_table(META).map_err(storage)?;
            let current = meta
                .get(REVISION)
                .map_err(storage)?
                .map_or(0, |v| v.value());
            if revision > current + 1 {
                return Err(StoreError::FutureRevision {
                    requested: revision,
                    current,
                });
            }
            let compacted = meta
                .get(COMPACTED)
                .map_err(storage)?
                .map_or(1, |v| v.value());
            if revision > compacted {
                let mut log = w.open_table(LOG).map_err(storage)?;
                log.retain_in(..revision, |_, _| false).map_err(storage)?;
                meta.insert(COMPACTED, revision).map_err(storage)?;
            }
        }
        w.commit().map_err(storage)
    }
}

impl EmbeddedStore {
    /// Runs a blocking store operation off the async workers (a commit waits for fsync).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Storage(format!("store task failed: {e}")))?
    }
}

impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }
    async fn revision(&self) -> Result<i64, StoreError> {
        self.blocking(Inner::revision).await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |i| i.get(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |i| i.list(&prefix)).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.blocking(move |i| i.txn(&txn)).await
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.blocking(move |i| i.compact(revision)).await
    }

    async fn lease_grant(&self, ttl: i64) -> Result<i64, StoreError> {
        self.blocking(move |i| i.lease_grant(ttl)).await
    }

    async fn lease_keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        // In memory only: no disk, no blocking pool.
        Ok(self.inner.leases.renew(id))
    }

    async fn lease_revoke(&self, id: i64) -> Result<bool, StoreError> {
        self.blocking(move |i| i.lease_revoke(id)).await
    }

    async fn lease_time_to_live(&self, id: i64) -> Result<Option<LeaseStatus>, StoreError> {
        Ok(self.inner.leases.status(id))
    }

    async fn watch(&self, prefix: &str, from: i64) -> Result<WatchReceiver, StoreError> {
        // Subscribe before reading the revision, so no commit falls between the two.
        let mut wake = self.inner.notify.subscribe();
        let (current, compacted) = self.blocking(Inner::meta).await?;
        let from = if from <= 0 { current + 1 } else { from };
        if from > current + 1 {
            return Err(StoreError::FutureRevision {
                requested: from,
                current,
            });
        }
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compact_revision: compacted,
            });
        }
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut next = from;
            loop {
                match inner.read_log(&prefix, next) {
                    Ok((batches, after)) => {
                        for b in batches {
                            if tx.send(Ok(b)).await.is_err() {
                                return;
                            }
                        }
                        let caught_up = after == next;
                        next = after;
                        if !caught_up {
                            continue;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                tokio::select! {
                    r = wake.recv() => match r {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests;
