//! The snapshot cache: the last applied state on the node's own disk, so that a node that
//! starts while the store is unreachable serves what it served before.
//!
//! Format: the magic `TTHRSNP1`, the SHA-256 of the payload, then the payload — the state as a
//! `tether.v1.ConfigSnapshot` message ([`State::to_snapshot`]). Written to a temporary file
//! and renamed, so a crash leaves the old file or the new one.

use std::path::{Path, PathBuf};

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
    let payload = state.to_snapshot(&[]).encode_to_vec();
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

/// Writes the state to `path` atomically (temporary file, then rename).
pub async fn write(path: PathBuf, state: &State) -> Result<(), CacheError> {
    let bytes = encode(state);
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

/// Reads the cache file, if there is one.
pub fn read(path: &Path) -> Result<Option<State>, CacheError> {
    match std::fs::read(path) {
        Ok(bytes) => decode(path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CacheError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_round_trips_and_detects_damage() {
        let mut s = State {
            revision: 42,
            config_revision: 40,
            ..State::default()
        };
        s.backends.insert(
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
}
