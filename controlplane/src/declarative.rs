//! The declarative YAML file: backends, probes, directors and routes. The same file serves
//! `tether explain -f` offline and `tether apply -f`: it is read into tether.v1 messages (the
//! API's own types) and checked by [`crate::convert`], so a file and an API call are validated
//! by the same code and report the same field paths.
//!
//! Parsing is strict (unknown fields are errors). Every error names the field as a path such as
//! `directors[1].members[0].weight`, with the line where the YAML parser knows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tether_dataplane::config::Config;
use tether_dataplane::director::Directors;
use tether_proto::v1;

use crate::convert::{self, FieldError, Resources};
use crate::duration;

/// Why a file was refused: the field's path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FileError {
    /// Where, as `directors[0].members[1].weight` (`.` for the document itself).
    pub path: String,
    /// What is wrong; YAML syntax and type errors end with "at line L column C".
    pub message: String,
}

impl FileError {
    fn new(path: impl Into<String>, message: impl ToString) -> FileError {
        FileError {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// The file as written.
#[derive(Debug, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendDoc>,
    /// Probes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeDoc>,
    /// Directors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directors: Vec<DirectorDoc>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteDoc>,
    /// Certificates of the TLS listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateDoc>,
    /// DNS names whose addresses are kept as labelled backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discoveries: Vec<DiscoveryDoc>,
}

/// A Discovery as written: a DNS name resolved by the control plane, each address kept as a
/// backend carrying `labels` and the `template`'s fields.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryDoc {
    /// Name.
    pub name: String,
    /// The revision it was read at, as `get` prints it: when given, a write fails with
    /// FAILED_PRECONDITION unless the stored resource is still at it (absent: no check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The DNS name (A and AAAA records; SRV records with `srv: true`).
    pub dns_name: String,
    /// The port of every backend found (not with `srv`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u32,
    /// Resolve SRV records: each target's addresses at the record's port.
    #[serde(default, skip_serializing_if = "is_false")]
    pub srv: bool,
    /// Labels on every backend found, for directors' selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Most time between two resolutions (30s; a shorter TTL resolves sooner).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    /// Least time between two resolutions (5s; at least 1s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_refresh: Option<String>,
    /// How long an address may be missing from the answer before its backend goes (30s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    /// The most backends kept (64; at most 1024).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_backends: u32,
    /// The other fields of every backend found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateDoc>,
    /// What the resolving control plane last found (read-only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<DiscoveryStatusDoc>,
}

/// The backend fields a Discovery gives every backend it keeps: [`BackendDoc`]'s but the
/// name, address, labels and operator state, written out again because serde cannot flatten
/// one struct into another that denies unknown fields; converted through a [`BackendDoc`],
/// so the conversion is one.
#[derive(Debug, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateDoc {
    /// Default member weight (1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Probe name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// `Host` sent to the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    /// Connect timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// First-byte timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<String>,
    /// Between-bytes timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub between_bytes_timeout: Option<String>,
    /// Connection limit (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_connections: u32,
    /// How long a request waits for a connection at `max_connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<String>,
    /// Connections older than this are not reused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_lifetime: Option<String>,
    /// `http1` (default), `h2c`, `h2` or `auto`.
    #[serde(default, skip_serializing_if = "ProtocolDoc::is_default")]
    pub protocol: ProtocolDoc,
    /// TLS to the backends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTlsDoc>,
}

/// A Discovery's status as `get` shows it.
#[derive(Debug, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryStatusDoc {
    /// `pending`, `ok` or `failing`.
    pub state: String,
    /// Why the last resolution failed, or a note on the answer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `state` last changed (Unix ms).
    #[serde(default)]
    pub since_unix_ms: i64,
    /// The last answer's addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Backends whose address left the answer: since when (Unix ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub missing_since_unix_ms: BTreeMap<String, i64>,
    /// The control-plane replica that resolved it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resolver: String,
}

impl DiscoveryDoc {
    /// As a tether.v1 message; errors are reported under `at`. The status is the control
    /// plane's: never sent.
    pub fn to_proto(&self, at: &str) -> Result<v1::Discovery, FileError> {
        let template = match &self.template {
            None => None,
            Some(t) => Some(
                BackendDoc {
                    name: String::new(),
                    revision: None,
                    address: String::new(),
                    address2: None,
                    weight: t.weight,
                    probe: t.probe.clone(),
                    host_header: t.host_header.clone(),
                    connect_timeout: t.connect_timeout.clone(),
                    first_byte_timeout: t.first_byte_timeout.clone(),
                    between_bytes_timeout: t.between_bytes_timeout.clone(),
                    max_connections: t.max_connections,
                    queue_timeout: t.queue_timeout.clone(),
                    max_connection_lifetime: t.max_connection_lifetime.clone(),
                    admin_health: AdminHealthDoc::Auto,
                    drain: false,
                    labels: BTreeMap::new(),
                    protocol: t.protocol,
                    tls: t.tls.clone(),
                    discovery: None,
                    lease: None,
                }
                .to_proto(&format!("{at}.template"))?,
            ),
        };
        Ok(v1::Discovery {
            // Leases are runtime ids, never in a file (`apply --lease` binds a whole set).
            lease: 0,
            name: self.name.clone(),
            revision: self.revision.unwrap_or(0),
            dns_name: self.dns_name.clone(),
            port: self.port,
            srv: self.srv,
            labels: self.labels.clone().into_iter().collect(),
            refresh: dur(self.refresh.as_deref(), || format!("{at}.refresh"))?,
            min_refresh: dur(self.min_refresh.as_deref(), || format!("{at}.min_refresh"))?,
            grace: dur(self.grace.as_deref(), || format!("{at}.grace"))?,
            template,
            max_backends: self.max_backends,
            status: None,
        })
    }
}

impl From<&v1::Discovery> for DiscoveryDoc {
    fn from(d: &v1::Discovery) -> DiscoveryDoc {
        let template = d.template.as_ref().map(|t| {
            let b = BackendDoc::from(t);
            TemplateDoc {
                weight: b.weight,
                probe: b.probe,
                host_header: b.host_header,
                connect_timeout: b.connect_timeout,
                first_byte_timeout: b.first_byte_timeout,
                between_bytes_timeout: b.between_bytes_timeout,
                max_connections: b.max_connections,
                queue_timeout: b.queue_timeout,
                max_connection_lifetime: b.max_connection_lifetime,
                protocol: b.protocol,
                tls: b.tls,
            }
        });
        DiscoveryDoc {
            name: d.name.clone(),
            revision: (d.revision != 0).then_some(d.revision),
            dns_name: d.dns_name.clone(),
            port: d.port,
            srv: d.srv,
            labels: d.labels.clone().into_iter().collect(),
            refresh: dur_text(d.refresh.as_ref()),
            min_refresh: dur_text(d.min_refresh.as_ref()),
            grace: dur_text(d.grace.as_ref()),
            max_backends: d.max_backends,
            template,
            status: d.status.as_ref().map(|s| DiscoveryStatusDoc {
                state: status_name(s.state).to_owned(),
                message: s.message.clone(),
                since_unix_ms: s.since_unix_ms,
                addresses: s.addresses.clone(),
                missing_since_unix_ms: s.missing_since_unix_ms.clone().into_iter().collect(),
                resolver: s.resolver.clone(),
            }),
        }
    }
}

/// A discovery state's name, as `get` and `list` show it.
pub fn status_name(state: i32) -> &'static str {
    use v1::discovery_status::State;
    match State::try_from(state) {
        Ok(State::Ok) => "ok",
        Ok(State::Failing) => "failing",
        _ => "pending",
    }
}

/// A certificate as written: PEM texts inline. What the control plane reads from the chain
/// (names, expiry, fingerprint) is shown by `get` and ignored on write.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateDoc {
    /// Name.
    pub name: String,
    /// The revision it was read at, as `get` prints it: when given, a write fails with
    /// FAILED_PRECONDITION unless the stored resource is still at it (absent: no check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// PEM chain, the leaf first.
    pub chain: String,
    /// PEM private key (write-only: never shown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// The DNS names served (read-only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// notAfter, seconds since the epoch (read-only).
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub not_after: i64,
    /// SHA-256 of the leaf (read-only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

impl CertificateDoc {
    /// As a tether.v1 message.
    pub fn to_proto(&self, _at: &str) -> Result<v1::Certificate, FileError> {
        Ok(v1::Certificate {
            name: self.name.clone(),
            revision: self.revision.unwrap_or(0),
            chain: self.chain.clone(),
            private_key: self.private_key.clone(),
            ..Default::default()
        })
    }
}

impl From<&v1::Certificate> for CertificateDoc {
    fn from(c: &v1::Certificate) -> CertificateDoc {
        CertificateDoc {
            name: c.name.clone(),
            revision: (c.revision != 0).then_some(c.revision),
            chain: c.chain.clone(),
            private_key: c.private_key.clone(),
            names: c.names.clone(),
            not_after: c.not_after,
            fingerprint: c.fingerprint.clone(),
        }
    }
}

/// A backend as written.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendDoc {
    /// Name.
    pub name: String,
    /// The revision it was read at, as `get` prints it: when given, a write fails with
    /// FAILED_PRECONDITION unless the stored resource is still at it (absent: no check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// `host:port`.
    pub address: String,
    /// Second address (other IP family).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address2: Option<String>,
    /// Default member weight (1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Probe name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// `Host` sent to the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    /// Connect timeout, as `3.5s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// First-byte timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<String>,
    /// Between-bytes timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub between_bytes_timeout: Option<String>,
    /// Connection limit (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_connections: u32,
    /// How long a request waits for a connection at `max_connections` (absent: not at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<String>,
    /// Connections older than this are not reused (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_lifetime: Option<String>,
    /// `auto` (default), `healthy` or `sick`.
    #[serde(default)]
    pub admin_health: AdminHealthDoc,
    /// No new requests.
    #[serde(default, skip_serializing_if = "is_false")]
    pub drain: bool,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `http1` (default), `h2c`, `h2` or `auto`.
    #[serde(default, skip_serializing_if = "ProtocolDoc::is_default")]
    pub protocol: ProtocolDoc,
    /// TLS to the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTlsDoc>,
    /// The Discovery that keeps it (read-only: set by the control plane, ignored on write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    /// The lease it is bound to, in hex as `tether backend list` shows it (read-only: a file
    /// binds no lease, `apply --lease` does; ignored on write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// A backend's protocol as written.
#[derive(
    Debug, Deserialize, Serialize, Default, Clone, Copy, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ProtocolDoc {
    #[default]
    Http1,
    H2c,
    H2,
    Auto,
}

impl ProtocolDoc {
    fn is_default(&self) -> bool {
        *self == ProtocolDoc::Http1
    }
}

/// TLS to a backend as written.
#[derive(Debug, Deserialize, Serialize, Default, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsDoc {
    /// SNI and the name verified (default: the address's host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM CA certificates (default: the system's roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Verify the backend's certificate (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// A Certificate resource presented as the client certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
}

/// A probe as written (Varnish defaults when absent).
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeDoc {
    /// Name.
    pub name: String,
    /// The revision it was read at, as `get` prints it: when given, a write fails with
    /// FAILED_PRECONDITION unless the stored resource is still at it (absent: no check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// URL path (default `/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Raw request lines, replacing `url`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request: Vec<String>,
    /// Expected status (200).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_status: Option<u32>,
    /// Whole-probe timeout (2s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Interval (5s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Window (8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// Threshold (3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    /// Initial good probes (threshold - 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial: Option<u32>,
}

/// A key source as written: exactly one of the fields.
#[derive(Debug, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyDoc {
    /// `client_ip: true`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub client_ip: bool,
    /// A header name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// A query parameter name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// `url: true`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub url: bool,
    /// `path: true`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub path: bool,
}

/// A required header as written.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderDoc {
    /// Header name.
    pub name: String,
    /// Exact value; absent: present with any value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// A route as written.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteDoc {
    /// Name.
    pub name: String,
    /// The revision it was read at, as `get` prints it: when given, a write fails with
    /// FAILED_PRECONDITION unless the stored resource is still at it (absent: no check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Host names (any when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path prefix.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_prefix: String,
    /// Required headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderDoc>,
    /// Director name.
    pub director: String,
    /// Key source.
    pub key: KeyDoc,
    /// Key source when `key` is absent from a request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_key: Option<KeyDoc>,
    /// Largest request body in bytes (413 beyond it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// HTTP/1.1 Upgrade protocols tunnelled (none given: websocket; `[none]`: no upgrade).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrades: Vec<String>,
    /// `http` or `https`: matches that listener's requests only (default: both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<SchemeDoc>,
    /// Redirect plain-HTTP requests to https:// (308).
    #[serde(default, skip_serializing_if = "is_false")]
    pub https_redirect: bool,
}

/// A route's scheme as written.
#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum SchemeDoc {
    Http,
    Https,
}

/// Admin health as written.
#[derive(Debug, Deserialize, Serialize, Default, Clone, Copy, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum AdminHealthDoc {
    #[default]
    Auto,
    Healthy,
    Sick,
}

/// A director as written: a name, exactly one policy, members.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectorDoc {
    /// Name.
    pub name: String,
    /// The revision it was read at, as `get` prints it: when given, a write fails with
    /// FAILED_PRECONDITION unless the stored resource is still at it (absent: no check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// `round_robin: {}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_robin: Option<Empty>,
    /// `fallback: { sticky: true }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackDoc>,
    /// `random: {}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random: Option<Empty>,
    /// `hash: {}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<Empty>,
    /// `shard: { … }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardDoc>,
    /// Members, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberDoc>,
    /// Shard (balanced): the slot of each backend a selector member matches, by name;
    /// assigned by the control plane (as `get` shows it; leave it out when writing).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector_slots: BTreeMap<String, u32>,
}

/// A policy without parameters.
#[derive(Debug, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Fallback parameters.
#[derive(Debug, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackDoc {
    /// Stay on the current member while it is healthy.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sticky: bool,
}

/// Shard parameters as written.
#[derive(Debug, Deserialize, Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShardDoc {
    /// `varnish` (default) or `balanced`.
    #[serde(default)]
    pub algorithm: AlgorithmDoc,
    /// Ring points per unit of weight (default 67).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// `chosen` (default), `ignore` or `all`.
    #[serde(default)]
    pub healthy: HealthyDoc,
    /// Rampup duration, as `30s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rampup: Option<String>,
    /// Warmup share in `[0, 1)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<f64>,
    /// Balanced: the flat base of the slot space (a power of two; default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_slots: Option<u32>,
}

/// Shard algorithm as written.
#[derive(Debug, Deserialize, Serialize, Default, Clone, Copy, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum AlgorithmDoc {
    #[default]
    Varnish,
    Balanced,
}

/// Shard health mode as written.
#[derive(Debug, Deserialize, Serialize, Default, Clone, Copy, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum HealthyDoc {
    #[default]
    Chosen,
    Ignore,
    All,
}

/// A member as written: exactly one of `backend`, `director`.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberDoc {
    /// A backend name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// A director name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub director: Option<String>,
    /// Every backend whose labels match, now and later: `{ app: web, zone: a }` (each label
    /// equal) or kubectl's form, `"app=web,zone in (a,b),tier,!legacy"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<SelectorDoc>,
    /// Weight (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Shard ident.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ident: Option<String>,
    /// Shard (balanced) slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Shard per-member rampup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rampup: Option<String>,
}

/// A selector member as written.
#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum SelectorDoc {
    /// Labels that must all be equal.
    Labels(BTreeMap<String, String>),
    /// kubectl's selector syntax.
    Text(String),
}

impl SelectorDoc {
    fn to_proto(&self, at: &str) -> Result<v1::LabelSelector, FileError> {
        match self {
            SelectorDoc::Labels(l) => Ok(v1::LabelSelector {
                match_labels: l.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                match_expressions: Vec::new(),
            }),
            SelectorDoc::Text(t) => {
                crate::selector::parse(t).map_err(|m| FileError::new(format!("{at}.selector"), m))
            }
        }
    }
}

impl From<&v1::LabelSelector> for SelectorDoc {
    fn from(s: &v1::LabelSelector) -> SelectorDoc {
        if s.match_expressions.is_empty() {
            SelectorDoc::Labels(
                s.match_labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        } else {
            SelectorDoc::Text(crate::selector::to_text(s))
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A loaded file: its configuration and the directors built from it.
#[derive(Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// The built directors.
    pub directors: Directors,
}

impl From<FieldError> for FileError {
    fn from(e: FieldError) -> FileError {
        FileError::new(e.field, e.message)
    }
}

/// Parses, validates and builds a file. Balanced shard directors get their stored mapping
/// (slots, `base_slots`) exactly as the control plane would assign it when the file is applied
/// to an empty store, so offline answers match the running system's.
pub fn load(text: &str) -> Result<Loaded, FileError> {
    let mut req = parse(text)?.to_request()?;
    // The balanced mappings as the control plane assigns them on a first write (not in
    // `to_request`: a file applied again must keep the stored ones).
    let backends: Vec<&v1::Backend> = req.backends.iter().collect();
    for d in &mut req.directors {
        convert::assign_slots(d, None);
        convert::assign_selector_slots(d, &backends);
    }
    let v = convert::validate(&Resources::of_request(&req))?;
    Ok(Loaded {
        config: v.config,
        directors: v.directors,
    })
}

/// Documents one stream may hold.
const MAX_DOCUMENTS: usize = 10_000;

/// Parses the YAML strictly: one document or several (`---`), each either a sectioned file
/// (`backends:`, `probes:`…) or one resource naming its kind, kubectl-style (`kind: backend`
/// beside the resource's fields). All documents make one configuration. With several
/// documents, each error's path starts with the document's number (`#2.backends[0].weight`).
pub fn parse(text: &str) -> Result<Document, FileError> {
    // Each document as a value first (does it name a `kind`?). Bounded: after a syntax error
    // the document iterator may not end.
    let values: Vec<_> = yaml_serde::Deserializer::from_str(text)
        .take(MAX_DOCUMENTS + 1)
        .map(yaml_serde::Value::deserialize)
        .collect();
    let count = values.len();
    if count > MAX_DOCUMENTS {
        // A syntax error makes the iterator repeat it: report it, with its line.
        if let Some(de) = yaml_serde::Deserializer::from_str(text).next() {
            typed_document(de)?;
        }
        return Err(FileError::new(
            ".",
            format!("more than {MAX_DOCUMENTS} YAML documents (or a syntax error)"),
        ));
    }
    let mut all = Document::default();
    let typed = yaml_serde::Deserializer::from_str(text);
    for (i, (de, value)) in typed.zip(values).enumerate() {
        let at = |path: String| {
            if count > 1 {
                format!("#{}.{path}", i + 1)
            } else {
                path
            }
        };
        let doc = match value {
            Ok(yaml_serde::Value::Null) => continue,
            Ok(yaml_serde::Value::Mapping(m)) if m.contains_key("kind") => {
                one_resource(&m, de).map_err(|e| FileError::new(at(e.path), e.message))?
            }
            // A sectioned document (or a syntax error: the typed pass gives its line).
            _ => typed_document(de).map_err(|e| FileError::new(at(e.path), e.message))?,
        };
        all.extend(doc);
    }
    Ok(all)
}

/// One sectioned document, deserialized from the text (errors carry line and column).
fn typed_document<'de>(de: yaml_serde::Deserializer<'de>) -> Result<Document, FileError> {
    serde_path_to_error::deserialize::<_, Option<Document>>(de)
        .map(Option::unwrap_or_default)
        .map_err(path_error)
}

/// A typed pass's error as a [`FileError`]: serde's path, and yaml_serde's message (with its
/// line and column) without the path yaml_serde puts first, which is the same path or, for an
/// unknown field, its parent's.
fn path_error(e: serde_path_to_error::Error<yaml_serde::Error>) -> FileError {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    let message = match inner.split_once(": ") {
        Some((p, rest))
            if path == p
                || path
                    .strip_prefix(p)
                    .is_some_and(|tail| tail.starts_with(['.', '['])) =>
        {
            rest.to_owned()
        }
        _ => inner,
    };
    FileError::new(path, message)
}

/// A document that is one resource: `kind` (read from its value `m`) and the resource's
/// fields, deserialized from the text `de` so errors carry line and column.
fn one_resource(
    m: &yaml_serde::Mapping,
    de: yaml_serde::Deserializer<'_>,
) -> Result<Document, FileError> {
    fn take<T: serde::de::DeserializeOwned>(
        de: yaml_serde::Deserializer<'_>,
    ) -> Result<T, FileError> {
        serde_path_to_error::deserialize::<_, kind_doc::KindDoc<T>>(de)
            .map(|d| d.0)
            .map_err(path_error)
    }
    let kind = match m.get("kind") {
        Some(yaml_serde::Value::String(k)) => k.to_ascii_lowercase(),
        _ => return Err(FileError::new("kind", "must be a string")),
    };
    let mut doc = Document::default();
    match kind.as_str() {
        "backend" => doc.backends.push(take(de)?),
        "probe" => doc.probes.push(take(de)?),
        "director" => doc.directors.push(take(de)?),
        "route" => doc.routes.push(take(de)?),
        "certificate" => doc.certificates.push(take(de)?),
        "discovery" => doc.discoveries.push(take(de)?),
        _ => {
            return Err(FileError::new(
                "kind",
                format!("{kind:?}: one of backend, probe, director, route, certificate, discovery"),
            ));
        }
    }
    Ok(doc)
}

/// Deserializing a kubectl-style document straight from the YAML text: the resource's own
/// (strict) fields with `kind` passed over. Going through a `Value` would lose the line and
/// column every other error carries; serde's `flatten` cannot be combined with the
/// resources' `deny_unknown_fields`.
mod kind_doc {
    use std::marker::PhantomData;

    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    /// `T` read from a mapping that also holds `kind`.
    pub(super) struct KindDoc<T>(pub(super) T);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for KindDoc<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(Outer(PhantomData))
        }
    }

    struct Outer<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Outer<T> {
        type Value = KindDoc<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<KindDoc<T>, A::Error> {
            T::deserialize(WithoutKind(map)).map(KindDoc)
        }
    }

    /// The mapping as a deserializer of `T`, its `kind` entry skipped.
    struct WithoutKind<A>(A);

    impl<'de, A: MapAccess<'de>> Deserializer<'de> for WithoutKind<A> {
        type Error = A::Error;
        fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, A::Error> {
            v.visit_map(self)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            enum identifier ignored_any
        }
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for WithoutKind<A> {
        type Error = A::Error;
        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            loop {
                let Some(key) = self.0.next_key::<String>()? else {
                    return Ok(None);
                };
                if key == "kind" {
                    self.0.next_value::<IgnoredAny>()?;
                    continue;
                }
                return seed
                    .deserialize(de::value::StringDeserializer::<A::Error>::new(key))
                    .map(Some);
            }
        }
        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, A::Error> {
            self.0.next_value_seed(seed)
        }
    }
}

impl Document {
    /// Adds `other`'s resources (several documents or files make one configuration; a name
    /// given twice is refused when the whole is validated).
    pub fn extend(&mut self, other: Document) {
        self.backends.extend(other.backends);
        self.probes.extend(other.probes);
        self.directors.extend(other.directors);
        self.routes.extend(other.routes);
        self.certificates.extend(other.certificates);
        self.discoveries.extend(other.discoveries);
    }
}

fn dur(
    s: Option<&str>,
    path: impl FnOnce() -> String,
) -> Result<Option<prost_types::Duration>, FileError> {
    s.map(|s| {
        let d = duration::parse(s).map_err(|e| FileError::new(path(), e))?;
        Ok(prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        })
    })
    .transpose()
}

impl Document {
    /// The file's resources as an Apply request, as written: balanced shard mappings are the
    /// control plane's to assign against what it stores (a file's own first-apply mapping
    /// would override the stored `base_slots` and slots and move keys); [`load`] assigns them
    /// for offline answers. [`Resources::of_request`] labels each with its path in the file.
    /// Only syntax (durations) is checked here; [`convert::validate`] checks the rest.
    pub fn to_request(&self) -> Result<v1::ApplyRequest, FileError> {
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| b.to_proto(&format!("backends[{i}]")))
            .collect::<Result<_, _>>()?;
        let probes = self
            .probes
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_proto(&format!("probes[{i}]")))
            .collect::<Result<_, _>>()?;
        let directors = self
            .directors
            .iter()
            .enumerate()
            .map(|(i, d)| d.to_proto(&format!("directors[{i}]")))
            .collect::<Result<_, FileError>>()?;
        let routes = self
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| r.to_proto(&format!("routes[{i}]")))
            .collect::<Result<_, _>>()?;
        let certificates = self
            .certificates
            .iter()
            .enumerate()
            .map(|(i, c)| c.to_proto(&format!("certificates[{i}]")))
            .collect::<Result<_, _>>()?;
        let discoveries = self
            .discoveries
            .iter()
            .enumerate()
            .map(|(i, d)| d.to_proto(&format!("discoveries[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(v1::ApplyRequest {
            backends,
            probes,
            directors,
            routes,
            certificates,
            discoveries,
            ..Default::default()
        })
    }
}

impl BackendDoc {
    /// As a tether.v1 message; errors are reported under `at`.
    pub fn to_proto(&self, at: &str) -> Result<v1::Backend, FileError> {
        let timeouts = v1::Timeouts {
            connect: dur(self.connect_timeout.as_deref(), || {
                format!("{at}.connect_timeout")
            })?,
            first_byte: dur(self.first_byte_timeout.as_deref(), || {
                format!("{at}.first_byte_timeout")
            })?,
            between_bytes: dur(self.between_bytes_timeout.as_deref(), || {
                format!("{at}.between_bytes_timeout")
            })?,
        };
        Ok(v1::Backend {
            // Leases are runtime ids, never in a file (`apply --lease` binds a whole set).
            lease: 0,
            // The control plane's to set (on the backends a Discovery keeps).
            discovery: String::new(),
            name: self.name.clone(),
            revision: self.revision.unwrap_or(0),
            address: self.address.clone(),
            address2: self.address2.clone().unwrap_or_default(),
            weight: self.weight,
            probe: self.probe.clone().unwrap_or_default(),
            host_header: self.host_header.clone().unwrap_or_default(),
            timeouts: Some(timeouts),
            max_connections: self.max_connections,
            queue_timeout: dur(self.queue_timeout.as_deref(), || {
                format!("{at}.queue_timeout")
            })?,
            max_connection_lifetime: dur(self.max_connection_lifetime.as_deref(), || {
                format!("{at}.max_connection_lifetime")
            })?,
            admin_health: match self.admin_health {
                AdminHealthDoc::Auto => v1::AdminHealth::Auto,
                AdminHealthDoc::Healthy => v1::AdminHealth::Healthy,
                AdminHealthDoc::Sick => v1::AdminHealth::Sick,
            } as i32,
            drain: self.drain,
            labels: self.labels.clone().into_iter().collect(),
            protocol: match self.protocol {
                ProtocolDoc::Http1 => v1::BackendProtocol::Http1,
                ProtocolDoc::H2c => v1::BackendProtocol::H2c,
                ProtocolDoc::H2 => v1::BackendProtocol::H2,
                ProtocolDoc::Auto => v1::BackendProtocol::Auto,
            } as i32,
            tls: self.tls.as_ref().map(|t| v1::BackendTls {
                server_name: t.server_name.clone().unwrap_or_default(),
                ca: t.ca.clone().unwrap_or_default(),
                verify: t.verify,
                client_certificate: t.client_certificate.clone().unwrap_or_default(),
            }),
        })
    }
}

impl ProbeDoc {
    /// As a tether.v1 message; errors are reported under `at`.
    pub fn to_proto(&self, at: &str) -> Result<v1::Probe, FileError> {
        Ok(v1::Probe {
            // Leases are runtime ids, never in a file (`apply --lease` binds a whole set).
            lease: 0,
            name: self.name.clone(),
            revision: self.revision.unwrap_or(0),
            url: self.url.clone().unwrap_or_default(),
            request: self.request.clone(),
            expected_status: self.expected_status.unwrap_or(0),
            timeout: dur(self.timeout.as_deref(), || format!("{at}.timeout"))?,
            interval: dur(self.interval.as_deref(), || format!("{at}.interval"))?,
            window: self.window.unwrap_or(0),
            threshold: self.threshold.unwrap_or(0),
            initial: self.initial,
        })
    }
}

impl DirectorDoc {
    /// As a tether.v1 message; errors are reported under `at`.
    pub fn to_proto(&self, at: &str) -> Result<v1::Director, FileError> {
        use v1::director::Policy;
        let mut policies = Vec::new();
        if self.round_robin.is_some() {
            policies.push(Policy::RoundRobin(v1::RoundRobin {}));
        }
        if let Some(f) = &self.fallback {
            policies.push(Policy::Fallback(v1::Fallback { sticky: f.sticky }));
        }
        if self.random.is_some() {
            policies.push(Policy::Random(v1::Random {}));
        }
        if self.hash.is_some() {
            policies.push(Policy::Hash(v1::Hash {}));
        }
        if let Some(s) = &self.shard {
            policies.push(Policy::Shard(s.to_proto(&format!("{at}.shard"))?));
        }
        if policies.len() != 1 {
            return Err(FileError::new(
                at,
                format!(
                    "director {:?} needs exactly one policy of round_robin, fallback, random, hash, shard (found {})",
                    self.name,
                    policies.len()
                ),
            ));
        }
        let members = self
            .members
            .iter()
            .enumerate()
            .map(|(j, m)| m.to_proto(&format!("{at}.members[{j}]")))
            .collect::<Result<_, _>>()?;
        Ok(v1::Director {
            // Leases are runtime ids, never in a file (`apply --lease` binds a whole set).
            lease: 0,
            name: self.name.clone(),
            revision: self.revision.unwrap_or(0),
            policy: policies.pop(),
            members,
            selector_slots: self
                .selector_slots
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        })
    }
}

impl ShardDoc {
    fn to_proto(&self, at: &str) -> Result<v1::Shard, FileError> {
        Ok(v1::Shard {
            algorithm: match self.algorithm {
                AlgorithmDoc::Varnish => v1::ShardAlgorithm::Varnish,
                AlgorithmDoc::Balanced => v1::ShardAlgorithm::Balanced,
            } as i32,
            // 0 would mean "the default" in the API; in a file an explicit 0 is an error.
            replicas: match self.replicas {
                Some(0) => {
                    return Err(FileError::new(
                        format!("{at}.replicas"),
                        "must be at least 1",
                    ));
                }
                Some(r) => r,
                None => 0,
            },
            healthy: match self.healthy {
                HealthyDoc::Chosen => v1::ShardHealthy::Chosen,
                HealthyDoc::Ignore => v1::ShardHealthy::Ignore,
                HealthyDoc::All => v1::ShardHealthy::All,
            } as i32,
            rampup: dur(self.rampup.as_deref(), || format!("{at}.rampup"))?,
            warmup: self.warmup.unwrap_or(0.0),
            base_slots: self.base_slots.unwrap_or(0),
        })
    }
}

impl MemberDoc {
    fn to_proto(&self, at: &str) -> Result<v1::Member, FileError> {
        use v1::member::Target;
        let target = match (&self.backend, &self.director, &self.selector) {
            (Some(b), None, None) => Target::Backend(b.clone()),
            (None, Some(d), None) => Target::Director(d.clone()),
            (None, None, Some(s)) => Target::Selector(s.to_proto(at)?),
            _ => {
                return Err(FileError::new(
                    at,
                    "a member needs exactly one of backend, director, selector",
                ));
            }
        };
        if self.ident.as_deref() == Some("") {
            return Err(FileError::new(
                format!("{at}.ident"),
                "must not be empty when given",
            ));
        }
        Ok(v1::Member {
            target: Some(target),
            weight: self.weight,
            ident: self.ident.clone().unwrap_or_default(),
            slot: self.slot,
            rampup: dur(self.rampup.as_deref(), || format!("{at}.rampup"))?,
        })
    }
}

impl KeyDoc {
    fn to_proto(&self) -> v1::KeySource {
        use v1::key_source::Source;
        let source = if self.client_ip {
            Some(Source::ClientIp(true))
        } else if let Some(h) = &self.header {
            Some(Source::Header(h.clone()))
        } else if let Some(c) = &self.cookie {
            Some(Source::Cookie(c.clone()))
        } else if let Some(q) = &self.query {
            Some(Source::Query(q.clone()))
        } else if self.url {
            Some(Source::Url(true))
        } else if self.path {
            Some(Source::Path(true))
        } else {
            None
        };
        v1::KeySource { source }
    }

    fn count(&self) -> usize {
        usize::from(self.client_ip)
            + usize::from(self.header.is_some())
            + usize::from(self.cookie.is_some())
            + usize::from(self.query.is_some())
            + usize::from(self.url)
            + usize::from(self.path)
    }
}

impl RouteDoc {
    /// As a tether.v1 message; errors are reported under `at`.
    pub fn to_proto(&self, at: &str) -> Result<v1::Route, FileError> {
        let one = |k: &KeyDoc, field: &str| {
            if k.count() == 1 {
                Ok(k.to_proto())
            } else {
                Err(FileError::new(
                    format!("{at}.{field}"),
                    "needs exactly one of client_ip, header, cookie, query, url, path",
                ))
            }
        };
        Ok(v1::Route {
            // Leases are runtime ids, never in a file (`apply --lease` binds a whole set).
            lease: 0,
            name: self.name.clone(),
            revision: self.revision.unwrap_or(0),
            hosts: self.hosts.clone(),
            path_prefix: self.path_prefix.clone(),
            headers: self
                .headers
                .iter()
                .map(|h| v1::HeaderMatch {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
            director: self.director.clone(),
            key: Some(one(&self.key, "key")?),
            fallback_key: self
                .fallback_key
                .as_ref()
                .map(|k| one(k, "fallback_key"))
                .transpose()?,
            max_body_bytes: self.max_body_bytes.unwrap_or(0),
            upgrades: self.upgrades.clone(),
            scheme: match self.scheme {
                None => v1::RouteScheme::Any,
                Some(SchemeDoc::Http) => v1::RouteScheme::Http,
                Some(SchemeDoc::Https) => v1::RouteScheme::Https,
            } as i32,
            https_redirect: self.https_redirect,
        })
    }
}

/// Parses one resource as written in a file (`tether backend create -f`).
pub fn parse_one<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, FileError> {
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, T>(de).map_err(path_error)
}

fn dur_text(d: Option<&prost_types::Duration>) -> Option<String> {
    let d = d?;
    let std =
        std::time::Duration::new(u64::try_from(d.seconds).ok()?, u32::try_from(d.nanos).ok()?);
    Some(duration::format(std))
}

impl From<&v1::Backend> for BackendDoc {
    fn from(b: &v1::Backend) -> BackendDoc {
        let t = b.timeouts.unwrap_or_default();
        BackendDoc {
            name: b.name.clone(),
            revision: (b.revision != 0).then_some(b.revision),
            address: b.address.clone(),
            address2: (!b.address2.is_empty()).then(|| b.address2.clone()),
            weight: b.weight,
            probe: (!b.probe.is_empty()).then(|| b.probe.clone()),
            host_header: (!b.host_header.is_empty()).then(|| b.host_header.clone()),
            connect_timeout: dur_text(t.connect.as_ref()),
            first_byte_timeout: dur_text(t.first_byte.as_ref()),
            between_bytes_timeout: dur_text(t.between_bytes.as_ref()),
            max_connections: b.max_connections,
            queue_timeout: dur_text(b.queue_timeout.as_ref()),
            max_connection_lifetime: dur_text(b.max_connection_lifetime.as_ref()),
            admin_health: match v1::AdminHealth::try_from(b.admin_health) {
                Ok(v1::AdminHealth::Healthy) => AdminHealthDoc::Healthy,
                Ok(v1::AdminHealth::Sick) => AdminHealthDoc::Sick,
                _ => AdminHealthDoc::Auto,
            },
            drain: b.drain,
            labels: b.labels.clone().into_iter().collect(),
            protocol: match v1::BackendProtocol::try_from(b.protocol) {
                Ok(v1::BackendProtocol::H2c) => ProtocolDoc::H2c,
                Ok(v1::BackendProtocol::H2) => ProtocolDoc::H2,
                Ok(v1::BackendProtocol::Auto) => ProtocolDoc::Auto,
                _ => ProtocolDoc::Http1,
            },
            tls: b.tls.as_ref().map(|t| BackendTlsDoc {
                server_name: (!t.server_name.is_empty()).then(|| t.server_name.clone()),
                ca: (!t.ca.is_empty()).then(|| t.ca.clone()),
                verify: t.verify,
                client_certificate: (!t.client_certificate.is_empty())
                    .then(|| t.client_certificate.clone()),
            }),
            discovery: (!b.discovery.is_empty()).then(|| b.discovery.clone()),
            lease: (b.lease != 0).then(|| format!("{:x}", b.lease)),
        }
    }
}

impl From<&v1::Probe> for ProbeDoc {
    fn from(p: &v1::Probe) -> ProbeDoc {
        ProbeDoc {
            name: p.name.clone(),
            revision: (p.revision != 0).then_some(p.revision),
            url: (!p.url.is_empty()).then(|| p.url.clone()),
            request: p.request.clone(),
            expected_status: (p.expected_status != 0).then_some(p.expected_status),
            timeout: dur_text(p.timeout.as_ref()),
            interval: dur_text(p.interval.as_ref()),
            window: (p.window != 0).then_some(p.window),
            threshold: (p.threshold != 0).then_some(p.threshold),
            initial: p.initial,
        }
    }
}

impl From<&v1::Director> for DirectorDoc {
    fn from(d: &v1::Director) -> DirectorDoc {
        use v1::director::Policy;
        let mut doc = DirectorDoc {
            name: d.name.clone(),
            revision: (d.revision != 0).then_some(d.revision),
            round_robin: None,
            fallback: None,
            random: None,
            hash: None,
            shard: None,
            members: d
                .members
                .iter()
                .map(|m| MemberDoc {
                    backend: match &m.target {
                        Some(v1::member::Target::Backend(b)) => Some(b.clone()),
                        _ => None,
                    },
                    director: match &m.target {
                        Some(v1::member::Target::Director(x)) => Some(x.clone()),
                        _ => None,
                    },
                    selector: match &m.target {
                        Some(v1::member::Target::Selector(s)) => Some(SelectorDoc::from(s)),
                        _ => None,
                    },
                    weight: m.weight,
                    ident: (!m.ident.is_empty()).then(|| m.ident.clone()),
                    slot: m.slot,
                    rampup: dur_text(m.rampup.as_ref()),
                })
                .collect(),
            selector_slots: d
                .selector_slots
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        };
        match &d.policy {
            Some(Policy::RoundRobin(_)) => doc.round_robin = Some(Empty {}),
            Some(Policy::Fallback(f)) => doc.fallback = Some(FallbackDoc { sticky: f.sticky }),
            Some(Policy::Random(_)) => doc.random = Some(Empty {}),
            Some(Policy::Hash(_)) => doc.hash = Some(Empty {}),
            Some(Policy::Shard(s)) => {
                doc.shard = Some(ShardDoc {
                    algorithm: if s.algorithm == v1::ShardAlgorithm::Balanced as i32 {
                        AlgorithmDoc::Balanced
                    } else {
                        AlgorithmDoc::Varnish
                    },
                    replicas: (s.replicas != 0).then_some(s.replicas),
                    healthy: match v1::ShardHealthy::try_from(s.healthy) {
                        Ok(v1::ShardHealthy::Ignore) => HealthyDoc::Ignore,
                        Ok(v1::ShardHealthy::All) => HealthyDoc::All,
                        _ => HealthyDoc::Chosen,
                    },
                    rampup: dur_text(s.rampup.as_ref()),
                    warmup: (s.warmup != 0.0).then_some(s.warmup),
                    base_slots: (s.base_slots != 0).then_some(s.base_slots),
                });
            }
            None => {}
        }
        doc
    }
}

impl From<&v1::KeySource> for KeyDoc {
    fn from(k: &v1::KeySource) -> KeyDoc {
        use v1::key_source::Source;
        let mut doc = KeyDoc::default();
        match &k.source {
            Some(Source::ClientIp(b)) => doc.client_ip = *b,
            Some(Source::Header(h)) => doc.header = Some(h.clone()),
            Some(Source::Cookie(c)) => doc.cookie = Some(c.clone()),
            Some(Source::Query(q)) => doc.query = Some(q.clone()),
            Some(Source::Url(b)) => doc.url = *b,
            Some(Source::Path(b)) => doc.path = *b,
            None => {}
        }
        doc
    }
}

impl From<&v1::Route> for RouteDoc {
    fn from(r: &v1::Route) -> RouteDoc {
        RouteDoc {
            name: r.name.clone(),
            revision: (r.revision != 0).then_some(r.revision),
            hosts: r.hosts.clone(),
            path_prefix: r.path_prefix.clone(),
            headers: r
                .headers
                .iter()
                .map(|h| HeaderDoc {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
            director: r.director.clone(),
            key: r.key.as_ref().map(KeyDoc::from).unwrap_or_default(),
            fallback_key: r.fallback_key.as_ref().map(KeyDoc::from),
            max_body_bytes: (r.max_body_bytes > 0).then_some(r.max_body_bytes),
            upgrades: r.upgrades.clone(),
            scheme: match v1::RouteScheme::try_from(r.scheme) {
                Ok(v1::RouteScheme::Http) => Some(SchemeDoc::Http),
                Ok(v1::RouteScheme::Https) => Some(SchemeDoc::Https),
                _ => None,
            },
            https_redirect: r.https_redirect,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
backends:
  - name: b0
    address: 127.0.0.1:19000
    admin_health: sick
  - name: b1
    address: "[::1]:19001"
directors:
  - name: sh
    shard: { algorithm: varnish, replicas: 67 }
    members:
      - backend: b0
      - backend: b1
        weight: 2
        ident: node-1.example:8080
  - name: rr
    round_robin: {}
    members: [{ backend: b0 }, { director: sh }]
"#;

    #[test]
    fn the_issue_example_loads() {
        let l = load(GOOD).unwrap();
        assert_eq!(l.config.backends.len(), 2);
        assert_eq!(
            l.config.backends[0].admin_health,
            tether_dataplane::config::AdminHealth::Sick
        );
        assert_eq!(l.config.directors[0].members[1].weight, Some(2.0));
        assert!(l.directors.id("rr").is_some());
    }

    fn err(text: &str) -> FileError {
        load(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&GOOD.replace("weight: 2", "weight: heavy"));
        assert_eq!(e.path, "directors[0].members[1].weight");
        assert!(e.message.ends_with("at line 14 column 17"), "{e}");
        assert!(!e.message.starts_with("directors"), "{e}");

        let e = err(&GOOD.replace("algorithm: varnish", "algorithm: ketama"));
        assert_eq!(e.path, "directors[0].shard.algorithm");

        let e = err(&GOOD.replace("127.0.0.1:19000", "127.0.0.1"));
        assert_eq!(e.path, "backends[0].address");

        let e = err(&GOOD.replace("name: b1", "name: B1"));
        assert_eq!(e.path, "backends[1].name");

        let e = err(&GOOD.replace("{ director: sh }", "{ director: nope }"));
        assert_eq!(
            e.to_string(),
            "directors[1].members[1].director: no director named \"nope\""
        );

        let e = err(&GOOD.replace("round_robin: {}", "round_robin: {}\n    hash: {}"));
        assert_eq!(e.path, "directors[1]");

        let e = err(&GOOD.replace("admin_health: sick", "admin_health: sick\n    colour: red"));
        assert!(e.message.contains("unknown field `colour`"), "{e}");

        let e = err(&GOOD.replace("replicas: 67", "replicas: 0"));
        assert_eq!(e.path, "directors[0].shard.replicas");
        assert_eq!(e.message, "must be at least 1");

        let e = err(&GOOD.replace("replicas: 67", "replicas: 67, warmup: 1.5"));
        assert_eq!(e.path, "directors[0].shard.warmup");
        assert_eq!(e.message, "must be in [0, 1), got 1.5");

        let e = err(&GOOD.replace("weight: 2", "weight: -2"));
        assert_eq!(e.path, "directors[0].members[1].weight");
        assert_eq!(e.message, "must be a number from 0 to 1000000, got -2");

        let e = err(&GOOD.replace("replicas: 67", "replicas: 67, base_slots: 12"));
        assert_eq!(e.path, "directors[0].shard.base_slots");
        assert!(e.message.contains("power of two"), "{e}");

        let e = err("backends: [");
        assert!(e.message.contains("line"), "{e}");
    }

    #[test]
    fn kind_documents_errors_carry_their_line() {
        let text = "kind: backend\nname: b1\naddress: 127.0.0.1:9\n---\nkind: backend\nname: b2\nweight: heavy\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.path, "#2.weight");
        assert!(e.message.ends_with("at line 7 column 9"), "{e}");
        let e = parse(
            "kind: director\nname: d\nhash: {}\nmembers:\n  - { backend: b1, colour: red }\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "members[0].colour");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        assert!(e.message.starts_with("unknown field"), "{e}");
        assert!(e.message.contains("at line 5 column"), "{e}");
        // At the document's top level yaml_serde has no position to give (its mapping starts
        // at line 1 column 1, which it does not print), as in a sectioned file.
        let e = parse("kind: probe\nname: p\ncolour: red\n").unwrap_err();
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        let doc = parse("name: b1\nkind: backend\naddress: 127.0.0.1:9\n").unwrap();
        assert_eq!(doc.backends[0].address, "127.0.0.1:9");
    }

    #[test]
    fn selector_members_take_a_label_map_or_kubectls_text() {
        let text = "backends:\n  - { name: w1, address: '127.0.0.1:1', labels: { app: web, zone: a } }\n  - { name: w2, address: '127.0.0.1:2', labels: { app: web, zone: c } }\ndirectors:\n  - name: d\n    shard: { algorithm: balanced }\n    members:\n      - selector: { app: web }\n  - name: e\n    hash: {}\n    members:\n      - selector: 'app=web,zone in (a, b)'\n";
        let l = load(text).unwrap();
        let members = |i: usize| -> Vec<&str> {
            l.config.directors[i]
                .members
                .iter()
                .map(|m| m.target.name())
                .collect()
        };
        assert_eq!(members(0), ["w1", "w2"]);
        assert_eq!(members(1), ["w1"]);
        // Back to a document: a map when it is equalities only, the text form otherwise.
        let req = parse(text).unwrap().to_request().unwrap();
        let docs: Vec<DirectorDoc> = req.directors.iter().map(DirectorDoc::from).collect();
        let yaml = yaml_serde::to_string(&docs).unwrap();
        assert!(yaml.contains("- selector:\n      app: web\n"), "{yaml}");
        assert!(yaml.contains("selector: app=web,zone in (a,b)"), "{yaml}");
        let e = err(&text.replace("'app=web,zone in (a, b)'", "'app in a'"));
        assert_eq!(e.path, "directors[1].members[0].selector");
        let e = err(&text.replace(
            "selector: { app: web }",
            "{ selector: { app: web }, backend: w1 }",
        ));
        assert!(e.message.contains("exactly one of"), "{e}");
    }

    #[test]
    fn cycles_are_reported() {
        let text = "directors:\n  - name: a\n    hash: {}\n    members: [{ director: b }]\n  - name: b\n    hash: {}\n    members: [{ director: a }]\n";
        let e = err(text);
        assert_eq!(e.path, "directors[0]");
        assert!(e.message.contains("a -> b -> a"), "{e}");
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        assert_eq!(load("").unwrap().config, Config::default());
    }
}
