//! The serial key's value: which write last bumped it, when, and — for a write split over
//! several transactions — which part of how many. Every control-plane write puts it in each
//! of its transactions; a value whose part is short of its part count marks the store as
//! inside an unfinished split write, whose revisions no data plane applies.
//!
//! Layout (little-endian): 16 random bytes (the write's id), the commit time in Unix
//! nanoseconds (8 bytes), then part and parts (4 bytes each). Values without the last 8 bytes
//! (written by an earlier version) are whole writes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One write's mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serial {
    /// The write's id.
    pub id: [u8; 16],
    /// When this part was written, in Unix nanoseconds.
    pub time_ns: u64,
    /// This part, from 1.
    pub part: u32,
    /// The write's parts.
    pub parts: u32,
}

impl Serial {
    /// A new write of `parts` parts, at its first.
    pub fn new(parts: u32) -> Serial {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        id[8..].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        Serial {
            id,
            time_ns: now_ns(),
            part: 1,
            parts,
        }
    }

    /// The mark of part `part` of the same write, written now.
    pub fn at(self, part: u32) -> Serial {
        Serial {
            time_ns: now_ns(),
            part,
            ..self
        }
    }

    /// Whether parts of this write are still to come.
    pub fn is_open(&self) -> bool {
        self.part < self.parts
    }

    /// The write's id as hex (its intent record's key).
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// When this part was written.
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.time_ns)
    }

    /// The value to store.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32);
        v.extend_from_slice(&self.id);
        v.extend_from_slice(&self.time_ns.to_le_bytes());
        v.extend_from_slice(&self.part.to_le_bytes());
        v.extend_from_slice(&self.parts.to_le_bytes());
        v
    }

    /// A stored value; `None` when it is not one (a serial key written by something else).
    pub fn decode(v: &[u8]) -> Option<Serial> {
        let id: [u8; 16] = v.get(..16)?.try_into().ok()?;
        let time_ns = u64::from_le_bytes(v.get(16..24)?.try_into().ok()?);
        let (part, parts) = match (v.get(24..28), v.get(28..32)) {
            (Some(p), Some(n)) => (
                u32::from_le_bytes(p.try_into().ok()?),
                u32::from_le_bytes(n.try_into().ok()?),
            ),
            _ => (1, 1),
        };
        Some(Serial {
            id,
            time_ns,
            part,
            parts,
        })
    }
}

/// Now, in Unix nanoseconds (the marks' clock).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Whether a stored serial value marks an unfinished split write.
pub fn marks_open_write(value: &[u8]) -> bool {
    Serial::decode(value).is_some_and(|s| s.is_open())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_older_values() {
        let s = Serial::new(3);
        assert_eq!(Serial::decode(&s.encode()), Some(s));
        assert!(s.is_open() && s.at(2).is_open() && !s.at(3).is_open());
        assert_eq!(s.at(3).id, s.id);
        // A value of an earlier version: 24 bytes, a whole write.
        let old = &s.encode()[..24];
        let d = Serial::decode(old).unwrap();
        assert_eq!((d.part, d.parts, d.time_ns), (1, 1, s.time_ns));
        assert!(!marks_open_write(old) && !marks_open_write(b"x"));
    }
}
