//! A Discovery resource checked (every field, its template as a backend, its references) and
//! what it makes of an answer: the backends, named after their addresses.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tether_proto::keys::Kind;
use tether_proto::v1;

use crate::convert::{self, FieldError};
use crate::error::ApiError;
use crate::state::State;

/// Time between two resolutions when `refresh` is absent.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// The floor when `min_refresh` is absent.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(5);
/// The lowest floor a Discovery may set: a TTL of 0 never turns into a query loop.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest `refresh`.
pub const MAX_REFRESH: Duration = Duration::from_secs(60 * 60);
/// The grace period when `grace` is absent.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Backends one Discovery keeps when `max_backends` is 0.
pub const DEFAULT_MAX_BACKENDS: u32 = 64;
/// The most backends one Discovery may keep.
pub const MAX_BACKENDS: u32 = 1024;
/// The most Discovery resources one configuration holds.
pub const MAX_DISCOVERIES: usize = 256;
/// The longest DNS name (RFC 1035 §2.3.4).
const MAX_DNS_NAME: usize = 253;

/// A checked Discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Its name.
    pub name: String,
    /// The name resolved.
    pub dns_name: String,
    /// The port of every backend (0 with `srv`).
    pub port: u16,
    /// SRV records instead of A/AAAA.
    pub srv: bool,
    /// Labels of every backend found.
    pub labels: std::collections::HashMap<String, String>,
    /// Most time between two resolutions.
    pub refresh: Duration,
    /// Least time between two resolutions.
    pub min_refresh: Duration,
    /// How long an address may be missing before its backend goes.
    pub grace: Duration,
    /// The other fields of every backend.
    pub template: v1::Backend,
    /// The most backends kept.
    pub max_backends: usize,
}

impl Spec {
    /// The time until the next resolution after an answer valid for `ttl`.
    pub fn next_refresh(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_refresh, self.refresh.max(self.min_refresh))
    }

    /// The backend this Discovery keeps for `addr`.
    pub fn backend(&self, addr: SocketAddr) -> v1::Backend {
        v1::Backend {
            name: backend_name(&self.name, addr),
            address: addr.to_string(),
            labels: self.labels.clone(),
            discovery: self.name.clone(),
            ..self.template.clone()
        }
    }
}

/// The name of the backend a Discovery keeps for `addr`: `<discovery>-10-0-0-1-8080` for
/// IPv4 (readable), `<discovery>-v6-<16 hex digits of the address's hash>` for IPv6 (an IPv6
/// literal does not fit a 63-byte name), the discovery name shortened when the whole would
/// not fit. Deterministic, so every replica names an address alike.
pub fn backend_name(discovery: &str, addr: SocketAddr) -> String {
    let tail = match addr {
        SocketAddr::V4(a) => format!("{}-{}", a.ip().to_string().replace('.', "-"), a.port()),
        SocketAddr::V6(a) => format!("v6-{:016x}", fnv1a(a.to_string().as_bytes())),
    };
    let max_prefix = tether_dataplane::config::MAX_NAME_LEN - tail.len() - 1;
    let prefix: String = discovery.chars().take(max_prefix).collect();
    format!("{prefix}-{tail}")
}

/// FNV-1a, 64 bits: stable across versions and platforms (std's hasher is not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Checks one Discovery, reporting every bad field under `at`.
pub fn spec(d: &v1::Discovery, at: &dyn fmt::Display) -> Result<Spec, FieldError> {
    let mut errors = Vec::new();
    if let Err(e) = tether_dataplane::config::validate_name(&d.name) {
        errors.push(FieldError::invalid(format!("{at}.name"), e));
    }
    if let Err(why) = dns_name(&d.dns_name) {
        errors.push(FieldError::invalid(format!("{at}.dns_name"), why));
    }
    let port = match (d.srv, u16::try_from(d.port)) {
        (true, _) if d.port != 0 => {
            errors.push(FieldError::invalid(
                format!("{at}.port"),
                "must be 0 with srv: each SRV record gives its port",
            ));
            0
        }
        (true, _) => 0,
        (false, Ok(p)) if p != 0 => p,
        (false, _) => {
            errors.push(FieldError::invalid(
                format!("{at}.port"),
                format!("must be 1-65535, got {}", d.port),
            ));
            0
        }
    };
    let mut duration = |v: Option<&prost_types::Duration>, field: &str, default: Duration| {
        convert::duration(v, || format!("{at}.{field}"), default).unwrap_or_else(|e| {
            errors.push(e);
            default
        })
    };
    let refresh = duration(d.refresh.as_ref(), "refresh", DEFAULT_REFRESH);
    let min_refresh = duration(d.min_refresh.as_ref(), "min_refresh", DEFAULT_MIN_REFRESH);
    let grace = duration(d.grace.as_ref(), "grace", DEFAULT_GRACE);
    if !(MIN_REFRESH..=MAX_REFRESH).contains(&min_refresh) {
        errors.push(FieldError::invalid(
            format!("{at}.min_refresh"),
            format!("must be 1s to 1h, got {min_refresh:?}"),
        ));
    }
    if !(min_refresh..=MAX_REFRESH).contains(&refresh) {
        errors.push(FieldError::invalid(
            format!("{at}.refresh"),
            format!("must be from min_refresh ({min_refresh:?}) to 1h, got {refresh:?}"),
        ));
    }
    let max_backends = match d.max_backends {
        0 => DEFAULT_MAX_BACKENDS,
        n if n <= MAX_BACKENDS => n,
        n => {
            errors.push(FieldError::invalid(
                format!("{at}.max_backends"),
                format!("at most {MAX_BACKENDS}, got {n}"),
            ));
            MAX_BACKENDS
        }
    };
    let template = d.template.clone().unwrap_or_default();
    for (field, set) in [
        ("name", !template.name.is_empty()),
        ("address", !template.address.is_empty()),
        ("address2", !template.address2.is_empty()),
        ("labels", !template.labels.is_empty()),
        ("lease", template.lease != 0),
        ("discovery", !template.discovery.is_empty()),
    ] {
        if set {
            errors.push(FieldError::invalid(
                format!("{at}.template.{field}"),
                "is set by the discovery: leave it empty (labels go in the discovery's labels)",
            ));
        }
    }
    let spec = Spec {
        name: d.name.clone(),
        dns_name: d.dns_name.clone(),
        port,
        srv: d.srv,
        labels: d.labels.clone(),
        refresh,
        min_refresh,
        grace,
        template: v1::Backend {
            name: String::new(),
            address: String::new(),
            address2: String::new(),
            labels: Default::default(),
            lease: 0,
            discovery: String::new(),
            revision: 0,
            ..template
        },
        max_backends: max_backends as usize,
    };
    // The template's fields and the labels, checked as the backend validation checks them:
    // on a sample backend, each under its own field path.
    let sample: SocketAddr = ([192, 0, 2, 1], port.max(1)).into();
    let mut b = spec.backend(sample);
    b.labels.clear();
    if let Err(e) = convert::backend(&b, &format!("{at}.template")) {
        errors.push(e);
    }
    let mut b = spec.backend(sample);
    b.name = "sample".into();
    if let Err(e) = convert::backend(&b, at) {
        errors.extend(
            e.violations()
                .filter(|v| v.field.contains(".labels"))
                .cloned(),
        );
    }
    match errors.into_iter().reduce(|mut a, b| {
        a.more.push(b);
        a
    }) {
        Some(e) => Err(e),
        None => Ok(spec),
    }
}

/// Whether `s` is a DNS name: 1-253 bytes of dot-separated labels of 1-63 letters, digits,
/// `-` and `_` (SRV names start with `_service._proto`), an optional final dot, not an IP
/// literal.
fn dns_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_DNS_NAME {
        return Err(format!("must be 1-{MAX_DNS_NAME} bytes, got {}", s.len()));
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{s:?} is an IP address: create a backend for it instead"
        ));
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if !s.strip_suffix('.').unwrap_or(s).split('.').all(ok_label) {
        return Err(format!(
            "{:?} is not a DNS name (labels of 1-63 letters, digits, '-' or '_')",
            s.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// Checks every Discovery of a configuration about to be written: each valid (those
/// `old` holds unchanged are not checked again), at most [`MAX_DISCOVERIES`], their templates'
/// probes and client certificates present; and that no director names a backend a Discovery
/// keeps (it goes when DNS stops answering it: select it by label). What was already broken
/// in `old` and this write leaves as it was is not refused (as `validate_write` leaves out
/// stored objects that were invalid before).
pub fn check(old: &State, new: &State) -> Result<(), ApiError> {
    let label = |kind: Kind, name: &str| new.label_of(kind, name);
    if new.discoveries.len() > MAX_DISCOVERIES && new.discoveries.len() > old.discoveries.len() {
        return Err(FieldError::invalid(
            "discoveries",
            format!("more than {MAX_DISCOVERIES} discoveries in one configuration"),
        )
        .into());
    }
    for (name, d) in &new.discoveries {
        let at = label(Kind::Discovery, name);
        let changed = old.discoveries.get(name) != Some(d);
        if changed {
            spec(d, &at)?;
        }
        // A reference is refused when this write breaks it (changed the Discovery, or
        // removed what it names); one already broken in the store does not stop other writes.
        let t = d.template.as_ref();
        if let Some(p) = t.map(|t| t.probe.as_str()).filter(|p| !p.is_empty())
            && !new.probes.contains_key(p)
            && (changed || old.probes.contains_key(p))
        {
            return Err(FieldError::precondition(
                format!("{at}.template.probe"),
                format!("no probe named {p:?}"),
            )
            .into());
        }
        if let Some(c) = t
            .and_then(|t| t.tls.as_ref())
            .map(|t| t.client_certificate.as_str())
            .filter(|c| !c.is_empty())
            && !new.certificates.contains_key(c)
            && (changed || old.certificates.contains_key(c))
        {
            return Err(FieldError::precondition(
                format!("{at}.template.tls.client_certificate"),
                format!("no certificate named {c:?}"),
            )
            .into());
        }
    }
    let kept: BTreeMap<&str, &str> = new
        .backends
        .iter()
        .filter(|(_, b)| !b.discovery.is_empty())
        .map(|(n, b)| (n.as_str(), b.discovery.as_str()))
        .collect();
    if kept.is_empty() {
        return Ok(());
    }
    for (name, d) in &new.directors {
        let changed = old.directors.get(name) != Some(d);
        for (j, m) in d.members.iter().enumerate() {
            if let Some(v1::member::Target::Backend(b)) = &m.target
                && let Some(owner) = kept.get(b.as_str())
                && (changed
                    || old
                        .backends
                        .get(b.as_str())
                        .is_none_or(|o| o.discovery.is_empty()))
            {
                return Err(FieldError::precondition(
                    format!("{}.members[{j}].backend", label(Kind::Director, name)),
                    format!(
                        "backend {b:?} is kept by discovery {owner:?} and goes when DNS stops \
                         answering it; select it by label instead"
                    ),
                )
                .into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::PutResource;

    fn d() -> v1::Discovery {
        v1::Discovery {
            name: "web".into(),
            dns_name: "web.example.".into(),
            port: 8080,
            ..Default::default()
        }
    }

    #[test]
    fn names_are_readable_for_ipv4_hashed_for_ipv6_and_fit() {
        let v4: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        assert_eq!(backend_name("web", v4), "web-10-0-0-1-8080");
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let n = backend_name("web", v6);
        assert!(n.starts_with("web-v6-") && n.len() == 23, "{n}");
        let long = "a".repeat(63);
        for a in [v4, v6] {
            let n = backend_name(&long, a);
            assert!(n.len() <= 63, "{n}");
            tether_dataplane::config::validate_name(&n).unwrap();
        }
        assert_ne!(
            backend_name("web", "[2001:db8::1]:443".parse().unwrap()),
            backend_name("web", "[2001:db8::2]:443".parse().unwrap())
        );
    }

    #[test]
    fn a_good_discovery_passes_with_defaults() {
        let s = spec(&d(), &"discovery").unwrap();
        assert_eq!(s.refresh, DEFAULT_REFRESH);
        assert_eq!(s.min_refresh, DEFAULT_MIN_REFRESH);
        assert_eq!(s.grace, DEFAULT_GRACE);
        assert_eq!(s.max_backends, DEFAULT_MAX_BACKENDS as usize);
        assert_eq!(s.next_refresh(Duration::ZERO), DEFAULT_MIN_REFRESH);
        assert_eq!(
            s.next_refresh(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(s.next_refresh(Duration::from_secs(3600)), DEFAULT_REFRESH);
    }

    #[test]
    fn bad_fields_are_named() {
        let secs = |s| {
            Some(prost_types::Duration {
                seconds: s,
                nanos: 0,
            })
        };
        let cases: Vec<(v1::Discovery, &str)> = vec![
            (
                v1::Discovery {
                    dns_name: String::new(),
                    ..d()
                },
                "discovery.dns_name",
            ),
            (
                v1::Discovery {
                    dns_name: "10.0.0.1".into(),
                    ..d()
                },
                "discovery.dns_name",
            ),
            (
                v1::Discovery {
                    dns_name: "a..b".into(),
                    ..d()
                },
                "discovery.dns_name",
            ),
            (v1::Discovery { port: 0, ..d() }, "discovery.port"),
            (
                v1::Discovery {
                    port: 70_000,
                    ..d()
                },
                "discovery.port",
            ),
            (v1::Discovery { srv: true, ..d() }, "discovery.port"),
            (
                v1::Discovery {
                    min_refresh: secs(0),
                    ..d()
                },
                "discovery.min_refresh",
            ),
            (
                v1::Discovery {
                    refresh: secs(2),
                    ..d()
                },
                "discovery.refresh",
            ),
            (
                v1::Discovery {
                    refresh: secs(7200),
                    ..d()
                },
                "discovery.refresh",
            ),
            (
                v1::Discovery {
                    grace: secs(-1),
                    ..d()
                },
                "discovery.grace",
            ),
            (
                v1::Discovery {
                    max_backends: 5000,
                    ..d()
                },
                "discovery.max_backends",
            ),
            (
                v1::Discovery {
                    template: Some(v1::Backend {
                        address: "x:1".into(),
                        ..Default::default()
                    }),
                    ..d()
                },
                "discovery.template.address",
            ),
            (
                v1::Discovery {
                    template: Some(v1::Backend {
                        weight: Some(-1.0),
                        ..Default::default()
                    }),
                    ..d()
                },
                "discovery.template.weight",
            ),
            (
                v1::Discovery {
                    labels: [(String::new(), "x".into())].into(),
                    ..d()
                },
                "discovery.labels",
            ),
        ];
        for (bad, field) in cases {
            let e = spec(&bad, &"discovery").unwrap_err();
            assert!(e.violations().any(|v| v.field == field), "{field}: got {e}");
        }
        let srv = v1::Discovery {
            srv: true,
            port: 0,
            dns_name: "_http._tcp.web.example".into(),
            ..d()
        };
        spec(&srv, &"discovery").unwrap();
    }

    #[test]
    fn a_reference_broken_in_the_store_does_not_stop_other_writes() {
        let mut old = State::default();
        let mut broken = d();
        broken.template = Some(v1::Backend {
            probe: "gone".into(),
            ..Default::default()
        });
        old.discoveries.put("web".into(), broken.clone());
        let mut new = old.clone();
        new.backends.put(
            "other".into(),
            v1::Backend {
                name: "other".into(),
                address: "127.0.0.1:1".into(),
                ..Default::default()
            },
        );
        check(&old, &new).unwrap();
        // A write that changes the Discovery is held to it.
        broken.port = 81;
        new.discoveries.put("web".into(), broken);
        let e = check(&old, &new).unwrap_err().to_string();
        assert!(e.contains("template.probe"), "{e}");
        // And one that removes a probe a Discovery names breaks it.
        let mut old = State::default();
        let mut ok = d();
        ok.template = Some(v1::Backend {
            probe: "hc".into(),
            ..Default::default()
        });
        old.discoveries.put("web".into(), ok);
        old.probes.put("hc".into(), v1::Probe::default());
        let mut new = old.clone();
        new.probes.clear();
        assert!(check(&old, &new).is_err());
    }
}
