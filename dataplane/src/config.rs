//! Validated domain types for the resources the data plane builds from, and the checks that
//! every entry point (declarative files, the API, etcd objects) shares: names and addresses.
//!
//! Protobuf and YAML types stop at the boundary; they are converted into these types, and
//! [`crate::director::Directors::build`] checks what needs the whole configuration (references,
//! cycles, weights, slots).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Longest resource name (DESIGN §3: `[a-z0-9]([a-z0-9._-]{0,62})`).
pub const MAX_NAME_LEN: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("must not be empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`]: its first characters, and its length.
    #[error("\"{0}…\" is {1} bytes long; at most {MAX_NAME_LEN}")]
    TooLong(String, usize),
    /// A character outside `[a-z0-9._-]`, or a first character outside `[a-z0-9]`.
    #[error("{0:?} must match [a-z0-9][a-z0-9._-]* (lower-case letters, digits, '.', '_', '-')")]
    Invalid(String),
}

/// Checks a resource name.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(NameError::Empty);
    };
    if bytes.len() > MAX_NAME_LEN {
        // Not the whole name: it may be megabytes, and it goes into error messages.
        let head: String = name.chars().take(MAX_NAME_LEN).collect();
        return Err(NameError::TooLong(head, bytes.len()));
    }
    let tail_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c);
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) || !bytes.iter().all(tail_ok) {
        return Err(NameError::Invalid(name.to_owned()));
    }
    Ok(())
}

/// The host part of an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, resolved when connecting.
    Dns(String),
}

/// A backend address: `host:port` with an IPv4 literal, a bracketed IPv6 literal or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// Where to connect.
    pub host: Host,
    /// TCP port, 1–65535.
    pub port: u16,
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No `:port`.
    #[error("{0:?} has no port (expected host:port, [ipv6]:port)")]
    NoPort(String),
    /// Port not a number in 1–65535.
    #[error("{0:?} has an invalid port (expected 1-65535)")]
    BadPort(String),
    /// IPv6 without brackets, or bad brackets.
    #[error("{0:?}: an IPv6 address must be written in brackets, as [::1]:8080")]
    Brackets(String),
    /// Neither an IP literal nor a valid DNS name.
    #[error("{0:?}: host is neither an IP address nor a valid DNS name")]
    BadHost(String),
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Address, AddressError> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| AddressError::Brackets(s.to_owned()))?;
            let ip: std::net::Ipv6Addr = h
                .parse()
                .map_err(|_| AddressError::Brackets(s.to_owned()))?;
            (Host::Ip(IpAddr::V6(ip)), p)
        } else {
            let (h, p) = s
                .rsplit_once(':')
                .ok_or_else(|| AddressError::NoPort(s.to_owned()))?;
            if h.contains(':') {
                return Err(AddressError::Brackets(s.to_owned()));
            }
            let host = match h.parse::<std::net::Ipv4Addr>() {
                Ok(v4) => Host::Ip(IpAddr::V4(v4)),
                Err(_) if is_dns_name(h) => Host::Dns(h.to_ascii_lowercase()),
                Err(_) => return Err(AddressError::BadHost(s.to_owned())),
            };
            (host, p)
        };
        let port: u16 = port
            .parse()
            .map_err(|_| AddressError::BadPort(s.to_owned()))?;
        if port == 0 {
            return Err(AddressError::BadPort(s.to_owned()));
        }
        Ok(Address { host, port })
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, each 1–63
/// characters, 253 in all; the last label not all-numeric (that would be a bad IPv4 literal).
fn is_dns_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() || h.len() > 253 {
        return false;
    }
    let labels_ok = h.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
    });
    let last_numeric = h
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|c| c.is_ascii_digit()));
    labels_ok && !last_numeric
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}:{}", self.port),
            Host::Dns(d) => write!(f, "{d}:{}", self.port),
        }
    }
}

/// Admin override of a backend's health (Varnish `backend.set_health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminHealth {
    /// The probe decides (healthy when there is no probe).
    #[default]
    Auto,
    /// Forced healthy.
    Healthy,
    /// Forced sick.
    Sick,
}

/// How the proxy speaks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive, one request per connection at a time.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP; connections shared by requests.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// Over TLS, what ALPN picks: `h2` or `http/1.1`.
    Auto,
}

impl Protocol {
    /// Whether connections of this protocol are always HTTP/2.
    pub fn always_h2(self) -> bool {
        matches!(self, Protocol::H2c | Protocol::H2)
    }
}

/// Backend timeouts (DESIGN §3); Varnish's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// From the request sent to the response head.
    pub first_byte: Duration,
    /// Between two reads of the response body.
    pub between_bytes: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_millis(3500),
            first_byte: Duration::from_secs(60),
            between_bytes: Duration::from_secs(60),
        }
    }
}

/// One origin server.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    /// Unique backend name.
    pub name: String,
    /// Where it listens.
    pub address: Address,
    /// Optional second address (the other IP family), tried when the first fails to connect.
    pub address2: Option<Address>,
    /// Default weight of members that refer to it.
    pub weight: f64,
    /// Name of its probe.
    pub probe: Option<String>,
    /// `Host` sent to it (and in probes); the client's when absent.
    pub host_header: Option<String>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Open connections at most (0: unlimited).
    pub max_connections: u32,
    /// How long a request that finds `max_connections` open waits for one (zero: not at all,
    /// `503`).
    pub queue_timeout: Duration,
    /// Connections older than this are closed rather than reused (`None`: no limit).
    pub max_connection_lifetime: Option<Duration>,
    /// Admin override.
    pub admin_health: AdminHealth,
    /// No new requests; in-flight ones finish.
    pub drain: bool,
    /// How requests are sent.
    pub protocol: Protocol,
    /// TLS on its connections and probes (`None`: plain TCP).
    pub tls: Option<crate::tls::BackendTls>,
}

impl BackendSpec {
    /// A backend with defaults for everything but its name and address.
    pub fn new(name: impl Into<String>, address: Address) -> BackendSpec {
        BackendSpec {
            name: name.into(),
            address,
            address2: None,
            weight: 1.0,
            probe: None,
            host_header: None,
            timeouts: Timeouts::default(),
            max_connections: 0,
            queue_timeout: Duration::ZERO,
            max_connection_lifetime: None,
            admin_health: AdminHealth::Auto,
            drain: false,
            protocol: Protocol::Http1,
            tls: None,
        }
    }

    /// The addresses, in the order they are tried. With the name, the backend's identity for
    /// runtime state (pools, health windows, counters).
    pub fn addresses(&self) -> impl Iterator<Item = &Address> {
        std::iter::once(&self.address).chain(self.address2.as_ref())
    }
}

/// What a probe sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeRequest {
    /// `GET <url> HTTP/1.1` with `Host` and `Connection: close`.
    Url(String),
    /// Raw lines, each followed by CRLF, then one final CRLF.
    Raw(Vec<String>),
}

/// A health probe with Varnish semantics (`shared/reference/varnish-directors.md` §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    /// Unique probe name.
    pub name: String,
    /// What it sends.
    pub request: ProbeRequest,
    /// The status that counts as success (100–999).
    pub expected_status: u16,
    /// Bound on one whole probe.
    pub timeout: Duration,
    /// From the end of one probe to the start of the next.
    pub interval: Duration,
    /// Probes remembered, 1–64.
    pub window: u32,
    /// Good probes in the window needed to be healthy, 1–window.
    pub threshold: u32,
    /// Good probes assumed at start, 0–threshold.
    pub initial: u32,
}

impl ProbeSpec {
    /// Varnish's defaults: `GET /`, 200, 2 s, 5 s, 8, 3, initial 2.
    pub fn new(name: impl Into<String>) -> ProbeSpec {
        ProbeSpec {
            name: name.into(),
            request: ProbeRequest::Url("/".into()),
            expected_status: 200,
            timeout: Duration::from_secs(2),
            interval: Duration::from_secs(5),
            window: 8,
            threshold: 3,
            initial: 2,
        }
    }
}

/// Largest probe window (Varnish keeps 64-bit registers).
pub const MAX_PROBE_WINDOW: u32 = 64;

/// Where a route's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// The client's IP address.
    ClientIp,
    /// A request header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// A query parameter's value.
    Query(String),
    /// The request URL (path and query).
    Url,
    /// The request path.
    Path,
}

/// A header a route requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    /// Exact value; `None`: present with any value.
    pub value: Option<String>,
}

/// Which requests go to which director, keyed how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Unique route name.
    pub name: String,
    /// Lower-case host names (without port); empty: any. `*.example.com` matches subdomains.
    pub hosts: Vec<String>,
    /// Path prefix (`/` or empty: any).
    pub path_prefix: String,
    /// Headers that must be present (and equal, when a value is given).
    pub headers: Vec<HeaderMatch>,
    /// The director that picks.
    pub director: String,
    /// The key source.
    pub key: KeySpec,
    /// Used when `key` is absent from the request; with none, the URL.
    pub fallback_key: Option<KeySpec>,
    /// Largest request body, in bytes (413 beyond it); `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// HTTP/1.1 Upgrade protocols tunnelled (lower case); empty: none.
    pub upgrades: Vec<String>,
    /// `Some(true)`: TLS requests only; `Some(false)`: plain HTTP only; `None`: both.
    pub https: Option<bool>,
    /// Plain-HTTP requests are redirected (308) to `https://`.
    pub https_redirect: bool,
}

/// The Upgrade protocols a route tunnels when it names none.
pub const DEFAULT_UPGRADES: [&str; 1] = ["websocket"];

/// A director's load-balancing policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Varnish `round_robin`.
    RoundRobin,
    /// Varnish `fallback`.
    Fallback {
        /// Stay on the current member while it is healthy.
        sticky: bool,
    },
    /// Varnish `random` (weighted).
    Random,
    /// Varnish `hash` (weighted, not consistent).
    Hash,
    /// Consistent hashing with alternates.
    Shard(ShardSpec),
}

/// Which consistent-hash algorithm a shard director uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Varnish 7.1 `directors.shard()`, bit-exact.
    #[default]
    Varnish,
    /// Tether's slot-based algorithm.
    Balanced,
}

/// The shard director's `healthy` parameter (Varnish `CHOSEN | IGNORE | ALL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthyMode {
    /// Health decides the chosen member; `alt` skips members whatever their health.
    #[default]
    Chosen,
    /// Health is ignored.
    Ignore,
    /// Health decides both the chosen member and the ones `alt` skips.
    All,
}

/// Shard director parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSpec {
    /// Which consistent hash.
    pub algorithm: Algorithm,
    /// Ring points per unit of weight (varnish algorithm), ≥ 1.
    pub replicas: u32,
    /// Default health mode of picks.
    pub healthy: HealthyMode,
    /// Rampup duration; zero disables rampup.
    pub rampup: Duration,
    /// Share of keys sent to the next healthy member, in `[0, 1)`; zero disables warmup.
    pub warmup: f64,
    /// Balanced: slots `[0, base_slots)` form one flat level sampled without level coins
    /// (faster); a power of two, 1 = fully nested. Part of the stored mapping.
    pub base_slots: u32,
}

impl Default for ShardSpec {
    fn default() -> Self {
        ShardSpec {
            algorithm: Algorithm::Varnish,
            replicas: DEFAULT_REPLICAS,
            healthy: HealthyMode::Chosen,
            rampup: Duration::ZERO,
            warmup: 0.0,
            base_slots: 1,
        }
    }
}

/// Varnish's default ring points per backend.
pub const DEFAULT_REPLICAS: u32 = 67;

/// What a member refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRef {
    /// A backend by name.
    Backend(String),
    /// A director by name.
    Director(String),
}

impl TargetRef {
    /// The referenced name.
    pub fn name(&self) -> &str {
        match self {
            TargetRef::Backend(n) | TargetRef::Director(n) => n,
        }
    }
}

/// One member of a director.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSpec {
    /// Backend or director.
    pub target: TargetRef,
    /// Relative weight; absent: the backend's weight (1 for a director). Resolved when the
    /// directors are built, so a backend's weight change does not change this spec.
    pub weight: Option<f64>,
    /// Shard: the name hashed onto the ring; defaults to the target's name.
    pub ident: Option<String>,
    /// Shard (balanced): the member's slot; assigned when absent.
    pub slot: Option<u32>,
    /// Shard: rampup overriding the director's.
    pub rampup: Option<Duration>,
}

impl MemberSpec {
    /// A member with its target's weight and no shard options.
    pub fn new(target: TargetRef) -> MemberSpec {
        MemberSpec {
            target,
            weight: None,
            ident: None,
            slot: None,
            rampup: None,
        }
    }
}

/// A director.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectorSpec {
    /// Unique director name.
    pub name: String,
    /// How it picks.
    pub policy: Policy,
    /// Its members, in order.
    pub members: Vec<MemberSpec>,
}

/// One revision's resources: the input of [`crate::director::Directors::build`] and of the
/// data plane's snapshot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// Backends (shared: an unchanged backend's spec is the same allocation from one revision
    /// to the next, so carrying 10,000 of them over copies pointers, not specs).
    pub backends: Vec<Arc<BackendSpec>>,
    /// Probes.
    pub probes: Vec<ProbeSpec>,
    /// Directors.
    pub directors: Vec<Arc<DirectorSpec>>,
    /// Routes, in match order.
    pub routes: Vec<RouteSpec>,
    /// Certificates of the TLS listener.
    pub certificates: Vec<crate::certs::CertificateSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "b0", "web-1.pool_a", &"x".repeat(63)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_name(&"x".repeat(64)),
            Err(NameError::TooLong(..))
        ));
        for bad in ["-a", ".a", "A", "a b", "a/b", "é"] {
            assert!(
                matches!(validate_name(bad), Err(NameError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn addresses() {
        let a: Address = "127.0.0.1:19000".parse().unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:19000");
        let a: Address = "[::1]:19001".parse().unwrap();
        assert_eq!(a.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(a.to_string(), "[::1]:19001");
        let a: Address = "Node-1.Example:8080".parse().unwrap();
        assert_eq!(a.host, Host::Dns("node-1.example".into()));
        assert!(matches!(
            "127.0.0.1".parse::<Address>(),
            Err(AddressError::NoPort(_))
        ));
        assert!(matches!(
            "127.0.0.1:0".parse::<Address>(),
            Err(AddressError::BadPort(_))
        ));
        assert!(matches!(
            "127.0.0.1:70000".parse::<Address>(),
            Err(AddressError::BadPort(_))
        ));
        assert!(matches!(
            "::1:80".parse::<Address>(),
            Err(AddressError::Brackets(_))
        ));
        assert!(matches!(
            "[::1]80".parse::<Address>(),
            Err(AddressError::Brackets(_))
        ));
        assert!(matches!(
            "300.1.1.1:80".parse::<Address>(),
            Err(AddressError::BadHost(_))
        ));
        assert!(matches!(
            "-bad-.com:80".parse::<Address>(),
            Err(AddressError::BadHost(_))
        ));
        assert!(matches!(
            "a_b.com:80".parse::<Address>(),
            Err(AddressError::BadHost(_))
        ));
    }
}
