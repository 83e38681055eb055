//! The certificates the TLS listener (`--https`) serves, and how one is picked (SNI).
//!
//! Two sources feed one [`ServerCerts`]: `Certificate` resources (set by
//! [`crate::runtime::Runtime::install`] at each revision, so every node serves the same ones)
//! and `--cert-dir` files (followed by [`follow_dir`]). Each change builds a [`CertSet`] —
//! exact names, `*.` wildcards, a default — swapped in at once (arc-swap): handshakes after it
//! get the new certificate, open connections keep theirs. The names a certificate serves are
//! read from it (its DNS subject alternative names, else its common name).
//!
//! Picking, for a client's SNI name (lower-cased): an exact name, then a wildcard for its
//! parent domain (`*.example.com` serves `a.example.com`, not `a.b.example.com` nor
//! `example.com`), then the default — the certificate named `default`, else the first in name
//! order (resources before files). A resource and a file for the same name: the resource wins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::Digest;

use crate::tls::{TlsError, pem_certificates, pem_private_key, provider};

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `Certificate` resource.
    Api,
    /// A file of `--cert-dir`.
    Dir,
}

impl Source {
    /// The `source` label of its metrics.
    pub fn label(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Dir => "dir",
        }
    }
}

/// A certificate chain and its key, ready to serve.
#[derive(Debug)]
pub struct Certificate {
    /// The resource's name, or the file's stem.
    pub name: String,
    /// Where it came from.
    pub source: Source,
    /// The DNS names it serves (lower case; `*.` wildcards kept as written).
    pub names: Vec<String>,
    /// The leaf's notAfter, seconds since the epoch.
    pub not_after: i64,
    /// SHA-256 of the leaf certificate (DER), lower-case hex.
    pub fingerprint: String,
    key: Arc<CertifiedKey>,
}

/// A `Certificate` resource in a configuration: loaded once when converted; two are equal
/// when their PEM texts are.
#[derive(Debug, Clone)]
pub struct CertificateSpec {
    chain: Arc<str>,
    key: Arc<str>,
    /// The certificate, ready to serve.
    pub loaded: Arc<Certificate>,
}

impl CertificateSpec {
    /// A spec of `loaded`, read from these PEM texts.
    pub fn new(chain: &str, key: &str, loaded: Certificate) -> CertificateSpec {
        CertificateSpec {
            chain: chain.into(),
            key: key.into(),
            loaded: Arc::new(loaded),
        }
    }
}

impl PartialEq for CertificateSpec {
    fn eq(&self, other: &Self) -> bool {
        self.loaded.name == other.loaded.name && self.chain == other.chain && self.key == other.key
    }
}

/// What the CLI and the API show of a certificate: never its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The DNS names it serves.
    pub names: Vec<String>,
    /// The leaf's notAfter, seconds since the epoch.
    pub not_after: i64,
    /// SHA-256 of the leaf, hex.
    pub fingerprint: String,
}

/// Reads what a PEM chain says about itself (names, expiry, fingerprint), checking that it
/// parses; the key is not needed.
pub fn summary(chain_pem: &[u8]) -> Result<Summary, TlsError> {
    let chain = pem_certificates(chain_pem)?;
    let leaf = &chain[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| TlsError::Pem(format!("the first certificate does not parse: {e}")))?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names.dedup();
    if names.is_empty() {
        return Err(TlsError::Pem(
            "the certificate names no DNS name (subject alternative names or common name)".into(),
        ));
    }
    Ok(Summary {
        names,
        not_after: cert.validity().not_after.timestamp(),
        fingerprint: hex(&sha2::Sha256::digest(leaf.as_ref())),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Certificate {
    /// Parses a PEM chain (leaf first) and its PEM private key, checking they belong together.
    pub fn load(
        name: &str,
        source: Source,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Certificate, TlsError> {
        let Summary {
            names,
            not_after,
            fingerprint,
        } = summary(chain_pem)?;
        let chain = pem_certificates(chain_pem)?;
        let key = pem_private_key(key_pem)?;
        let key = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Pem(format!("the private key: {e}")))?;
        let certified = CertifiedKey::new(chain, key);
        certified
            .keys_match()
            .map_err(|e| TlsError::Pem(format!("the key does not match the certificate: {e}")))?;
        Ok(Certificate {
            name: name.to_owned(),
            source,
            names,
            not_after,
            fingerprint,
            key: Arc::new(certified),
        })
    }

    /// Its chain and signing key, as rustls presents them.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.key)
    }

    /// Seconds until it expires (negative once expired).
    pub fn seconds_left(&self) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.not_after - now
    }
}

/// One generation of served certificates, indexed for SNI.
#[derive(Debug, Default)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the domain under the wildcard (`*.example.com` → `example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Every certificate, resources first, each in name order.
    pub all: Vec<Arc<Certificate>>,
}

impl CertSet {
    fn build(api: &[Arc<Certificate>], dir: &[Arc<Certificate>]) -> CertSet {
        let mut set = CertSet::default();
        for c in api.iter().chain(dir) {
            for n in &c.names {
                let (map, name) = match n.strip_prefix("*.") {
                    Some(parent) => (&mut set.wildcard, parent),
                    None => (&mut set.exact, n.as_str()),
                };
                // The first (a resource before a file) keeps a name.
                map.entry(name.to_owned())
                    .or_insert_with(|| Arc::clone(&c.key));
            }
            set.all.push(Arc::clone(c));
        }
        set.default = set
            .all
            .iter()
            .find(|c| c.name == "default")
            .or_else(|| set.all.first())
            .map(|c| Arc::clone(&c.key));
        set
    }

    /// The certificate for SNI name `sni` (`None`: no SNI).
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(Arc::clone(k));
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return Some(Arc::clone(k));
            }
        }
        self.default.clone()
    }
}

/// TLS listener counters, exported by `/metrics`.
#[derive(Debug, Default)]
pub struct TlsCounters {
    /// Handshakes completed.
    pub handshakes: AtomicU64,
    /// Handshakes not completed within the header timeout.
    pub timeouts: AtomicU64,
    /// Clients whose SNI name (or none) matched no certificate, with no default to fall back on.
    pub no_certificate: AtomicU64,
    /// Clients that offered nothing in common (versions, ciphers, ALPN).
    pub incompatible: AtomicU64,
    /// Clients that sent something other than TLS (plain HTTP to the TLS port, garbage).
    pub bad_message: AtomicU64,
    /// Clients that refused the handshake with an alert (an untrusted certificate, say).
    pub alerts: AtomicU64,
    /// Other failures (connection reset mid-handshake…).
    pub other: AtomicU64,
}

impl TlsCounters {
    /// Counts a failed handshake by its reason.
    pub fn failed(&self, e: &std::io::Error) {
        let c = match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::PeerIncompatible(_)) => &self.incompatible,
            Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }) => {
                &self.bad_message
            }
            Some(rustls::Error::AlertReceived(_)) => &self.alerts,
            // Counted by the resolver when it found nothing.
            Some(rustls::Error::General(m)) if m.contains("no server certificate") => return,
            _ => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The certificates of each source: resources, then files.
type Sources = (Vec<Arc<Certificate>>, Vec<Arc<Certificate>>);

/// The certificates of both sources, and the current [`CertSet`].
#[derive(Debug, Default)]
pub struct ServerCerts {
    /// The certificates of each source: resources, files.
    sources: Mutex<Sources>,
    current: ArcSwap<CertSet>,
    /// Counters of the TLS listener.
    pub counters: TlsCounters,
}

impl ServerCerts {
    /// No certificates yet.
    pub fn new() -> Arc<ServerCerts> {
        Arc::new(ServerCerts::default())
    }

    /// The certificates served now.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }

    /// Replaces one source's certificates (sorted by name here) and swaps in the new set.
    pub fn set(&self, source: Source, mut certs: Vec<Arc<Certificate>>) {
        certs.sort_by(|a, b| a.name.cmp(&b.name));
        // Built and stored under the lock: two sources' updates cannot store out of order.
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        match source {
            Source::Api => sources.0 = certs,
            Source::Dir => sources.1 = certs,
        }
        self.current
            .store(Arc::new(CertSet::build(&sources.0, &sources.1)));
    }

    /// The listener's rustls configuration: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, SNI
    /// through this set, session resumption by tickets and by a session cache.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        cfg.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Rustls(e.to_string()))?;
        Ok(Arc::new(cfg))
    }
}

/// TLS sessions remembered for resumption without tickets (about 200 bytes each).
const SESSION_CACHE: usize = 20_000;

#[derive(Debug)]
struct Resolver(Arc<ServerCerts>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let k = self.0.current.load().pick(hello.server_name());
        if k.is_none() {
            self.0
                .counters
                .no_certificate
                .fetch_add(1, Ordering::Relaxed);
        }
        k
    }
}

/// The certificates of `dir`: every `NAME.pem` holding a chain and its key, and every
/// `NAME.crt` with its `NAME.key`. Files that do not load are reported and left out.
pub fn read_dir(dir: &Path) -> (Vec<Arc<Certificate>>, Vec<(PathBuf, String)>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        bad.push((dir.to_owned(), "cannot be read".to_owned()));
        return (out, bad);
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let (Some(stem), Some(ext)) = (
            p.file_stem().and_then(|s| s.to_str()),
            p.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let loaded = match ext {
            "pem" => std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| {
                Certificate::load(stem, Source::Dir, &b, &b).map_err(|e| e.to_string())
            }),
            "crt" => {
                let key = p.with_extension("key");
                std::fs::read(&p)
                    .and_then(|c| Ok((c, std::fs::read(&key)?)))
                    .map_err(|e| format!("{e} (a NAME.crt needs its NAME.key)"))
                    .and_then(|(c, k)| {
                        Certificate::load(stem, Source::Dir, &c, &k).map_err(|e| e.to_string())
                    })
            }
            _ => continue,
        };
        match loaded {
            Ok(c) => out.push(Arc::new(c)),
            Err(e) => bad.push((p, e)),
        }
    }
    (out, bad)
}

/// What decides that a directory changed: its files' names, sizes and modification times.
fn dir_stamp(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    v.sort();
    v
}

/// Loads `dir` into `certs` now, then again each second it changed (a half-written file that
/// does not load keeps that certificate out until it does; the others stay served).
pub async fn follow_dir(dir: PathBuf, certs: Arc<ServerCerts>) {
    let mut last = None;
    loop {
        let stamp = dir_stamp(&dir);
        if last.as_ref() != Some(&stamp) {
            let (loaded, bad) = read_dir(&dir);
            for (p, e) in &bad {
                tracing::warn!(file = %p.display(), error = %e, "certificate not loaded");
            }
            tracing::info!(dir = %dir.display(), certificates = loaded.len(), "certificate directory read");
            certs.set(Source::Dir, loaded);
            last = Some(stamp);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str, names: &[&str]) -> Arc<Certificate> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let c = params.self_signed(&key).unwrap();
        Arc::new(
            Certificate::load(
                name,
                Source::Api,
                c.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
            )
            .unwrap(),
        )
    }

    fn leaf(k: Option<Arc<CertifiedKey>>) -> Vec<u8> {
        k.unwrap().cert[0].as_ref().to_vec()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_default() {
        let a = cert("a", &["a.example.com"]);
        let w = cert("w", &["*.example.com"]);
        let d = cert("default", &["other.test"]);
        let set = CertSet::build(&[Arc::clone(&a), Arc::clone(&w), Arc::clone(&d)], &[]);
        let der = |c: &Arc<Certificate>| c.key.cert[0].as_ref().to_vec();
        assert_eq!(leaf(set.pick(Some("a.example.com"))), der(&a));
        assert_eq!(leaf(set.pick(Some("A.Example.COM."))), der(&a));
        assert_eq!(leaf(set.pick(Some("b.example.com"))), der(&w));
        // A wildcard covers one label only.
        assert_eq!(leaf(set.pick(Some("x.b.example.com"))), der(&d));
        assert_eq!(leaf(set.pick(Some("example.com"))), der(&d));
        assert_eq!(leaf(set.pick(None)), der(&d));
        // Without one named default, the first in order.
        let set = CertSet::build(&[Arc::clone(&w), Arc::clone(&a)], &[]);
        assert_eq!(leaf(set.pick(Some("nothing.test"))), der(&w));
        assert!(CertSet::build(&[], &[]).pick(Some("a")).is_none());
    }

    #[test]
    fn names_expiry_and_a_mismatched_key() {
        let c = cert("a", &["a.example.com", "*.a.example.com"]);
        assert_eq!(c.names, ["a.example.com", "*.a.example.com"]);
        assert!(c.seconds_left() > 0);
        assert_eq!(c.fingerprint.len(), 64);
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let pem = rcgen::CertificateParams::new(vec!["x.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let e = Certificate::load(
            "x",
            Source::Dir,
            pem.as_bytes(),
            other.serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        assert!(summary(b"not a pem").is_err());
    }
}
