//! The write engine: every API write — one resource or an Apply of many — loads the
//! configuration at revision R, changes a copy, validates the whole result, and writes the
//! difference in one transaction guarded by the serial key (commits only if nothing changed
//! since R; retried when another writer won). A difference too large for one transaction is
//! split into parts in [`State::diff_ops`] order, each referentially complete.

use std::collections::HashSet;
use std::sync::Arc;

use tether_dataplane::config::Config;
use tether_dataplane::director::Directors;
use tether_proto::v1::{self, Action};

use super::explain::keys_moved;
use super::{Api, intent, leases};
use crate::convert::{self, Converted, Failure};
use crate::error::ApiError;
use crate::pattern::Pattern;
use crate::serial::Serial;
use crate::state::{Resource, State};
use crate::store::{Compare, Store};

/// Writes retried when another writer committed first.
const WRITE_ATTEMPTS: usize = 8;

/// What a write did.
#[derive(Debug)]
pub(crate) struct Written<T> {
    pub(crate) value: T,
    revision: i64,
    /// Written in more than one part (the revision is the last part's).
    split: bool,
    old: State,
    /// What it wrote (or would have: a dry run), objects it changed marked "not stored".
    new: State,
    /// The written configuration as validated, with its directors.
    pub(super) built: Built,
}

/// A validated configuration whose directors are shared with the next validation's `prev`.
#[derive(Debug)]
pub(super) struct Built {
    pub(super) config: Config,
    pub(super) directors: Arc<Directors>,
}

impl<S: Store> Api<S> {
    /// Loads, changes with `change(old, new)`, validates and commits (unless `dry_run`).
    ///
    /// The difference is written in one transaction guarded by the serial key. When it is
    /// larger than the store allows in one transaction (etcd: 128 operations, 1.5 MiB), it is
    /// split into parts in [`State::diff_ops`] order, each referentially complete and each
    /// guarded by the serial key as the previous part left it; if another writer intervenes
    /// between parts, the write starts over from a fresh load (Apply is idempotent).
    pub(super) async fn write<T>(
        &self,
        dry_run: bool,
        change: impl Fn(&State, &mut State) -> Result<T, ApiError>,
    ) -> Result<Written<T>, ApiError> {
        self.write_fenced(dry_run, None, change).await
    }

    /// [`Api::write`], committing only while `fence` holds (the discovery resolver's election
    /// key at the revision it won it: a replica that lost the election without noticing yet
    /// cannot overwrite its successor's answer). Fails with [`ApiError::Fenced`] once it does
    /// not.
    pub(crate) async fn write_fenced<T>(
        &self,
        dry_run: bool,
        fence: Option<&Compare>,
        change: impl Fn(&State, &mut State) -> Result<T, ApiError>,
    ) -> Result<Written<T>, ApiError> {
        'attempt: for attempt in 0..WRITE_ATTEMPTS {
            // A split write a crash interrupted is completed before anything else is written.
            // The store's revision is read meanwhile (both are round trips): should recovery
            // write, the state loaded at the revision before it is caught as any other
            // writer's would be (open, or moved on at commit), and the write starts over.
            let (recovered, revision) = tokio::join!(self.recover(), self.store.revision());
            recovered?;
            let old = self.load_for_write(revision?).await?;
            if old.write_open {
                // Another control plane is between two parts of its write.
                tokio::time::sleep(std::time::Duration::from_millis(20 << attempt.min(5))).await;
                continue 'attempt;
            }
            let mut new = old.clone();
            new.labels.clear();
            let value = change(&old, &mut new)?;
            // A Discovery deleted by this write takes its backends with it.
            crate::discovery::reconcile::remove_orphans(&mut new);
            leases::check_references(&new)?;
            crate::discovery::check(&old, &new)?;
            new.assign_selector_slots();
            new.mark_written(&old);
            // Validation grows with the configuration: off the async workers.
            let api = self.clone();
            let (old, new, validated) = self
                .off_workers(move || {
                    let v = api.validate_write(&old, &new)?;
                    Ok((old, new, v))
                })
                .await?;
            let built = self.remember(validated);
            let ops = old.diff_ops(&new, &self.layout);
            // The store refuses a put bound to a lease that is gone; asking first gives a dry
            // run the same answer.
            self.check_leases_exist(&ops).await?;
            let mut revision = old.revision;
            if ops.is_empty() || dry_run {
                return Ok(Written {
                    value,
                    revision,
                    split: false,
                    old,
                    new,
                    built,
                });
            }
            let serial = self.layout.serial();
            let mut serial_revision = old.serial_revision;
            // Room for the serial key's mark and, in the first part, the intent record's.
            let parts = split(
                ops,
                self.store.max_txn_ops().saturating_sub(2).max(1),
                self.store
                    .max_txn_bytes()
                    .saturating_sub(serial.len() + 256),
            );
            let n = u32::try_from(parts.len()).unwrap_or(u32::MAX);
            let mark = Serial::new(n);
            if n > 1 {
                self.stage(&mark, &parts).await?;
            }
            for (i, mut ops) in parts.into_iter().enumerate() {
                let part = u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1);
                if n > 1 && part == 1 {
                    ops.push(self.intent_live(&mark));
                }
                match self
                    .commit_part(mark.at(part), ops, serial_revision, fence)
                    .await?
                {
                    Some(r) => {
                        serial_revision = r;
                        revision = r;
                    }
                    None => {
                        if let Some(f) = fence
                            && !self.fence_holds(f).await?
                        {
                            if part == 1 && n > 1 {
                                self.drop_intent_of(&mark, false).await;
                            }
                            return Err(ApiError::Fenced(f.key().to_owned()));
                        }
                        if part == 1 && n > 1 {
                            // Nothing of it was written: its staged parts go.
                            self.drop_intent_of(&mark, false).await;
                        }
                        if part > 1 {
                            // Another control plane's recovery took the write over (it
                            // completes it from the intent record); start over on its result.
                            tracing::warn!(
                                parts_written = i,
                                "another write intervened between parts of a split write; starting over"
                            );
                        }
                        continue 'attempt;
                    }
                }
                if part < n
                    && let Some(pause) = intent::pause_between_parts()
                {
                    tokio::time::sleep(pause).await;
                }
            }
            if n > 1 {
                self.drop_intent_of(&mark, true).await;
            }
            return Ok(Written {
                value,
                revision,
                split: n > 1,
                old,
                new,
                built,
            });
        }
        Err(ApiError::Contended)
    }

    /// Validates a whole configuration, reusing the last build's rings. Stored objects that
    /// do not validate (labelled `kind/name`: written by something else) are left out with a
    /// warning, as the data planes leave them out; an error in what the caller sent is the
    /// caller's.
    pub(super) fn validate(&self, state: &State) -> Result<convert::Validated, ApiError> {
        self.validate_leaving_out(state, &|label: &str| label.contains('/'))
    }

    pub(super) fn validate_leaving_out(
        &self,
        state: &State,
        may_leave_out: &dyn Fn(&str) -> bool,
    ) -> Result<convert::Validated, ApiError> {
        let prev = self
            .last_built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Conversions are reused by stored revision: `state` is as stored, or marked by
        // `State::mark_written` where a write changed it.
        let (v, left_out) = convert::validate_leaving_out(
            &state.resources(),
            prev.as_deref(),
            &mut self
                .converted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
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
    pub(super) fn validate_write(
        &self,
        old: &State,
        new: &State,
    ) -> Result<convert::Validated, ApiError> {
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
    pub(super) fn remember(&self, v: convert::Validated) -> Built {
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

    pub(super) async fn create<R: Resource>(&self, r: Option<R>) -> Result<R, ApiError> {
        let r = r.ok_or(ApiError::Required(R::FIELD))?;
        let name = r.name().to_owned();
        let w = self
            .write(false, |old, new| {
                if R::map(old).contains_key(r.name()) {
                    return Err(ApiError::AlreadyExists {
                        kind: R::FIELD,
                        name: r.name().to_owned(),
                    });
                }
                let mut r = r.clone();
                r.set_revision(0);
                r.prepare_write(None);
                new.insert(r, R::FIELD.to_owned());
                Ok(())
            })
            .await?;
        self.as_stored::<R, _>(&w, &name).await
    }

    /// Replaces a resource, or with `mask` (AIP-134) only the fields it names.
    pub(super) async fn update<R: Resource>(
        &self,
        r: Option<R>,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<R, ApiError> {
        let r = r.ok_or(ApiError::Required(R::FIELD))?;
        let name = r.name().to_owned();
        let paths = mask.map(|m| m.paths).unwrap_or_default();
        let w = self
            .write(false, |old, new| {
                let stored = R::map(old)
                    .get(r.name())
                    .map(std::sync::Arc::as_ref)
                    .ok_or_else(|| ApiError::NotFound {
                        kind: R::FIELD,
                        name: r.name().to_owned(),
                    })?;
                check_revision::<R>(stored, r.revision())?;
                let mut r = crate::mask::merge(stored, &r, &paths)?.unwrap_or_else(|| r.clone());
                r.set_revision(stored.revision());
                r.prepare_write(Some(stored));
                new.insert(r, R::FIELD.to_owned());
                Ok(())
            })
            .await?;
        self.as_stored::<R, _>(&w, &name).await
    }

    /// Resource `name` as a write left it in the store: what reading it back gives, without
    /// the round trip — from the state the write committed (after what the write path adds,
    /// as a director's selector slots), at the write's revision when the write changed it
    /// (`State::mark_written` left it "not stored"), else as it was — unless the write was
    /// split (its parts have revisions of their own): then read back.
    async fn as_stored<R: Resource, T>(&self, w: &Written<T>, name: &str) -> Result<R, ApiError> {
        match R::map(&w.new).get(name) {
            Some(r) if !w.split => {
                let mut r = R::clone(r);
                if r.revision() == 0 {
                    r.set_revision(w.revision);
                }
                Ok(r)
            }
            _ => self.get(name).await,
        }
    }

    pub(super) async fn delete<R: Resource>(&self, req: v1::DeleteRequest) -> Result<(), ApiError> {
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

    pub(super) async fn apply(&self, req: v1::ApplyRequest) -> Result<v1::ApplyResponse, ApiError> {
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
                let how = (req.prune, req.lease);
                stage(old, new, &req.backends, "backends", how, &mut changes)?;
                stage(old, new, &req.probes, "probes", how, &mut changes)?;
                stage(old, new, &req.directors, "directors", how, &mut changes)?;
                stage(old, new, &req.routes, "routes", how, &mut changes)?;
                stage(
                    old,
                    new,
                    &req.certificates,
                    "certificates",
                    how,
                    &mut changes,
                )?;
                stage(old, new, &req.discoveries, "discoveries", how, &mut changes)?;
                Ok(changes)
            })
            .await?;
        // The stored configuration as the write path sees it (invalid stored objects left out).
        // Validating the old state and sampling 10,000 keys per shard director: off the async
        // workers too.
        let api = self.clone();
        let (revision, changes) = (w.revision, w.value);
        let (old, built) = (w.old, w.built);
        let keys_moved = self
            .off_workers(move || {
                Ok(match api.validate(&old) {
                    Ok(before) => keys_moved(&before.config, &before.directors, &built),
                    Err(_) => Vec::new(),
                })
            })
            .await?;
        Ok(v1::ApplyResponse {
            revision,
            changes,
            keys_moved,
            dry_run: req.dry_run,
        })
    }

    pub(super) async fn set_health(
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
                        let mut b = v1::Backend::clone(b);
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
}

/// The serial key's value for one write: 16 random bytes, unique to the write (so that an
/// unknown outcome can be resolved by reading it back), then the commit time in Unix
/// nanoseconds (so that data planes can measure commit-to-apply delay; see
/// `node::source`).
fn split(
    ops: Vec<crate::store::Op>,
    max_ops: usize,
    max_bytes: usize,
) -> Vec<Vec<crate::store::Op>> {
    let size = |op: &crate::store::Op| match op {
        crate::store::Op::Put(k, v) | crate::store::Op::PutLeased(k, v, _) => {
            k.len() + v.len() + 16
        }
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

/// Stages one kind of an Apply: each given resource is created, updated or unchanged (bound
/// to `lease` unless it names its own); with `prune`, stored ones not given (bound to no
/// lease and kept by no Discovery) are deleted.
fn stage<R: Resource>(
    old: &State,
    new: &mut State,
    given: &[R],
    plural: &str,
    (prune, lease): (bool, i64),
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
        let stored = R::map(old).get(r.name()).map(std::sync::Arc::as_ref);
        if let Some(s) = stored {
            check_revision::<R>(s, r.revision())?;
        }
        let mut r = r.clone();
        if r.lease() == 0 {
            r.set_lease(lease);
        }
        r.set_revision(stored.map_or(0, Resource::revision));
        r.prepare_write(stored);
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
        // A leased resource belongs to its lease's holder (a registered backend), and a
        // backend a Discovery keeps to its Discovery, not to the set being applied: prune
        // leaves them for the lease to end or the Discovery to remove.
        for (name, _) in R::map(old)
            .iter()
            .filter(|(n, r)| !seen.contains(*n) && r.lease() == 0 && !r.kept_by_discovery())
        {
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
