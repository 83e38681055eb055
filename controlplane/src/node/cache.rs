//! The snapshot cache: the last applied state on the node's own disk, so that a node that
//! starts while the store is unreachable serves what it served before.
//!
//! Format: the magic `TTHRSNP1`, the SHA-256 of the payload, then the payload — the state as a
//! `tether.v1.ConfigSnapshot` message ([`State::to_snapshot`]). Written to a temporary file,
//! fsynced, renamed over the old one, and the directory fsynced: a crash or a power cut leaves
//! the old file or the new one, never a torn or empty one (a rename is only durable once its
//! directory is synced, and without the file's own fsync first, ext4 and XFS may persist the
//! rename before the data).
//!
//! The file's modification time is when the store last confirmed its contents: it is written
//! at each applied revision, and [`touch`]ed while the store confirms an unchanged state, so a
//! node that starts from it knows how old what it serves may be (`--cache-max-age`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use prost::Message;
use sha2::{Digest, Sha256};
use tether_proto::v1;

use crate::state::State;

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

const MAGIC: &[u8; 8] = b"TTHRSNP1";

fn encode(state: &State) -> Vec<u8> {
    let payload = state.encode_snapshot();
    let mut out = Vec::with_capacity(payload.len() + 40);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    out
}

fn decode(path: &Path, bytes: &[u8]) -> Result<State, CacheError> {
    let damaged = || CacheError::Damaged(path.display().to_string());
    let rest = bytes.strip_prefix(MAGIC).ok_or_else(damaged)?;
    if rest.len() < 32 || Sha256::digest(&rest[32..]).as_slice() != &rest[..32] {
        return Err(damaged());
    }
    let snapshot = v1::ConfigSnapshot::decode(&rest[32..]).map_err(|_| damaged())?;
    Ok(State::from_snapshot(snapshot).0)
}

/// Writes `bytes` to `path` durably: a temporary file, fsynced, renamed, the directory fsynced.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    // Owner-only: the state holds certificates' private keys.
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
    };
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Writes the state to `path` atomically and durably.
pub async fn write(path: PathBuf, state: &State) -> Result<(), CacheError> {
    let bytes = encode(state);
    tokio::task::spawn_blocking(move || {
        write_durably(&path, &bytes).map_err(|source| CacheError::Io {
            path: path.display().to_string(),
            source,
        })
    })
    .await
    .unwrap_or_else(|e| Err(CacheError::Damaged(format!("cache writer failed: {e}"))))
}

/// Marks the cache as confirmed now (its modification time), without rewriting it.
pub fn touch(path: &Path) -> Result<(), CacheError> {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(|source| CacheError::Io {
            path: path.display().to_string(),
            source,
        })
}

/// Reads the cache file, if there is one: its state and when the store last confirmed it.
pub fn read(path: &Path) -> Result<Option<(State, SystemTime)>, CacheError> {
    let io = |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let confirmed = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .map_err(io)?;
            decode(path, &bytes).map(|s| Some((s, confirmed)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PutResource;

    #[test]
    fn the_cache_round_trips_and_detects_damage() {
        let mut s = State {
            revision: 42,
            config_revision: 40,
            ..State::default()
        };
        s.backends.put(
            "b0".into(),
            v1::Backend {
                name: "b0".into(),
                address: "127.0.0.1:1".into(),
                revision: 40,
                ..Default::default()
            },
        );
        let bytes = encode(&s);
        let p = Path::new("cache");
        let back = decode(p, &bytes).unwrap();
        assert_eq!(back, s);
        let mut bad = bytes;
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(decode(p, &bad), Err(CacheError::Damaged(_))));
        assert!(decode(p, b"nope").is_err());
    }

    #[tokio::test]
    async fn a_write_cut_short_leaves_the_last_good_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.cache");
        let state = |revision| State {
            revision,
            config_revision: revision,
            ..State::default()
        };
        write(path.clone(), &state(1)).await.unwrap();
        // Killed while writing the next one: a torn temporary file beside the cache.
        std::fs::write(path.with_extension("tmp"), &encode(&state(2))[..20]).unwrap();
        let (s, _) = read(&path).unwrap().unwrap();
        assert_eq!(s.revision, 1);
        // Killed right after the rename: the new one, whole.
        write(path.clone(), &state(2)).await.unwrap();
        let (s, written) = read(&path).unwrap().unwrap();
        assert_eq!(s.revision, 2);
        assert!(!path.with_extension("tmp").exists());
        // Touched: confirmed later, same contents.
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(read(&path).unwrap().unwrap().1, old);
        touch(&path).unwrap();
        let (s, touched) = read(&path).unwrap().unwrap();
        assert_eq!(s.revision, 2);
        assert!(touched >= written);
    }
}
