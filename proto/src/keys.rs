//! The etcd key layout (`shared/DESIGN.md` §4): `<prefix>/v1/<kind>/<name>`.
//!
//! The prefix is configurable so several installations can share one etcd; every key the
//! project reads or writes is made and parsed here.

use std::fmt;

/// The default prefix, `/tether`.
pub const DEFAULT_PREFIX: &str = "/tether";

/// A kind of object stored under the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `Backend` resources.
    Backend,
    /// `Probe` resources.
    Probe,
    /// `Director` resources.
    Director,
    /// `Route` resources.
    Route,
    /// `Certificate` resources.
    Certificate,
    /// `Discovery` resources.
    Discovery,
    /// Shared health reports, one per backend and owner node
    /// (`health/<backend>/<node>`, [`Layout::health_key`]).
    Health,
    /// Data-plane registrations, bound to a lease.
    Node,
}

impl Kind {
    /// Every kind, in key order of their directory names.
    pub const ALL: [Kind; 8] = [
        Kind::Backend,
        Kind::Certificate,
        Kind::Director,
        Kind::Discovery,
        Kind::Health,
        Kind::Node,
        Kind::Probe,
        Kind::Route,
    ];

    /// The directory segment of this kind.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Backend => "backends",
            Kind::Probe => "probes",
            Kind::Director => "directors",
            Kind::Route => "routes",
            Kind::Certificate => "certificates",
            Kind::Discovery => "discoveries",
            Kind::Health => "health",
            Kind::Node => "nodes",
        }
    }

    /// The singular name, as API messages name a kind (`backend`).
    pub const fn singular(self) -> &'static str {
        match self {
            Kind::Backend => "backend",
            Kind::Probe => "probe",
            Kind::Director => "director",
            Kind::Route => "route",
            Kind::Certificate => "certificate",
            Kind::Discovery => "discovery",
            Kind::Health => "health",
            Kind::Node => "node",
        }
    }

    /// The kind named by [`Kind::singular`].
    pub fn from_singular(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.singular() == s)
    }

    fn from_segment(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.segment() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.segment())
    }
}

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The prefix must start with `/` and must not end with one.
    #[error("key prefix {0:?} must start with '/', must not end with '/' and must not be empty")]
    Malformed(String),
}

/// The key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            root: format!("{DEFAULT_PREFIX}/v1/"),
        }
    }
}

impl Layout {
    /// A layout under `prefix` (for example `/tether` or `/team-a/tether`).
    pub fn new(prefix: &str) -> Result<Layout, PrefixError> {
        if prefix.len() < 2 || !prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(PrefixError::Malformed(prefix.to_owned()));
        }
        Ok(Layout {
            root: format!("{prefix}/v1/"),
        })
    }

    /// The prefix of every key of this installation (ends with `/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The prefix of every key of one kind (ends with `/`).
    pub fn dir(&self, kind: Kind) -> String {
        format!("{}{}/", self.root, kind.segment())
    }

    /// The key of one object.
    pub fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}{}/{}", self.root, kind.segment(), name)
    }

    /// The key every control-plane write bumps and compares, so that a write validated against
    /// one revision of the whole configuration commits only if nothing changed since (deletes
    /// included, which per-key compares would miss). Not under any kind's directory.
    pub fn serial(&self) -> String {
        format!("{}serial", self.root)
    }

    /// The key a control-plane replica holds, bound to its lease, while it does the job
    /// `role` names (`discovery`: resolving every Discovery): one holder at a time. Not under
    /// any kind's directory.
    pub fn election(&self, role: &str) -> String {
        format!("{}election/{role}", self.root)
    }

    /// The key of one owner's health report for one backend: `<root>health/<backend>/<node>`.
    /// One key per owner (not one per backend) so owners never contend for a key, and each
    /// report is bound to its owner's lease: a dead owner's report goes with its registration.
    pub fn health_key(&self, backend: &str, node: &str) -> String {
        format!("{}{}/{backend}/{node}", self.root, Kind::Health.segment())
    }

    /// The backend and node of a [`Layout::health_key`]; `None` for any other key.
    pub fn parse_health<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key
            .strip_prefix(self.root.as_str())?
            .strip_prefix(Kind::Health.segment())?
            .strip_prefix('/')?;
        let (backend, node) = rest.split_once('/')?;
        if backend.is_empty() || node.is_empty() || node.contains('/') {
            return None;
        }
        Some((backend, node))
    }

    /// Splits a key of this layout into its kind and name; `None` for any other key.
    pub fn parse<'k>(&self, key: &'k str) -> Option<(Kind, &'k str)> {
        let rest = key.strip_prefix(self.root.as_str())?;
        let (segment, name) = rest.split_once('/')?;
        if name.is_empty() || name.contains('/') {
            return None;
        }
        Some((Kind::from_segment(segment)?, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_for_every_kind() {
        let l = Layout::new("/team-a/tether").unwrap();
        for kind in Kind::ALL {
            assert_eq!(Kind::from_singular(kind.singular()), Some(kind));
            let key = l.key(kind, "web-1");
            assert!(key.starts_with(&l.dir(kind)));
            assert_eq!(l.parse(&key), Some((kind, "web-1")));
        }
        assert_eq!(l.key(Kind::Backend, "b0"), "/team-a/tether/v1/backends/b0");
    }

    #[test]
    fn health_keys_round_trip() {
        let l = Layout::default();
        let k = l.health_key("web-1", "node-a");
        assert_eq!(k, "/tether/v1/health/web-1/node-a");
        assert_eq!(l.parse_health(&k), Some(("web-1", "node-a")));
        assert_eq!(l.parse(&k), None, "not a resource key");
        assert_eq!(l.parse_health("/tether/v1/health/web-1"), None);
        assert_eq!(l.parse_health("/tether/v1/nodes/a/b"), None);
    }

    #[test]
    fn election_keys_are_not_resources() {
        let l = Layout::default();
        let k = l.election("discovery");
        assert_eq!(k, "/tether/v1/election/discovery");
        assert_eq!(l.parse(&k), None);
    }

    #[test]
    fn foreign_and_malformed_keys_are_not_parsed() {
        let l = Layout::default();
        assert_eq!(l.parse("/other/v1/backends/b0"), None);
        assert_eq!(l.parse("/tether/v1/backends/"), None);
        assert_eq!(l.parse("/tether/v1/widgets/x"), None);
        assert_eq!(l.parse("/tether/v1/backends/a/b"), None);
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for p in ["", "/", "tether", "/tether/"] {
            assert!(Layout::new(p).is_err(), "{p:?}");
        }
    }
}
