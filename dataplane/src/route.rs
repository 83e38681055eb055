//! Route matching and key extraction: pure functions of a request's head.
//!
//! Routes are tried in order; the first whose hosts, path prefix and headers all match wins.
//! The key comes from the route's source, or its fallback when the source is absent, or the
//! URL when there is no fallback either.

use std::net::IpAddr;

use http::HeaderMap;
use http::request::Parts;

use crate::config::{KeySpec, RouteSpec};
use crate::director::Key;
use crate::traffic::KeyUsed;

/// The host a request is for: the `Host` header (HTTP/1.1) or the URI authority (HTTP/2),
/// without port, lower-cased.
pub fn request_host(parts: &Parts) -> Option<String> {
    let raw = parts
        .uri
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let h = parts.headers.get(http::header::HOST)?.to_str().ok()?;
            Some(strip_port(h).to_owned())
        })?;
    Some(raw.to_ascii_lowercase())
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_once(']').map_or(h, |(v6, _)| &h[..=v6.len()]);
    }
    h.rsplit_once(':').map_or(h, |(host, _)| host)
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => pattern == host,
    }
}

/// Whether `route` takes a request with this head.
pub fn matches(
    route: &RouteSpec,
    https: bool,
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> bool {
    if route.https.is_some_and(|h| h != https) {
        return false;
    }
    if !route.hosts.is_empty() {
        let Some(host) = host else { return false };
        if !route.hosts.iter().any(|p| host_matches(p, host)) {
            return false;
        }
    }
    if !path.starts_with(route.path_prefix.as_str()) {
        return false;
    }
    route.headers.iter().all(|h| match &h.value {
        None => headers.contains_key(h.name.as_str()),
        Some(v) => headers
            .get_all(h.name.as_str())
            .iter()
            .any(|got| got.as_bytes() == v.as_bytes()),
    })
}

/// An owned key taken from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// A string.
    Str(String),
    /// A client address.
    Ip(IpAddr),
}

impl std::fmt::Display for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::Str(s) => f.write_str(s),
            KeyValue::Ip(ip) => ip.fmt(f),
        }
    }
}

impl KeyValue {
    /// The director key.
    pub fn key(&self) -> Key<'_> {
        match self {
            KeyValue::Str(s) => Key::str(s),
            KeyValue::Ip(ip) => Key::ip(*ip),
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

fn query(parts: &Parts, name: &str) -> Option<String> {
    parts.uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_owned())
    })
}

fn extract(spec: &KeySpec, parts: &Parts, client: IpAddr) -> Option<KeyValue> {
    match spec {
        KeySpec::ClientIp => Some(KeyValue::Ip(client)),
        KeySpec::Header(h) => parts
            .headers
            .get(h.as_str())
            .map(|v| KeyValue::Str(String::from_utf8_lossy(v.as_bytes()).into_owned())),
        KeySpec::Cookie(c) => cookie(&parts.headers, c).map(KeyValue::Str),
        KeySpec::Query(q) => query(parts, q).map(KeyValue::Str),
        KeySpec::Url => Some(KeyValue::Str(
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
        )),
        KeySpec::Path => Some(KeyValue::Str(parts.uri.path().to_owned())),
    }
}

/// The key of a request on `route`, and which of the route's sources gave it.
pub fn key(route: &RouteSpec, parts: &Parts, client: IpAddr) -> (KeyValue, KeyUsed) {
    if let Some(k) = extract(&route.key, parts, client) {
        return (k, KeyUsed::Key);
    }
    if let Some(k) = route
        .fallback_key
        .as_ref()
        .and_then(|f| extract(f, parts, client))
    {
        return (k, KeyUsed::Fallback);
    }
    let url = extract(&KeySpec::Url, parts, client).unwrap_or(KeyValue::Str(String::new()));
    (url, KeyUsed::Url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderMatch;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn route() -> RouteSpec {
        RouteSpec {
            name: "r".into(),
            hosts: vec!["app.example".into(), "*.cdn.example".into()],
            path_prefix: "/api".into(),
            headers: vec![HeaderMatch {
                name: "x-env".into(),
                value: Some("prod".into()),
            }],
            director: "d".into(),
            key: KeySpec::Header("x-user".into()),
            fallback_key: Some(KeySpec::Cookie("sid".into())),
            max_body_bytes: None,
            upgrades: Vec::new(),
            https: None,
            https_redirect: false,
        }
    }

    #[test]
    fn hosts_paths_and_headers() {
        let r = route();
        let p = parts("/api/x", &[("host", "App.Example:8080"), ("x-env", "prod")]);
        let host = request_host(&p);
        assert_eq!(host.as_deref(), Some("app.example"));
        assert!(matches(
            &r,
            false,
            host.as_deref(),
            p.uri.path(),
            &p.headers
        ));
        assert!(!matches(&r, false, Some("other"), "/api", &p.headers));
        assert!(matches(
            &r,
            false,
            Some("a.cdn.example"),
            "/api",
            &p.headers
        ));
        assert!(!matches(&r, false, Some("cdn.example"), "/api", &p.headers));
        assert!(!matches(&r, false, host.as_deref(), "/web", &p.headers));
        let staging = parts("/api", &[("x-env", "staging")]);
        assert!(!matches(
            &r,
            false,
            host.as_deref(),
            "/api",
            &staging.headers
        ));
        let h2 = parts("https://app.example/api", &[]);
        assert_eq!(request_host(&h2).as_deref(), Some("app.example"));
        let v6 = parts("/", &[("host", "[::1]:80")]);
        assert_eq!(request_host(&v6).as_deref(), Some("[::1]"));
    }

    #[test]
    fn a_scheme_restricts_a_route_to_one_listener() {
        let mut r = route();
        let p = parts("/api", &[("x-env", "prod")]);
        let host = Some("app.example");
        for (https, tls_only, plain_only) in [(false, false, true), (true, true, false)] {
            r.https = None;
            assert!(matches(&r, https, host, "/api", &p.headers));
            r.https = Some(true);
            assert_eq!(matches(&r, https, host, "/api", &p.headers), tls_only);
            r.https = Some(false);
            assert_eq!(matches(&r, https, host, "/api", &p.headers), plain_only);
        }
    }

    #[test]
    fn keys_and_fallbacks() {
        let r = route();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let p = parts(
            "/api?u=7",
            &[("x-user", "alice"), ("cookie", "a=1; sid=s9")],
        );
        assert_eq!(
            key(&r, &p, ip),
            (KeyValue::Str("alice".into()), KeyUsed::Key)
        );
        let p = parts("/api?u=7", &[("cookie", "a=1; sid=s9")]);
        assert_eq!(
            key(&r, &p, ip),
            (KeyValue::Str("s9".into()), KeyUsed::Fallback)
        );
        let p = parts("/api?u=7", &[]);
        assert_eq!(
            key(&r, &p, ip),
            (KeyValue::Str("/api?u=7".into()), KeyUsed::Url)
        );
        let q = RouteSpec {
            key: KeySpec::Query("u".into()),
            fallback_key: Some(KeySpec::ClientIp),
            ..route()
        };
        assert_eq!(key(&q, &p, ip).0, KeyValue::Str("7".into()));
        let p = parts("/api", &[]);
        assert_eq!(key(&q, &p, ip), (KeyValue::Ip(ip), KeyUsed::Fallback));
        let path = RouteSpec {
            key: KeySpec::Path,
            ..route()
        };
        assert_eq!(
            key(&path, &parts("/a/b?c", &[]), ip).0,
            KeyValue::Str("/a/b".into())
        );
    }
}
