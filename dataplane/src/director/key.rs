//! Request keys and the hashes directors derive from them.
//!
//! A key is a string (bytes), an integer given as is, or a client IP address. Each algorithm
//! asks for the hash it needs, computed at most once per key:
//! - [`Key::h32`]: Varnish's `H32` (last four bytes of SHA-256, little-endian), used by the
//!   `varnish` shard algorithm and the `hash` director;
//! - [`Key::h64`]: xxh3-64, used by the `balanced` shard algorithm.

use std::cell::Cell;
use std::net::IpAddr;

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_64;

use super::SelectError;

/// Varnish's `H32(s1, s2, …)`: SHA-256 over the non-empty pieces in order, then the last four
/// digest bytes read little-endian (`VRT_HashStrands32`).
pub fn h32(pieces: &[&[u8]]) -> u32 {
    let d = match pieces {
        // A request key is one piece, and almost always short.
        [one] if one.len() <= ONE_BLOCK => return h32_one_block(one),
        [one] => Sha256::digest(one),
        _ => {
            let mut sha = Sha256::new();
            for p in pieces.iter().filter(|p| !p.is_empty()) {
                sha.update(p);
            }
            sha.finalize()
        }
    };
    u32::from_le_bytes([d[28], d[29], d[30], d[31]])
}

/// The longest message whose padding fits in one 64-byte SHA-256 block.
const ONE_BLOCK: usize = 55;

/// SHA-256's initial hash value (FIPS 180-4 §5.3.3).
const SHA256_H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// `H32` of a message of at most [`ONE_BLOCK`] bytes: the padded block is built in place and
/// compressed once (the same compression function, with SHA-NI where the CPU has it), without
/// the streaming hasher's buffer and finalisation: 5–8 ns less per varnish lookup than
/// `Sha256::digest` (`docs/benchmarks.md`). (Assembling the block in 16-byte integers instead
/// of copying the key in measured 4–8 ns slower.)
#[inline(always)]
fn h32_one_block(data: &[u8]) -> u32 {
    let mut block = [0u8; 64];
    let len = data.len().min(ONE_BLOCK);
    block[..len].copy_from_slice(&data[..len]);
    block[len] = 0x80;
    block[56..].copy_from_slice(&((len as u64) * 8).to_be_bytes());
    let mut state = SHA256_H0;
    // `from_ref`, not `&[block]`: the latter copied the block once more on the stack.
    sha2::block_api::compress256(&mut state, std::slice::from_ref(&block));
    // Digest bytes 28..32 are state[7] big-endian; H32 reads them little-endian.
    state[7].swap_bytes()
}

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource<'a> {
    /// A string key (header value, cookie, URL, …).
    Bytes(&'a [u8]),
    /// An integer key, used as given (Varnish `by=KEY`).
    Int(u64),
    /// The client's address.
    Ip(IpAddr),
}

/// A request key with lazily computed, cached hashes.
#[derive(Debug, Clone)]
pub struct Key<'a> {
    source: KeySource<'a>,
    // `Cell<Option<_>>` rather than `OnceCell`: the cached read inlines into the lookup.
    h32: Cell<Option<Option<u32>>>,
    h64: Cell<Option<u64>>,
}

impl<'a> Key<'a> {
    /// A key from any source.
    pub fn new(source: KeySource<'a>) -> Key<'a> {
        Key {
            source,
            h32: Cell::new(None),
            h64: Cell::new(None),
        }
    }

    /// A string key.
    pub fn str(s: &'a str) -> Key<'a> {
        Key::new(KeySource::Bytes(s.as_bytes()))
    }

    /// An integer key.
    pub fn int(v: u64) -> Key<'a> {
        Key::new(KeySource::Int(v))
    }

    /// A client-address key.
    pub fn ip(ip: IpAddr) -> Key<'a> {
        Key::new(KeySource::Ip(ip))
    }

    /// Where the key came from.
    pub fn source(&self) -> KeySource<'a> {
        self.source
    }

    /// The 32-bit Varnish key: `H32(string)`, an integer as given (it must fit in 32 bits, as
    /// Varnish's `by=KEY` requires), or `H32` of the address in its usual text form (what
    /// `shard.key(client.ip)` hashes).
    #[inline]
    pub fn h32(&self) -> Result<u32, SelectError> {
        let v = match self.h32.get() {
            Some(v) => v,
            None => {
                let v = match self.source {
                    // `h32` would take this branch too; calling it directly measured 3–4 ns
                    // faster per varnish lookup (2026-11-23, A/B of 3 runs each).
                    KeySource::Bytes(b) if b.len() <= ONE_BLOCK => Some(h32_one_block(b)),
                    KeySource::Bytes(b) => Some(h32(&[b])),
                    KeySource::Int(v) => u32::try_from(v).ok(),
                    KeySource::Ip(ip) => Some(h32(&[canonical_ip(ip).to_string().as_bytes()])),
                };
                self.h32.set(Some(v));
                v
            }
        };
        v.ok_or(SelectError::KeyOutOfRange)
    }

    /// The 64-bit key of the balanced algorithm: xxh3-64 of the string, the integer as given,
    /// or xxh3-64 of the address octets (IPv4-mapped IPv6 counts as IPv4).
    #[inline(always)]
    pub fn h64(&self) -> u64 {
        if let Some(v) = self.h64.get() {
            return v;
        }
        let v = match self.source {
            KeySource::Bytes(b) => xxh3_64(b),
            KeySource::Int(v) => v,
            KeySource::Ip(ip) => match canonical_ip(ip) {
                IpAddr::V4(v4) => xxh3_64(&v4.octets()),
                IpAddr::V6(v6) => xxh3_64(&v6.octets()),
            },
        };
        self.h64.set(Some(v));
        v
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 client it stands for, so a dual-stack listener and
/// an IPv4 listener give the same key.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A 64-bit finaliser (MurmurHash3's fmix64): a bijection with full avalanche, used to derive
/// independent deterministic numbers from one key hash.
#[inline]
pub(crate) fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A deterministic number in `[0, 1)` from a key hash and a purpose tag. Rampup and warmup use
/// it instead of a process-local random number, so every node decides the same for a key.
pub(crate) fn unit(hash: u64, tag: u64) -> f64 {
    // 53 random bits fill an f64 mantissa exactly.
    (fmix64(hash ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 11) as f64
        * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn h32_matches_varnishd() {
        // Checked against varnishd 7.1.1 (shared/reference/varnish-directors.md §1.1).
        assert_eq!(h32(&[b"user-0"]), 2_912_063_798);
        assert_eq!(Key::str("user-0").h32(), Ok(2_912_063_798));
    }

    #[test]
    fn one_block_h32_equals_the_streaming_digest_at_every_length() {
        let bytes: Vec<u8> = (0..130u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..bytes.len() {
            let msg = &bytes[..len];
            let d = Sha256::digest(msg);
            assert_eq!(
                h32(&[msg]),
                u32::from_le_bytes([d[28], d[29], d[30], d[31]]),
                "length {len}"
            );
        }
    }

    #[test]
    fn h32_skips_empty_pieces_and_adds_no_separator() {
        assert_eq!(h32(&[b"b0", b"", b"1"]), h32(&[b"b01"]));
        assert_eq!(h32(&[b"b", b"01"]), h32(&[b"b01"]));
    }

    #[test]
    fn integer_keys_are_taken_as_given() {
        assert_eq!(Key::int(42).h32(), Ok(42));
        assert_eq!(Key::int(u64::from(u32::MAX)).h32(), Ok(u32::MAX));
        assert_eq!(Key::int(1 << 32).h32(), Err(SelectError::KeyOutOfRange));
        assert_eq!(Key::int(7).h64(), 7);
    }

    #[test]
    fn ip_keys_hash_the_text_form_and_mapped_v4_is_v4() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(Key::ip(v4).h32(), Ok(h32(&[b"192.0.2.7"])));
        assert_eq!(Key::ip(mapped).h32(), Key::ip(v4).h32());
        assert_eq!(Key::ip(mapped).h64(), Key::ip(v4).h64());
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(Key::ip(v6).h32(), Ok(h32(&[b"::1"])));
    }

    #[test]
    fn unit_is_in_range_and_depends_on_tag() {
        for h in [0u64, 1, u64::MAX, 0xdead_beef] {
            let a = unit(h, 1);
            let b = unit(h, 2);
            assert!((0.0..1.0).contains(&a) && (0.0..1.0).contains(&b));
            assert_ne!(a, b);
        }
    }
}
