//! The set of members a shard walk has already visited.
//!
//! Walks are short (a handful of members) almost always, so the set lives inline on the stack
//! and only spills into a bitmap when a walk meets many sick members.

const INLINE: usize = 16;

#[derive(Debug)]
pub(crate) struct Visited {
    inline: [u32; INLINE],
    len: usize,
    bits: Vec<u64>,
}

impl Visited {
    pub(crate) fn new() -> Visited {
        Visited {
            inline: [0; INLINE],
            len: 0,
            bits: Vec::new(),
        }
    }

    /// How many distinct members were inserted.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, m: u32) -> bool {
        if self.bits.is_empty() {
            self.inline[..self.len].contains(&m)
        } else {
            let w = (m / 64) as usize;
            w < self.bits.len() && self.bits[w] & (1 << (m % 64)) != 0
        }
    }

    /// Inserts `m`; returns false if it was already there.
    pub(crate) fn insert(&mut self, m: u32) -> bool {
        if self.contains(m) {
            return false;
        }
        if self.bits.is_empty() && self.len < INLINE {
            self.inline[self.len] = m;
        } else {
            if self.bits.is_empty() {
                let inline = self.inline;
                for v in inline {
                    self.set_bit(v);
                }
            }
            self.set_bit(m);
        }
        self.len += 1;
        true
    }

    fn set_bit(&mut self, m: u32) {
        let w = (m / 64) as usize;
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        self.bits[w] |= 1 << (m % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_without_losing_members() {
        let mut v = Visited::new();
        for m in (0..100).rev() {
            assert!(v.insert(m * 7));
            assert!(!v.insert(m * 7));
        }
        assert_eq!(v.len(), 100);
        for m in 0..700 {
            assert_eq!(v.contains(m), m % 7 == 0, "{m}");
        }
    }
}
