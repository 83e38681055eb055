//! The boundary between tether.v1 messages and the data plane's domain types: every check of
//! a resource happens here, once, whether it came from the API, a declarative file or the
//! store. Errors name the field as the caller wrote it (`backend.address` for a single
//! resource, `backends[2].address` in an Apply or a file).
//!
//! Two kinds of failure, as the API reports them: a bad value ([`Failure::Invalid`],
//! INVALID_ARGUMENT) and a missing reference ([`Failure::Precondition`],
//! FAILED_PRECONDITION).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};

use tether_dataplane::certs::{Certificate, CertificateSpec, Source};
use tether_dataplane::config::{
    self, AdminHealth, BackendSpec, Config, DirectorSpec, HeaderMatch, KeySpec, MAX_PROBE_WINDOW,
    MemberSpec, Policy, ProbeRequest, ProbeSpec, Protocol, RouteSpec, ShardSpec, TargetRef,
    Timeouts,
};
use tether_dataplane::director::{Algorithm, BuildError, Directors, HealthyMode, balanced};
use tether_dataplane::limits;
use tether_dataplane::tls::{BackendTls, TlsError};
use tether_proto::keys::Kind;
use tether_proto::v1;

use crate::selector::Selector;

/// What kind of problem a [`FieldError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A bad value: fix the field.
    Invalid,
    /// A reference to a missing resource: create it first.
    Precondition,
}

/// A refused resource: which field, and why — and every further violation the same check
/// found (`more`), so a caller fixes them all in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, as `directors[1].members[0].weight`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Bad value or missing reference.
    pub failure: Failure,
    /// Further violations (each without its own `more`), bad values first.
    pub more: Vec<FieldError>,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)?;
        match self.more.len() {
            0 => Ok(()),
            1 => write!(f, " (and 1 more violation)"),
            n => write!(f, " (and {n} more violations)"),
        }
    }
}

impl std::error::Error for FieldError {}

/// Most violations one error reports (a request with 10,000 bad backends gets the first ones).
pub const MAX_VIOLATIONS: usize = 100;

impl FieldError {
    /// A bad value.
    pub fn invalid(field: impl Into<String>, message: impl ToString) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.to_string(),
            failure: Failure::Invalid,
            more: Vec::new(),
        }
    }

    /// The object the error is about: its label, the field path up to the first `.` or `[`
    /// (`backends/b1` of `backends/b1.address`).
    pub fn object(&self) -> &str {
        self.field.split(['.', '[']).next().unwrap_or_default()
    }

    /// A violation of a precondition (a missing reference, a lease rule).
    pub fn precondition(field: impl Into<String>, message: impl ToString) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.to_string(),
            failure: Failure::Precondition,
            more: Vec::new(),
        }
    }

    /// This violation and every further one, each on its own.
    pub fn violations(&self) -> impl Iterator<Item = &FieldError> {
        std::iter::once(self).chain(&self.more)
    }

    /// One error of several: bad values first (a missing reference may only follow from a
    /// bad value), at most [`MAX_VIOLATIONS`]. `None` when there are none.
    fn merge(errors: Vec<FieldError>) -> Option<FieldError> {
        let mut flat: Vec<FieldError> = errors
            .into_iter()
            .flat_map(|mut e| {
                let more = std::mem::take(&mut e.more);
                std::iter::once(e).chain(more)
            })
            .collect();
        // Stable: within a kind, the order the checks ran in.
        flat.sort_by_key(|e| e.failure != Failure::Invalid);
        flat.truncate(MAX_VIOLATIONS);
        let mut it = flat.into_iter();
        let mut first = it.next()?;
        first.more = it.collect();
        Some(first)
    }
}

/// The violations a check found so far: it goes on after the first.
#[derive(Debug, Default)]
struct Violations(Vec<FieldError>);

impl Violations {
    /// The value, or `None` with its error kept.
    fn check<T>(&mut self, r: Result<T, FieldError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Enough found to stop looking (a list of 100,000 bad members).
    fn full(&self) -> bool {
        self.0.len() >= MAX_VIOLATIONS
    }

    /// `ok` if nothing was found, else every violation as one error.
    fn finish<T>(&mut self, ok: T) -> Result<T, FieldError> {
        match FieldError::merge(std::mem::take(&mut self.0)) {
            None => Ok(ok),
            Some(e) => Err(e),
        }
    }

    /// The violations found, as one error (at least one must have been).
    fn error(self) -> FieldError {
        FieldError::merge(self.0).unwrap_or_else(|| FieldError::invalid("request", "is invalid"))
    }
}

/// Where errors about a resource are reported. Formatted only when there is an error: a
/// follower validates 10,000 stored backends per revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label<'a> {
    /// A request's own field, as given (`backend`, `directors[2]`).
    Field(&'a str),
    /// A stored resource: `backends/b1`.
    Stored(Kind, &'a str),
    /// The i-th of a list in an Apply request or a file: `backends[2]`.
    Indexed(&'static str, usize),
}

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Field(s) => f.write_str(s),
            Label::Stored(kind, name) => write!(f, "{kind}/{name}"),
            Label::Indexed(list, i) => write!(f, "{list}[{i}]"),
        }
    }
}

/// A set of resources (borrowed), each with the label its errors are reported under.
#[derive(Debug, Clone, Default)]
pub struct Resources<'a> {
    /// Backends.
    pub backends: Vec<(Label<'a>, &'a v1::Backend)>,
    /// Probes.
    pub probes: Vec<(Label<'a>, &'a v1::Probe)>,
    /// Directors.
    pub directors: Vec<(Label<'a>, &'a v1::Director)>,
    /// Routes.
    pub routes: Vec<(Label<'a>, &'a v1::Route)>,
    /// Certificates.
    pub certificates: Vec<(Label<'a>, &'a v1::Certificate)>,
}

impl<'a> Resources<'a> {
    /// The resources of an Apply request (or a file read as one), labelled by index:
    /// `backends[0]`, `directors[2]`, ….
    pub fn of_request(req: &'a v1::ApplyRequest) -> Resources<'a> {
        fn tag<'a, T>(list: &'static str, v: &'a [T]) -> Vec<(Label<'a>, &'a T)> {
            v.iter()
                .enumerate()
                .map(|(i, r)| (Label::Indexed(list, i), r))
                .collect()
        }
        Resources {
            backends: tag("backends", &req.backends),
            probes: tag("probes", &req.probes),
            directors: tag("directors", &req.directors),
            routes: tag("routes", &req.routes),
            certificates: tag("certificates", &req.certificates),
        }
    }
}

/// A validated set: the domain configuration and its built directors.
#[derive(Debug)]
pub struct Validated {
    /// The configuration.
    pub config: Config,
    /// Its directors.
    pub directors: Directors,
}

/// Backends and directors converted by an earlier validation, in that validation's order: one
/// whose stored revision is unchanged is not parsed and checked again. For a follower, which
/// validates the store's revisions one after another: at 10,000 backends, converting them all
/// was most of the cost of a one-backend change.
///
/// Keyed by name and store revision, which identify a stored object's contents only within one
/// store history: start a new one after listing the store again (it may have been restored),
/// and do not use it for messages that did not come from the store (a request's `revision` is
/// the one it expects, not the contents it carries).
///
/// Looked up by walking it alongside the set being validated, not by hashing: sets from a
/// [`crate::state::State`] come sorted by name, so the walk reads both in order. (Comparing
/// whole messages instead of revisions, or a hash map, measured slower than converting: at
/// this size every access to a message's heap strings misses the cache.)
#[derive(Debug, Default)]
pub struct Converted {
    backends: Vec<(i64, Arc<BackendSpec>)>,
    /// Directors, the same way (a director's spec does not depend on its backends: member
    /// weights are resolved when the directors are built).
    directors: Vec<(i64, DirectorConversion)>,
    /// Certificates, the same way (loading a key is the costly part of converting one).
    certificates: Vec<(i64, CertificateSpec)>,
    /// What the last pass over the backends changed (`None` after a failed one): a selector
    /// director is reused only if none of those changes alters what its selectors match.
    backend_changes: Option<Changes>,
}

/// What one conversion pass changed against the cache: the set's entries converted anew
/// (new, or at a new revision) and the names of cached entries that are gone.
#[derive(Debug, Default)]
struct Changes {
    fresh: Vec<usize>,
    removed: Vec<String>,
}

impl Converted {
    /// Every certificate of `set` converted, reusing the earlier conversion of the same
    /// stored revision.
    fn certificates(&mut self, set: &Resources) -> Result<Vec<CertificateSpec>, FieldError> {
        reuse_or_convert(
            &mut self.certificates,
            &set.certificates,
            |c| (&c.name, c.revision),
            |s| &s.loaded.name,
            |_, _| Refresh::Keep,
            |c, at| certificate(c, at),
        )
        .map(|(specs, _)| specs)
    }

    /// Every backend of `set` converted, reusing the earlier conversion of the same stored
    /// revision.
    fn backends(&mut self, set: &Resources) -> Result<Vec<Arc<BackendSpec>>, FieldError> {
        self.backend_changes = None;
        let (specs, changes) = reuse_or_convert(
            &mut self.backends,
            &set.backends,
            |b| (&b.name, b.revision),
            |s| &s.name,
            |_, _| Refresh::Keep,
            |b, at| backend(b, at).map(Arc::new),
        )?;
        self.backend_changes = Some(changes);
        Ok(specs)
    }

    /// Every director of `set` converted, reusing the earlier conversion of the same stored
    /// revision — for a director with selector members, only while the backends that changed
    /// since (`backend_changes`, after [`Converted::backends`]) leave its selection as it was.
    fn directors(&mut self, set: &Resources) -> Result<Vec<Arc<DirectorSpec>>, FieldError> {
        // Only a director with selectors needs the backends in name order: not built for
        // a configuration without any (the common case, on every revision a node applies).
        let sorted = std::cell::OnceCell::new();
        let changes = self.backend_changes.as_ref();
        let (converted, _) = reuse_or_convert(
            &mut self.directors,
            &set.directors,
            |d| (&d.name, d.revision),
            |c| &c.spec.name,
            |c, d| c.refresh(d, &set.backends, changes),
            |d, at| {
                let sorted = if has_selector(d) {
                    sorted
                        .get_or_init(|| sorted_backends(&set.backends))
                        .as_slice()
                } else {
                    &[]
                };
                convert_director(d, at, sorted)
            },
        )?;
        Ok(converted.into_iter().map(|c| c.spec).collect())
    }
}

/// Converts the messages of `set`, reusing from `cache` (an earlier call's result, by stored
/// revision) the spec of each message whose revision is unchanged, and leaves this call's
/// result in `cache`. Walks both in name order; the usual next cache entry is the message's
/// own, and entries before its name are deleted resources (or the set is not sorted, and the
/// rest is converted anew). A message converted before converted without error, so its label
/// does not matter.
///
/// A cached spec of an unchanged revision is then kept, replaced or converted anew as
/// `refresh` says (a selector director's members depend on the backends too). Also returns
/// what changed against the cache ([`Changes`]).
fn reuse_or_convert<'a, M, S: Clone>(
    cache: &mut Vec<(i64, S)>,
    set: &[(Label<'a>, &'a M)],
    stored: impl Fn(&M) -> (&String, i64),
    name: impl Fn(&S) -> &String,
    refresh: impl Fn(&S, &M) -> Refresh<S>,
    convert: impl Fn(&M, &Label<'a>) -> Result<S, FieldError>,
) -> Result<(Vec<S>, Changes), FieldError> {
    let mut old = std::mem::take(cache).into_iter().peekable();
    let mut next = Vec::with_capacity(set.len());
    let mut errors = Violations::default();
    let mut changes = Changes::default();
    for (i, (at, m)) in set.iter().enumerate() {
        let (m_name, revision) = stored(m);
        let mut reused = None;
        while let Some((r, s)) = old.peek() {
            if name(s) == m_name {
                let same = *r == revision && revision != 0;
                match if same {
                    refresh(s, m)
                } else {
                    Refresh::Convert
                } {
                    Refresh::Keep => reused = old.next().map(|(_, s)| s),
                    Refresh::Replace(new) => {
                        old.next();
                        reused = Some(new);
                    }
                    Refresh::Convert => {
                        old.next();
                    }
                }
                break;
            }
            if name(s) > m_name {
                break;
            }
            changes.removed.push(name(s).clone());
            old.next();
        }
        if reused.is_none() {
            changes.fresh.push(i);
        }
        match reused.map_or_else(|| convert(m, at), Ok) {
            Ok(spec) => next.push((revision, spec)),
            Err(e) => {
                // Every message's violations, not the first message's.
                errors.push(e);
                if errors.full() {
                    break;
                }
            }
        }
    }
    if !errors.is_empty() {
        // The cache would no longer line up with the set: the next call converts anew.
        return Err(errors.error());
    }
    changes.removed.extend(old.map(|(_, s)| name(&s).clone()));
    let specs = next.iter().map(|(_, s)| s.clone()).collect();
    *cache = next;
    Ok((specs, changes))
}

/// Checks every resource and the references between them, and builds the directors.
pub fn validate(set: &Resources) -> Result<Validated, FieldError> {
    validate_with(set, None, &mut Converted::default())
}

/// [`validate`], reusing what `prev` (directors built from an earlier configuration) already
/// computed for unchanged members (shard rings: a one-member change at 10,000 members does
/// not rehash the ring) and the conversions `converted` holds ([`Converted`]: for sets read
/// from the store only).
pub fn validate_with(
    set: &Resources,
    prev: Option<&Directors>,
    converted: &mut Converted,
) -> Result<Validated, FieldError> {
    check_counts(set)?;
    // Every resource is converted, and every violation found, before the first is reported;
    // what needs valid resources (references, the directors' graph) comes after.
    let mut errors = Violations::default();
    let backends = errors.check(converted.backends(set));
    let mut seen = FxHashSet::default();
    seen.reserve(set.backends.len());
    for (at, b) in &set.backends {
        if !seen.insert(b.name.as_str()) {
            errors.push(FieldError::invalid(
                format!("{at}.name"),
                format!("backend {:?} is given twice", b.name),
            ));
        }
    }
    let mut probes = FxHashSet::default();
    let mut probe_specs = Vec::with_capacity(set.probes.len());
    for (at, p) in &set.probes {
        if let Some(spec) = errors.check(probe(p, at)) {
            if !probes.insert(p.name.as_str()) {
                errors.push(FieldError::invalid(
                    format!("{at}.name"),
                    format!("probe {:?} is given twice", spec.name),
                ));
            }
            probe_specs.push(spec);
        }
    }
    let directors = errors.check(converted.directors(set));
    let mut routes = FxHashSet::default();
    let mut route_specs = Vec::with_capacity(set.routes.len());
    for (at, r) in &set.routes {
        if let Some(spec) = errors.check(route(r, at)) {
            if !routes.insert(r.name.as_str()) {
                errors.push(FieldError::invalid(
                    format!("{at}.name"),
                    format!("route {:?} is given twice", spec.name),
                ));
            }
            route_specs.push(spec);
        }
    }
    let certificates = errors
        .check(converted.certificates(set))
        .unwrap_or_default();
    let mut names = FxHashSet::default();
    for (at, c) in &set.certificates {
        if !names.insert(c.name.as_str()) {
            errors.push(FieldError::invalid(
                format!("{at}.name"),
                format!("certificate {:?} is given twice", c.name),
            ));
        }
    }
    let (Some(backends), Some(directors)) = (backends, directors) else {
        return Err(errors.error());
    };
    if !errors.is_empty() {
        return Err(errors.error());
    }
    let backends = bind_client_certificates(set, backends, &certificates, &mut errors);
    errors.finish(())?;
    let mut config = Config {
        backends,
        probes: probe_specs,
        directors,
        certificates,
        ..Config::default()
    };
    for ((at, _), b) in set.backends.iter().zip(&config.backends) {
        if let Some(p) = &b.probe
            && !probes.contains(p.as_str())
        {
            errors.push(FieldError::precondition(
                format!("{at}.probe"),
                format!("no probe named {p:?}"),
            ));
        }
    }
    errors.finish(())?;
    let directors = Directors::build(&config, prev).map_err(|e| locate(set, e))?;
    for ((at, _), spec) in set.routes.iter().zip(&route_specs) {
        if directors.id(&spec.director).is_none() {
            errors.push(FieldError::precondition(
                format!("{at}.director"),
                format!("no director named {:?}", spec.director),
            ));
        }
    }
    errors.finish(())?;
    config.routes = route_specs;
    Ok(Validated { config, directors })
}

/// Binds each backend's `tls.client_certificate` to the certificate of that name (a missing
/// one is a violation); a backend already bound to the same certificate is kept as it is.
fn bind_client_certificates(
    set: &Resources,
    mut backends: Vec<Arc<BackendSpec>>,
    certificates: &[CertificateSpec],
    errors: &mut Violations,
) -> Vec<Arc<BackendSpec>> {
    for ((at, _), b) in set.backends.iter().zip(backends.iter_mut()) {
        let Some(tls) = &b.tls else { continue };
        let Some(name) = &tls.client_certificate else {
            continue;
        };
        let Some(cert) = certificates.iter().find(|c| &c.loaded.name == name) else {
            errors.push(FieldError::precondition(
                format!("{at}.tls.client_certificate"),
                format!("no certificate named {name:?}"),
            ));
            continue;
        };
        if tls.client_fingerprint.as_ref() == Some(&cert.loaded.fingerprint) {
            continue;
        }
        match tls.with_client(&cert.loaded) {
            Ok(bound) => Arc::make_mut(b).tls = Some(bound),
            Err(e) => errors.push(FieldError::invalid(
                format!("{at}.tls.client_certificate"),
                e,
            )),
        }
    }
    backends
}

/// Refuses a set with more resources of a kind than [`limits`] allow, at the first one
/// beyond the limit (for stored objects: left out, as an invalid object would be).
fn check_counts(set: &Resources) -> Result<(), FieldError> {
    fn over<T>(list: &[(Label<'_>, T)], limit: usize, kind: &str) -> Option<FieldError> {
        list.get(limit).map(|(at, _)| {
            FieldError::invalid(
                at.to_string(),
                format!("more than {limit} {kind} in one configuration"),
            )
        })
    }
    let errors = [
        over(&set.backends, limits::MAX_BACKENDS, "backends"),
        over(&set.probes, limits::MAX_PROBES, "probes"),
        over(&set.directors, limits::MAX_DIRECTORS, "directors"),
        over(&set.routes, limits::MAX_ROUTES, "routes"),
        over(&set.certificates, limits::MAX_CERTIFICATES, "certificates"),
    ];
    Violations(errors.into_iter().flatten().collect()).finish(())
}

/// Validations [`validate_leaving_out`] runs before it gives up (each leaves out every object
/// the previous one found at fault, with their referrers).
const MAX_LEFT_OUT_ROUNDS: usize = 64;

/// [`validate_with`], leaving out objects that `may_leave_out` allows (by label) when they do
/// not validate: each violation names its object (`backends/b1.address`); those objects, and
/// every object that refers to one of them (directly or through others: a director whose
/// member is a left-out backend, a route to that director), are removed and the rest
/// validated again. Objects beyond a kind's limit ([`limits`]) are left out first, the last
/// ones in the set's order (name order for a store's state: every node drops the same).
/// Returns the left-out objects with their errors. For stored objects written by something
/// other than a control plane (or an older version): one bad object must not stop every later
/// change.
pub fn validate_leaving_out(
    set: &Resources,
    prev: Option<&Directors>,
    converted: &mut Converted,
    may_leave_out: impl Fn(&str) -> bool,
) -> Result<(Validated, Vec<FieldError>), FieldError> {
    // A copy of the list of references (not of the resources) to remove from.
    let mut set = set.clone();
    let mut left_out = Vec::new();
    truncate(
        &mut set.backends,
        limits::MAX_BACKENDS,
        "backends",
        &may_leave_out,
        &mut left_out,
    );
    truncate(
        &mut set.probes,
        limits::MAX_PROBES,
        "probes",
        &may_leave_out,
        &mut left_out,
    );
    truncate(
        &mut set.directors,
        limits::MAX_DIRECTORS,
        "directors",
        &may_leave_out,
        &mut left_out,
    );
    truncate(
        &mut set.routes,
        limits::MAX_ROUTES,
        "routes",
        &may_leave_out,
        &mut left_out,
    );
    truncate(
        &mut set.certificates,
        limits::MAX_CERTIFICATES,
        "certificates",
        &may_leave_out,
        &mut left_out,
    );
    let mut last = None;
    for _ in 0..MAX_LEFT_OUT_ROUNDS {
        match validate_with(&set, prev, converted) {
            Ok(v) => return Ok((v, left_out)),
            Err(e) => {
                let labels: FxHashSet<&str> = e.violations().map(FieldError::object).collect();
                if !labels.iter().all(|l| may_leave_out(l)) {
                    return Err(e);
                }
                let Some(referrers) = remove_with_referrers(&mut set, &labels, &may_leave_out)
                else {
                    return Err(e);
                };
                left_out.extend(e.violations().map(|v| FieldError {
                    more: Vec::new(),
                    ..v.clone()
                }));
                left_out.extend(referrers);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| FieldError::invalid("configuration", "does not validate")))
}

/// Leaves out the entries of `list` beyond `limit`, when allowed.
fn truncate<T>(
    list: &mut Vec<(Label<'_>, T)>,
    limit: usize,
    kind: &str,
    may_leave_out: &impl Fn(&str) -> bool,
    left_out: &mut Vec<FieldError>,
) {
    let Some((first, _)) = list.get(limit) else {
        return;
    };
    let first = first.to_string();
    if !may_leave_out(&first) {
        return;
    }
    left_out.push(FieldError::invalid(
        first,
        format!(
            "{} {kind} beyond the limit of {limit} left out, from this one on",
            list.len() - limit
        ),
    ));
    list.truncate(limit);
}

/// Removes the objects labelled `labels` and every object that refers to one of them,
/// directly or through others. The referrers removed, each with why; `None` (and nothing
/// removed) when none of `labels` is in the set or a referrer may not be left out.
fn remove_with_referrers(
    set: &mut Resources,
    labels: &FxHashSet<&str>,
    may_leave_out: &impl Fn(&str) -> bool,
) -> Option<Vec<FieldError>> {
    fn marked<T>(list: &[(Label<'_>, T)], labels: &FxHashSet<&str>) -> Vec<bool> {
        list.iter()
            .map(|(l, _)| labels.contains(l.to_string().as_str()))
            .collect()
    }
    let mut gone_backend = marked(&set.backends, labels);
    let gone_probe = marked(&set.probes, labels);
    let mut gone_director = marked(&set.directors, labels);
    let mut gone_route = marked(&set.routes, labels);
    // Nothing refers to a certificate.
    let gone_certificate = marked(&set.certificates, labels);
    let any = |v: &[bool]| v.iter().any(|&g| g);
    if !(any(&gone_backend)
        || any(&gone_probe)
        || any(&gone_director)
        || any(&gone_route)
        || any(&gone_certificate))
    {
        return None;
    }
    let mut why: Vec<(String, String)> = Vec::new();
    // Backends that use a removed probe.
    let probes: FxHashSet<&str> = set
        .probes
        .iter()
        .zip(&gone_probe)
        .filter(|(_, g)| **g)
        .map(|((_, p), _)| p.name.as_str())
        .collect();
    for (i, (at, b)) in set.backends.iter().enumerate() {
        if !gone_backend[i] && !b.probe.is_empty() && probes.contains(b.probe.as_str()) {
            gone_backend[i] = true;
            why.push((
                at.to_string(),
                format!("uses probe {:?}, left out", b.probe),
            ));
        }
    }
    // Directors reaching a removed backend or director, to a fixed point over the reverse
    // index (one pass per object, however deep the nesting).
    let mut by_backend: FxHashMap<&str, Vec<usize>> = FxHashMap::default();
    let mut by_director: FxHashMap<&str, Vec<usize>> = FxHashMap::default();
    for (i, (_, d)) in set.directors.iter().enumerate() {
        for m in &d.members {
            match &m.target {
                Some(v1::member::Target::Backend(b)) => {
                    by_backend.entry(b.as_str()).or_default().push(i);
                }
                Some(v1::member::Target::Director(x)) => {
                    by_director.entry(x.as_str()).or_default().push(i);
                }
                // A selector's backends are whichever remain.
                Some(v1::member::Target::Selector(_)) | None => {}
            }
        }
    }
    let mut queue: Vec<usize> = (0..set.directors.len())
        .filter(|&i| gone_director[i])
        .collect();
    let mut reach =
        |name: &str, what: &str, queue: &mut Vec<usize>, map: &FxHashMap<&str, Vec<usize>>| {
            for &i in map.get(name).into_iter().flatten() {
                if !gone_director[i] {
                    gone_director[i] = true;
                    why.push((
                        set.directors[i].0.to_string(),
                        format!("has member {what} {name:?}, left out"),
                    ));
                    queue.push(i);
                }
            }
        };
    for (i, (_, b)) in set.backends.iter().enumerate() {
        if gone_backend[i] {
            reach(&b.name, "backend", &mut queue, &by_backend);
        }
    }
    while let Some(d) = queue.pop() {
        let name = set.directors[d].1.name.as_str();
        reach(name, "director", &mut queue, &by_director);
    }
    let directors: FxHashSet<&str> = set
        .directors
        .iter()
        .zip(&gone_director)
        .filter(|(_, g)| **g)
        .map(|((_, d), _)| d.name.as_str())
        .collect();
    for (i, (at, r)) in set.routes.iter().enumerate() {
        if !gone_route[i] && directors.contains(r.director.as_str()) {
            gone_route[i] = true;
            why.push((
                at.to_string(),
                format!("routes to director {:?}, left out", r.director),
            ));
        }
    }
    if !why.iter().all(|(l, _)| may_leave_out(l)) {
        return None;
    }
    fn keep<T>(list: &mut Vec<(Label<'_>, T)>, gone: &[bool]) {
        let mut it = gone.iter();
        list.retain(|_| !it.next().copied().unwrap_or(false));
    }
    keep(&mut set.backends, &gone_backend);
    keep(&mut set.probes, &gone_probe);
    keep(&mut set.directors, &gone_director);
    keep(&mut set.routes, &gone_route);
    keep(&mut set.certificates, &gone_certificate);
    Some(
        why.into_iter()
            .map(|(at, message)| FieldError::precondition(at, message))
            .collect(),
    )
}

fn name(n: &str, at: &dyn fmt::Display) -> Result<String, FieldError> {
    config::validate_name(n).map_err(|e| FieldError::invalid(format!("{at}.name"), e))?;
    Ok(n.to_owned())
}

/// Field paths are passed as closures: they are formatted only for an error, not for each of
/// the 10,000 members a large director has.
fn reference(n: &str, field: impl FnOnce() -> String) -> Result<String, FieldError> {
    config::validate_name(n).map_err(|e| FieldError::invalid(field(), e))?;
    Ok(n.to_owned())
}

/// The longest duration any stored field may hold (timeouts, probe intervals, rampup): one
/// day. Larger values are refused rather than overflowing an `Instant` later.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A protobuf duration as a std one, at most [`MAX_DURATION`]; absent: `default`.
pub(crate) fn duration(
    d: Option<&prost_types::Duration>,
    field: impl FnOnce() -> String,
    default: Duration,
) -> Result<Duration, FieldError> {
    let Some(d) = d else { return Ok(default) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldError::invalid(
            field(),
            format!(
                "must be a non-negative duration, got {}s {}ns",
                d.seconds, d.nanos
            ),
        ));
    }
    let d = Duration::new(d.seconds.unsigned_abs(), d.nanos.unsigned_abs());
    if d > MAX_DURATION {
        return Err(FieldError::invalid(
            field(),
            format!(
                "must be at most {} s (one day), got {} s",
                MAX_DURATION.as_secs(),
                d.as_secs()
            ),
        ));
    }
    Ok(d)
}

/// A positive timeout; zero or absent: `default`.
fn timeout(
    d: Option<&prost_types::Duration>,
    field: impl FnOnce() -> String,
    default: Duration,
) -> Result<Duration, FieldError> {
    let t = duration(d, field, default)?;
    Ok(if t.is_zero() { default } else { t })
}

fn weight(w: f64, field: impl FnOnce() -> String) -> Result<f64, FieldError> {
    if (0.0..=limits::MAX_WEIGHT).contains(&w) {
        Ok(w)
    } else {
        Err(FieldError::invalid(
            field(),
            format!("must be a number from 0 to {}, got {w}", limits::MAX_WEIGHT),
        ))
    }
}

/// A string field's length, at most `max` bytes.
fn at_most(s: &str, max: usize, field: impl FnOnce() -> String) -> Result<(), FieldError> {
    if s.len() > max {
        return Err(FieldError::invalid(
            field(),
            format!("is {} bytes long; at most {max}", s.len()),
        ));
    }
    Ok(())
}

/// A list field's length, at most `max` entries.
fn at_most_n<T>(v: &[T], max: usize, field: impl FnOnce() -> String) -> Result<(), FieldError> {
    if v.len() > max {
        return Err(FieldError::invalid(
            field(),
            format!("has {} entries; at most {max}", v.len()),
        ));
    }
    Ok(())
}

/// Converts and checks one backend, reporting every bad field.
pub fn backend(b: &v1::Backend, at: &dyn fmt::Display) -> Result<BackendSpec, FieldError> {
    let mut errors = Violations::default();
    let name = errors.check(name(&b.name, at));
    let address = errors.check(
        b.address
            .parse()
            .map_err(|e| FieldError::invalid(format!("{at}.address"), e)),
    );
    let address2 = if b.address2.is_empty() {
        None
    } else {
        errors.check(
            b.address2
                .parse()
                .map_err(|e| FieldError::invalid(format!("{at}.address2"), e)),
        )
    };
    let w = b
        .weight
        .and_then(|w| errors.check(weight(w, || format!("{at}.weight"))));
    let probe = if b.probe.is_empty() {
        None
    } else {
        errors.check(reference(&b.probe, || format!("{at}.probe")))
    };
    if !b.host_header.is_empty() && !http_token_ok(&b.host_header) {
        errors.push(FieldError::invalid(
            format!("{at}.host_header"),
            format!("{:?} is not a valid Host header value", b.host_header),
        ));
    }
    let t = b.timeouts.unwrap_or_default();
    let d = Timeouts::default();
    let mut timeout_of = |v: Option<&prost_types::Duration>, what: &str, default| {
        errors
            .check(timeout(v, || format!("{at}.timeouts.{what}"), default))
            .unwrap_or(default)
    };
    let timeouts = Timeouts {
        connect: timeout_of(t.connect.as_ref(), "connect", d.connect),
        first_byte: timeout_of(t.first_byte.as_ref(), "first_byte", d.first_byte),
        between_bytes: timeout_of(t.between_bytes.as_ref(), "between_bytes", d.between_bytes),
    };
    let queue_timeout = errors.check(duration(
        b.queue_timeout.as_ref(),
        || format!("{at}.queue_timeout"),
        Duration::ZERO,
    ));
    let lifetime = errors.check(duration(
        b.max_connection_lifetime.as_ref(),
        || format!("{at}.max_connection_lifetime"),
        Duration::ZERO,
    ));
    let admin_health = match v1::AdminHealth::try_from(b.admin_health) {
        Ok(v1::AdminHealth::Auto) => AdminHealth::Auto,
        Ok(v1::AdminHealth::Healthy) => AdminHealth::Healthy,
        Ok(v1::AdminHealth::Sick) => AdminHealth::Sick,
        Err(_) => {
            errors.push(FieldError::invalid(
                format!("{at}.admin_health"),
                format!("unknown value {}", b.admin_health),
            ));
            AdminHealth::Auto
        }
    };
    if b.labels.len() > limits::MAX_LABELS {
        errors.push(FieldError::invalid(
            format!("{at}.labels"),
            format!(
                "has {} labels; at most {}",
                b.labels.len(),
                limits::MAX_LABELS
            ),
        ));
    } else {
        for (k, v) in &b.labels {
            if k.is_empty() || k.len() > limits::MAX_LABEL_KEY_BYTES {
                errors.push(FieldError::invalid(
                    format!("{at}.labels"),
                    format!(
                        "label key {:?} must be 1-{} bytes",
                        truncated(k),
                        limits::MAX_LABEL_KEY_BYTES
                    ),
                ));
            }
            errors.check(at_most(v, limits::MAX_LABEL_VALUE_BYTES, || {
                format!("{at}.labels[{:?}]", truncated(k))
            }));
        }
    }
    let protocol = match v1::BackendProtocol::try_from(b.protocol) {
        Ok(v1::BackendProtocol::Http1) => Protocol::Http1,
        Ok(v1::BackendProtocol::H2c) => Protocol::H2c,
        Ok(v1::BackendProtocol::H2) => Protocol::H2,
        Ok(v1::BackendProtocol::Auto) => Protocol::Auto,
        Err(_) => {
            errors.push(FieldError::invalid(
                format!("{at}.protocol"),
                format!("unknown value {}", b.protocol),
            ));
            Protocol::Http1
        }
    };
    let tls = b
        .tls
        .as_ref()
        .and_then(|t| errors.check(backend_tls(t, protocol, at)));
    match (protocol, &b.tls) {
        (Protocol::H2 | Protocol::Auto, None) => errors.push(FieldError::invalid(
            format!("{at}.protocol"),
            "h2 and auto are negotiated over TLS: set tls (or use h2c for HTTP/2 over plain TCP)",
        )),
        (Protocol::H2c, Some(_)) => errors.push(FieldError::invalid(
            format!("{at}.protocol"),
            "h2c is HTTP/2 over plain TCP: with tls, use h2 (or auto)",
        )),
        _ => {}
    }
    let (Some(name), Some(address)) = (name, address) else {
        return Err(errors.error());
    };
    let mut spec = BackendSpec::new(name, address);
    spec.protocol = protocol;
    spec.tls = tls;
    spec.address2 = address2;
    if let Some(w) = w {
        spec.weight = w;
    }
    spec.probe = probe;
    spec.host_header = (!b.host_header.is_empty()).then(|| b.host_header.clone());
    spec.timeouts = timeouts;
    spec.max_connections = b.max_connections;
    spec.queue_timeout = queue_timeout.unwrap_or_default();
    spec.max_connection_lifetime = lifetime.filter(|d| !d.is_zero());
    spec.admin_health = admin_health;
    spec.drain = b.drain;
    errors.finish(spec)
}

/// Fills in a certificate's read-only fields (names, expiry, fingerprint) from its chain; a
/// chain that does not parse leaves them empty (validation says why).
pub fn describe_certificate(c: &mut v1::Certificate) {
    match tether_dataplane::certs::summary(c.chain.as_bytes()) {
        Ok(s) => {
            c.names = s.names;
            c.not_after = s.not_after;
            c.fingerprint = s.fingerprint;
        }
        Err(_) => {
            c.names.clear();
            c.not_after = 0;
            c.fingerprint.clear();
        }
    }
}

/// Converts and checks one certificate: its chain and key parse and belong together.
pub fn certificate(
    c: &v1::Certificate,
    at: &dyn fmt::Display,
) -> Result<CertificateSpec, FieldError> {
    let name = name(&c.name, at)?;
    at_most(&c.chain, limits::MAX_PEM_BYTES, || format!("{at}.chain"))?;
    at_most(&c.private_key, limits::MAX_PEM_BYTES, || {
        format!("{at}.private_key")
    })?;
    if c.chain.is_empty() {
        return Err(FieldError::invalid(
            format!("{at}.chain"),
            "is required (PEM, the leaf first)",
        ));
    }
    if c.private_key.is_empty() {
        return Err(FieldError::invalid(
            format!("{at}.private_key"),
            "is required (PEM; reads never return it, so give it again on every update)",
        ));
    }
    tether_dataplane::certs::summary(c.chain.as_bytes())
        .map_err(|e| FieldError::invalid(format!("{at}.chain"), e))?;
    let loaded = Certificate::load(
        &name,
        Source::Api,
        c.chain.as_bytes(),
        c.private_key.as_bytes(),
    )
    .map_err(|e| FieldError::invalid(format!("{at}.private_key"), e))?;
    Ok(CertificateSpec::new(&c.chain, &c.private_key, loaded))
}

/// A backend's TLS settings, checked and built (the CA parsed) for `protocol`.
fn backend_tls(
    t: &v1::BackendTls,
    protocol: Protocol,
    at: &dyn fmt::Display,
) -> Result<BackendTls, FieldError> {
    at_most(&t.server_name, 253, || format!("{at}.tls.server_name"))?;
    at_most(&t.ca, limits::MAX_PEM_BYTES, || format!("{at}.tls.ca"))?;
    let server_name = (!t.server_name.is_empty()).then(|| t.server_name.clone());
    let ca = (!t.ca.is_empty()).then(|| t.ca.clone());
    let client = if t.client_certificate.is_empty() {
        None
    } else {
        Some(reference(&t.client_certificate, || {
            format!("{at}.tls.client_certificate")
        })?)
    };
    BackendTls::new(server_name, ca, t.verify.unwrap_or(true), protocol, client).map_err(|e| {
        let field = match e {
            TlsError::ServerName(_) => "server_name",
            TlsError::Pem(_) | TlsError::Rustls(_) => "ca",
        };
        FieldError::invalid(format!("{at}.tls.{field}"), e)
    })
}

/// The start of a long value, for an error message about it.
fn truncated(s: &str) -> String {
    match s.char_indices().nth(32) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Visible ASCII without spaces: what a Host value (and a header value we generate) may be.
fn http_token_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|c| c.is_ascii_graphic())
}

/// Converts and checks one probe (Varnish's rules, reference §3.1), reporting every bad field.
pub fn probe(p: &v1::Probe, at: &dyn fmt::Display) -> Result<ProbeSpec, FieldError> {
    let mut errors = Violations::default();
    let name = errors.check(name(&p.name, at));
    let mut request = None;
    match (p.url.is_empty(), p.request.is_empty()) {
        (_, false) if !p.url.is_empty() => {
            errors.push(FieldError::invalid(
                format!("{at}.request"),
                "give url or request, not both",
            ));
        }
        (_, false) => {
            let total: usize = p.request.iter().map(|l| l.len() + 2).sum();
            if p.request.len() > limits::MAX_PROBE_REQUEST_LINES
                || total > limits::MAX_PROBE_REQUEST_BYTES
            {
                errors.push(FieldError::invalid(
                    format!("{at}.request"),
                    format!(
                        "is {} lines, {total} bytes; at most {} lines, {} bytes",
                        p.request.len(),
                        limits::MAX_PROBE_REQUEST_LINES,
                        limits::MAX_PROBE_REQUEST_BYTES
                    ),
                ));
            } else {
                for (i, line) in p.request.iter().enumerate() {
                    if line.contains(['\r', '\n']) {
                        errors.push(FieldError::invalid(
                            format!("{at}.request[{i}]"),
                            "a request line must not contain CR or LF (they are added)",
                        ));
                    }
                }
                request = Some(ProbeRequest::Raw(p.request.clone()));
            }
        }
        (false, true) => {
            if p.url.len() > limits::MAX_PROBE_URL_BYTES {
                errors.check(at_most(&p.url, limits::MAX_PROBE_URL_BYTES, || {
                    format!("{at}.url")
                }));
            } else if !p.url.starts_with('/') || !p.url.bytes().all(|c| c.is_ascii_graphic()) {
                errors.push(FieldError::invalid(
                    format!("{at}.url"),
                    format!(
                        "{:?} must be a path starting with '/' without spaces",
                        p.url
                    ),
                ));
            } else {
                request = Some(ProbeRequest::Url(p.url.clone()));
            }
        }
        (true, true) => {}
    }
    let mut expected_status = None;
    if p.expected_status != 0 {
        if (100..=999).contains(&p.expected_status) {
            expected_status = Some(p.expected_status as u16);
        } else {
            errors.push(FieldError::invalid(
                format!("{at}.expected_status"),
                format!("must be 100-999, got {}", p.expected_status),
            ));
        }
    }
    let defaults = ProbeSpec::new(String::new());
    let probe_timeout = errors.check(timeout(
        p.timeout.as_ref(),
        || format!("{at}.timeout"),
        defaults.timeout,
    ));
    let interval = errors.check(timeout(
        p.interval.as_ref(),
        || format!("{at}.interval"),
        defaults.interval,
    ));
    // Varnish: threshold without window gives window = threshold + 1; window without
    // threshold is an error; 0 is "the default".
    let threshold = if p.threshold == 0 { 3 } else { p.threshold };
    let window = match (p.window, p.threshold) {
        (0, 0) => 8,
        (0, t) => t.saturating_add(1),
        (w, _) => w,
    };
    if p.window != 0 && p.threshold == 0 {
        errors.push(FieldError::invalid(
            format!("{at}.threshold"),
            "must be given when window is (as in Varnish)",
        ));
    }
    if window > MAX_PROBE_WINDOW {
        errors.push(FieldError::invalid(
            format!("{at}.window"),
            format!("must be at most {MAX_PROBE_WINDOW}, got {window}"),
        ));
    } else if threshold > window {
        errors.push(FieldError::invalid(
            format!("{at}.threshold"),
            format!("must be at most window ({window}), got {threshold}"),
        ));
    }
    let initial = match p.initial {
        None => threshold.saturating_sub(1),
        Some(i) if i > threshold => {
            errors.push(FieldError::invalid(
                format!("{at}.initial"),
                format!("must be at most threshold ({threshold}), got {i}"),
            ));
            0
        }
        Some(i) => i,
    };
    let Some(name) = name else {
        return Err(errors.error());
    };
    let mut spec = ProbeSpec::new(name);
    if let Some(r) = request {
        spec.request = r;
    }
    if let Some(st) = expected_status {
        spec.expected_status = st;
    }
    spec.timeout = probe_timeout.unwrap_or(spec.timeout);
    spec.interval = interval.unwrap_or(spec.interval);
    spec.window = window;
    spec.threshold = threshold;
    spec.initial = initial;
    errors.finish(spec)
}

/// Converts and checks one director, reporting every bad field (up to [`MAX_VIOLATIONS`]).
/// Whether a director has a selector member (its members depend on the backends).
pub fn has_selector(d: &v1::Director) -> bool {
    d.members
        .iter()
        .any(|m| matches!(m.target, Some(v1::member::Target::Selector(_))))
}

/// A member as converted, before selectors are expanded.
enum Entry {
    Member(MemberSpec),
    /// Every backend the selector matches, each with this weight and rampup.
    Select(Selector, Option<f64>, Option<Duration>),
}

/// Converts a director; its selector members become the `backends` they match, in name order
/// (the order the varnish ring's ties depend on), after its other members, each once: a
/// backend already a member (by name or an earlier selector) is not added again. For the
/// balanced algorithm each takes its slot from `selector_slots`.
pub fn director(
    d: &v1::Director,
    at: &dyn fmt::Display,
    backends: &[(Label<'_>, &v1::Backend)],
) -> Result<DirectorSpec, FieldError> {
    convert_director(d, at, &sorted_backends(backends)).map(|c| Arc::unwrap_or_clone(c.spec))
}

/// A converted director, and where its selectors' backends lie among its members: one run
/// `(start, len)` of `spec.members` per selector, in member order, each run in backend-name
/// order. What [`Converted`] checks the changed backends against, and splices them into.
#[derive(Debug, Clone)]
struct DirectorConversion {
    spec: Arc<DirectorSpec>,
    runs: Arc<[(u32, u32)]>,
}

/// What [`reuse_or_convert`] does with a cached spec whose stored revision is unchanged.
enum Refresh<S> {
    /// Reuse it.
    Keep,
    /// Use this instead (derived from it).
    Replace(S),
    /// Convert the message anew.
    Convert,
}

/// Most changed backends a selector director's members are spliced for; beyond, it is
/// expanded again (a bulk change is a full pass anyway).
const MAX_SPLICED: usize = 64;

impl DirectorConversion {
    fn run(&self, k: usize) -> &[MemberSpec] {
        let (start, len) = self.runs[k];
        self.spec
            .members
            .get(start as usize..(start + len) as usize)
            .unwrap_or(&[])
    }

    /// Which selector contributed backend `name` (by binary search in each run), if any.
    fn selected_by(&self, name: &str) -> Option<usize> {
        (0..self.runs.len()).find(|&k| {
            self.run(k)
                .binary_search_by(|m| m.target.name().cmp(name))
                .is_ok()
        })
    }

    /// This conversion brought up to date with the backends that changed since (`None`:
    /// unknown), for the same stored director: kept when no change alters what its selectors
    /// select, else the changed backends spliced into (or out of) their runs — O(changed
    /// backends) to decide, a copy of the member list to splice.
    fn refresh(
        &self,
        d: &v1::Director,
        backends: &[(Label<'_>, &v1::Backend)],
        changes: Option<&Changes>,
    ) -> Refresh<DirectorConversion> {
        if self.runs.is_empty() && !has_selector(d) {
            return Refresh::Keep;
        }
        let Some(changes) = changes else {
            return Refresh::Convert;
        };
        // (backend, run it was in, run it is in now).
        let mut moves: Vec<(&str, Option<usize>, Option<usize>)> = Vec::new();
        for n in &changes.removed {
            if let Some(k) = self.selected_by(n) {
                moves.push((n, Some(k), None));
            }
        }
        if !changes.fresh.is_empty() {
            let Some(selectors) = selectors_of(d) else {
                return Refresh::Convert;
            };
            let named = named_backends(d);
            for &i in &changes.fresh {
                let Some((_, b)) = backends.get(i) else {
                    return Refresh::Convert;
                };
                // A backend also named is never selected (a member once).
                let now = if named.contains(b.name.as_str()) {
                    None
                } else {
                    selectors.iter().position(|s| s.matches(&b.labels))
                };
                let was = self.selected_by(&b.name);
                if now != was {
                    moves.push((&b.name, was, now));
                }
            }
        }
        if moves.is_empty() {
            return Refresh::Keep;
        }
        if moves.len() > MAX_SPLICED {
            return Refresh::Convert;
        }
        self.splice(d, &moves)
            .map_or(Refresh::Convert, Refresh::Replace)
    }

    /// The member list with `moves` applied; `None` where a full conversion must decide
    /// (a new member of a balanced director needs its stored slot checked, a bad value).
    fn splice(
        &self,
        d: &v1::Director,
        moves: &[(&str, Option<usize>, Option<usize>)],
    ) -> Option<DirectorConversion> {
        let balanced =
            matches!(&self.spec.policy, Policy::Shard(s) if s.algorithm == Algorithm::Balanced);
        // Few names, compared against each member in turn: no hashing of 10,000 names.
        let gone: Vec<&str> = moves
            .iter()
            .filter(|(_, was, _)| was.is_some())
            .map(|(n, _, _)| *n)
            .collect();
        let mut inserts: Vec<Vec<&str>> = vec![Vec::new(); self.runs.len()];
        for (n, _, now) in moves {
            if let Some(k) = now {
                if balanced {
                    return None;
                }
                inserts.get_mut(*k)?.push(n);
            }
        }
        for list in &mut inserts {
            list.sort_unstable();
        }
        // The k-th selector member's weight and rampup, as its backends get them.
        let selector_members: Vec<&v1::Member> = d
            .members
            .iter()
            .filter(|m| matches!(m.target, Some(v1::member::Target::Selector(_))))
            .collect();
        let old = &self.spec.members;
        let mut members = Vec::with_capacity(old.len() + moves.len());
        let mut runs = Vec::with_capacity(self.runs.len());
        let mut cursor = 0usize;
        for (k, &(start, len)) in self.runs.iter().enumerate() {
            let (start, end) = (start as usize, (start + len) as usize);
            members.extend_from_slice(old.get(cursor..start)?);
            let sm = selector_members.get(k)?;
            let rampup = match &sm.rampup {
                Some(r) => Some(duration(Some(r), String::new, Duration::ZERO).ok()?),
                None => None,
            };
            let new_start = members.len();
            let mut adds = inserts[k].iter().peekable();
            for m in old.get(start..end)? {
                let name = m.target.name();
                while let Some(a) = adds.next_if(|a| **a < name) {
                    members.push(selected_member(a, sm.weight, rampup));
                }
                if gone.is_empty() || !gone.contains(&name) {
                    members.push(m.clone());
                }
            }
            for a in adds {
                members.push(selected_member(a, sm.weight, rampup));
            }
            runs.push((
                u32::try_from(new_start).ok()?,
                u32::try_from(members.len() - new_start).ok()?,
            ));
            cursor = end;
        }
        members.extend_from_slice(old.get(cursor..)?);
        if members.len() > limits::MAX_MEMBERS {
            return None;
        }
        Some(DirectorConversion {
            spec: Arc::new(DirectorSpec {
                name: self.spec.name.clone(),
                policy: self.spec.policy.clone(),
                members,
            }),
            runs: runs.into(),
        })
    }
}

/// A member a selector contributed: the backend, with the selector member's weight and rampup.
fn selected_member(name: &str, weight: Option<f64>, rampup: Option<Duration>) -> MemberSpec {
    let mut m = MemberSpec::new(TargetRef::Backend(name.to_owned()));
    m.weight = weight;
    m.rampup = rampup;
    m
}

/// The backends in name order (as a set read from the store already is).
fn sorted_backends<'b>(backends: &[(Label<'_>, &'b v1::Backend)]) -> Vec<&'b v1::Backend> {
    in_name_order(backends.iter().map(|(_, b)| *b).collect())
}

fn in_name_order(mut backends: Vec<&v1::Backend>) -> Vec<&v1::Backend> {
    if !backends.is_sorted_by(|a, b| a.name <= b.name) {
        backends.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    }
    backends
}

/// A director's selectors, checked; `None` if one does not check (validation reports it).
fn selectors_of(d: &v1::Director) -> Option<Vec<Selector>> {
    d.members
        .iter()
        .filter_map(|m| match &m.target {
            Some(v1::member::Target::Selector(s)) => Some(Selector::from_proto(s, "selector").ok()),
            _ => None,
        })
        .collect()
}

fn convert_director(
    d: &v1::Director,
    at: &dyn fmt::Display,
    sorted: &[&v1::Backend],
) -> Result<DirectorConversion, FieldError> {
    let mut errors = Violations::default();
    let name = errors.check(name(&d.name, at));
    let policy = match &d.policy {
        None => {
            errors.push(FieldError::invalid(
                format!("{at}.policy"),
                "needs one policy: round_robin, fallback, random, hash or shard",
            ));
            None
        }
        Some(v1::director::Policy::RoundRobin(_)) => Some(Policy::RoundRobin),
        Some(v1::director::Policy::Fallback(f)) => Some(Policy::Fallback { sticky: f.sticky }),
        Some(v1::director::Policy::Random(_)) => Some(Policy::Random),
        Some(v1::director::Policy::Hash(_)) => Some(Policy::Hash),
        Some(v1::director::Policy::Shard(s)) => errors
            .check(shard(s, &format!("{at}.shard")))
            .map(Policy::Shard),
    };
    if d.members.len() > limits::MAX_MEMBERS {
        // Not one of them is looked at: the count alone is the error.
        errors.push(FieldError::invalid(
            format!("{at}.members"),
            format!(
                "has {} members; at most {}",
                d.members.len(),
                limits::MAX_MEMBERS
            ),
        ));
        return Err(errors.error());
    }
    let mut entries = Vec::with_capacity(d.members.len());
    for (j, m) in d.members.iter().enumerate() {
        if errors.full() {
            break;
        }
        let mat = || format!("{at}.members[{j}]");
        let mut selector = None;
        let target = match &m.target {
            Some(v1::member::Target::Backend(b)) => errors
                .check(reference(b, || format!("{}.backend", mat())))
                .map(TargetRef::Backend),
            Some(v1::member::Target::Director(d)) => errors
                .check(reference(d, || format!("{}.director", mat())))
                .map(TargetRef::Director),
            Some(v1::member::Target::Selector(s)) => {
                selector = errors.check(Selector::from_proto(s, &format!("{}.selector", mat())));
                if !m.ident.is_empty() {
                    errors.push(FieldError::invalid(
                        format!("{}.ident", mat()),
                        "not allowed on a selector member: each backend it matches is hashed by its name",
                    ));
                }
                if m.slot.is_some() {
                    errors.push(FieldError::invalid(
                        format!("{}.slot", mat()),
                        "not allowed on a selector member: its backends' slots are the director's selector_slots",
                    ));
                }
                None
            }
            None => {
                errors.push(FieldError::invalid(
                    mat(),
                    "a member needs exactly one of backend, director, selector",
                ));
                None
            }
        };
        let w = m
            .weight
            .and_then(|w| errors.check(weight(w, || format!("{}.weight", mat()))));
        let rampup = m.rampup.as_ref().and_then(|r| {
            errors.check(duration(
                Some(r),
                || format!("{}.rampup", mat()),
                Duration::ZERO,
            ))
        });
        errors.check(at_most(&m.ident, limits::MAX_IDENT_BYTES, || {
            format!("{}.ident", mat())
        }));
        if let Some(sel) = selector {
            entries.push(Entry::Select(sel, w, rampup));
            continue;
        }
        let Some(target) = target else { continue };
        let mut spec = MemberSpec::new(target);
        spec.weight = w;
        spec.ident = (!m.ident.is_empty()).then(|| m.ident.clone());
        spec.slot = m.slot;
        spec.rampup = rampup;
        entries.push(Entry::Member(spec));
    }
    let (Some(name), Some(policy)) = (name, policy) else {
        return Err(errors.error());
    };
    errors.finish(())?;
    let (members, runs) = expand(d, at, &policy, entries, sorted)?;
    errors.finish(DirectorConversion {
        spec: Arc::new(DirectorSpec {
            name,
            policy,
            members,
        }),
        runs: runs.into(),
    })
}

/// Members, and each selector's run among them (see [`DirectorConversion`]).
type Expanded = (Vec<MemberSpec>, Vec<(u32, u32)>);

/// The members of a director once its selectors are expanded (see [`director`]), with what
/// [`DirectorConversion`] keeps of which came from which selector.
fn expand(
    d: &v1::Director,
    at: &dyn fmt::Display,
    policy: &Policy,
    entries: Vec<Entry>,
    sorted: &[&v1::Backend],
) -> Result<Expanded, FieldError> {
    let selectors = entries
        .iter()
        .filter(|e| matches!(e, Entry::Select(..)))
        .count();
    if selectors == 0 {
        let members = entries
            .into_iter()
            .filter_map(|e| match e {
                Entry::Member(m) => Some(m),
                Entry::Select(..) => None,
            })
            .collect();
        return Ok((members, Vec::new()));
    }
    let balanced = matches!(policy, Policy::Shard(s) if s.algorithm == Algorithm::Balanced);
    if let Some((name, &slot)) = d
        .selector_slots
        .iter()
        .find(|(_, s)| **s > balanced::MAX_SLOT)
    {
        return Err(FieldError::invalid(
            format!("{at}.selector_slots[{name:?}]"),
            format!("{slot} is larger than the maximum {}", balanced::MAX_SLOT),
        ));
    }
    // The named members' slots (from the message: `entries` is consumed below).
    let mut taken: FxHashMap<u32, &str> = FxHashMap::default();
    if balanced {
        for m in &d.members {
            let name = match &m.target {
                Some(v1::member::Target::Backend(x) | v1::member::Target::Director(x)) => x,
                Some(v1::member::Target::Selector(_)) | None => continue,
            };
            if let Some(s) = m.slot {
                taken.insert(s, name);
            }
        }
    }
    let mut present = named_backends(d);
    let mut members = Vec::with_capacity(entries.len());
    let mut runs = Vec::with_capacity(selectors);
    for e in entries {
        match e {
            Entry::Member(m) => members.push(m),
            Entry::Select(sel, weight, rampup) => {
                let later = runs.len() + 1 < selectors;
                let start = members.len();
                for b in select(&sel, sorted, &mut present, later) {
                    let mut m = selected_member(&b.name, weight, rampup);
                    if balanced && let Some(&slot) = d.selector_slots.get(&b.name) {
                        if let Some(other) = taken.insert(slot, &b.name) {
                            return Err(FieldError::invalid(
                                format!("{at}.selector_slots[{:?}]", b.name),
                                format!("slot {slot} is also {other:?}'s"),
                            ));
                        }
                        m.slot = Some(slot);
                    }
                    members.push(m);
                }
                let len = members.len() - start;
                runs.push((
                    u32::try_from(start).unwrap_or(u32::MAX),
                    u32::try_from(len).unwrap_or(u32::MAX),
                ));
            }
        }
    }
    if members.len() > limits::MAX_MEMBERS {
        return Err(FieldError::invalid(
            format!("{at}.members"),
            format!(
                "its selectors match {} members; at most {}",
                members.len(),
                limits::MAX_MEMBERS
            ),
        ));
    }
    Ok((members, runs))
}

fn shard(s: &v1::Shard, at: &str) -> Result<ShardSpec, FieldError> {
    let mut errors = Violations::default();
    let algorithm = match v1::ShardAlgorithm::try_from(s.algorithm) {
        Ok(v1::ShardAlgorithm::Varnish) => Algorithm::Varnish,
        Ok(v1::ShardAlgorithm::Balanced) => Algorithm::Balanced,
        Err(_) => {
            errors.push(FieldError::invalid(
                format!("{at}.algorithm"),
                format!("unknown value {}", s.algorithm),
            ));
            Algorithm::Varnish
        }
    };
    let healthy = match v1::ShardHealthy::try_from(s.healthy) {
        Ok(v1::ShardHealthy::Chosen) => HealthyMode::Chosen,
        Ok(v1::ShardHealthy::Ignore) => HealthyMode::Ignore,
        Ok(v1::ShardHealthy::All) => HealthyMode::All,
        Err(_) => {
            errors.push(FieldError::invalid(
                format!("{at}.healthy"),
                format!("unknown value {}", s.healthy),
            ));
            HealthyMode::Chosen
        }
    };
    if s.replicas > limits::MAX_REPLICAS {
        errors.push(FieldError::invalid(
            format!("{at}.replicas"),
            format!(
                "must be from 1 to {}, got {}",
                limits::MAX_REPLICAS,
                s.replicas
            ),
        ));
    }
    let rampup = errors
        .check(duration(
            s.rampup.as_ref(),
            || format!("{at}.rampup"),
            Duration::ZERO,
        ))
        .unwrap_or_default();
    // Ranges of warmup and base_slots, and the ring's size, are checked by `Directors::build`.
    errors.finish(ShardSpec {
        algorithm,
        replicas: if s.replicas == 0 {
            config::DEFAULT_REPLICAS
        } else {
            s.replicas
        },
        healthy,
        rampup,
        warmup: s.warmup,
        base_slots: s.base_slots.max(1),
    })
}

fn key_source(k: Option<&v1::KeySource>, field: String) -> Result<Option<KeySpec>, FieldError> {
    use v1::key_source::Source;
    let header_name = |h: &str, what: &str| -> Result<String, FieldError> {
        if h.is_empty()
            || h.len() > limits::MAX_HEADER_NAME_BYTES
            || !h.bytes().all(|c| c.is_ascii_graphic() && c != b':')
        {
            return Err(FieldError::invalid(
                format!("{field}.{what}"),
                format!(
                    "{:?} is not a valid name (1-{} visible characters, no ':')",
                    truncated(h),
                    limits::MAX_HEADER_NAME_BYTES
                ),
            ));
        }
        Ok(h.to_owned())
    };
    Ok(match k.and_then(|k| k.source.as_ref()) {
        None => None,
        Some(Source::ClientIp(true)) => Some(KeySpec::ClientIp),
        Some(Source::Url(true)) => Some(KeySpec::Url),
        Some(Source::Path(true)) => Some(KeySpec::Path),
        Some(Source::ClientIp(false) | Source::Url(false) | Source::Path(false)) => {
            return Err(FieldError::invalid(
                field,
                "client_ip, url and path must be true when set",
            ));
        }
        Some(Source::Header(h)) => Some(KeySpec::Header(
            header_name(h, "header")?.to_ascii_lowercase(),
        )),
        Some(Source::Cookie(c)) => Some(KeySpec::Cookie(header_name(c, "cookie")?)),
        Some(Source::Query(q)) => Some(KeySpec::Query(header_name(q, "query")?)),
    })
}

/// Converts and checks one route, reporting every bad field.
pub fn route(r: &v1::Route, at: &dyn fmt::Display) -> Result<RouteSpec, FieldError> {
    let mut errors = Violations::default();
    let name = errors.check(name(&r.name, at));
    let mut hosts = Vec::with_capacity(r.hosts.len().min(limits::MAX_ROUTE_HOSTS));
    if errors
        .check(at_most_n(&r.hosts, limits::MAX_ROUTE_HOSTS, || {
            format!("{at}.hosts")
        }))
        .is_some()
    {
        for (i, h) in r.hosts.iter().enumerate() {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            let ok = !bare.is_empty()
                && bare.len() <= 253
                && bare
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c));
            if ok {
                hosts.push(h.to_ascii_lowercase());
            } else {
                errors.push(FieldError::invalid(
                    format!("{at}.hosts[{i}]"),
                    format!(
                        "{:?} is not a host name (optionally starting with \"*.\")",
                        truncated(h)
                    ),
                ));
            }
        }
    }
    if errors
        .check(at_most(&r.path_prefix, limits::MAX_MATCH_BYTES, || {
            format!("{at}.path_prefix")
        }))
        .is_some()
        && !r.path_prefix.is_empty()
        && !r.path_prefix.starts_with('/')
    {
        errors.push(FieldError::invalid(
            format!("{at}.path_prefix"),
            format!("{:?} must start with '/'", r.path_prefix),
        ));
    }
    let mut headers = Vec::with_capacity(r.headers.len().min(limits::MAX_ROUTE_HEADERS));
    if errors
        .check(at_most_n(&r.headers, limits::MAX_ROUTE_HEADERS, || {
            format!("{at}.headers")
        }))
        .is_some()
    {
        for (i, h) in r.headers.iter().enumerate() {
            if h.name.is_empty()
                || h.name.len() > limits::MAX_HEADER_NAME_BYTES
                || !h.name.bytes().all(|c| c.is_ascii_graphic() && c != b':')
            {
                errors.push(FieldError::invalid(
                    format!("{at}.headers[{i}].name"),
                    format!(
                        "{:?} is not a header name (1-{} visible characters, no ':')",
                        truncated(&h.name),
                        limits::MAX_HEADER_NAME_BYTES
                    ),
                ));
            }
            errors.check(at_most(&h.value, limits::MAX_MATCH_BYTES, || {
                format!("{at}.headers[{i}].value")
            }));
            headers.push(HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: (!h.value.is_empty()).then(|| h.value.clone()),
            });
        }
    }
    let director = errors.check(reference(&r.director, || format!("{at}.director")));
    let key = match errors.check(key_source(r.key.as_ref(), format!("{at}.key"))) {
        Some(Some(k)) => Some(k),
        Some(None) => {
            errors.push(FieldError::invalid(
                format!("{at}.key"),
                "needs a key source: client_ip, header, cookie, query, url or path",
            ));
            None
        }
        None => None,
    };
    let fallback_key = errors
        .check(key_source(
            r.fallback_key.as_ref(),
            format!("{at}.fallback_key"),
        ))
        .flatten();
    let upgrades = errors.check(upgrades(&r.upgrades, at));
    let https = match v1::RouteScheme::try_from(r.scheme) {
        Ok(v1::RouteScheme::Any) => None,
        Ok(v1::RouteScheme::Http) => Some(false),
        Ok(v1::RouteScheme::Https) => Some(true),
        Err(_) => {
            errors.push(FieldError::invalid(
                format!("{at}.scheme"),
                format!("unknown value {}", r.scheme),
            ));
            None
        }
    };
    if r.https_redirect && https == Some(true) {
        errors.push(FieldError::invalid(
            format!("{at}.https_redirect"),
            "a route for https requests only never sees a plain-HTTP request to redirect",
        ));
    }
    let (Some(name), Some(director), Some(key), Some(upgrades)) = (name, director, key, upgrades)
    else {
        return Err(errors.error());
    };
    errors.finish(RouteSpec {
        name,
        hosts,
        path_prefix: r.path_prefix.clone(),
        headers,
        director,
        key,
        fallback_key,
        max_body_bytes: (r.max_body_bytes > 0).then_some(r.max_body_bytes),
        upgrades,
        https,
        https_redirect: r.https_redirect,
    })
}

/// A route's Upgrade protocols: tokens (RFC 9110 §5.6.2), lower-cased; none given is
/// `websocket`, `none` alone is no upgrade; `h2c` is refused (it is never tunnelled).
fn upgrades(list: &[String], at: &dyn fmt::Display) -> Result<Vec<String>, FieldError> {
    at_most_n(list, limits::MAX_ROUTE_UPGRADES, || {
        format!("{at}.upgrades")
    })?;
    if list.is_empty() {
        return Ok(tether_dataplane::config::DEFAULT_UPGRADES
            .map(str::to_owned)
            .to_vec());
    }
    if list.len() == 1 && list[0].eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, u) in list.iter().enumerate() {
        let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&c);
        let why = if u.is_empty() || u.len() > limits::MAX_UPGRADE_BYTES || !u.bytes().all(token) {
            format!(
                "{:?} is not an Upgrade protocol (a token of 1-{} characters, as websocket)",
                truncated(u),
                limits::MAX_UPGRADE_BYTES
            )
        } else if u.eq_ignore_ascii_case("h2c") {
            "h2c is never tunnelled: HTTP/2 reaches backends with the backend's protocol".into()
        } else if u.eq_ignore_ascii_case("none") {
            "\"none\" must be the only entry".into()
        } else {
            let u = u.to_ascii_lowercase();
            if !out.contains(&u) {
                out.push(u);
            }
            continue;
        };
        return Err(FieldError::invalid(format!("{at}.upgrades[{i}]"), why));
    }
    Ok(out)
}

/// Turns a build error (which names the director) into the director's path.
fn locate(set: &Resources, e: BuildError) -> FieldError {
    let path_of = |name: &str| {
        set.directors
            .iter()
            .find(|(_, d)| d.name == name)
            .map_or_else(|| "directors".to_owned(), |(at, _)| at.to_string())
    };
    match &e {
        BuildError::DuplicateBackend(n) => FieldError::invalid(
            set.backends
                .iter()
                .filter(|(_, b)| &b.name == n)
                .nth(1)
                .map_or_else(|| "backends".to_owned(), |(at, _)| format!("{at}.name")),
            e,
        ),
        BuildError::DuplicateDirector(n) => FieldError::invalid(
            set.directors
                .iter()
                .filter(|(_, d)| &d.name == n)
                .nth(1)
                .map_or_else(|| "directors".to_owned(), |(at, _)| format!("{at}.name")),
            e,
        ),
        BuildError::Cycle(names) => FieldError::invalid(
            names
                .first()
                .map_or_else(|| "directors".to_owned(), |n| path_of(n)),
            e,
        ),
        BuildError::Unknown {
            director,
            field,
            kind,
            name,
        } => FieldError::precondition(
            format!("{}.{field}", path_of(director)),
            format!("no {kind} named {name:?}"),
        ),
        BuildError::Invalid {
            director,
            field,
            reason,
        } => FieldError::invalid(format!("{}.{field}", path_of(director)), reason),
    }
}

/// Stores a balanced shard director's mapping with it: members without a slot keep the slot
/// their target had in `prev` (the stored version) or get the lowest free one, and `base_slots`
/// is chosen once, when the director is created (the next power of two ≥ its member count), so
/// that every node and every later build computes the same mapping.
pub fn assign_slots(d: &mut v1::Director, prev: Option<&v1::Director>) {
    let selects = has_selector(d);
    let Some(v1::director::Policy::Shard(s)) = &mut d.policy else {
        return;
    };
    if s.algorithm != v1::ShardAlgorithm::Balanced as i32 {
        return;
    }
    let prev_shard = match prev.and_then(|p| p.policy.as_ref()) {
        Some(v1::director::Policy::Shard(ps)) if ps.algorithm == s.algorithm => Some(ps),
        _ => None,
    };
    if s.base_slots == 0 {
        s.base_slots = match prev_shard {
            Some(ps) if ps.base_slots != 0 => ps.base_slots,
            // Left for `assign_selector_slots`, which knows how many backends the selectors
            // match: counted here, a selector would be one member (a base of 1 nests every
            // level, and lookups are 2-3x slower than on a flat base).
            _ if selects => 0,
            _ => base_for(d.members.len()),
        };
    }
    // Selector members have no slot of their own (their backends' are `selector_slots`).
    let key = |m: &v1::Member| match &m.target {
        Some(v1::member::Target::Backend(b)) => Some((false, b.clone(), m.ident.clone())),
        Some(v1::member::Target::Director(x)) => Some((true, x.clone(), m.ident.clone())),
        Some(v1::member::Target::Selector(_)) | None => None,
    };
    let old: FxHashMap<_, u32> = prev
        .map(|p| {
            p.members
                .iter()
                .filter_map(|m| m.slot.map(|s| (key(m), s)))
                .collect()
        })
        .unwrap_or_default();
    // A document written without the selector slots (a new file) keeps the stored ones:
    // [`assign_selector_slots`] then drops those of backends that no longer match.
    if d.selector_slots.is_empty()
        && let Some(p) = prev
    {
        d.selector_slots.clone_from(&p.selector_slots);
    }
    let mut taken: FxHashSet<u32> = d.members.iter().filter_map(|m| m.slot).collect();
    taken.extend(d.selector_slots.values());
    for m in d.members.iter_mut().filter(|m| m.slot.is_none()) {
        if let Some(&s) = old.get(&key(m))
            && !taken.contains(&s)
        {
            m.slot = Some(s);
        }
    }
    // The named members' slots, then the selectors' backends' (taken, not to be handed out).
    let named: Vec<usize> = (0..d.members.len())
        .filter(|&i| key(&d.members[i]).is_some())
        .collect();
    let mut requested: Vec<Option<u32>> = named.iter().map(|&i| d.members[i].slot).collect();
    requested.extend(d.selector_slots.values().map(|&s| Some(s)));
    // A duplicate or out-of-range slot is left as given; validation reports it by field.
    if let Ok(slots) = balanced::assign_slots(&requested) {
        for (&i, s) in named.iter().zip(slots) {
            d.members[i].slot = Some(s);
        }
    }
}

/// The flat base a new balanced director gets for `members`: the power of two at or above.
fn base_for(members: usize) -> u32 {
    (u32::try_from(members.max(1)).unwrap_or(u32::MAX))
        .checked_next_power_of_two()
        .unwrap_or(balanced::MAX_SLOT + 1)
        .min(balanced::MAX_SLOT + 1)
}

/// A balanced shard director's `selector_slots` for `backends` (the whole set the director
/// is validated with): a backend its selectors match keeps its stored slot, a newly matched
/// one gets the lowest slot free, and the slots of backends no longer matched are dropped; a
/// new director's `base_slots` is chosen here, from its named members and its matches.
/// The control plane runs this on every write, so the mapping is stored state, the same on
/// every node; other directors' `selector_slots` are cleared. A selector that does not check
/// is left for validation to report.
pub fn assign_selector_slots(d: &mut v1::Director, backends: &[&v1::Backend]) {
    let balanced = matches!(&d.policy, Some(v1::director::Policy::Shard(s))
        if s.algorithm == v1::ShardAlgorithm::Balanced as i32);
    if !balanced || !has_selector(d) {
        d.selector_slots.clear();
        return;
    }
    let Some(selectors) = selectors_of(d) else {
        return;
    };
    let sorted = in_name_order(backends.to_vec());
    let mut present = named_backends(d);
    let mut matched: Vec<&str> = Vec::new();
    for (k, sel) in selectors.iter().enumerate() {
        let later = k + 1 < selectors.len();
        matched.extend(select(sel, &sorted, &mut present, later).map(|b| b.name.as_str()));
    }
    // For a new director's base (`assign_slots` left it 0): its named members and matches.
    let members = d
        .members
        .iter()
        .filter(|m| !matches!(m.target, Some(v1::member::Target::Selector(_))))
        .count()
        + matched.len();
    let mut taken: FxHashSet<u32> = d.members.iter().filter_map(|m| m.slot).collect();
    let mut next: std::collections::HashMap<String, u32> = Default::default();
    for name in &matched {
        if let Some(&s) = d.selector_slots.get(*name)
            && taken.insert(s)
        {
            next.insert((*name).to_owned(), s);
        }
    }
    let mut free = 0u32;
    for name in matched {
        if next.contains_key(name) {
            continue;
        }
        while taken.contains(&free) {
            free += 1;
        }
        taken.insert(free);
        next.insert(name.to_owned(), free);
    }
    // Compared by content: a map built anew may iterate (and so encode) in another order, and
    // an unchanged director must not be written again.
    if next != d.selector_slots {
        d.selector_slots = next;
    }
    if let Some(v1::director::Policy::Shard(s)) = &mut d.policy
        && s.base_slots == 0
    {
        s.base_slots = base_for(members);
    }
}

/// The backends a director names as members.
fn named_backends(d: &v1::Director) -> FxHashSet<&str> {
    d.members
        .iter()
        .filter_map(|m| match &m.target {
            Some(v1::member::Target::Backend(b)) => Some(b.as_str()),
            _ => None,
        })
        .collect()
}

/// The backends of `sorted` (in name order) that `sel` matches and that are not in
/// `present`; with `record`, each is added to it (a backend is a member once, and a later
/// selector must not take it again).
fn select<'b, 'p>(
    sel: &'p Selector,
    sorted: &'p [&'b v1::Backend],
    present: &'p mut FxHashSet<&'b str>,
    record: bool,
) -> impl Iterator<Item = &'b v1::Backend> + 'p {
    sorted.iter().copied().filter(move |b| {
        if !sel.matches(&b.labels) || (!present.is_empty() && present.contains(b.name.as_str())) {
            return false;
        }
        if record {
            present.insert(b.name.as_str());
        }
        true
    })
}

#[cfg(test)]
mod tests;
