//! The tether.v1 `Tether` gRPC service over a [`Store`].
//!
//! Every write is: list the configuration at revision R → change a copy → validate the whole
//! result ([`crate::convert::validate`]) → one transaction with the difference, guarded by the
//! serial key (commits only if nothing changed since R; retried a few times when another
//! writer won). Nothing partial is ever stored: a bad field fails validation before the
//! transaction exists.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use tether_dataplane::config::{AdminHealth, Config};
use tether_dataplane::director::{BackendId, Directors, HealthView, Key, SelectOpts};
use tether_dataplane::runtime::Runtime;
use tether_dataplane::snapshot::{self, ExplainError, ExplainTarget};
use tether_proto::keys::{Kind, Layout};
use tether_proto::v1::tether_server::Tether;
use tether_proto::v1::{self, Action};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::{self, Converted, Failure};
use crate::error::ApiError;
use crate::pattern::Pattern;
use crate::state::{Change, DecodeError, Resource, State};
use crate::store::{Store, TxnOutcome};

/// Writes retried when another writer committed first.
const WRITE_ATTEMPTS: usize = 8;
/// Keys sampled per shard director to report the share a change moves.
const MOVED_SAMPLE: u32 = 10_000;

/// The service.
#[derive(Debug, Clone)]
pub struct Api<S> {
    store: S,
    layout: Layout,
    live: Option<Arc<Runtime>>,
    /// Directors of the last configuration this replica validated: handed to the next
    /// validation so unchanged shard rings are reused rather than rebuilt.
    last_built: Arc<std::sync::Mutex<Option<Arc<Directors>>>>,
}

/// What a write did.
#[derive(Debug)]
struct Written<T> {
    value: T,
    revision: i64,
    old: State,
    /// The written configuration as validated, with its directors.
    built: Built,
}

/// A validated configuration whose directors are shared with the next validation's `prev`.
#[derive(Debug)]
struct Built {
    config: Config,
    directors: Arc<Directors>,
}

impl<S: Store> Api<S> {
    /// A service writing through `store` under `layout`. `live` is the data plane running in
    /// the same process (`tether up`), whose health Explain and ListHealth report.
    pub fn new(store: S, layout: Layout, live: Option<Arc<Runtime>>) -> Api<S> {
        Api {
            store,
            layout,
            live,
            last_built: Arc::default(),
        }
    }

    async fn load(&self) -> Result<State, ApiError> {
        Ok(self.load_reporting().await?.0)
    }

    /// The stored configuration, and the objects left out of it because they do not decode.
    async fn load_reporting(&self) -> Result<(State, Vec<DecodeError>), ApiError> {
        let listing = self.store.list(self.layout.root()).await?;
        let (state, errors) = State::from_listing(&self.layout, &listing);
        for e in &errors {
            tracing::warn!(error = %e, "stored object does not decode; ignored");
        }
        Ok((state, errors))
    }

    /// Loads, changes with `change(old, new)`, validates and commits (unless `dry_run`).
    ///
    /// The difference is written in one transaction guarded by the serial key. When it is
    /// larger than the store allows in one transaction (etcd: 128 operations, 1.5 MiB), it is
    /// split into parts in [`State::diff_ops`] order, each referentially complete and each
    /// guarded by the serial key as the previous part left it; if another writer intervenes
    /// between parts, the write starts over from a fresh load (Apply is idempotent).
    async fn write<T>(
        &self,
        dry_run: bool,
        change: impl Fn(&State, &mut State) -> Result<T, ApiError>,
    ) -> Result<Written<T>, ApiError> {
        'attempt: for _ in 0..WRITE_ATTEMPTS {
            let old = self.load().await?;
            let mut new = old.clone();
            new.labels.clear();
            let value = change(&old, &mut new)?;
            let built = self.remember(self.validate_write(&old, &new)?);
            let ops = old.diff_ops(&new, &self.layout);
            let mut revision = old.revision;
            if ops.is_empty() || dry_run {
                return Ok(Written {
                    value,
                    revision,
                    old,
                    built,
                });
            }
            let serial = self.layout.serial();
            let mut serial_revision = old.serial_revision;
            let parts = split(
                ops,
                self.store.max_txn_ops().saturating_sub(1).max(1),
                self.store.max_txn_bytes().saturating_sub(serial.len() + 64),
            );
            for (i, ops) in parts.into_iter().enumerate() {
                let witness = write_id();
                let mut ops = ops;
                ops.push(crate::store::Op::Put(serial.clone(), witness.clone()));
                let txn = crate::store::Txn {
                    compares: vec![crate::store::Compare::ModRevision(
                        serial.clone(),
                        serial_revision,
                    )],
                    ops,
                    witness: Some((serial.clone(), witness)),
                };
                match self.store.txn(txn).await? {
                    TxnOutcome::Committed { revision: r } => {
                        serial_revision = r;
                        revision = r;
                    }
                    TxnOutcome::Failed { .. } => {
                        if i > 0 {
                            tracing::warn!(
                                parts_written = i,
                                "another write intervened between parts of a split write; starting over"
                            );
                        }
                        continue 'attempt;
                    }
                }
            }
            return Ok(Written {
                value,
                revision,
                old,
                built,
            });
        }
        Err(ApiError::Contended)
    }

    /// Validates a whole configuration, reusing the last build's rings. Stored objects that
    /// do not validate (labelled `kind/name`: written by something else) are left out with a
    /// warning, as the data planes leave them out; an error in what the caller sent is the
    /// caller's.
    fn validate(&self, state: &State) -> Result<convert::Validated, ApiError> {
        self.validate_leaving_out(state, &|label: &str| label.contains('/'))
    }

    fn validate_leaving_out(
        &self,
        state: &State,
        may_leave_out: &dyn Fn(&str) -> bool,
    ) -> Result<convert::Validated, ApiError> {
        let prev = self
            .last_built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // No `Converted` here: a request's messages carry the revision they expect, which
        // does not identify their contents.
        let (v, left_out) = convert::validate_leaving_out(
            &state.resources(),
            prev.as_deref(),
            &mut Converted::default(),
            may_leave_out,
        )?;
        for e in left_out {
            tracing::warn!(error = %e, "stored object is invalid; left out of validation");
        }
        Ok(v)
    }

    /// Validates the configuration a write produces. Stored objects that were already invalid
    /// before the write are left out (and stay as they are); anything the write itself breaks
    /// — a field it sent, a reference it removed — is refused.
    fn validate_write(&self, old: &State, new: &State) -> Result<convert::Validated, ApiError> {
        match self.validate_leaving_out(new, &|_: &str| false) {
            Ok(v) => Ok(v),
            Err(e) => {
                let before = convert::validate_leaving_out(
                    &old.resources(),
                    None,
                    &mut Converted::default(),
                    |l| l.contains('/'),
                );
                let broken: HashSet<String> = match before {
                    Ok((_, left_out)) => left_out.iter().map(|f| f.object().to_owned()).collect(),
                    Err(_) => HashSet::new(),
                };
                if broken.is_empty() {
                    return Err(e);
                }
                self.validate_leaving_out(new, &|l: &str| broken.contains(l))
            }
        }
    }

    /// Remembers a validated configuration's directors for the next validation.
    fn remember(&self, v: convert::Validated) -> Built {
        let directors = Arc::new(v.directors);
        *self
            .last_built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&directors));
        Built {
            config: v.config,
            directors,
        }
    }

    async fn read_back<R: Resource>(&self, name: &str) -> Result<R, ApiError> {
        self.get::<R>(name).await
    }

    async fn get<R: Resource>(&self, name: &str) -> Result<R, ApiError> {
        let key = self.layout.key(R::KIND, name);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                kind: R::FIELD,
                name: name.to_owned(),
            })?;
        let mut r = R::decode(kv.value.as_slice()).map_err(|e| {
            ApiError::Store(crate::store::StoreError::Corrupt(format!("{key}: {e}")))
        })?;
        r.set_revision(kv.mod_revision);
        Ok(r)
    }

    async fn create<R: Resource>(&self, r: Option<R>) -> Result<R, ApiError> {
        let r = r.ok_or(ApiError::Required(R::FIELD))?;
        let name = r.name().to_owned();
        self.write(false, |old, new| {
            if R::map(old).contains_key(r.name()) {
                return Err(ApiError::AlreadyExists {
                    kind: R::FIELD,
                    name: r.name().to_owned(),
                });
            }
            let mut r = r.clone();
            r.set_revision(0);
            r.prepare(None);
            new.insert(r, R::FIELD.to_owned());
            Ok(())
        })
        .await?;
        self.read_back(&name).await
    }

    async fn update<R: Resource>(&self, r: Option<R>) -> Result<R, ApiError> {
        let r = r.ok_or(ApiError::Required(R::FIELD))?;
        let name = r.name().to_owned();
        self.write(false, |old, new| {
            let stored = R::map(old)
                .get(r.name())
                .ok_or_else(|| ApiError::NotFound {
                    kind: R::FIELD,
                    name: r.name().to_owned(),
                })?;
            check_revision::<R>(stored, r.revision())?;
            let mut r = r.clone();
            r.set_revision(stored.revision());
            r.prepare(Some(stored));
            new.insert(r, R::FIELD.to_owned());
            Ok(())
        })
        .await?;
        self.read_back(&name).await
    }

    async fn delete<R: Resource>(&self, req: v1::DeleteRequest) -> Result<(), ApiError> {
        let subject = format!("{}/{}", R::KIND, req.name);
        let result = self
            .write(false, |old, new| {
                let stored = R::map(old)
                    .get(&req.name)
                    .ok_or_else(|| ApiError::NotFound {
                        kind: R::FIELD,
                        name: req.name.clone(),
                    })?;
                check_revision::<R>(stored, req.revision)?;
                R::map_mut(new).remove(&req.name);
                Ok(())
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(ApiError::Field(f)) if f.failure == Failure::Precondition => {
                Err(ApiError::Referenced {
                    subject,
                    by: f.field,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn list<R: Resource>(
        &self,
        req: &v1::ListRequest,
    ) -> Result<(Vec<R>, String, i64), ApiError> {
        let listing = self.store.list(&self.layout.dir(R::KIND)).await?;
        let mut out = Vec::new();
        let mut next = String::new();
        for kv in &listing.kvs {
            let Some((_, name)) = self.layout.parse(&kv.key) else {
                continue;
            };
            if !req.page_token.is_empty() && name <= req.page_token.as_str() {
                continue;
            }
            if req.page_size != 0 && out.len() == req.page_size as usize {
                next = out
                    .last()
                    .map(|r: &R| r.name().to_owned())
                    .unwrap_or_default();
                break;
            }
            match R::decode(kv.value.as_slice()) {
                Ok(mut r) => {
                    r.set_revision(kv.mod_revision);
                    out.push(r);
                }
                Err(e) => {
                    tracing::warn!(key = %kv.key, error = %e, "stored object does not decode; skipped")
                }
            }
        }
        Ok((out, next, listing.revision))
    }

    async fn apply(&self, req: v1::ApplyRequest) -> Result<v1::ApplyResponse, ApiError> {
        let w = self
            .write(req.dry_run, |old, new| {
                if req.expected_revision != 0 && req.expected_revision != old.revision {
                    return Err(ApiError::Stale {
                        subject: "store".into(),
                        expected: req.expected_revision,
                        actual: old.revision,
                    });
                }
                let mut changes = Vec::new();
                stage(old, new, &req.backends, "backends", req.prune, &mut changes)?;
                stage(old, new, &req.probes, "probes", req.prune, &mut changes)?;
                stage(
                    old,
                    new,
                    &req.directors,
                    "directors",
                    req.prune,
                    &mut changes,
                )?;
                stage(old, new, &req.routes, "routes", req.prune, &mut changes)?;
                Ok(changes)
            })
            .await?;
        // The stored configuration as the write path sees it (invalid stored objects left out).
        let keys_moved = match self.validate(&w.old) {
            Ok(before) => keys_moved(&before.config, &before.directors, &w.built),
            Err(_) => Vec::new(),
        };
        Ok(v1::ApplyResponse {
            revision: w.revision,
            changes: w.value,
            keys_moved,
            dry_run: req.dry_run,
        })
    }

    async fn set_health(
        &self,
        req: v1::SetHealthRequest,
    ) -> Result<v1::SetHealthResponse, ApiError> {
        let pattern = Pattern::parse(&req.pattern).map_err(|e| ApiError::Pattern(e.to_string()))?;
        let state = v1::AdminHealth::try_from(req.state).map_err(|_| {
            ApiError::Field(convert::FieldError::invalid(
                "state",
                format!("unknown value {}", req.state),
            ))
        })?;
        let w = self
            .write(false, |old, new| {
                let mut names = Vec::new();
                for (name, b) in &old.backends {
                    // A stored backend that does not validate is not matched (nor changed).
                    let Ok(spec) = convert::backend(b, &format!("backends/{name}")) else {
                        continue;
                    };
                    let addrs: Vec<_> = spec.addresses().cloned().collect();
                    if pattern.matches(name, &addrs) {
                        let mut b = b.clone();
                        b.admin_health = state as i32;
                        new.insert(b, format!("backends/{name}"));
                        names.push(name.clone());
                    }
                }
                if names.is_empty() {
                    return Err(ApiError::Pattern(format!(
                        "pattern {:?} matches no backend",
                        req.pattern
                    )));
                }
                Ok(names)
            })
            .await?;
        Ok(v1::SetHealthResponse {
            revision: w.revision,
            backends: w.value,
        })
    }

    async fn list_health(
        &self,
        req: v1::ListHealthRequest,
    ) -> Result<v1::ListHealthResponse, ApiError> {
        let pattern = if req.pattern.is_empty() {
            None
        } else {
            Some(Pattern::parse(&req.pattern).map_err(|e| ApiError::Pattern(e.to_string()))?)
        };
        let keep = |name: &str, addrs: &[tether_dataplane::config::Address]| {
            pattern.as_ref().is_none_or(|p| p.matches(name, addrs))
        };
        let admin = |a: AdminHealth| match a {
            AdminHealth::Auto => v1::AdminHealth::Auto,
            AdminHealth::Healthy => v1::AdminHealth::Healthy,
            AdminHealth::Sick => v1::AdminHealth::Sick,
        } as i32;
        let mut out = Vec::new();
        if let Some(rt) = &self.live {
            let snap = rt.snapshot();
            for (spec, st) in snap.config.backends.iter().zip(&snap.backends) {
                let addrs: Vec<_> = spec.addresses().cloned().collect();
                if !keep(&spec.name, &addrs) {
                    continue;
                }
                let window = st.probe_window();
                out.push(v1::BackendHealth {
                    name: spec.name.clone(),
                    address: spec.address.to_string(),
                    admin_health: admin(spec.admin_health),
                    probe: match window {
                        None => "-".into(),
                        Some(_) if st.probe_healthy() => "healthy".into(),
                        Some(_) => "sick".into(),
                    },
                    window: window.map(|(g, w)| format!("{g}/{w}")).unwrap_or_default(),
                    healthy: snapshot::backend_healthy(spec, st),
                    observed: true,
                });
            }
        } else {
            let v = self.validate(&self.load().await?)?;
            for spec in &v.config.backends {
                let addrs: Vec<_> = spec.addresses().cloned().collect();
                if !keep(&spec.name, &addrs) {
                    continue;
                }
                out.push(v1::BackendHealth {
                    name: spec.name.clone(),
                    address: spec.address.to_string(),
                    admin_health: admin(spec.admin_health),
                    probe: if spec.probe.is_some() {
                        "?".into()
                    } else {
                        "-".into()
                    },
                    window: String::new(),
                    healthy: !spec.drain && spec.admin_health != AdminHealth::Sick,
                    observed: false,
                });
            }
        }
        if out.is_empty()
            && let Some(p) = &pattern
            && p.is_exact()
        {
            return Err(ApiError::NotFound {
                kind: "backend",
                name: req.pattern.clone(),
            });
        }
        Ok(v1::ListHealthResponse { backends: out })
    }

    async fn explain(&self, req: v1::ExplainRequest) -> Result<v1::ExplainResponse, ApiError> {
        let n = if req.alternates == 0 {
            3
        } else {
            req.alternates as usize
        };
        let target = match &req.target {
            Some(v1::explain_request::Target::Route(r)) => ExplainTarget::Route(r),
            Some(v1::explain_request::Target::Director(d)) => ExplainTarget::Director(d),
            None => return Err(ApiError::Required("target")),
        };
        let not_found = |e: ExplainError| match e {
            ExplainError::NoRoute(name) => ApiError::NotFound {
                kind: "route",
                name,
            },
            ExplainError::NoDirector(name) => ApiError::NotFound {
                kind: "director",
                name,
            },
            ExplainError::Key(k) => ApiError::Field(convert::FieldError::invalid("key", k)),
        };
        let (e, revision) = match &self.live {
            Some(rt) => {
                let snap = rt.snapshot();
                (
                    snap.explain(target, &req.key, n).map_err(not_found)?,
                    snap.revision,
                )
            }
            None => {
                let state = self.load().await?;
                let v = self.validate(&state)?;
                let health = AdminOnly(&v.config);
                (
                    snapshot::explain(&v.config, &v.directors, &health, target, &req.key, n)
                        .map_err(not_found)?,
                    state.revision,
                )
            }
        };
        Ok(v1::ExplainResponse {
            director: e.director,
            backend: e.backend.unwrap_or_default(),
            alternates: e.alternates,
            revision,
        })
    }

    async fn snapshot(&self) -> Result<v1::ConfigSnapshot, ApiError> {
        let (state, undecodable) = self.load_reporting().await?;
        Ok(state.to_snapshot(&undecodable))
    }

    async fn list_nodes(&self) -> Result<v1::ListNodesResponse, ApiError> {
        let listing = self.store.list(&self.layout.dir(Kind::Node)).await?;
        let mut nodes = Vec::new();
        for kv in &listing.kvs {
            use prost::Message;
            match v1::Node::decode(kv.value.as_slice()) {
                Ok(n) => nodes.push(n),
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "node record does not decode"),
            }
        }
        if let Some(rt) = &self.live {
            // `tether up`: the data plane in this process is the one node.
            nodes.push(crate::node::register::record(
                &crate::node::Identity {
                    id: "local".into(),
                    proxy: String::new(),
                    admin: String::new(),
                },
                rt,
            ));
        }
        let (agree, majority_fingerprint) = crate::nodes::agreement(&nodes);
        Ok(v1::ListNodesResponse {
            nodes,
            agree,
            majority_fingerprint,
        })
    }

    fn watch_events(&self, batch: crate::store::WatchBatch) -> v1::WatchResponse {
        v1::WatchResponse {
            revision: batch.revision,
            events: batch
                .events
                .iter()
                .filter_map(|e| Change::from_event(&self.layout, e))
                .map(Change::into_watch_event)
                .collect(),
        }
    }
}

/// The serial key's value for one write: 16 random bytes, unique to the write (so that an
/// unknown outcome can be resolved by reading it back), then the commit time in Unix
/// nanoseconds (so that data planes can measure commit-to-apply delay; see
/// `node::source`).
fn write_id() -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut id = Vec::with_capacity(24);
    id.extend_from_slice(&fastrand::u64(..).to_le_bytes());
    id.extend_from_slice(&fastrand::u64(..).to_le_bytes());
    id.extend_from_slice(&now.to_le_bytes());
    id
}

/// Splits ops into parts of at most `max_ops` operations and about `max_bytes` bytes of keys
/// and values, keeping their order.
fn split(
    ops: Vec<crate::store::Op>,
    max_ops: usize,
    max_bytes: usize,
) -> Vec<Vec<crate::store::Op>> {
    let size = |op: &crate::store::Op| match op {
        crate::store::Op::Put(k, v) => k.len() + v.len() + 16,
        crate::store::Op::Delete(k) => k.len() + 16,
    };
    let mut parts: Vec<Vec<crate::store::Op>> = vec![Vec::new()];
    let mut bytes = 0;
    for op in ops {
        let n = size(&op);
        let full = parts
            .last()
            .is_some_and(|p| !p.is_empty() && (p.len() >= max_ops || bytes + n > max_bytes));
        if full {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += n;
        if let Some(p) = parts.last_mut() {
            p.push(op);
        }
    }
    parts
}

fn check_revision<R: Resource>(stored: &R, expected: i64) -> Result<(), ApiError> {
    if expected != 0 && stored.revision() != expected {
        return Err(ApiError::Stale {
            subject: format!("{}/{}", R::KIND, stored.name()),
            expected,
            actual: stored.revision(),
        });
    }
    Ok(())
}

/// Stages one kind of an Apply: each given resource is created, updated or unchanged; with
/// `prune`, stored ones not given are deleted.
fn stage<R: Resource>(
    old: &State,
    new: &mut State,
    given: &[R],
    plural: &str,
    prune: bool,
    changes: &mut Vec<v1::Change>,
) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    let kind = R::FIELD.to_owned();
    for (i, r) in given.iter().enumerate() {
        if !seen.insert(r.name().to_owned()) {
            return Err(ApiError::Field(convert::FieldError::invalid(
                format!("{plural}[{i}].name"),
                format!("{} {:?} is given twice", R::FIELD, r.name()),
            )));
        }
        let stored = R::map(old).get(r.name());
        if let Some(s) = stored {
            check_revision::<R>(s, r.revision())?;
        }
        let mut r = r.clone();
        r.set_revision(stored.map_or(0, Resource::revision));
        r.prepare(stored);
        let action = match stored {
            None => Action::Create,
            Some(_) if old.differs(&r) => Action::Update,
            Some(_) => Action::Unchanged,
        };
        changes.push(v1::Change {
            kind: kind.clone(),
            name: r.name().to_owned(),
            action: action as i32,
        });
        new.insert(r, format!("{plural}[{i}]"));
    }
    if prune {
        for name in R::map(old).keys().filter(|n| !seen.contains(*n)) {
            R::map_mut(new).remove(name);
            changes.push(v1::Change {
                kind: kind.clone(),
                name: name.clone(),
                action: Action::Delete as i32,
            });
        }
    }
    Ok(())
}

/// Health from the stored admin state only (no data plane in this process).
struct AdminOnly<'a>(&'a Config);

impl HealthView for AdminOnly<'_> {
    fn is_healthy(&self, b: BackendId) -> bool {
        let spec = &self.0.backends[b as usize];
        !spec.drain && spec.admin_health != AdminHealth::Sick
    }
}

struct AllHealthy;

impl HealthView for AllHealthy {
    fn is_healthy(&self, _: BackendId) -> bool {
        true
    }
}

/// For each shard director in both states whose configuration changed, the share of sampled
/// keys whose backend differs (all backends taken as healthy).
fn keys_moved(a_config: &Config, a_directors: &Directors, b: &Built) -> Vec<v1::KeysMoved> {
    let mut out = Vec::new();
    for d in &b.config.directors {
        if !matches!(d.policy, tether_dataplane::config::Policy::Shard(_)) {
            continue;
        }
        let (Some(da), Some(db)) = (a_directors.id(&d.name), b.directors.id(&d.name)) else {
            continue;
        };
        let before = a_config.directors.iter().find(|x| x.name == d.name);
        let backends_same = a_config.backends.iter().map(|x| &x.name).eq(b
            .config
            .backends
            .iter()
            .map(|x| &x.name));
        if before == Some(d) && backends_same {
            continue;
        }
        let pick = |dirs: &Directors, id, k: &str| {
            dirs.select(id, &Key::str(k), SelectOpts::default(), &AllHealthy)
                .ok()
                .flatten()
                .map(|x| dirs.backend_name(x).to_owned())
        };
        let mut moved = 0u32;
        for i in 0..MOVED_SAMPLE {
            let k = format!("key-{i}");
            if pick(a_directors, da, &k) != pick(&b.directors, db, &k) {
                moved += 1;
            }
        }
        out.push(v1::KeysMoved {
            director: d.name.clone(),
            share: f64::from(moved) / f64::from(MOVED_SAMPLE),
            sampled_keys: MOVED_SAMPLE,
        });
    }
    out
}

type Resp<T> = Result<Response<T>, Status>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchResponse, Status>> + Send>>;

fn ok<T>(r: Result<T, ApiError>) -> Resp<T> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl<S: Store> Tether for Api<S> {
    async fn create_backend(&self, r: Request<v1::CreateBackendRequest>) -> Resp<v1::Backend> {
        ok(self.create(r.into_inner().backend).await)
    }
    async fn get_backend(&self, r: Request<v1::GetRequest>) -> Resp<v1::Backend> {
        ok(self.get(&r.into_inner().name).await)
    }
    async fn list_backends(&self, r: Request<v1::ListRequest>) -> Resp<v1::ListBackendsResponse> {
        ok(self
            .list(r.get_ref())
            .await
            .map(
                |(backends, next_page_token, revision)| v1::ListBackendsResponse {
                    backends,
                    next_page_token,
                    revision,
                },
            ))
    }
    async fn update_backend(&self, r: Request<v1::UpdateBackendRequest>) -> Resp<v1::Backend> {
        ok(self.update(r.into_inner().backend).await)
    }
    async fn delete_backend(&self, r: Request<v1::DeleteRequest>) -> Resp<()> {
        ok(self.delete::<v1::Backend>(r.into_inner()).await)
    }

    async fn create_probe(&self, r: Request<v1::CreateProbeRequest>) -> Resp<v1::Probe> {
        ok(self.create(r.into_inner().probe).await)
    }
    async fn get_probe(&self, r: Request<v1::GetRequest>) -> Resp<v1::Probe> {
        ok(self.get(&r.into_inner().name).await)
    }
    async fn list_probes(&self, r: Request<v1::ListRequest>) -> Resp<v1::ListProbesResponse> {
        ok(self
            .list(r.get_ref())
            .await
            .map(
                |(probes, next_page_token, revision)| v1::ListProbesResponse {
                    probes,
                    next_page_token,
                    revision,
                },
            ))
    }
    async fn update_probe(&self, r: Request<v1::UpdateProbeRequest>) -> Resp<v1::Probe> {
        ok(self.update(r.into_inner().probe).await)
    }
    async fn delete_probe(&self, r: Request<v1::DeleteRequest>) -> Resp<()> {
        ok(self.delete::<v1::Probe>(r.into_inner()).await)
    }

    async fn create_director(&self, r: Request<v1::CreateDirectorRequest>) -> Resp<v1::Director> {
        ok(self.create(r.into_inner().director).await)
    }
    async fn get_director(&self, r: Request<v1::GetRequest>) -> Resp<v1::Director> {
        ok(self.get(&r.into_inner().name).await)
    }
    async fn list_directors(&self, r: Request<v1::ListRequest>) -> Resp<v1::ListDirectorsResponse> {
        ok(self
            .list(r.get_ref())
            .await
            .map(
                |(directors, next_page_token, revision)| v1::ListDirectorsResponse {
                    directors,
                    next_page_token,
                    revision,
                },
            ))
    }
    async fn update_director(&self, r: Request<v1::UpdateDirectorRequest>) -> Resp<v1::Director> {
        ok(self.update(r.into_inner().director).await)
    }
    async fn delete_director(&self, r: Request<v1::DeleteRequest>) -> Resp<()> {
        ok(self.delete::<v1::Director>(r.into_inner()).await)
    }

    async fn create_route(&self, r: Request<v1::CreateRouteRequest>) -> Resp<v1::Route> {
        ok(self.create(r.into_inner().route).await)
    }
    async fn get_route(&self, r: Request<v1::GetRequest>) -> Resp<v1::Route> {
        ok(self.get(&r.into_inner().name).await)
    }
    async fn list_routes(&self, r: Request<v1::ListRequest>) -> Resp<v1::ListRoutesResponse> {
        ok(self
            .list(r.get_ref())
            .await
            .map(
                |(routes, next_page_token, revision)| v1::ListRoutesResponse {
                    routes,
                    next_page_token,
                    revision,
                },
            ))
    }
    async fn update_route(&self, r: Request<v1::UpdateRouteRequest>) -> Resp<v1::Route> {
        ok(self.update(r.into_inner().route).await)
    }
    async fn delete_route(&self, r: Request<v1::DeleteRequest>) -> Resp<()> {
        ok(self.delete::<v1::Route>(r.into_inner()).await)
    }

    async fn apply(&self, r: Request<v1::ApplyRequest>) -> Resp<v1::ApplyResponse> {
        ok(Api::apply(self, r.into_inner()).await)
    }
    async fn set_health(&self, r: Request<v1::SetHealthRequest>) -> Resp<v1::SetHealthResponse> {
        ok(Api::set_health(self, r.into_inner()).await)
    }
    async fn list_health(&self, r: Request<v1::ListHealthRequest>) -> Resp<v1::ListHealthResponse> {
        ok(Api::list_health(self, r.into_inner()).await)
    }
    async fn explain(&self, r: Request<v1::ExplainRequest>) -> Resp<v1::ExplainResponse> {
        ok(Api::explain(self, r.into_inner()).await)
    }

    async fn get_snapshot(&self, _: Request<v1::GetSnapshotRequest>) -> Resp<v1::ConfigSnapshot> {
        ok(self.snapshot().await)
    }

    async fn list_nodes(&self, _: Request<v1::ListNodesRequest>) -> Resp<v1::ListNodesResponse> {
        ok(Api::list_nodes(self).await)
    }

    type WatchStream = WatchStream;

    async fn watch(&self, r: Request<v1::WatchRequest>) -> Resp<WatchStream> {
        let from = r.into_inner().from_revision;
        let mut rx = self
            .store
            .watch(self.layout.root(), from)
            .await
            .map_err(|e| Status::from(ApiError::Store(e)))?;
        let (tx, out) = tokio::sync::mpsc::channel(16);
        let api = self.clone();
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                let item = batch
                    .map(|b| api.watch_events(b))
                    .map_err(|e| Status::from(ApiError::Store(e)));
                let end = item.is_err();
                if let Ok(resp) = &item
                    && resp.events.is_empty()
                {
                    continue;
                }
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

#[cfg(test)]
mod tests;
