//! The store: where the control plane keeps resources. One trait, [`Store`], with the
//! semantics of etcd's KV API that the rest of the control plane relies on:
//!
//! - a single, monotonically increasing revision, bumped once per committed write;
//! - atomic multi-key writes guarded by compares ([`Txn`]): all of them apply, or none;
//! - a watch that resumes from any revision still in history, delivering every change in
//!   revision order, in [`WatchBatch`]es: one per revision (embedded) or per store response
//!   (etcd: every event of one watch response, which may span consecutive revisions, under the
//!   last);
//! - leases (etcd's): keys bound to one are deleted at one revision when it expires or is
//!   revoked; renewals are not writes;
//! - an explicit [`StoreError::Compacted`] when the asked-for history is gone, so the caller
//!   re-lists instead of silently missing changes.
//!
//! Implementations: [`embedded::EmbeddedStore`] (redb, one file, for `tether up`) and
//! [`etcd::EtcdStore`] (cluster mode). A node reads through the narrower
//! `crate::node::Source`.

pub mod embedded;
pub mod etcd;

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision at which the key was created (since its last deletion).
    pub create_revision: i64,
    /// Revision at which the key last changed.
    pub mod_revision: i64,
}

/// A condition a transaction checks before writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key exists.
    Exists(String),
    /// The key does not exist.
    Missing(String),
    /// The key's `mod_revision` equals this (0: the key does not exist).
    ModRevision(String, i64),
}

impl Compare {
    /// The key it checks.
    pub fn key(&self) -> &str {
        match self {
            Compare::Exists(k) | Compare::Missing(k) | Compare::ModRevision(k, _) => k,
        }
    }
}

/// A write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a key.
    Put(String, Vec<u8>),
    /// Delete a key (no-op if absent).
    Delete(String),
    /// Create or replace a key bound to a lease: deleted when the lease expires or is revoked.
    /// The transaction fails with [`StoreError::LeaseNotFound`] when the lease is gone.
    PutLeased(String, Vec<u8>, i64),
}

impl Op {
    /// The key the op writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put(k, _) | Op::Delete(k) | Op::PutLeased(k, _, _) => k,
        }
    }

    /// The lease a put binds its key to, if any.
    pub fn lease(&self) -> Option<i64> {
        match self {
            Op::PutLeased(_, _, lease) => Some(*lease),
            Op::Put(..) | Op::Delete(_) => None,
        }
    }
}

/// A lease, as [`Store::lease_time_to_live`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The lease.
    pub id: i64,
    /// The TTL it was granted with, in seconds.
    pub granted_ttl: i64,
    /// Seconds left before it expires unless renewed.
    pub remaining: i64,
}

/// Compares, then ops: applied atomically at one new revision when every compare holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Writes, applied in order.
    pub ops: Vec<Op>,
    /// A put among `ops` whose value is unique to this transaction. When a store cannot tell
    /// whether a transaction committed (a timeout during an etcd leader change), it reads this
    /// key back to find out, instead of retrying blindly.
    pub witness: Option<(String, Vec<u8>)>,
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every compare held; the ops were applied at this revision (the current revision when
    /// the transaction had no effective op).
    Committed {
        /// The revision of the write.
        revision: i64,
    },
    /// A compare failed; nothing was written.
    Failed {
        /// Index of the first failed compare, when the store reports it (etcd does not).
        compare: Option<usize>,
    },
}

/// A change, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A key was created or replaced.
    Put(KeyValue),
    /// A key was deleted.
    Delete {
        /// The key.
        key: String,
        /// The revision of the deletion.
        mod_revision: i64,
        /// Its last value, when the store delivers it (the embedded store always; etcd on a
        /// [`Store::watch_with_prev`] watch).
        prev: Option<KeyValue>,
    },
}

impl Event {
    /// The key the event is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
}

/// Every change of one revision (etcd: of one watch response, possibly several consecutive
/// revisions) under the watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision (etcd: the last of the response).
    pub revision: i64,
    /// Its events in write order.
    pub events: Vec<Event>,
}

/// The keys under a prefix at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The revision the listing was read at.
    pub revision: i64,
    /// Keys in key order.
    pub kvs: Vec<KeyValue>,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// History before `compact_revision` is gone: list again, then watch from the listing.
    #[error("revision {requested} is compacted (history starts at {compact_revision}); list again")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The oldest revision still in history.
        compact_revision: i64,
    },
    /// A revision in the future.
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: i64,
        /// The current revision.
        current: i64,
    },
    /// The store's files could not be opened, read or written.
    #[error("store: {0}")]
    Storage(String),
    /// A stored record did not decode (a damaged file).
    #[error("store: damaged record: {0}")]
    Corrupt(String),
    /// The store was closed.
    #[error("store closed")]
    Closed,
    /// A write named a lease that does not exist (never granted, expired or revoked).
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(i64),
    /// A grant beyond the most leases the store holds at once.
    #[error("the store holds {0} leases, its most; revoke some or let them expire")]
    LeaseLimit(usize),
    /// The store cannot be reached (every etcd endpoint failed, or no quorum).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A watch: batches in revision order, starting at the revision asked for. A batch without
/// events is a progress notification (the store is alive; nothing to apply).
pub type WatchReceiver = tokio::sync::mpsc::Receiver<Result<WatchBatch, StoreError>>;

/// The store interface (etcd's KV semantics, see the module doc). Cheap to clone: clones share
/// one store.
pub trait Store: Clone + Send + Sync + 'static {
    /// Which store this is (`embedded`, `etcd`), for `tether version`.
    fn kind(&self) -> &'static str;
    /// The current revision (0 before the first write).
    fn revision(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// One key.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>, StoreError>> + Send;
    /// Every key under `prefix`, at one revision.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Listing, StoreError>> + Send;
    /// Compares, then writes, atomically.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnOutcome, StoreError>> + Send;
    /// Changes under `prefix` from revision `from` on (`from` ≤ current + 1; 0: after the
    /// current revision). The watch ends when the receiver is dropped.
    fn watch(
        &self,
        prefix: &str,
        from: i64,
    ) -> impl Future<Output = Result<WatchReceiver, StoreError>> + Send;
    /// [`Store::watch`], with deletes carrying the deleted key's last value where the store
    /// can give it (etcd's `prev_kv`, which it then sends for puts too: asked for only by the
    /// API's Watch for clients that are not nodes).
    fn watch_with_prev(
        &self,
        prefix: &str,
        from: i64,
    ) -> impl Future<Output = Result<WatchReceiver, StoreError>> + Send {
        self.watch(prefix, from)
    }
    /// Forgets history before `revision`.
    fn compact(&self, revision: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Grants a lease of `ttl` seconds (the store may raise it to its minimum); its id. Keys
    /// bound to it ([`Op::PutLeased`]) are deleted, at one revision, when it expires or is
    /// revoked.
    fn lease_grant(&self, ttl: i64) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Renews a lease to its full TTL; the TTL (0: the lease is gone).
    fn lease_keep_alive(&self, id: i64) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Revokes a lease, deleting its keys at one revision; false when there was no such lease.
    fn lease_revoke(&self, id: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A lease's TTL and time left; `None` when it does not exist.
    fn lease_time_to_live(
        &self,
        id: i64,
    ) -> impl Future<Output = Result<Option<LeaseStatus>, StoreError>> + Send;
    /// Most operations one transaction may hold (etcd: 128 by default).
    fn max_txn_ops(&self) -> usize {
        usize::MAX
    }
    /// Most bytes of keys and values one transaction may carry (etcd: 1.5 MiB by default).
    fn max_txn_bytes(&self) -> usize {
        usize::MAX
    }
}
