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

use tether_dataplane::config::{
    self, AdminHealth, BackendSpec, Config, DirectorSpec, HeaderMatch, KeySpec, MAX_PROBE_WINDOW,
    MemberSpec, Policy, ProbeRequest, ProbeSpec, RouteSpec, ShardSpec, TargetRef, Timeouts,
};
use tether_dataplane::director::{Algorithm, BuildError, Directors, HealthyMode, balanced};
use tether_proto::keys::Kind;
use tether_proto::v1;

/// What kind of problem a [`FieldError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A bad value: fix the field.
    Invalid,
    /// A reference to a missing resource: create it first.
    Precondition,
}

/// A refused resource: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field path, as `directors[1].members[0].weight`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Bad value or missing reference.
    pub failure: Failure,
}

impl FieldError {
    /// A bad value.
    pub fn invalid(field: impl Into<String>, message: impl ToString) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.to_string(),
            failure: Failure::Invalid,
        }
    }

    /// The object the error is about: its label, the field path up to the first `.` or `[`
    /// (`backends/b1` of `backends/b1.address`).
    pub fn object(&self) -> &str {
        self.field.split(['.', '[']).next().unwrap_or_default()
    }

    fn precondition(field: impl Into<String>, message: impl ToString) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.to_string(),
            failure: Failure::Precondition,
        }
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
    directors: Vec<(i64, Arc<DirectorSpec>)>,
}

impl Converted {
    /// Every backend of `set` converted, reusing the earlier conversion of the same stored
    /// revision.
    fn backends(&mut self, set: &Resources) -> Result<Vec<Arc<BackendSpec>>, FieldError> {
        reuse_or_convert(
            &mut self.backends,
            &set.backends,
            |b| (&b.name, b.revision),
            |s| &s.name,
            |b, at| backend(b, at).map(Arc::new),
        )
    }

    /// Every director of `set` converted, reusing the earlier conversion of the same stored
    /// revision.
    fn directors(&mut self, set: &Resources) -> Result<Vec<Arc<DirectorSpec>>, FieldError> {
        reuse_or_convert(
            &mut self.directors,
            &set.directors,
            |d| (&d.name, d.revision),
            |s| &s.name,
            |d, at| director(d, at).map(Arc::new),
        )
    }
}

/// Converts the messages of `set`, reusing from `cache` (an earlier call's result, by stored
/// revision) the spec of each message whose revision is unchanged, and leaves this call's
/// result in `cache`. Walks both in name order; the usual next cache entry is the message's
/// own, and entries before its name are deleted resources (or the set is not sorted, and the
/// rest is converted anew). A message converted before converted without error, so its label
/// does not matter.
fn reuse_or_convert<'a, M, S: Clone>(
    cache: &mut Vec<(i64, S)>,
    set: &[(Label<'a>, &'a M)],
    stored: impl Fn(&M) -> (&String, i64),
    name: impl Fn(&S) -> &String,
    convert: impl Fn(&M, &Label<'a>) -> Result<S, FieldError>,
) -> Result<Vec<S>, FieldError> {
    let mut old = std::mem::take(cache).into_iter().peekable();
    let mut next = Vec::with_capacity(set.len());
    for (at, m) in set {
        let (m_name, revision) = stored(m);
        let mut reused = None;
        while let Some((r, s)) = old.peek() {
            if name(s) == m_name {
                if *r == revision && revision != 0 {
                    reused = old.next().map(|(_, s)| s);
                }
                break;
            }
            if name(s) > m_name {
                break;
            }
            old.next();
        }
        let spec = match reused {
            Some(spec) => spec,
            None => convert(m, at)?,
        };
        next.push((revision, spec));
    }
    let specs = next.iter().map(|(_, s)| s.clone()).collect();
    *cache = next;
    Ok(specs)
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
    let mut config = Config {
        backends: converted.backends(set)?,
        ..Config::default()
    };
    let mut seen = FxHashSet::default();
    seen.reserve(set.backends.len());
    for (at, b) in &set.backends {
        if !seen.insert(b.name.as_str()) {
            return Err(FieldError::invalid(
                format!("{at}.name"),
                format!("backend {:?} is given twice", b.name),
            ));
        }
    }
    let mut probes = FxHashSet::default();
    for (at, p) in &set.probes {
        let spec = probe(p, at)?;
        if !probes.insert(p.name.as_str()) {
            return Err(FieldError::invalid(
                format!("{at}.name"),
                format!("probe {:?} is given twice", spec.name),
            ));
        }
        config.probes.push(spec);
    }
    for ((at, _), b) in set.backends.iter().zip(&config.backends) {
        if let Some(p) = &b.probe
            && !probes.contains(p.as_str())
        {
            return Err(FieldError::precondition(
                format!("{at}.probe"),
                format!("no probe named {p:?}"),
            ));
        }
    }
    config.directors = converted.directors(set)?;
    let directors = Directors::build(&config, prev).map_err(|e| locate(set, e))?;
    let mut routes = FxHashSet::default();
    for (at, r) in &set.routes {
        let spec = route(r, at)?;
        if !routes.insert(r.name.as_str()) {
            return Err(FieldError::invalid(
                format!("{at}.name"),
                format!("route {:?} is given twice", spec.name),
            ));
        }
        if directors.id(&spec.director).is_none() {
            return Err(FieldError::precondition(
                format!("{at}.director"),
                format!("no director named {:?}", spec.director),
            ));
        }
        config.routes.push(spec);
    }
    Ok(Validated { config, directors })
}

/// Most objects [`validate_leaving_out`] leaves out before it gives up.
const MAX_LEFT_OUT: usize = 64;

/// [`validate_with`], leaving out objects that `may_leave_out` allows (by label) when they do
/// not validate: each error names its object (`backends/b1.address`), that object is removed
/// and the rest validated again. Returns the left-out objects with their errors. For stored
/// objects written by something other than a control plane (or an older version): one bad
/// object must not stop every later change.
pub fn validate_leaving_out(
    set: &Resources,
    prev: Option<&Directors>,
    converted: &mut Converted,
    may_leave_out: impl Fn(&str) -> bool,
) -> Result<(Validated, Vec<FieldError>), FieldError> {
    // A copy of the list of references (not of the resources) to remove from.
    let mut set = set.clone();
    let mut left_out = Vec::new();
    loop {
        match validate_with(&set, prev, converted) {
            Ok(v) => return Ok((v, left_out)),
            Err(e) => {
                let label = e.object().to_owned();
                if left_out.len() >= MAX_LEFT_OUT
                    || !may_leave_out(&label)
                    || !remove(&mut set, &label)
                {
                    return Err(e);
                }
                left_out.push(e);
            }
        }
    }
}

/// Removes the resource labelled `label`; false when there is none.
fn remove(set: &mut Resources, label: &str) -> bool {
    fn drop_from<T>(v: &mut Vec<(Label<'_>, T)>, label: &str) -> bool {
        let before = v.len();
        v.retain(|(l, _)| l.to_string() != label);
        v.len() != before
    }
    drop_from(&mut set.backends, label)
        || drop_from(&mut set.probes, label)
        || drop_from(&mut set.directors, label)
        || drop_from(&mut set.routes, label)
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
fn duration(
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
    if w.is_finite() && w >= 0.0 {
        Ok(w)
    } else {
        Err(FieldError::invalid(
            field(),
            format!("must be a finite number >= 0, got {w}"),
        ))
    }
}

/// Converts and checks one backend.
pub fn backend(b: &v1::Backend, at: &dyn fmt::Display) -> Result<BackendSpec, FieldError> {
    let address = b
        .address
        .parse()
        .map_err(|e| FieldError::invalid(format!("{at}.address"), e))?;
    let mut spec = BackendSpec::new(name(&b.name, at)?, address);
    if !b.address2.is_empty() {
        spec.address2 = Some(
            b.address2
                .parse()
                .map_err(|e| FieldError::invalid(format!("{at}.address2"), e))?,
        );
    }
    if let Some(w) = b.weight {
        spec.weight = weight(w, || format!("{at}.weight"))?;
    }
    if !b.probe.is_empty() {
        spec.probe = Some(reference(&b.probe, || format!("{at}.probe"))?);
    }
    if !b.host_header.is_empty() {
        let ok = http_token_ok(&b.host_header);
        if !ok {
            return Err(FieldError::invalid(
                format!("{at}.host_header"),
                format!("{:?} is not a valid Host header value", b.host_header),
            ));
        }
        spec.host_header = Some(b.host_header.clone());
    }
    let t = b.timeouts.unwrap_or_default();
    let d = Timeouts::default();
    spec.timeouts = Timeouts {
        connect: timeout(
            t.connect.as_ref(),
            || format!("{at}.timeouts.connect"),
            d.connect,
        )?,
        first_byte: timeout(
            t.first_byte.as_ref(),
            || format!("{at}.timeouts.first_byte"),
            d.first_byte,
        )?,
        between_bytes: timeout(
            t.between_bytes.as_ref(),
            || format!("{at}.timeouts.between_bytes"),
            d.between_bytes,
        )?,
    };
    spec.max_connections = b.max_connections;
    spec.queue_timeout = duration(
        b.queue_timeout.as_ref(),
        || format!("{at}.queue_timeout"),
        Duration::ZERO,
    )?;
    spec.max_connection_lifetime = Some(duration(
        b.max_connection_lifetime.as_ref(),
        || format!("{at}.max_connection_lifetime"),
        Duration::ZERO,
    )?)
    .filter(|d| !d.is_zero());
    spec.admin_health = match v1::AdminHealth::try_from(b.admin_health) {
        Ok(v1::AdminHealth::Auto) => AdminHealth::Auto,
        Ok(v1::AdminHealth::Healthy) => AdminHealth::Healthy,
        Ok(v1::AdminHealth::Sick) => AdminHealth::Sick,
        Err(_) => {
            return Err(FieldError::invalid(
                format!("{at}.admin_health"),
                format!("unknown value {}", b.admin_health),
            ));
        }
    };
    spec.drain = b.drain;
    for k in b.labels.keys() {
        if k.is_empty() || k.len() > 63 {
            return Err(FieldError::invalid(
                format!("{at}.labels"),
                format!("label key {k:?} must be 1-63 characters"),
            ));
        }
    }
    Ok(spec)
}

/// Visible ASCII without spaces: what a Host value (and a header value we generate) may be.
fn http_token_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|c| c.is_ascii_graphic())
}

/// Converts and checks one probe (Varnish's rules, reference §3.1).
pub fn probe(p: &v1::Probe, at: &dyn fmt::Display) -> Result<ProbeSpec, FieldError> {
    let mut spec = ProbeSpec::new(name(&p.name, at)?);
    match (p.url.is_empty(), p.request.is_empty()) {
        (_, false) if !p.url.is_empty() => {
            return Err(FieldError::invalid(
                format!("{at}.request"),
                "give url or request, not both",
            ));
        }
        (_, false) => {
            for (i, line) in p.request.iter().enumerate() {
                if line.contains(['\r', '\n']) {
                    return Err(FieldError::invalid(
                        format!("{at}.request[{i}]"),
                        "a request line must not contain CR or LF (they are added)",
                    ));
                }
            }
            spec.request = ProbeRequest::Raw(p.request.clone());
        }
        (false, true) => {
            if !p.url.starts_with('/') || !p.url.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(FieldError::invalid(
                    format!("{at}.url"),
                    format!(
                        "{:?} must be a path starting with '/' without spaces",
                        p.url
                    ),
                ));
            }
            spec.request = ProbeRequest::Url(p.url.clone());
        }
        (true, true) => {}
    }
    if p.expected_status != 0 {
        if !(100..=999).contains(&p.expected_status) {
            return Err(FieldError::invalid(
                format!("{at}.expected_status"),
                format!("must be 100-999, got {}", p.expected_status),
            ));
        }
        spec.expected_status = p.expected_status as u16;
    }
    spec.timeout = timeout(p.timeout.as_ref(), || format!("{at}.timeout"), spec.timeout)?;
    spec.interval = timeout(
        p.interval.as_ref(),
        || format!("{at}.interval"),
        spec.interval,
    )?;
    // Varnish: threshold without window gives window = threshold + 1; window without
    // threshold is an error; 0 is "the default".
    let threshold = if p.threshold == 0 { 3 } else { p.threshold };
    let window = match (p.window, p.threshold) {
        (0, 0) => 8,
        (0, t) => t + 1,
        (w, _) => w,
    };
    if p.window != 0 && p.threshold == 0 {
        return Err(FieldError::invalid(
            format!("{at}.threshold"),
            "must be given when window is (as in Varnish)",
        ));
    }
    if window > MAX_PROBE_WINDOW {
        return Err(FieldError::invalid(
            format!("{at}.window"),
            format!("must be at most {MAX_PROBE_WINDOW}, got {window}"),
        ));
    }
    if threshold > window {
        return Err(FieldError::invalid(
            format!("{at}.threshold"),
            format!("must be at most window ({window}), got {threshold}"),
        ));
    }
    spec.window = window;
    spec.threshold = threshold;
    spec.initial = match p.initial {
        None => threshold - 1,
        Some(i) if i > threshold => {
            return Err(FieldError::invalid(
                format!("{at}.initial"),
                format!("must be at most threshold ({threshold}), got {i}"),
            ));
        }
        Some(i) => i,
    };
    Ok(spec)
}

/// Converts and checks one director.
pub fn director(d: &v1::Director, at: &dyn fmt::Display) -> Result<DirectorSpec, FieldError> {
    let name = name(&d.name, at)?;
    let policy = match &d.policy {
        None => {
            return Err(FieldError::invalid(
                format!("{at}.policy"),
                "needs one policy: round_robin, fallback, random, hash or shard",
            ));
        }
        Some(v1::director::Policy::RoundRobin(_)) => Policy::RoundRobin,
        Some(v1::director::Policy::Fallback(f)) => Policy::Fallback { sticky: f.sticky },
        Some(v1::director::Policy::Random(_)) => Policy::Random,
        Some(v1::director::Policy::Hash(_)) => Policy::Hash,
        Some(v1::director::Policy::Shard(s)) => Policy::Shard(shard(s, &format!("{at}.shard"))?),
    };
    let mut members = Vec::with_capacity(d.members.len());
    for (j, m) in d.members.iter().enumerate() {
        let mat = || format!("{at}.members[{j}]");
        let target = match &m.target {
            Some(v1::member::Target::Backend(b)) => {
                TargetRef::Backend(reference(b, || format!("{}.backend", mat()))?)
            }
            Some(v1::member::Target::Director(d)) => {
                TargetRef::Director(reference(d, || format!("{}.director", mat()))?)
            }
            None => {
                return Err(FieldError::invalid(
                    mat(),
                    "a member needs exactly one of backend, director",
                ));
            }
        };
        let w = m
            .weight
            .map(|w| weight(w, || format!("{}.weight", mat())))
            .transpose()?;
        let rampup = m
            .rampup
            .as_ref()
            .map(|r| duration(Some(r), || format!("{}.rampup", mat()), Duration::ZERO))
            .transpose()?;
        let mut spec = MemberSpec::new(target);
        spec.weight = w;
        spec.ident = (!m.ident.is_empty()).then(|| m.ident.clone());
        spec.slot = m.slot;
        spec.rampup = rampup;
        members.push(spec);
    }
    Ok(DirectorSpec {
        name,
        policy,
        members,
    })
}

fn shard(s: &v1::Shard, at: &str) -> Result<ShardSpec, FieldError> {
    let algorithm = match v1::ShardAlgorithm::try_from(s.algorithm) {
        Ok(v1::ShardAlgorithm::Varnish) => Algorithm::Varnish,
        Ok(v1::ShardAlgorithm::Balanced) => Algorithm::Balanced,
        Err(_) => {
            return Err(FieldError::invalid(
                format!("{at}.algorithm"),
                format!("unknown value {}", s.algorithm),
            ));
        }
    };
    let healthy = match v1::ShardHealthy::try_from(s.healthy) {
        Ok(v1::ShardHealthy::Chosen) => HealthyMode::Chosen,
        Ok(v1::ShardHealthy::Ignore) => HealthyMode::Ignore,
        Ok(v1::ShardHealthy::All) => HealthyMode::All,
        Err(_) => {
            return Err(FieldError::invalid(
                format!("{at}.healthy"),
                format!("unknown value {}", s.healthy),
            ));
        }
    };
    // Ranges (replicas, warmup, base_slots) are checked once, by `Directors::build`.
    Ok(ShardSpec {
        algorithm,
        replicas: if s.replicas == 0 {
            config::DEFAULT_REPLICAS
        } else {
            s.replicas
        },
        healthy,
        rampup: duration(s.rampup.as_ref(), || format!("{at}.rampup"), Duration::ZERO)?,
        warmup: s.warmup,
        base_slots: s.base_slots.max(1),
    })
}

fn key_source(k: Option<&v1::KeySource>, field: String) -> Result<Option<KeySpec>, FieldError> {
    use v1::key_source::Source;
    let header_name = |h: &str, what: &str| -> Result<String, FieldError> {
        if h.is_empty() || !h.bytes().all(|c| c.is_ascii_graphic() && c != b':') {
            return Err(FieldError::invalid(
                format!("{field}.{what}"),
                format!("{h:?} is not a valid name"),
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

/// Converts and checks one route.
pub fn route(r: &v1::Route, at: &dyn fmt::Display) -> Result<RouteSpec, FieldError> {
    let name = name(&r.name, at)?;
    let mut hosts = Vec::with_capacity(r.hosts.len());
    for (i, h) in r.hosts.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        let ok = !bare.is_empty()
            && bare.len() <= 253
            && bare
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c));
        if !ok {
            return Err(FieldError::invalid(
                format!("{at}.hosts[{i}]"),
                format!("{h:?} is not a host name (optionally starting with \"*.\")"),
            ));
        }
        hosts.push(h.to_ascii_lowercase());
    }
    if !r.path_prefix.is_empty() && !r.path_prefix.starts_with('/') {
        return Err(FieldError::invalid(
            format!("{at}.path_prefix"),
            format!("{:?} must start with '/'", r.path_prefix),
        ));
    }
    let mut headers = Vec::with_capacity(r.headers.len());
    for (i, h) in r.headers.iter().enumerate() {
        if h.name.is_empty() || !h.name.bytes().all(|c| c.is_ascii_graphic() && c != b':') {
            return Err(FieldError::invalid(
                format!("{at}.headers[{i}].name"),
                format!("{:?} is not a header name", h.name),
            ));
        }
        headers.push(HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            value: (!h.value.is_empty()).then(|| h.value.clone()),
        });
    }
    let director = reference(&r.director, || format!("{at}.director"))?;
    let key = key_source(r.key.as_ref(), format!("{at}.key"))?.ok_or_else(|| {
        FieldError::invalid(
            format!("{at}.key"),
            "needs a key source: client_ip, header, cookie, query, url or path",
        )
    })?;
    let fallback_key = key_source(r.fallback_key.as_ref(), format!("{at}.fallback_key"))?;
    Ok(RouteSpec {
        name,
        hosts,
        path_prefix: r.path_prefix.clone(),
        headers,
        director,
        key,
        fallback_key,
        max_body_bytes: (r.max_body_bytes > 0).then_some(r.max_body_bytes),
    })
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
            _ => (d.members.len().max(1) as u32)
                .next_power_of_two()
                .min(balanced::MAX_SLOT + 1),
        };
    }
    let key = |m: &v1::Member| (m.target.clone(), m.ident.clone());
    let old: FxHashMap<_, u32> = prev
        .map(|p| {
            p.members
                .iter()
                .filter_map(|m| m.slot.map(|s| (key(m), s)))
                .collect()
        })
        .unwrap_or_default();
    let taken: FxHashSet<u32> = d.members.iter().filter_map(|m| m.slot).collect();
    for m in d.members.iter_mut().filter(|m| m.slot.is_none()) {
        if let Some(&s) = old.get(&key(m))
            && !taken.contains(&s)
        {
            m.slot = Some(s);
        }
    }
    let requested: Vec<Option<u32>> = d.members.iter().map(|m| m.slot).collect();
    // A duplicate or out-of-range slot is left as given; validation reports it by field.
    if let Ok(slots) = balanced::assign_slots(&requested) {
        for (m, s) in d.members.iter_mut().zip(slots) {
            m.slot = Some(s);
        }
    }
}

#[cfg(test)]
mod tests;
