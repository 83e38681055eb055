//! Backend patterns (DESIGN §7, Varnish's CLI scheme): `b1` (exactly that backend), `b1()`
//! (all named b1), `b1(127.0.0.1)`, `b1(:8080)`, `b1(127.0.0.1:8080,[::1]:8080)`, and shell
//! globs on the name (`web-*`, `b?`), which combine with the address list.

use tether_dataplane::config::{Address, Host};

/// One address filter inside the parentheses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AddrFilter {
    host: Option<String>,
    port: Option<u16>,
}

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    name: String,
    glob: bool,
    /// `None`: no parentheses; `Some(empty)`: `()`.
    addresses: Option<Vec<AddrFilter>>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern.
    pub pattern: String,
    /// What is wrong.
    pub reason: String,
}

/// Longest pattern, in bytes (a name is at most 63; the rest is for a list of addresses).
pub const MAX_PATTERN_BYTES: usize = 1024;

fn host_string(h: &Host) -> String {
    match h {
        Host::Ip(ip) => ip.to_string(),
        Host::Dns(d) => d.clone(),
    }
}

impl Pattern {
    /// Parses a pattern.
    pub fn parse(p: &str) -> Result<Pattern, PatternError> {
        if p.len() > MAX_PATTERN_BYTES {
            // Not echoed: it may be megabytes.
            return Err(PatternError {
                pattern: p.chars().take(32).collect::<String>() + "…",
                reason: format!("is {} bytes long; at most {MAX_PATTERN_BYTES}", p.len()),
            });
        }
        let err = |reason: &str| PatternError {
            pattern: p.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, addresses) = match p.split_once('(') {
            None => (p, None),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix(')')
                    .ok_or_else(|| err("missing ')' at the end"))?;
                let mut list = Vec::new();
                for item in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    list.push(parse_addr(item).ok_or_else(|| {
                        err("addresses in parentheses are host, :port, host:port or [ipv6]:port")
                    })?);
                }
                (name, Some(list))
            }
        };
        if name.is_empty() && addresses.is_none() {
            return Err(err("empty"));
        }
        let glob = name.contains(['*', '?']);
        if !name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-*?".contains(&c))
        {
            return Err(err("a name holds [a-z0-9._-], with * and ? as globs"));
        }
        Ok(Pattern {
            name: if name.is_empty() {
                "*".into()
            } else {
                name.into()
            },
            glob: glob || name.is_empty(),
            addresses,
        })
    }

    /// Whether the pattern names one backend exactly (no glob, no parentheses): then matching
    /// nothing is an error.
    pub fn is_exact(&self) -> bool {
        !self.glob && self.addresses.is_none()
    }

    /// Whether a backend matches.
    pub fn matches(&self, name: &str, addresses: &[Address]) -> bool {
        let name_ok = if self.glob {
            glob(self.name.as_bytes(), name.as_bytes())
        } else {
            self.name == name
        };
        if !name_ok {
            return false;
        }
        match &self.addresses {
            None => true,
            Some(list) if list.is_empty() => true,
            Some(list) => list.iter().any(|f| {
                addresses.iter().any(|a| {
                    f.host.as_ref().is_none_or(|h| *h == host_string(&a.host))
                        && f.port.is_none_or(|p| p == a.port)
                })
            }),
        }
    }
}

fn parse_addr(item: &str) -> Option<AddrFilter> {
    if let Some(port) = item.strip_prefix(':') {
        return Some(AddrFilter {
            host: None,
            port: Some(port.parse().ok()?),
        });
    }
    if let Some(rest) = item.strip_prefix('[') {
        let (v6, tail) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = v6.parse().ok()?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if tail.is_empty() => None,
            None => return None,
        };
        return Some(AddrFilter {
            host: Some(ip.to_string()),
            port,
        });
    }
    match item.rsplit_once(':') {
        Some((h, p)) => Some(AddrFilter {
            host: Some(h.to_ascii_lowercase()),
            port: Some(p.parse().ok()?),
        }),
        None => Some(AddrFilter {
            host: Some(item.to_ascii_lowercase()),
            port: None,
        }),
    }
}

/// Shell glob with `*` and `?`.
/// `*` and `?` globbing with one backtrack point (the last `*`): O(|p| × |s|) at worst, never
/// exponential, whatever the pattern — and both are bounded (a pattern by
/// [`MAX_PATTERN_BYTES`], a name by 63 bytes).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Address> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn the_design_examples() {
        let b1 = addrs(&["127.0.0.1:8080", "[::1]:8080"]);
        let b2 = addrs(&["127.0.0.2:9090"]);
        let m = |p: &str, n: &str, a: &[Address]| Pattern::parse(p).unwrap().matches(n, a);
        assert!(m("b1", "b1", &b1) && !m("b1", "b2", &b2));
        assert!(Pattern::parse("b1").unwrap().is_exact());
        assert!(!Pattern::parse("b1()").unwrap().is_exact());
        assert!(m("b1()", "b1", &b1));
        assert!(m("b1(127.0.0.1)", "b1", &b1));
        assert!(!m("b1(127.0.0.2)", "b1", &b1));
        assert!(m("b1(:8080)", "b1", &b1) && !m("b2(:8080)", "b2", &b2));
        assert!(m("b1(127.0.0.9:8080,[::1]:8080)", "b1", &b1));
        assert!(m("b*", "b2", &b2) && m("b?", "b1", &b1) && !m("c*", "b1", &b1));
        assert!(m("web-*(:8080)", "web-3", &b1) && !m("web-*(:8080)", "web-3", &b2));
        assert!(m("(:9090)", "b2", &b2));
        assert!(Pattern::parse("b1(").is_err());
        assert!(Pattern::parse("B1").is_err());
        assert!(Pattern::parse("b1(nope:x)").is_err());
        assert!(Pattern::parse("").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob(b"*", b""));
        assert!(glob(b"a*c", b"abbbc"));
        assert!(!glob(b"a*c", b"abbb"));
        assert!(glob(b"*-1*", b"web-12"));
    }
}
