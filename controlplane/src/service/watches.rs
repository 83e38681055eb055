//! How many Watch streams are open, per token and per connection: each holds a store watch
//! and a task for as long as the client keeps it, so a read-only token must not open them
//! without bound. Beyond a cap the call is RESOURCE_EXHAUSTED; a stream's count is released
//! when it ends (the client went away, or the store's watch ended).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use rustc_hash::FxHashMap;
use tonic::Status;

/// Watch streams one token may hold open (all callers without a token count as one).
pub const MAX_WATCHES_PER_TOKEN: usize = 1000;
/// Watch streams one client connection may hold open.
pub const MAX_WATCHES_PER_CONNECTION: usize = 100;

/// The open streams.
#[derive(Debug, Default)]
pub(super) struct Watches {
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    by_token: FxHashMap<Option<[u8; 32]>, usize>,
    by_connection: FxHashMap<SocketAddr, usize>,
}

/// One open stream's place in the counts.
#[derive(Debug)]
pub(super) struct WatchGuard {
    watches: Arc<Watches>,
    token: Option<[u8; 32]>,
    connection: Option<SocketAddr>,
}

impl Watches {
    /// Streams open now (every stream counts once under its token).
    pub(super) fn total(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_token
            .values()
            .sum()
    }

    /// Counts a new stream of `token` on `connection`, unless a cap is reached.
    pub(super) fn open(
        self: &Arc<Self>,
        token: Option<[u8; 32]>,
        connection: Option<SocketAddr>,
    ) -> Result<WatchGuard, Status> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let t = open.by_token.get(&token).copied().unwrap_or(0);
        if t >= MAX_WATCHES_PER_TOKEN {
            return Err(Status::resource_exhausted(format!(
                "this token already holds {t} Watch streams; at most {MAX_WATCHES_PER_TOKEN}"
            )));
        }
        if let Some(c) = connection {
            let n = open.by_connection.get(&c).copied().unwrap_or(0);
            if n >= MAX_WATCHES_PER_CONNECTION {
                return Err(Status::resource_exhausted(format!(
                    "this connection already holds {n} Watch streams; at most {MAX_WATCHES_PER_CONNECTION}"
                )));
            }
            *open.by_connection.entry(c).or_default() += 1;
        }
        *open.by_token.entry(token).or_default() += 1;
        Ok(WatchGuard {
            watches: Arc::clone(self),
            token,
            connection,
        })
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut open = self
            .watches
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        fn release<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, usize>, k: K) {
            if let Some(n) = map.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&k);
                }
            }
        }
        release(&mut open.by_token, self.token);
        if let Some(c) = self.connection {
            release(&mut open.by_connection, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_token_and_connection_and_released_on_drop() {
        let w = Arc::new(Watches::default());
        let conn = |port| Some(SocketAddr::from(([127, 0, 0, 1], port)));
        let mut held = Vec::new();
        for i in 0..MAX_WATCHES_PER_CONNECTION {
            held.push(
                w.open(Some([1; 32]), conn(1))
                    .unwrap_or_else(|e| panic!("{i}: {e}")),
            );
        }
        let e = w.open(Some([1; 32]), conn(1)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        // Other connections, until the token's cap.
        let mut port = 2;
        while held.len() < MAX_WATCHES_PER_TOKEN {
            for _ in 0..MAX_WATCHES_PER_CONNECTION.min(MAX_WATCHES_PER_TOKEN - held.len()) {
                held.push(w.open(Some([1; 32]), conn(port)).unwrap());
            }
            port += 1;
        }
        let e = w.open(Some([1; 32]), conn(port)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        // Another token is not affected; a closed stream frees its place.
        assert!(w.open(Some([2; 32]), conn(port)).is_ok());
        held.pop();
        assert!(w.open(Some([1; 32]), conn(port)).is_ok());
        drop(held);
        let open = w.open.lock().unwrap();
        assert!(open.by_connection.is_empty());
    }
}
