//! The data-plane follower: keeps a [`Runtime`] on the store's latest revision.
//!
//! A state machine (drawn in `docs/architecture.md`):
//! `Listing` — list the root at revision R, build and apply the snapshot, mark ready — then
//! `Watching{R}` — watch from R+1 and apply each batch's events together (one snapshot per
//! batch). When the watch ends or fails it re-watches from the last applied revision + 1 after
//! a jittered backoff; when that history is compacted, or a batch's revision is not past the
//! applied one (the store was restored from a backup), it lists again. A revision that does not
//! validate is not applied: the previous snapshot keeps serving, and the failure is logged and
//! counted. Configuration is never dropped because of an error.
//!
//! With a cache file, every applied state is also written to local disk (revision, checksum),
//! and a follower that starts while the store is unreachable serves from it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use sha2::{Digest, Sha256};
use tether_dataplane::runtime::Runtime;
use tether_proto::keys::Layout;
use tether_proto::v1;

use crate::convert::{self, Converted};
use crate::state::State;
use crate::store::{Event, Store, StoreError, WatchBatch};

/// Jittered exponential backoff: 100 ms doubling to 10 s, reset after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// The next delay: a random point in [d/2, d], then d doubles (up to 10 s).
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(10));
        d.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// The commit time a control-plane write left in the serial key's value (bytes 16..24, Unix
/// nanoseconds), if this batch carries one.
pub fn commit_time(layout: &Layout, batch: &WatchBatch) -> Option<SystemTime> {
    let serial = layout.serial();
    batch.events.iter().find_map(|e| match e {
        Event::Put(kv) if kv.key == serial && kv.value.len() >= 24 => {
            let mut ns = [0u8; 8];
            ns.copy_from_slice(&kv.value[16..24]);
            Some(UNIX_EPOCH + Duration::from_nanos(u64::from_le_bytes(ns)))
        }
        _ => None,
    })
}

/// Whether a batch changes a resource (rather than only node records or the serial key).
fn touches_config(layout: &Layout, batch: &WatchBatch) -> bool {
    batch.events.iter().any(|e| {
        matches!(
            layout.parse(e.key()),
            Some((
                tether_proto::keys::Kind::Backend
                    | tether_proto::keys::Kind::Probe
                    | tether_proto::keys::Kind::Director
                    | tether_proto::keys::Kind::Route,
                _
            ))
        )
    })
}

/// Why the cache file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing failed.
    #[error("snapshot cache {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is damaged (bad magic, checksum or encoding).
    #[error("snapshot cache {0}: damaged, ignored")]
    Damaged(String),
}

const CACHE_MAGIC: &[u8; 8] = b"TTHRSNP1";

fn encode_cache(state: &State) -> Vec<u8> {
    let cached = v1::ConfigSnapshot {
        revision: state.revision,
        backends: state.backends.values().cloned().collect(),
        probes: state.probes.values().cloned().collect(),
        directors: state.directors.values().cloned().collect(),
        routes: state.routes.values().cloned().collect(),
    };
    let payload = cached.encode_to_vec();
    let mut out = Vec::with_capacity(payload.len() + 40);
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    out
}

fn decode_cache(path: &Path, bytes: &[u8]) -> Result<State, CacheError> {
    let damaged = || CacheError::Damaged(path.display().to_string());
    let rest = bytes.strip_prefix(CACHE_MAGIC).ok_or_else(damaged)?;
    if rest.len() < 32 || Sha256::digest(&rest[32..]).as_slice() != &rest[..32] {
        return Err(damaged());
    }
    let c = v1::ConfigSnapshot::decode(&rest[32..]).map_err(|_| damaged())?;
    let mut s = State {
        revision: c.revision,
        ..State::default()
    };
    for r in c.backends {
        s.backends.insert(r.name.clone(), r);
    }
    for r in c.probes {
        s.probes.insert(r.name.clone(), r);
    }
    for r in c.directors {
        s.directors.insert(r.name.clone(), r);
    }
    for r in c.routes {
        s.routes.insert(r.name.clone(), r);
    }
    Ok(s)
}

/// Writes the state to `path` atomically (temporary file, then rename).
async fn write_cache(path: PathBuf, state: &State) -> Result<(), CacheError> {
    let bytes = encode_cache(state);
    tokio::task::spawn_blocking(move || {
        let io = |source| CacheError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    })
    .await
    .unwrap_or_else(|e| Err(CacheError::Damaged(format!("cache writer failed: {e}"))))
}

/// Writes the cache file, if there is one (a failure is logged: serving goes on).
async fn save(opts: &Options, state: &State) {
    if let Some(p) = &opts.cache
        && let Err(e) = write_cache(p.clone(), state).await
    {
        tracing::warn!(error = %e, "snapshot cache not written");
    }
}

/// Reads the cache file, if there is one.
pub fn read_cache(path: &Path) -> Result<Option<State>, CacheError> {
    match std::fs::read(path) {
        Ok(bytes) => decode_cache(path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CacheError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Applies a state to the runtime; false when it could not be applied.
///
/// A stored object that does not validate (written to the store by something other than a
/// control plane, or by an older version) is left out with a log line and a count in
/// `tether_invalid_objects_total` ([`convert::validate_leaving_out`]); a referrer of a
/// left-out object is left out too. One bad object does not stop every later change.
///
/// `converted` carries conversions from one revision to the next: only changed backends are
/// converted again.
pub fn apply(rt: &Runtime, state: &State, converted: &mut Converted) -> bool {
    rt.saw_revision(state.revision);
    let current = rt.snapshot();
    let set = state.resources();
    let validated =
        convert::validate_leaving_out(&set, Some(&current.directors), converted, |_| true);
    // Not held across the install: the replaced snapshot is freed off this path.
    drop(current);
    match validated {
        Ok((v, left_out)) => {
            for e in left_out {
                rt.counters.invalid_objects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(revision = state.revision, error = %e, "stored object is invalid; left out");
            }
            match rt.install(state.revision, v.config, v.directors) {
                Ok(()) => {
                    tracing::debug!(revision = state.revision, "applied");
                    true
                }
                Err(e) => {
                    rt.counters
                        .rejected_revisions
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(revision = state.revision, error = %e, "revision not applied; keeping the previous snapshot");
                    false
                }
            }
        }
        Err(e) => {
            rt.counters
                .rejected_revisions
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(revision = state.revision, error = %e, "stored configuration is invalid; keeping the previous snapshot");
            false
        }
    }
}

fn log_decode_errors(rt: &Runtime, errors: Vec<crate::state::DecodeError>) {
    for e in errors {
        rt.counters.invalid_objects.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "stored object does not decode; left out");
    }
}

/// Where the follower keeps its local copy, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The snapshot cache file.
    pub cache: Option<PathBuf>,
}

/// Follows the store until `shutdown` resolves.
pub async fn run<S: Store>(
    store: S,
    layout: Layout,
    rt: Arc<Runtime>,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut converted = Converted::default();
    if let Some(path) = &opts.cache {
        match read_cache(path) {
            Ok(Some(s)) => {
                if apply(&rt, &s, &mut converted) {
                    rt.set_from_cache();
                    rt.set_ready();
                    tracing::info!(revision = s.revision, cache = %path.display(), "serving the cached snapshot until the store answers");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "snapshot cache not used"),
        }
    }
    let mut backoff = Backoff::default();
    let mut state: Option<State> = None;
    let mut listed = false;
    loop {
        // Listing, unless a watch can resume from the applied revision.
        let mut s = match state.take() {
            Some(s) => s,
            None => match store.list(layout.root()).await {
                Ok(listing) => {
                    if listed {
                        rt.counters.relists.fetch_add(1, Ordering::Relaxed);
                    }
                    listed = true;
                    let (s, errors) = State::from_listing(&layout, &listing);
                    log_decode_errors(&rt, errors);
                    // A new store history may begin here (a restored store): revisions
                    // identify contents only within one.
                    converted = Converted::default();
                    if apply(&rt, &s, &mut converted) {
                        save(&opts, &s).await;
                    }
                    rt.mark_confirmed();
                    rt.set_ready();
                    s
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing the store failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.delay()) => continue,
                        () = &mut shutdown => return,
                    }
                }
            },
        };
        // Watching.
        let mut rx = match store.watch(layout.root(), s.revision + 1).await {
            Ok(rx) => rx,
            Err(StoreError::Compacted { .. }) => {
                tracing::warn!(revision = s.revision, "history compacted; listing again");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch failed; retrying");
                state = Some(s);
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay()) => continue,
                    () = &mut shutdown => return,
                }
            }
        };
        backoff.reset();
        loop {
            let batch = tokio::select! {
                b = rx.recv() => b,
                () = &mut shutdown => return,
            };
            match batch {
                Some(Ok(b)) if b.events.is_empty() => rt.mark_confirmed(),
                Some(Ok(b)) if b.revision <= s.revision => {
                    tracing::warn!(
                        batch = b.revision,
                        applied = s.revision,
                        "the store's revision went backwards (restored?); listing again"
                    );
                    break;
                }
                Some(Ok(b)) if !touches_config(&layout, &b) => {
                    // Node registrations and the like: nothing to rebuild.
                    s.revision = b.revision;
                    rt.saw_revision(b.revision);
                    rt.mark_confirmed();
                }
                Some(Ok(b)) => {
                    let committed = commit_time(&layout, &b);
                    let errors = s.apply_events(&layout, b.revision, &b.events);
                    log_decode_errors(&rt, errors);
                    if apply(&rt, &s, &mut converted) {
                        if let Some(t) = committed
                            && let Ok(d) = SystemTime::now().duration_since(t)
                        {
                            rt.apply_delay.observe(d);
                        }
                        save(&opts, &s).await;
                    }
                    rt.mark_confirmed();
                }
                Some(Err(StoreError::Compacted { .. })) => {
                    tracing::warn!("watch history compacted; listing again");
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch ended; resuming");
                    state = Some(s);
                    break;
                }
                None => {
                    state = Some(s);
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.delay()) => {}
            () = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_round_trips_and_detects_damage() {
        let mut s = State {
            revision: 42,
            ..State::default()
        };
        s.backends.insert(
            "b0".into(),
            v1::Backend {
                name: "b0".into(),
                address: "127.0.0.1:1".into(),
                ..Default::default()
            },
        );
        let bytes = encode_cache(&s);
        let p = Path::new("cache");
        let back = decode_cache(p, &bytes).unwrap();
        assert_eq!((back.revision, back.backends.len()), (42, 1));
        let mut bad = bytes;
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(decode_cache(p, &bad), Err(CacheError::Damaged(_))));
        assert!(decode_cache(p, b"nope").is_err());
    }
}
