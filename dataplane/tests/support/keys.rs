#![allow(unreachable_pub)]
//! Deterministic 16-character alphanumeric keys (xorshift), the key shape of
//! `shared/reference/hashing.md`. Shared by the director tests and benchmarks (`#[path]`).

/// `n` keys from `seed`.
pub fn keys(n: usize, seed: u64) -> Vec<String> {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            (0..16)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ALPHA[(x % ALPHA.len() as u64) as usize] as char
                })
                .collect()
        })
        .collect()
}
