//! [`Source`]: the narrow interface the follower reads — list the configuration at a revision,
//! watch the changes after one. Three implement it: [`StoreSource`] over any
//! [`Store`] (the embedded store of `tether up`, etcd) and
//! [`super::remote::RemoteSource`] over a control plane's `GetSnapshot` and `Watch`.
//!
//! A source hands over decoded changes ([`Change`]), so an object that does not decode is
//! reported the same way by every source, and the follower treats it the same way.

use std::future::Future;
use std::time::SystemTime;

use tether_proto::keys::Layout;

use super::fleet::HealthEvent;
use crate::state::{Change, DecodeError, State};
use crate::store::{Event, Store, StoreError, WatchBatch, WatchReceiver};

/// The configuration at one revision, decoded.
#[derive(Debug, Clone, Default)]
pub struct Listed {
    /// The state.
    pub state: State,
    /// Stored objects left out because they do not decode.
    pub undecodable: Vec<DecodeError>,
    /// Node registrations and shared-health reports.
    pub health: Vec<HealthEvent>,
}

/// Everything that changed at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// The revision.
    pub revision: i64,
    /// Changes to resources, in write order (empty: only other keys changed, or none).
    pub changes: Vec<Change>,
    /// A progress notification: nothing changed, the store confirms it is at `revision`.
    pub progress: bool,
    /// The serial key's new revision, when an API write bumped it.
    pub serial_revision: Option<i64>,
    /// The commit time the API write left in the serial key, if any.
    pub committed: Option<SystemTime>,
    /// When the serial key was written: whether it marks a split write still unfinished
    /// (this revision and the next are not to be applied until it is).
    pub write_open: Option<bool>,
    /// Node registrations and shared-health reports that changed.
    pub health: Vec<HealthEvent>,
}

/// An open watch: batches in revision order.
pub trait Watch: Send {
    /// The next batch; `None` when the watch ended.
    fn next(&mut self) -> impl Future<Output = Option<Result<Batch, StoreError>>> + Send;
}

/// Where a node reads the configuration from.
pub trait Source: Send + Sync + 'static {
    /// An open watch.
    type Watch: Watch;
    /// The whole configuration at the current revision.
    fn list(&self) -> impl Future<Output = Result<Listed, StoreError>> + Send;
    /// Changes from revision `from` on; [`StoreError::Compacted`] when that history is gone.
    fn watch(&self, from: i64) -> impl Future<Output = Result<Self::Watch, StoreError>> + Send;
}

/// A [`Store`] under a key layout, as a source.
#[derive(Debug, Clone)]
pub struct StoreSource<S> {
    store: S,
    layout: Layout,
}

impl<S: Store> StoreSource<S> {
    /// Reads `store` under `layout`'s root.
    pub fn new(store: S, layout: Layout) -> StoreSource<S> {
        StoreSource { store, layout }
    }
}

/// A store's watch, decoded batch by batch.
#[derive(Debug)]
pub struct StoreWatch {
    rx: WatchReceiver,
    layout: Layout,
}

/// A store's watch batch as the follower's batch.
pub fn decode_batch(layout: &Layout, b: &WatchBatch) -> Batch {
    let serial = layout.serial();
    let mut batch = Batch {
        revision: b.revision,
        progress: b.events.is_empty(),
        ..Batch::default()
    };
    for e in &b.events {
        if let Event::Put(kv) = e
            && kv.key == serial
        {
            batch.serial_revision = Some(kv.mod_revision);
            let mark = crate::serial::Serial::decode(&kv.value);
            batch.committed = mark.map(|m| m.time());
            batch.write_open = Some(mark.is_some_and(|m| m.is_open()));
        } else if let Some(c) = Change::from_event(layout, e) {
            batch.changes.push(c);
        } else if let Some(h) = HealthEvent::from_event(layout, e) {
            batch.health.push(h);
        }
    }
    batch
}

impl Watch for StoreWatch {
    async fn next(&mut self) -> Option<Result<Batch, StoreError>> {
        let b = self.rx.recv().await?;
        Some(b.map(|b| decode_batch(&self.layout, &b)))
    }
}

impl<S: Store> Source for StoreSource<S> {
    type Watch = StoreWatch;

    async fn list(&self) -> Result<Listed, StoreError> {
        let listing = self.store.list(self.layout.root()).await?;
        let (state, undecodable) = State::from_listing(&self.layout, &listing);
        let health = listing
            .kvs
            .iter()
            .filter_map(|kv| HealthEvent::from_kv(&self.layout, kv))
            .collect();
        Ok(Listed {
            state,
            undecodable,
            health,
        })
    }

    async fn watch(&self, from: i64) -> Result<StoreWatch, StoreError> {
        Ok(StoreWatch {
            rx: self.store.watch(self.layout.root(), from).await?,
            layout: self.layout.clone(),
        })
    }
}
