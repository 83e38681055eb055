//! The routing fingerprint: a hash of everything that decides where a request goes, over a
//! stable, versioned text encoding, so that nodes on two Tether versions with the same routing
//! state agree (and `tether nodes` can say so).
//!
//! Encoding, version 1 — one record per line, fields separated by one space; every string is
//! written as `<byte length>:<bytes>` (so no value can be mistaken for a separator); numbers in
//! decimal (floats in Rust's shortest round-trip form; durations in whole milliseconds); `-`
//! for an absent optional value:
//!
//! ```text
//! tether-fingerprint 1
//! route <name> hosts=<n> <host>… path=<str> headers=<n> (<name> <value|->)… director=<name> key=<key> fallback=<key|->[ scheme=<http|https>]
//! director <name> <policy>
//! member <backend|director> <name> weight=<f64|-> ident=<str|-> slot=<u32|-> rampup_ms=<u64|->
//! backend <name> addresses=<n> <address>… weight=<f64> healthy=<0|1>
//! ```
//!
//! Routes come in match order (their order is part of routing), directors and backends sorted
//! by name, members in their director's order. `<policy>` is `round_robin`, `fallback
//! sticky=<0|1>`, `random`, `hash`, or `shard algorithm=<varnish|balanced> replicas=<u32>
//! healthy=<chosen|ignore|all> rampup_ms=<u64> warmup=<f64> base_slots=<u32>`; `<key>` is
//! `client_ip`, `url`, `path`, `header <str>`, `cookie <str>` or `query <str>`. The
//! fingerprint is the first 8 bytes of the SHA-256 of the encoding, in hex. A change to this
//! encoding is a new version: the golden test pins it.

use std::fmt::Write;

use sha2::Digest;

use crate::config::{
    Algorithm, BackendSpec, Config, DirectorSpec, HealthyMode, KeySpec, MemberSpec, Policy,
    RouteSpec, TargetRef,
};

/// The encoding's version line.
const VERSION: &str = "tether-fingerprint 1";

/// A length-prefixed string.
struct S<'a>(&'a str);

impl std::fmt::Display for S<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.0.len(), self.0)
    }
}

/// An optional value, `-` when absent.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn key(k: &KeySpec) -> String {
    match k {
        KeySpec::ClientIp => "client_ip".into(),
        KeySpec::Url => "url".into(),
        KeySpec::Path => "path".into(),
        KeySpec::Header(h) => format!("header {}", S(h)),
        KeySpec::Cookie(c) => format!("cookie {}", S(c)),
        KeySpec::Query(q) => format!("query {}", S(q)),
    }
}

fn route(out: &mut String, r: &RouteSpec) {
    let _ = write!(out, "route {} hosts={}", S(&r.name), r.hosts.len());
    for h in &r.hosts {
        let _ = write!(out, " {}", S(h));
    }
    let _ = write!(
        out,
        " path={} headers={}",
        S(&r.path_prefix),
        r.headers.len()
    );
    for h in &r.headers {
        let _ = write!(out, " {} {}", S(&h.name), opt(h.value.as_deref().map(S)));
    }
    let _ = writeln!(
        out,
        " director={} key={} fallback={}",
        S(&r.director),
        key(&r.key),
        opt(r.fallback_key.as_ref().map(key))
    );
    // Only on routes restricted to one scheme (which no earlier encoding could meet), so
    // every other route encodes as before.
    if let Some(https) = r.https {
        out.pop();
        let _ = writeln!(out, " scheme={}", if https { "https" } else { "http" });
    }
}

fn policy(p: &Policy) -> String {
    match p {
        Policy::RoundRobin => "round_robin".into(),
        Policy::Fallback { sticky } => format!("fallback sticky={}", u8::from(*sticky)),
        Policy::Random => "random".into(),
        Policy::Hash => "hash".into(),
        Policy::Shard(s) => format!(
            "shard algorithm={} replicas={} healthy={} rampup_ms={} warmup={} base_slots={}",
            match s.algorithm {
                Algorithm::Varnish => "varnish",
                Algorithm::Balanced => "balanced",
            },
            s.replicas,
            match s.healthy {
                HealthyMode::Chosen => "chosen",
                HealthyMode::Ignore => "ignore",
                HealthyMode::All => "all",
            },
            s.rampup.as_millis(),
            s.warmup,
            s.base_slots
        ),
    }
}

fn member(out: &mut String, m: &MemberSpec) {
    let (kind, name) = match &m.target {
        TargetRef::Backend(n) => ("backend", n),
        TargetRef::Director(n) => ("director", n),
    };
    let _ = writeln!(
        out,
        "member {kind} {} weight={} ident={} slot={} rampup_ms={}",
        S(name),
        opt(m.weight),
        opt(m.ident.as_deref().map(S)),
        opt(m.slot),
        opt(m.rampup.map(|d| d.as_millis()))
    );
}

fn director(out: &mut String, d: &DirectorSpec) {
    let _ = writeln!(out, "director {} {}", S(&d.name), policy(&d.policy));
    for m in &d.members {
        member(out, m);
    }
}

fn backend(out: &mut String, b: &BackendSpec, healthy: bool) {
    let addresses: Vec<String> = b.addresses().map(ToString::to_string).collect();
    let _ = write!(out, "backend {} addresses={}", S(&b.name), addresses.len());
    for a in &addresses {
        let _ = write!(out, " {}", S(a));
    }
    let _ = writeln!(out, " weight={} healthy={}", b.weight, u8::from(healthy));
}

/// The encoding of a configuration with `healthy(i)` for backend `i` (see the module doc).
pub fn encode(config: &Config, healthy: impl Fn(usize) -> bool) -> String {
    let mut out = String::with_capacity(64 * (config.backends.len() + 4));
    out.push_str(VERSION);
    out.push('\n');
    for r in &config.routes {
        route(&mut out, r);
    }
    let mut directors: Vec<&DirectorSpec> = config.directors.iter().map(AsRef::as_ref).collect();
    directors.sort_by(|a, b| a.name.cmp(&b.name));
    for d in directors {
        director(&mut out, d);
    }
    let mut backends: Vec<usize> = (0..config.backends.len()).collect();
    backends.sort_by(|&a, &b| config.backends[a].name.cmp(&config.backends[b].name));
    for i in backends {
        backend(&mut out, &config.backends[i], healthy(i));
    }
    out
}

/// The fingerprint of an encoding: the first 8 bytes of its SHA-256, in hex.
pub fn of(encoding: &str) -> String {
    sha2::Sha256::digest(encoding.as_bytes())[..8].iter().fold(
        String::with_capacity(16),
        |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::{HeaderMatch, ShardSpec};

    fn config() -> Config {
        let b = |name: &str, addr: &str| {
            let mut spec = BackendSpec::new(name, addr.parse().unwrap());
            spec.weight = 2.5;
            Arc::new(spec)
        };
        let mut shard = ShardSpec {
            algorithm: Algorithm::Balanced,
            rampup: Duration::from_secs(3),
            warmup: 0.25,
            ..ShardSpec::default()
        };
        shard.healthy = HealthyMode::All;
        let mut m1 = MemberSpec::new(TargetRef::Backend("b1".into()));
        m1.weight = Some(1.5);
        m1.ident = Some("x y".into());
        m1.slot = Some(7);
        m1.rampup = Some(Duration::from_millis(1500));
        Config {
            certificates: Vec::new(),
            backends: vec![b("b2", "[::1]:8080"), b("b1", "127.0.0.1:80")],
            probes: Vec::new(),
            directors: vec![
                Arc::new(DirectorSpec {
                    name: "sh".into(),
                    policy: Policy::Shard(shard),
                    members: vec![m1, MemberSpec::new(TargetRef::Director("fb".into()))],
                }),
                Arc::new(DirectorSpec {
                    name: "fb".into(),
                    policy: Policy::Fallback { sticky: true },
                    members: vec![MemberSpec::new(TargetRef::Backend("b2".into()))],
                }),
            ],
            routes: vec![RouteSpec {
                name: "r".into(),
                hosts: vec!["example.com".into(), "*.example.org".into()],
                path_prefix: "/api".into(),
                headers: vec![HeaderMatch {
                    name: "x-env".into(),
                    value: None,
                }],
                director: "sh".into(),
                key: KeySpec::Cookie("sid".into()),
                fallback_key: Some(KeySpec::ClientIp),
                max_body_bytes: None,
                upgrades: Vec::new(),
                https: None,
                https_redirect: false,
            }],
        }
    }

    /// The encoding and its fingerprint are a contract between Tether versions: this must not
    /// change unless the version line does.
    #[test]
    fn the_encoding_is_pinned() {
        let text = encode(&config(), |i| i == 0);
        let want = "\
tether-fingerprint 1
route 1:r hosts=2 11:example.com 13:*.example.org path=4:/api headers=1 5:x-env - director=2:sh key=cookie 3:sid fallback=client_ip
director 2:fb fallback sticky=1
member backend 2:b2 weight=- ident=- slot=- rampup_ms=-
director 2:sh shard algorithm=balanced replicas=67 healthy=all rampup_ms=3000 warmup=0.25 base_slots=1
member backend 2:b1 weight=1.5 ident=3:x y slot=7 rampup_ms=1500
member director 2:fb weight=- ident=- slot=- rampup_ms=-
backend 2:b1 addresses=1 12:127.0.0.1:80 weight=2.5 healthy=0
backend 2:b2 addresses=1 10:[::1]:8080 weight=2.5 healthy=1
";
        assert_eq!(text, want);
        assert_eq!(of(&text), "e4697a39384c778a");
    }

    #[test]
    fn what_routes_a_key_changes_it() {
        let base = of(&encode(&config(), |_| true));
        let mut c = config();
        c.routes[0].key = KeySpec::Header("sid".into());
        assert_ne!(of(&encode(&c, |_| true)), base);
        assert_ne!(of(&encode(&config(), |i| i == 1)), base);
        // Order of backends and directors in the configuration does not matter.
        let mut c = config();
        c.backends.reverse();
        c.directors.reverse();
        assert_eq!(of(&encode(&c, |i| c.backends[i].name != "xx")), base);
    }
}
