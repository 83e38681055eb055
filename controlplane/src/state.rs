//! The stored configuration, decoded: every Backend, Probe, Director and Route at one
//! revision, by name. Both sides use it: the API loads it, changes a copy and writes the
//! difference in one transaction; the node agent keeps it current from the watch and converts
//! it into a snapshot.
//!
//! This is also the one place for per-kind code. [`Resource`] carries what differs between the
//! kinds (key directory, request field, map in a [`State`], list in a
//! [`v1::ConfigSnapshot`], variant of a watch event); [`per_kind`] and [`each_kind`] run
//! generic code for a kind chosen at run time, or for all of them in dependency order. Every
//! conversion — store key/value, watch event, snapshot — goes through [`Change`] and [`State`],
//! so a stored object that does not decode is treated the same way wherever it is read: left
//! out, and reported as a [`DecodeError`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prost::Message;
use tether_proto::keys::{Kind, Layout};
use tether_proto::v1::{self, Action};

use crate::convert::{Label, Resources};
use crate::store::{Event, KeyValue, Listing, Op};

/// Any one resource: the `resource` oneof of a watch event.
pub type AnyResource = v1::watch_event::Resource;

/// A stored object that did not decode (left out, logged and counted by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}/{name}: {message}")]
pub struct DecodeError {
    /// Its kind.
    pub kind: Kind,
    /// Its name (from the key).
    pub name: String,
    /// Why.
    pub message: String,
}

/// A tether.v1 resource as the API and the store handle it.
pub trait Resource: Message + Default + Clone + PartialEq + Sized + 'static {
    /// Its kind (and key directory).
    const KIND: Kind;
    /// Its field name in requests (`backend`).
    const FIELD: &'static str;
    /// Its protobuf message's full name (`tether.v1.Backend`), for its descriptor.
    const MESSAGE: &'static str;
    /// Its name.
    fn name(&self) -> &str;
    /// The revision at which it last changed (0 when not stored).
    fn revision(&self) -> i64;
    /// Sets the revision.
    fn set_revision(&mut self, revision: i64);
    /// This kind's map in a state.
    fn map(state: &State) -> &BTreeMap<String, Arc<Self>>;
    /// This kind's map in a state, to change.
    fn map_mut(state: &mut State) -> &mut BTreeMap<String, Arc<Self>>;
    /// This kind's list in a snapshot.
    fn list_mut(snapshot: &mut v1::ConfigSnapshot) -> &mut Vec<Self>;
    /// As a watch event's resource.
    fn into_any(self) -> AnyResource;
    /// The lease it is bound to (0: none).
    fn lease(&self) -> i64;
    /// Binds it to a lease (0: none).
    fn set_lease(&mut self, lease: i64);
    /// Fills in what the control plane stores on the caller's behalf, given the stored
    /// version (balanced shard slots, a certificate's names and expiry).
    fn prepare(&mut self, _stored: Option<&Self>) {}
    /// What every write does to a resource it is given before storing it: a lease left 0
    /// keeps the stored one (a lease is given up only by deleting the resource or by the
    /// lease ending: an `apply -f` of a file, which holds no lease ids, never unbinds a
    /// registered backend and leaves it behind forever), then [`Resource::prepare`].
    fn prepare_write(&mut self, stored: Option<&Self>) {
        if self.lease() == 0
            && let Some(s) = stored
        {
            self.set_lease(s.lease());
        }
        self.prepare(stored);
    }
    /// Clears what no read may return but to a node (a certificate's private key).
    fn redact(&mut self) {}
    /// Whether a Discovery keeps it (a backend it created).
    fn kept_by_discovery(&self) -> bool {
        false
    }
    /// Its labels, for kinds that have them (List's `filter`).
    fn labels(&self) -> Option<&std::collections::HashMap<String, String>> {
        None
    }
}

macro_rules! resource {
    ($t:ty, $kind:expr, $map:ident, $variant:ident) => {
        impl Resource for $t {
            const KIND: Kind = $kind;
            const FIELD: &'static str = $kind.singular();
            const MESSAGE: &'static str = concat!("tether.v1.", stringify!($variant));
            fn name(&self) -> &str {
                &self.name
            }
            fn revision(&self) -> i64 {
                self.revision
            }
            fn set_revision(&mut self, revision: i64) {
                self.revision = revision;
            }
            fn lease(&self) -> i64 {
                self.lease
            }
            fn set_lease(&mut self, lease: i64) {
                self.lease = lease;
            }
            fn map(state: &State) -> &BTreeMap<String, Arc<Self>> {
                &state.$map
            }
            fn map_mut(state: &mut State) -> &mut BTreeMap<String, Arc<Self>> {
                &mut state.$map
            }
            fn list_mut(snapshot: &mut v1::ConfigSnapshot) -> &mut Vec<Self> {
                &mut snapshot.$map
            }
            fn into_any(self) -> AnyResource {
                AnyResource::$variant(self)
            }
            // On the variant's name: a `ty` fragment cannot be matched against a path, so an
            // arm on `v1::Director` would never be taken.
            resource!(@prepare $variant);
        }
    };
    (@prepare Director) => {
        fn prepare(&mut self, stored: Option<&Self>) {
            crate::convert::assign_slots(self, stored);
        }
    };
    (@prepare Certificate) => {
        fn prepare(&mut self, _stored: Option<&Self>) {
            crate::convert::describe_certificate(self);
        }
        fn redact(&mut self) {
            self.private_key.clear();
        }
    };
    (@prepare Backend) => {
        // Which Discovery keeps a backend is the control plane's to say: a write cannot
        // take a backend from its discovery nor hand one to it (the discovery's own writes
        // set it after this).
        fn prepare(&mut self, stored: Option<&Self>) {
            self.discovery = stored.map(|s| s.discovery.clone()).unwrap_or_default();
        }
        fn kept_by_discovery(&self) -> bool {
            !self.discovery.is_empty()
        }
        fn labels(&self) -> Option<&std::collections::HashMap<String, String>> {
            Some(&self.labels)
        }
    };
    (@prepare Discovery) => {
        // The status is the resolver's: a write keeps the stored one.
        fn prepare(&mut self, stored: Option<&Self>) {
            self.status = stored.and_then(|s| s.status.clone());
        }
        fn labels(&self) -> Option<&std::collections::HashMap<String, String>> {
            Some(&self.labels)
        }
    };
    (@prepare $other:ident) => {};
}

resource!(v1::Backend, Kind::Backend, backends, Backend);
resource!(v1::Probe, Kind::Probe, probes, Probe);
resource!(v1::Director, Kind::Director, directors, Director);
resource!(v1::Route, Kind::Route, routes, Route);
resource!(
    v1::Certificate,
    Kind::Certificate,
    certificates,
    Certificate
);
resource!(v1::Discovery, Kind::Discovery, discoveries, Discovery);

/// Generic code for one resource kind, run by [`per_kind`] for a kind known at run time.
pub trait PerKind {
    /// What it returns.
    type Output;
    /// Runs for resource type `R`.
    fn run<R: Resource>(self) -> Self::Output;
}

/// Runs `f` for `kind`'s resource type; `None` for kinds that are not resources (health
/// reports, node records).
pub fn per_kind<F: PerKind>(kind: Kind, f: F) -> Option<F::Output> {
    Some(match kind {
        Kind::Backend => f.run::<v1::Backend>(),
        Kind::Probe => f.run::<v1::Probe>(),
        Kind::Director => f.run::<v1::Director>(),
        Kind::Route => f.run::<v1::Route>(),
        Kind::Certificate => f.run::<v1::Certificate>(),
        Kind::Discovery => f.run::<v1::Discovery>(),
        Kind::Health | Kind::Node => return None,
    })
}

/// Generic code run by [`each_kind`] for every resource kind.
pub trait EachKind {
    /// Runs for resource type `R`.
    fn visit<R: Resource>(&mut self);
}

/// Runs `f` for every resource kind in dependency order — certificates, probes, backends,
/// discoveries, directors, routes: a kind's references come before it — or in the reverse
/// order.
pub fn each_kind<F: EachKind>(f: &mut F, reverse: bool) {
    if reverse {
        f.visit::<v1::Route>();
        f.visit::<v1::Director>();
        f.visit::<v1::Discovery>();
        f.visit::<v1::Backend>();
        f.visit::<v1::Probe>();
        f.visit::<v1::Certificate>();
    } else {
        f.visit::<v1::Certificate>();
        f.visit::<v1::Probe>();
        f.visit::<v1::Backend>();
        f.visit::<v1::Discovery>();
        f.visit::<v1::Director>();
        f.visit::<v1::Route>();
    }
}

/// The kind and name of a resource.
fn any_kind_name(r: &AnyResource) -> (Kind, &str) {
    match r {
        AnyResource::Backend(r) => (Kind::Backend, &r.name),
        AnyResource::Probe(r) => (Kind::Probe, &r.name),
        AnyResource::Director(r) => (Kind::Director, &r.name),
        AnyResource::Route(r) => (Kind::Route, &r.name),
        AnyResource::Certificate(r) => (Kind::Certificate, &r.name),
        AnyResource::Discovery(r) => (Kind::Discovery, &r.name),
    }
}

/// One change to one resource, however it was read (a store event, a watch event of the API).
// Changes are transient (decoded, then moved into a state): boxing the resource would cost an
// allocation per object for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Created (`created`) or replaced; its revision is set.
    Put {
        /// The resource.
        resource: AnyResource,
        /// Whether it did not exist before.
        created: bool,
    },
    /// Deleted.
    Delete {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
        /// Its last value, when the store gave it (and it decodes).
        last: Option<AnyResource>,
    },
    /// Stored, but it does not decode: left out, as though deleted, and reported.
    Undecodable(DecodeError),
}

/// Decodes a stored value of kind `R` whose key names it `name`, setting its revision: the one
/// decoding of stored objects (the follower, the API's Get, List and Watch all use it).
pub fn decode<R: Resource>(name: &str, value: &[u8], mod_revision: i64) -> Result<R, DecodeError> {
    let error = |message: String| DecodeError {
        kind: R::KIND,
        name: name.to_owned(),
        message,
    };
    let mut r = R::decode(value).map_err(|e| error(e.to_string()))?;
    if r.name() != name {
        return Err(error(format!("holds a resource named {:?}", r.name())));
    }
    r.set_revision(mod_revision);
    Ok(r)
}

/// [`decode`] for a kind known at run time.
struct DecodeValue<'a> {
    name: &'a str,
    value: &'a [u8],
    mod_revision: i64,
}

impl PerKind for DecodeValue<'_> {
    type Output = Result<AnyResource, DecodeError>;
    fn run<R: Resource>(self) -> Self::Output {
        decode::<R>(self.name, self.value, self.mod_revision).map(Resource::into_any)
    }
}

impl Change {
    /// The change a store event makes; `None` for keys that hold no resource (the serial key,
    /// node records, health reports).
    pub fn from_event(layout: &Layout, event: &Event) -> Option<Change> {
        match event {
            Event::Put(kv) => Change::from_kv(layout, kv),
            Event::Delete { key, prev, .. } => {
                let (kind, name) = layout.parse(key)?;
                per_kind(kind, ())?;
                let last = prev
                    .as_ref()
                    .and_then(|kv| match Change::from_kv(layout, kv) {
                        Some(Change::Put { resource, .. }) => Some(resource),
                        _ => None,
                    });
                Some(Change::Delete {
                    kind,
                    name: name.to_owned(),
                    last,
                })
            }
        }
    }

    /// A stored key and value as a change (a put, or an undecodable object).
    pub fn from_kv(layout: &Layout, kv: &KeyValue) -> Option<Change> {
        let (kind, name) = layout.parse(&kv.key)?;
        let decoded = per_kind(
            kind,
            DecodeValue {
                name,
                value: &kv.value,
                mod_revision: kv.mod_revision,
            },
        )?;
        Some(match decoded {
            Ok(resource) => Change::Put {
                resource,
                created: kv.create_revision == kv.mod_revision,
            },
            Err(e) => Change::Undecodable(e),
        })
    }

    /// The change as the API's Watch stream sends it.
    pub fn into_watch_event(self) -> v1::WatchEvent {
        match self {
            Change::Put { resource, created } => {
                let (kind, name) = any_kind_name(&resource);
                v1::WatchEvent {
                    kind: kind.singular().to_owned(),
                    name: name.to_owned(),
                    action: if created {
                        Action::Create
                    } else {
                        Action::Update
                    } as i32,
                    resource: Some(resource),
                    undecodable: String::new(),
                    health: None,
                }
            }
            Change::Delete { kind, name, last } => v1::WatchEvent {
                kind: kind.singular().to_owned(),
                name,
                action: Action::Delete as i32,
                resource: last,
                undecodable: String::new(),
                health: None,
            },
            Change::Undecodable(e) => v1::WatchEvent {
                kind: e.kind.singular().to_owned(),
                name: e.name,
                action: Action::Update as i32,
                resource: None,
                undecodable: e.message,
                health: None,
            },
        }
    }

    /// A Watch stream's event as a change; `None` for a kind this version does not know.
    pub fn from_watch_event(e: v1::WatchEvent) -> Option<Change> {
        let kind = Kind::from_singular(&e.kind)?;
        per_kind(kind, ())?;
        let undecodable = |message: String| {
            Change::Undecodable(DecodeError {
                kind,
                name: e.name.clone(),
                message,
            })
        };
        if e.action == Action::Delete as i32 {
            return Some(Change::Delete {
                kind,
                name: e.name,
                last: e.resource,
            });
        }
        if !e.undecodable.is_empty() {
            return Some(undecodable(e.undecodable));
        }
        Some(match e.resource {
            Some(r) if any_kind_name(&r) == (kind, e.name.as_str()) => Change::Put {
                resource: r,
                created: e.action == Action::Create as i32,
            },
            Some(_) => undecodable("the event's resource is not the one it names".into()),
            None => undecodable("the event carries no resource".into()),
        })
    }
}

/// Reorders the contiguous run of director ops that `select` picks so that each director
/// comes after the directors it nests (before them when `referrers_first`), by the members in
/// `directors`. Iterative (an explicit stack): stored nesting may be deep.
fn reorder(
    ops: &mut [Op],
    dir: &str,
    select: impl Fn(&Op) -> bool,
    directors: &BTreeMap<String, Arc<v1::Director>>,
    referrers_first: bool,
) {
    let Some(start) = ops.iter().position(&select) else {
        return;
    };
    let len = ops[start..].iter().take_while(|o| select(o)).count();
    let run = &mut ops[start..start + len];
    let name_of = |o: &Op| o.key().strip_prefix(dir).unwrap_or_default().to_owned();
    let index: HashMap<String, usize> = run
        .iter()
        .enumerate()
        .map(|(i, o)| (name_of(o), i))
        .collect();
    // Post-order over the nesting among the run's directors: nested first.
    let mut order = Vec::with_capacity(run.len());
    let mut state = vec![0u8; run.len()]; // 0 new, 1 open, 2 done
    for root in 0..run.len() {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some((d, next)) = stack.last().copied() {
            let members = directors
                .get(&name_of(&run[d]))
                .map(|x| x.members.as_slice())
                .unwrap_or_default();
            if let Some(m) = members.get(next) {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                if let Some(v1::member::Target::Director(inner)) = &m.target
                    && let Some(&j) = index.get(inner)
                    && state[j] == 0
                {
                    state[j] = 1;
                    stack.push((j, 0));
                }
                continue;
            }
            state[d] = 2;
            order.push(d);
            stack.pop();
        }
    }
    if referrers_first {
        order.reverse();
    }
    let mut taken: Vec<Option<Op>> = run.iter().cloned().map(Some).collect();
    for (slot, i) in run.iter_mut().zip(order) {
        if let Some(op) = taken[i].take() {
            *slot = op;
        }
    }
}

impl PerKind for () {
    type Output = ();
    fn run<R: Resource>(self) {}
}

/// The configuration at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// The store revision.
    pub revision: i64,
    /// `mod_revision` of the serial key (0 when never written).
    pub serial_revision: i64,
    /// Whether the serial key marks a split write whose last part is still to come: this
    /// state is then between two that API calls asked for, and is not applied.
    pub write_open: bool,
    /// The revision of the last change to a resource: at a listing, the serial key's (every
    /// API write bumps it) or the newest stored object's (decodable or not) when later; then a
    /// batch's revision when it changed a resource. Unlike `revision`, writes to other keys
    /// (node records) do not move it, so nodes that route alike show the same one. (A delete
    /// written behind the API's back, without the serial key, is seen by a watch but not by a
    /// later listing.)
    pub config_revision: i64,
    /// Backends by name.
    pub backends: BTreeMap<String, Arc<v1::Backend>>,
    /// Probes by name.
    pub probes: BTreeMap<String, Arc<v1::Probe>>,
    /// Directors by name.
    pub directors: BTreeMap<String, Arc<v1::Director>>,
    /// Routes by name.
    pub routes: BTreeMap<String, Arc<v1::Route>>,
    /// Certificates by name.
    pub certificates: BTreeMap<String, Arc<v1::Certificate>>,
    /// Discoveries by name.
    pub discoveries: BTreeMap<String, Arc<v1::Discovery>>,
    /// Where errors about a resource are reported, when not `<kind>/<name>` (the request's
    /// own field, as `backend` or `backends[2]`).
    pub labels: HashMap<(Kind, String), String>,
}

fn encode<R: Resource>(r: &R) -> Vec<u8> {
    let mut stored = r.clone();
    stored.set_revision(0);
    stored.encode_to_vec()
}

/// The resources of `new` that are not in `old` as they are (new, or changed), in name order,
/// and the names of those of `old` that `new` lacks. Both maps are walked side by side (they
/// are sorted): at 10,000 resources, looking each name up in the other map was most of a
/// one-resource write's diff.
fn compare<'a, R: Resource>(
    old: &'a BTreeMap<String, Arc<R>>,
    new: &'a BTreeMap<String, Arc<R>>,
) -> (Vec<(&'a str, &'a Arc<R>)>, Vec<&'a str>) {
    let (mut written, mut deleted) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((name, _)), None) => {
                deleted.push(name.as_str());
                a.next();
            }
            (None, Some((name, r))) => {
                written.push((name.as_str(), *r));
                b.next();
            }
            (Some((an, ar)), Some((bn, br))) => {
                if Arc::ptr_eq(ar, br) {
                    // The same object (`State` holds its resources behind `Arc`s, so a copy
                    // shares what a write left as it was): under the same name, unchanged,
                    // and not even read.
                    a.next();
                    b.next();
                    continue;
                }
                match an.cmp(bn) {
                    std::cmp::Ordering::Less => {
                        deleted.push(an.as_str());
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        written.push((bn.as_str(), *br));
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !same_content(&***ar, &***br) {
                            written.push((bn.as_str(), *br));
                        }
                        a.next();
                        b.next();
                    }
                }
            }
        }
    }
    (written, deleted)
}

/// Whether two versions of a resource store the same thing (revisions aside). Compared as
/// messages, not as encodings: no copy or encoding of the thousands a write leaves as they
/// were (at 10,000 backends that was a one-backend change's largest cost), and maps compare
/// by content where prost encodes them in hash order.
fn same_content<R: Resource>(a: &R, b: &R) -> bool {
    if a.revision() == b.revision() {
        a == b
    } else {
        let mut b = b.clone();
        b.set_revision(a.revision());
        *a == b
    }
}

/// Removes one resource of kind `R`.
struct Remove<'a>(&'a mut State, &'a str);

impl PerKind for Remove<'_> {
    type Output = ();
    fn run<R: Resource>(self) {
        R::map_mut(self.0).remove(self.1);
    }
}

impl State {
    /// Decodes a listing of the layout's root. Objects that do not decode are left out and
    /// returned.
    pub fn from_listing(layout: &Layout, listing: &Listing) -> (State, Vec<DecodeError>) {
        let mut state = State {
            revision: listing.revision,
            ..State::default()
        };
        let serial = layout.serial();
        let mut errors = Vec::new();
        // Objects that do not decode count too: a watch sees their put as a change as well.
        let mut newest = 0;
        for kv in &listing.kvs {
            if kv.key == serial {
                state.serial_revision = kv.mod_revision;
                state.write_open = crate::serial::marks_open_write(&kv.value);
            } else if let Some((_, name)) = layout.parse(&kv.key) {
                // The key string is allocated before the message's own strings, so that the
                // 10,000 entries a revision walks lie in memory in key order (measured: a
                // one-backend change at 10,000 is ~9% slower the other way round).
                let key = name.to_owned();
                let Some(c) = Change::from_kv(layout, kv) else {
                    continue;
                };
                newest = newest.max(kv.mod_revision);
                match c {
                    Change::Put { resource, .. } => state.put_any_as(key, resource),
                    c => state.apply_change(c, &mut errors),
                }
            }
        }
        state.config_revision = newest.max(state.serial_revision);
        (state, errors)
    }

    /// The serial key's revision or the newest resource's, whichever is later.
    fn newest_change(&self) -> i64 {
        struct Newest<'a>(&'a State, i64);
        impl EachKind for Newest<'_> {
            fn visit<R: Resource>(&mut self) {
                let newest = R::map(self.0).values().map(|r| r.revision()).max();
                self.1 = self.1.max(newest.unwrap_or(0));
            }
        }
        let mut n = Newest(self, self.serial_revision);
        each_kind(&mut n, false);
        n.1
    }

    fn put_any(&mut self, r: AnyResource) {
        let key = any_kind_name(&r).1.to_owned();
        self.put_any_as(key, r);
    }

    /// Inserts `r` under `key` (its name).
    fn put_any_as(&mut self, key: String, r: AnyResource) {
        fn put<R: Resource>(s: &mut State, key: String, r: R) {
            R::map_mut(s).insert(key, Arc::new(r));
        }
        match r {
            AnyResource::Backend(r) => put(self, key, r),
            AnyResource::Probe(r) => put(self, key, r),
            AnyResource::Director(r) => put(self, key, r),
            AnyResource::Route(r) => put(self, key, r),
            AnyResource::Certificate(r) => put(self, key, r),
            AnyResource::Discovery(r) => put(self, key, r),
        }
    }

    fn remove(&mut self, kind: Kind, name: &str) {
        per_kind(kind, Remove(self, name));
    }

    /// Applies one change; an object that did not decode is left out (a stale version is not
    /// kept) and added to `errors`.
    fn apply_change(&mut self, c: Change, errors: &mut Vec<DecodeError>) {
        match c {
            Change::Put { resource, .. } => self.put_any(resource),
            Change::Delete { kind, name, .. } => self.remove(kind, &name),
            Change::Undecodable(e) => {
                self.remove(e.kind, &e.name);
                errors.push(e);
            }
        }
    }

    /// Applies changes; returns the objects that did not decode.
    fn apply_changes(&mut self, changes: Vec<Change>) -> Vec<DecodeError> {
        let mut errors = Vec::new();
        for c in changes {
            self.apply_change(c, &mut errors);
        }
        errors
    }

    /// Applies the changes of one revision; returns the objects that did not decode.
    pub fn apply(&mut self, revision: i64, changes: Vec<Change>) -> Vec<DecodeError> {
        if !changes.is_empty() {
            self.config_revision = revision;
        }
        self.revision = revision;
        self.apply_changes(changes)
    }

    /// Applies the store events of one revision (see [`State::apply`]).
    pub fn apply_events(
        &mut self,
        layout: &Layout,
        revision: i64,
        events: &[Event],
    ) -> Vec<DecodeError> {
        let serial = layout.serial();
        for e in events {
            if let Event::Put(kv) = e
                && kv.key == serial
            {
                self.serial_revision = kv.mod_revision;
                self.write_open = crate::serial::marks_open_write(&kv.value);
            }
        }
        let changes = events
            .iter()
            .filter_map(|e| Change::from_event(layout, e))
            .collect();
        self.apply(revision, changes)
    }

    /// [`State::to_snapshot`] without undecodable objects, encoded (the node's cache file):
    /// the same bytes, written from the shared resources instead of a copy of each (at 10,000
    /// backends the copies were most of the cost of saving the cache after every change).
    pub fn encode_snapshot(&self) -> Vec<u8> {
        use prost::encoding::{int64, message};
        fn each<R: Resource>(tag: u32, map: &BTreeMap<String, Arc<R>>, buf: &mut Vec<u8>) {
            for r in map.values() {
                message::encode(tag, &**r, buf);
            }
        }
        // In field-number order, as prost writes a `ConfigSnapshot`.
        let mut buf = Vec::new();
        if self.revision != 0 {
            int64::encode(1, &self.revision, &mut buf);
        }
        each(2, &self.backends, &mut buf);
        each(3, &self.probes, &mut buf);
        each(4, &self.directors, &mut buf);
        each(5, &self.routes, &mut buf);
        if self.config_revision != 0 {
            int64::encode(7, &self.config_revision, &mut buf);
        }
        each(8, &self.certificates, &mut buf);
        each(10, &self.discoveries, &mut buf);
        buf
    }

    /// The state as a snapshot message (GetSnapshot, the node's cache), with the objects that
    /// were left out because they do not decode.
    pub fn to_snapshot(&self, undecodable: &[DecodeError]) -> v1::ConfigSnapshot {
        struct Fill<'a>(&'a State, v1::ConfigSnapshot);
        impl EachKind for Fill<'_> {
            fn visit<R: Resource>(&mut self) {
                R::list_mut(&mut self.1).extend(R::map(self.0).values().map(|r| R::clone(r)));
            }
        }
        let mut fill = Fill(
            self,
            v1::ConfigSnapshot {
                revision: self.revision,
                config_revision: self.config_revision,
                undecodable: undecodable
                    .iter()
                    .map(|e| v1::UndecodableObject {
                        kind: e.kind.singular().to_owned(),
                        name: e.name.clone(),
                        reason: e.message.clone(),
                    })
                    .collect(),
                ..Default::default()
            },
        );
        each_kind(&mut fill, false);
        fill.1
    }

    /// A snapshot message as a state, with the objects it reports as undecodable.
    pub fn from_snapshot(mut s: v1::ConfigSnapshot) -> (State, Vec<DecodeError>) {
        struct Take<'a>(&'a mut v1::ConfigSnapshot, Vec<Change>);
        impl EachKind for Take<'_> {
            fn visit<R: Resource>(&mut self) {
                self.1
                    .extend(
                        std::mem::take(R::list_mut(self.0))
                            .into_iter()
                            .map(|r| Change::Put {
                                resource: r.into_any(),
                                created: false,
                            }),
                    );
            }
        }
        let mut take = Take(&mut s, Vec::new());
        each_kind(&mut take, false);
        let mut changes = take.1;
        changes.extend(s.undecodable.into_iter().filter_map(|u| {
            Some(Change::Undecodable(DecodeError {
                kind: Kind::from_singular(&u.kind)?,
                name: u.name,
                message: u.reason,
            }))
        }));
        let mut state = State {
            revision: s.revision,
            ..State::default()
        };
        let errors = state.apply_changes(changes);
        state.config_revision = s.config_revision.max(state.newest_change());
        (state, errors)
    }

    /// Every resource (borrowed), for [`crate::convert::validate`], each under its label:
    /// `<kind>/<name>`, or the request's field it was given in.
    pub fn resources(&self) -> Resources<'_> {
        fn tag<R: Resource>(state: &State) -> Vec<(Label<'_>, &R)> {
            let mut v: Vec<(Label<'_>, &R)> = R::map(state)
                .values()
                .map(|r| (Label::Stored(R::KIND, r.name()), &**r))
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
            certificates: tag(self),
        }
    }

    /// Where errors about a resource are reported: the request's own field when it came with
    /// the request being written (its `insert` label), as validation reports them
    /// ([`State::resources`]); else `kind/name`.
    pub fn label_of(&self, kind: Kind, name: &str) -> String {
        match self.labels.get(&(kind, name.to_owned())) {
            Some(field) => Label::Field(field).to_string(),
            None => Label::Stored(kind, name).to_string(),
        }
    }

    /// Inserts or replaces a resource, labelling its errors with `label`.
    pub fn insert<R: Resource>(&mut self, r: R, label: String) {
        self.labels.insert((R::KIND, r.name().to_owned()), label);
        R::map_mut(self).insert(r.name().to_owned(), Arc::new(r));
    }

    /// Brings every balanced director's `selector_slots` up to date with the backends (see
    /// [`crate::convert::assign_selector_slots`]); the write path runs it on the state it is
    /// about to write, so a backend's create, label change or delete moves it in and out of
    /// the directors that select it in the same transaction.
    pub fn assign_selector_slots(&mut self) {
        let backends: Vec<&v1::Backend> = self.backends.values().map(|b| &**b).collect();
        for d in self.directors.values_mut() {
            if crate::convert::has_selector(d) || !d.selector_slots.is_empty() {
                // On a copy: a director whose slots stay as they were stays shared.
                let mut next = v1::Director::clone(d);
                crate::convert::assign_selector_slots(&mut next, &backends);
                if next != **d {
                    *d = Arc::new(next);
                }
            }
        }
    }

    /// The writes that turn `self` into `next`, ordered so that every prefix leaves a
    /// referentially complete configuration (when `next` is one): puts of probes, backends,
    /// directors, routes — a resource's references are written before it — then deletes of
    /// routes, directors, backends, probes — a resource's referrers are gone or updated first.
    /// That is what lets a write too large for one etcd transaction be split.
    pub fn diff_ops(&self, next: &State, layout: &Layout) -> Vec<Op> {
        struct Diff<'a> {
            old: &'a State,
            new: &'a State,
            layout: &'a Layout,
            ops: Vec<Op>,
            deletes: bool,
        }
        impl EachKind for Diff<'_> {
            fn visit<R: Resource>(&mut self) {
                let (a, b) = (R::map(self.old), R::map(self.new));
                let (written, deleted) = compare(a, b);
                if self.deletes {
                    for name in deleted {
                        self.ops.push(Op::Delete(self.layout.key(R::KIND, name)));
                    }
                } else {
                    for (name, r) in written {
                        let key = self.layout.key(R::KIND, name);
                        self.ops.push(match r.lease() {
                            0 => Op::Put(key, encode(&**r)),
                            lease => Op::PutLeased(key, encode(&**r), lease),
                        });
                    }
                }
            }
        }
        let mut d = Diff {
            old: self,
            new: next,
            layout,
            ops: Vec::new(),
            deletes: false,
        };
        each_kind(&mut d, false);
        d.deletes = true;
        each_kind(&mut d, true);
        let mut ops = d.ops;
        // Directors nesting directors: within their puts, a nested director before the one
        // naming it; within their deletes, the one naming it first.
        let dir = layout.dir(Kind::Director);
        let is_put =
            |o: &Op| matches!(o, Op::Put(k, _) | Op::PutLeased(k, _, _) if k.starts_with(&dir));
        let is_delete = |o: &Op| matches!(o, Op::Delete(k) if k.starts_with(&dir));
        reorder(&mut ops, &dir, is_put, &next.directors, false);
        reorder(&mut ops, &dir, is_delete, &self.directors, true);
        ops
    }

    /// Whether a stored resource differs from `r` (ignoring revisions).
    pub fn differs<R: Resource>(&self, r: &R) -> bool {
        R::map(self)
            .get(r.name())
            .is_none_or(|stored| !same_content(&**stored, r))
    }

    /// Sets the revision of every resource that differs from `old`'s (new or changed by a
    /// write) to 0, "not stored": validation then reuses a conversion by stored revision for
    /// what the write left as it was, and never for what it sent (a request's messages carry
    /// the revision they expect, which does not identify their contents).
    pub fn mark_written(&mut self, old: &State) {
        struct Mark<'a>(&'a mut State, &'a State);
        impl EachKind for Mark<'_> {
            fn visit<R: Resource>(&mut self) {
                let written: Vec<String> = compare(R::map(self.1), R::map(self.0))
                    .0
                    .into_iter()
                    .map(|(name, _)| name.to_owned())
                    .collect();
                let map = R::map_mut(self.0);
                for name in written {
                    if let Some(r) = map.get_mut(&name) {
                        Arc::make_mut(r).set_revision(0);
                    }
                }
            }
        }
        each_kind(&mut Mark(self, old), false);
    }
}

/// Puts a resource by value into one of a [`State`]'s maps (tests build states by hand).
#[cfg(test)]
pub(crate) trait PutResource<R> {
    fn put(&mut self, name: String, r: R) -> Option<Arc<R>>;
}

#[cfg(test)]
impl<R> PutResource<R> for BTreeMap<String, Arc<R>> {
    fn put(&mut self, name: String, r: R) -> Option<Arc<R>> {
        self.insert(name, Arc::new(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: Vec<u8>, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            create_revision: rev,
            mod_revision: rev,
        }
    }

    fn backend(name: &str) -> v1::Backend {
        v1::Backend {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_cache_encoding_is_the_snapshot_messages() {
        let mut s = State {
            revision: 42,
            config_revision: 40,
            ..State::default()
        };
        for n in ["a", "b"] {
            s.backends.put(n.into(), backend(n));
        }
        // One of every other kind, by name alone.
        macro_rules! one {
            ($map:ident, $ty:ident) => {
                s.$map.put(
                    "x".into(),
                    v1::$ty {
                        name: "x".into(),
                        ..Default::default()
                    },
                );
            };
        }
        one!(probes, Probe);
        one!(directors, Director);
        one!(routes, Route);
        one!(certificates, Certificate);
        one!(discoveries, Discovery);
        assert_eq!(s.encode_snapshot(), s.to_snapshot(&[]).encode_to_vec());
        assert_eq!(State::default().encode_snapshot(), Vec::<u8>::new());
    }

    #[test]
    fn compare_finds_what_a_copy_changed_added_and_removed() {
        let mut old = State::default();
        for (i, n) in ["a", "b", "c", "e"].iter().enumerate() {
            let mut b = backend(n);
            b.revision = 10 + i64::try_from(i).unwrap();
            old.backends.put((*n).into(), b);
        }
        let mut new = old.clone();
        // b changed (its revision as the request gave it), c removed, d added, and e put back
        // as it was but as a new object (compared by content, revisions aside).
        let mut b = v1::Backend::clone(&new.backends["b"]);
        b.weight = Some(2.0);
        b.revision = 99;
        new.backends.put("b".into(), b);
        new.backends.remove("c");
        new.backends.put("d".into(), backend("d"));
        let mut e = v1::Backend::clone(&new.backends["e"]);
        e.revision = 55;
        new.backends.put("e".into(), e);
        let (written, deleted) = compare(&old.backends, &new.backends);
        let written: Vec<&str> = written.iter().map(|(n, _)| *n).collect();
        assert_eq!(written, ["b", "d"]);
        assert_eq!(deleted, ["c"]);
        // And the write's marks: what it wrote is "not stored", the rest keeps its revision.
        new.mark_written(&old);
        let revisions: Vec<i64> = new.backends.values().map(|b| b.revision).collect();
        assert_eq!(revisions, [10, 0, 0, 55]);
    }

    #[test]
    fn every_path_leaves_out_an_undecodable_object_and_reports_it() {
        let l = Layout::default();
        let good = kv(&l.key(Kind::Backend, "a"), backend("a").encode_to_vec(), 3);
        let bad = kv(&l.key(Kind::Backend, "b"), vec![0xff, 0xff], 4);
        let listing = Listing {
            revision: 5,
            kvs: vec![good, bad],
        };
        let (direct, errors) = State::from_listing(&l, &listing);
        assert_eq!(direct.backends.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].kind, errors[0].name.as_str()),
            (Kind::Backend, "b")
        );
        assert_eq!(
            direct.config_revision, 4,
            "the undecodable object counts too"
        );

        // Through the API's snapshot and back: the same state, the same error.
        let (via_snapshot, errors2) = State::from_snapshot(direct.to_snapshot(&errors));
        assert_eq!(via_snapshot.backends, direct.backends);
        assert_eq!(errors2, errors);

        // Through watch events and back: a stale version of "a" is not kept once it no
        // longer decodes.
        let mut s = direct;
        let broken = kv(&l.key(Kind::Backend, "a"), b"\x0a\x01".to_vec(), 6);
        let events = [Event::Put(broken)];
        let changes: Vec<Change> = events
            .iter()
            .filter_map(|e| Change::from_event(&l, e))
            .map(|c| Change::from_watch_event(c.into_watch_event()).unwrap())
            .collect();
        let errors3 = s.apply(6, changes);
        assert!(s.backends.is_empty());
        assert_eq!(errors3.len(), 1);
        assert_eq!(s.config_revision, 6);
    }

    #[test]
    fn watch_events_round_trip() {
        let l = Layout::default();
        let mut put = kv(&l.key(Kind::Backend, "a"), backend("a").encode_to_vec(), 7);
        put.create_revision = 2;
        for e in [
            Event::Put(put),
            Event::Delete {
                key: l.key(Kind::Route, "r"),
                mod_revision: 7,
                prev: None,
            },
            Event::Delete {
                key: l.key(Kind::Backend, "a"),
                mod_revision: 8,
                prev: Some(kv(
                    &l.key(Kind::Backend, "a"),
                    backend("a").encode_to_vec(),
                    7,
                )),
            },
        ] {
            let c = Change::from_event(&l, &e).unwrap();
            assert_eq!(
                Change::from_watch_event(c.clone().into_watch_event()),
                Some(c)
            );
        }
        assert_eq!(
            Change::from_event(&l, &Event::Put(kv(&l.serial(), vec![], 1))),
            None
        );
        assert_eq!(
            Change::from_event(&l, &Event::Put(kv(&l.key(Kind::Node, "n"), vec![], 1))),
            None
        );
    }
}
