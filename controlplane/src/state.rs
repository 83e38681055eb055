//! The stored configuration, decoded: every Backend, Probe, Director and Route at one
//! revision, by name. Both sides use it: the API loads it, changes a copy and writes the
//! difference in one transaction; the data-plane follower keeps it current from the watch and
//! converts it into a snapshot.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use tether_proto::keys::{Kind, Layout};
use tether_proto::v1;

use crate::convert::{Label, Resources};
use crate::store::{Event, KeyValue, Listing, Op};

/// A stored object that did not decode (skipped, logged and counted by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct DecodeError {
    /// The key.
    pub key: String,
    /// Why.
    pub message: String,
}

/// A tether.v1 resource as the API and the store handle it.
pub trait Resource: Message + Default + Clone + PartialEq + Sized + 'static {
    /// Its kind (and key directory).
    const KIND: Kind;
    /// Its field name in requests (`backend`).
    const FIELD: &'static str;
    /// Its name.
    fn name(&self) -> &str;
    /// The revision at which it last changed (0 when not stored).
    fn revision(&self) -> i64;
    /// Sets the revision.
    fn set_revision(&mut self, revision: i64);
    /// This kind's map in a state.
    fn map(state: &State) -> &BTreeMap<String, Self>;
    /// This kind's map in a state, to change.
    fn map_mut(state: &mut State) -> &mut BTreeMap<String, Self>;
    /// Fills in what the control plane stores on the caller's behalf, given the stored
    /// version (balanced shard slots).
    fn prepare(&mut self, _stored: Option<&Self>) {}
}

macro_rules! resource {
    ($t:ty, $kind:expr, $map:ident) => {
        impl Resource for $t {
            const KIND: Kind = $kind;
            const FIELD: &'static str = $kind.singular();
            fn name(&self) -> &str {
                &self.name
            }
            fn revision(&self) -> i64 {
                self.revision
            }
            fn set_revision(&mut self, revision: i64) {
                self.revision = revision;
            }
            fn map(state: &State) -> &BTreeMap<String, Self> {
                &state.$map
            }
            fn map_mut(state: &mut State) -> &mut BTreeMap<String, Self> {
                &mut state.$map
            }
            resource!(@prepare $t);
        }
    };
    (@prepare v1::Director) => {
        fn prepare(&mut self, stored: Option<&Self>) {
            crate::convert::assign_slots(self, stored);
        }
    };
    (@prepare $t:ty) => {};
}

resource!(v1::Backend, Kind::Backend, backends);
resource!(v1::Probe, Kind::Probe, probes);
resource!(v1::Director, Kind::Director, directors);
resource!(v1::Route, Kind::Route, routes);

/// The configuration at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// The store revision.
    pub revision: i64,
    /// `mod_revision` of the serial key (0 when never written).
    pub serial_revision: i64,
    /// Backends by name.
    pub backends: BTreeMap<String, v1::Backend>,
    /// Probes by name.
    pub probes: BTreeMap<String, v1::Probe>,
    /// Directors by name.
    pub directors: BTreeMap<String, v1::Director>,
    /// Routes by name.
    pub routes: BTreeMap<String, v1::Route>,
    /// Where errors about a resource are reported, when not `<kind>/<name>` (the request's
    /// own field, as `backend` or `backends[2]`).
    pub labels: HashMap<(Kind, String), String>,
}

fn decode<R: Resource>(kv: &KeyValue, name: &str) -> Result<R, DecodeError> {
    let mut r = R::decode(kv.value.as_slice()).map_err(|e| DecodeError {
        key: kv.key.clone(),
        message: e.to_string(),
    })?;
    if r.name() != name {
        return Err(DecodeError {
            key: kv.key.clone(),
            message: format!("holds a resource named {:?}", r.name()),
        });
    }
    r.set_revision(kv.mod_revision);
    Ok(r)
}

fn encode<R: Resource>(r: &R) -> Vec<u8> {
    let mut stored = r.clone();
    stored.set_revision(0);
    stored.encode_to_vec()
}

impl State {
    /// Decodes a listing of the layout's root. Objects that do not decode are left out and
    /// returned.
    pub fn from_listing(layout: &Layout, listing: &Listing) -> (State, Vec<DecodeError>) {
        let mut state = State {
            revision: listing.revision,
            ..State::default()
        };
        let mut errors = Vec::new();
        let serial = layout.serial();
        for kv in &listing.kvs {
            if kv.key == serial {
                state.serial_revision = kv.mod_revision;
            } else if let Err(e) = state.put(layout, kv) {
                errors.push(e);
            }
        }
        (state, errors)
    }

    fn put(&mut self, layout: &Layout, kv: &KeyValue) -> Result<(), DecodeError> {
        let Some((kind, name)) = layout.parse(&kv.key) else {
            return Ok(());
        };
        let name = name.to_owned();
        match kind {
            Kind::Backend => {
                self.backends.insert(name.clone(), decode(kv, &name)?);
            }
            Kind::Probe => {
                self.probes.insert(name.clone(), decode(kv, &name)?);
            }
            Kind::Director => {
                self.directors.insert(name.clone(), decode(kv, &name)?);
            }
            Kind::Route => {
                self.routes.insert(name.clone(), decode(kv, &name)?);
            }
            Kind::Health | Kind::Node => {}
        }
        Ok(())
    }

    fn remove(&mut self, kind: Kind, name: &str) {
        match kind {
            Kind::Backend => drop(self.backends.remove(name)),
            Kind::Probe => drop(self.probes.remove(name)),
            Kind::Director => drop(self.directors.remove(name)),
            Kind::Route => drop(self.routes.remove(name)),
            Kind::Health | Kind::Node => {}
        }
    }

    /// Applies the events of one revision.
    pub fn apply_events(
        &mut self,
        layout: &Layout,
        revision: i64,
        events: &[Event],
    ) -> Vec<DecodeError> {
        let serial = layout.serial();
        let mut errors = Vec::new();
        for e in events {
            match e {
                Event::Put(kv) if kv.key == serial => self.serial_revision = kv.mod_revision,
                Event::Put(kv) => {
                    if let Err(err) = self.put(layout, kv) {
                        // The bad object is gone from the configuration, not left stale.
                        if let Some((kind, name)) = layout.parse(&kv.key) {
                            self.remove(kind, name);
                        }
                        errors.push(err);
                    }
                }
                Event::Delete { key, .. } => {
                    if let Some((kind, name)) = layout.parse(key) {
                        self.remove(kind, name);
                    }
                }
            }
        }
        self.revision = revision;
        errors
    }

    /// Every resource (borrowed), for [`crate::convert::validate`], each under its label:
    /// `<kind>/<name>`, or the request's field it was given in.
    pub fn resources(&self) -> Resources<'_> {
        fn tag<R: Resource>(state: &State) -> Vec<(Label<'_>, &R)> {
            let mut v: Vec<(Label<'_>, &R)> = R::map(state)
                .values()
                .map(|r| (Label::Stored(R::KIND, r.name()), r))
                .collect();
            // Few resources have a label of their own (those of the request being
            // validated): find them by name in the sorted list rather than look up every
            // resource in the labels.
            for ((kind, name), label) in &state.labels {
                if *kind == R::KIND
                    && let Ok(i) = v.binary_search_by(|(_, r)| r.name().cmp(name))
                {
                    v[i].0 = Label::Field(label);
                }
            }
            v
        }
        Resources {
            backends: tag(self),
            probes: tag(self),
            directors: tag(self),
            routes: tag(self),
        }
    }

    /// Inserts or replaces a resource, labelling its errors with `label`.
    pub fn insert<R: Resource>(&mut self, r: R, label: String) {
        self.labels.insert((R::KIND, r.name().to_owned()), label);
        R::map_mut(self).insert(r.name().to_owned(), r);
    }

    /// The writes that turn `self` into `next`, ordered so that every prefix leaves a
    /// referentially complete configuration (when `next` is one): puts of probes, backends,
    /// directors, routes — a resource's references are written before it — then deletes of
    /// routes, directors, backends, probes — a resource's referrers are gone or updated first.
    /// That is what lets a write too large for one etcd transaction be split.
    pub fn diff_ops(&self, next: &State, layout: &Layout) -> Vec<Op> {
        fn puts<R: Resource>(old: &State, new: &State, layout: &Layout, ops: &mut Vec<Op>) {
            let a = R::map(old);
            for (name, r) in R::map(new) {
                if a.get(name).is_none_or(|o| encode(o) != encode(r)) {
                    ops.push(Op::Put(layout.key(R::KIND, name), encode(r)));
                }
            }
        }
        fn deletes<R: Resource>(old: &State, new: &State, layout: &Layout, ops: &mut Vec<Op>) {
            let b = R::map(new);
            for name in R::map(old).keys().filter(|n| !b.contains_key(*n)) {
                ops.push(Op::Delete(layout.key(R::KIND, name)));
            }
        }
        let mut ops = Vec::new();
        puts::<v1::Probe>(self, next, layout, &mut ops);
        puts::<v1::Backend>(self, next, layout, &mut ops);
        puts::<v1::Director>(self, next, layout, &mut ops);
        puts::<v1::Route>(self, next, layout, &mut ops);
        deletes::<v1::Route>(self, next, layout, &mut ops);
        deletes::<v1::Director>(self, next, layout, &mut ops);
        deletes::<v1::Backend>(self, next, layout, &mut ops);
        deletes::<v1::Probe>(self, next, layout, &mut ops);
        ops
    }

    /// Whether a stored resource differs from `r` (ignoring revisions).
    pub fn differs<R: Resource>(&self, r: &R) -> bool {
        R::map(self)
            .get(r.name())
            .is_none_or(|stored| encode(stored) != encode(r))
    }
}
