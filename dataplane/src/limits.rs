//! Bounds on a configuration: values no real deployment reaches, but a mistake or an attacker
//! would — a director asking for a 34 GB ring, a 100,000-deep chain of nested directors, a
//! 10 MiB ident. Each is enforced where the configuration is checked
//! ([`crate::director::Directors::build`] for what needs the whole graph, the control plane's
//! `convert` for single fields), so it holds for a write through the API and again for an
//! object a node reads from the store. `docs/api.md` lists them.

/// Backends in one configuration.
pub const MAX_BACKENDS: usize = 100_000;
/// Probes in one configuration.
pub const MAX_PROBES: usize = 10_000;
/// Directors in one configuration.
pub const MAX_DIRECTORS: usize = 10_000;
/// Routes in one configuration.
pub const MAX_ROUTES: usize = 10_000;

/// Members of one director.
pub const MAX_MEMBERS: usize = 100_000;
/// Members a director reaches through its nested directors, counted with repetition (what a
/// health check of a director whose members are all sick walks): no more than one flat
/// director may hold, so nesting never costs more per request than the largest flat director.
pub const MAX_EXPANDED_MEMBERS: u64 = MAX_MEMBERS as u64;
/// Directors in the longest chain of directors nesting one another (the director itself
/// counts): the cycle check and the per-request walk recurse at most this deep.
pub const MAX_NESTING: u32 = 16;

/// A shard director's `replicas` (Varnish's default is 67).
pub const MAX_REPLICAS: u32 = 10_000;
/// Ring points of one varnish-shard member, `trunc(replicas × weight)`.
pub const MAX_MEMBER_POINTS: u64 = 1 << 20;
/// Ring points of one varnish-shard director (8 bytes each: 32 MiB).
pub const MAX_RING_POINTS: u64 = 1 << 22;
/// Ring points of every varnish-shard director of a configuration together (64 MiB).
pub const MAX_TOTAL_RING_POINTS: u64 = 1 << 23;

/// A backend's or a member's weight.
pub const MAX_WEIGHT: f64 = 1_000_000.0;
/// A member's ident, in bytes.
pub const MAX_IDENT_BYTES: usize = 255;
/// Labels of one backend.
pub const MAX_LABELS: usize = 64;
/// A label key, in bytes.
pub const MAX_LABEL_KEY_BYTES: usize = 63;
/// A label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 255;

/// Host names of one route.
pub const MAX_ROUTE_HOSTS: usize = 64;
/// Header matchers of one route.
pub const MAX_ROUTE_HEADERS: usize = 32;
/// A header matcher's value, and a route's path prefix, in bytes.
pub const MAX_MATCH_BYTES: usize = 1024;
/// Certificates per configuration.
pub const MAX_CERTIFICATES: usize = 10_000;
/// A PEM text (a backend's `tls.ca`, a certificate chain), in bytes.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// Upgrade protocols of one route.
pub const MAX_ROUTE_UPGRADES: usize = 16;
/// One Upgrade protocol token, in bytes.
pub const MAX_UPGRADE_BYTES: usize = 64;
/// A header name (header matchers and key sources), in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 256;

/// A probe's `url`, in bytes.
pub const MAX_PROBE_URL_BYTES: usize = 2048;
/// Lines of a probe's raw `request`.
pub const MAX_PROBE_REQUEST_LINES: usize = 64;
/// A probe's raw `request`, all lines together, in bytes.
pub const MAX_PROBE_REQUEST_BYTES: usize = 8192;
