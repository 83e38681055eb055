//! Split writes that are all or nothing: the intent record, and the recovery that completes a
//! split write a crash (or a lost quorum) interrupted.
//!
//! A write too large for one transaction is split into parts. Before its first part, the
//! write's parts are staged under `<root>intents/<id>-<k>` (one transaction each; no data
//! plane reads those keys). Its first part also puts `<root>intents/<id>` — the record is
//! live from then on — and every part puts the serial key marked "part k of n"
//! ([`crate::serial`]): data planes apply no revision inside the write, and the write's last
//! part makes the whole of it visible at once. Then the record is deleted.
//!
//! [`Api::recover`] runs before every write and when a control plane starts: a live record
//! whose write the serial key shows unfinished is completed from its staged parts (each guarded
//! by the serial key, so two control planes completing the same write cannot both commit a
//! part); a record whose write is finished, or staged parts that never became live and are
//! older than [`STALE_STAGING`], are deleted. The store never rests in a state that no API
//! call asked for.

use std::time::Duration;

use super::Api;
use crate::error::ApiError;
use crate::serial::{Serial, now_ns};
use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn, TxnOutcome};

/// Staged parts without a live record are deleted once this old (their writer gave up or
/// died before its first part; a younger one may still be writing).
pub(super) const STALE_STAGING: Duration = Duration::from_secs(600);

/// A part's ops as a staged value: the staging time (Unix ns, 8 bytes), then each op as a tag
/// (0 put, 1 delete, 2 leased put), the key's length (4 bytes) and key, and for a put the value's
/// length and value, then for a leased put the lease (8 bytes).
fn encode(time_ns: u64, ops: &[Op]) -> Vec<u8> {
    let mut v = time_ns.to_le_bytes().to_vec();
    let field = |v: &mut Vec<u8>, b: &[u8]| {
        v.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
        v.extend_from_slice(b);
    };
    for op in ops {
        match op {
            Op::Put(k, val) => {
                v.push(0);
                field(&mut v, k.as_bytes());
                field(&mut v, val);
            }
            Op::Delete(k) => {
                v.push(1);
                field(&mut v, k.as_bytes());
            }
            Op::PutLeased(k, val, lease) => {
                v.push(2);
                field(&mut v, k.as_bytes());
                field(&mut v, val);
                v.extend_from_slice(&lease.to_le_bytes());
            }
        }
    }
    v
}

fn decode(v: &[u8]) -> Option<(u64, Vec<Op>)> {
    let time_ns = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let mut rest = v.get(8..)?;
    let field = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let b = rest.get(4..4 + n)?.to_vec();
        *rest = &rest[4 + n..];
        Some(b)
    };
    let mut ops = Vec::new();
    while let Some((&tag, tail)) = rest.split_first() {
        rest = tail;
        let key = String::from_utf8(field(&mut rest)?).ok()?;
        ops.push(match tag {
            0 => Op::Put(key, field(&mut rest)?),
            1 => Op::Delete(key),
            2 => {
                let value = field(&mut rest)?;
                let lease = i64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
                rest = &rest[8..];
                Op::PutLeased(key, value, lease)
            }
            _ => return None,
        });
    }
    Some((time_ns, ops))
}

fn damaged(id: &str) -> ApiError {
    ApiError::Store(StoreError::Corrupt(format!(
        "the intent record of split write {id} is damaged"
    )))
}

impl<S: Store> Api<S> {
    fn intent_key(&self, id: &str) -> String {
        format!("{}{id}", self.intents_dir())
    }

    fn intent_part_key(&self, id: &str, part: u32) -> String {
        format!("{}{id}-{part}", self.intents_dir())
    }

    fn intents_dir(&self) -> String {
        format!("{}intents/", self.layout.root())
    }

    /// Stages a split write's parts before its first (see the module's doc).
    pub(super) async fn stage(&self, mark: &Serial, parts: &[Vec<Op>]) -> Result<(), ApiError> {
        let id = mark.id_hex();
        for (i, ops) in parts.iter().enumerate() {
            let key = self.intent_part_key(&id, i as u32 + 1);
            let txn = Txn {
                ops: vec![Op::Put(key, encode(mark.time_ns, ops))],
                ..Txn::default()
            };
            self.store.txn(txn).await?;
        }
        Ok(())
    }

    /// The op that makes a staged record live: put with the write's first part.
    pub(super) fn intent_live(&self, mark: &Serial) -> Op {
        Op::Put(
            self.intent_key(&mark.id_hex()),
            mark.parts.to_le_bytes().to_vec(),
        )
    }

    /// Commits part `mark.part` of a write: `ops` and the serial key's mark, if the serial key
    /// is still at `serial_revision`. The new revision; `None` when another write got there
    /// first.
    pub(super) async fn commit_part(
        &self,
        mark: Serial,
        mut ops: Vec<Op>,
        serial_revision: i64,
        fence: Option<&Compare>,
    ) -> Result<Option<i64>, ApiError> {
        let serial = self.layout.serial();
        let value = mark.encode();
        ops.push(Op::Put(serial.clone(), value.clone()));
        let mut compares = vec![Compare::ModRevision(serial.clone(), serial_revision)];
        compares.extend(fence.cloned());
        let txn = Txn {
            compares,
            ops,
            witness: Some((serial, value)),
        };
        let start = std::time::Instant::now();
        let outcome = self.store.txn(txn).await;
        let conflict = matches!(outcome, Ok(TxnOutcome::Failed { .. }));
        self.metrics.txn(start.elapsed(), conflict);
        Ok(match outcome? {
            TxnOutcome::Committed { revision } => Some(revision),
            TxnOutcome::Failed { .. } => None,
        })
    }

    /// Whether a write's fence (a compare) still holds.
    pub(super) async fn fence_holds(&self, fence: &Compare) -> Result<bool, ApiError> {
        let kv = self.store.get(fence.key()).await?;
        Ok(match fence {
            Compare::Exists(_) => kv.is_some(),
            Compare::Missing(_) => kv.is_none(),
            Compare::ModRevision(_, r) => kv.map_or(0, |kv| kv.mod_revision) == *r,
        })
    }

    /// Deletes the intent record of the write `mark` belongs to: its staged parts, and the
    /// live mark when `live` (its first part committed).
    pub(super) async fn drop_intent_of(&self, mark: &Serial, live: bool) {
        let id = mark.id_hex();
        let mut keys: Vec<String> = (1..=mark.parts)
            .map(|k| self.intent_part_key(&id, k))
            .collect();
        if live {
            keys.push(self.intent_key(&id));
        }
        self.drop_intent(&id, keys).await;
    }

    /// Deletes a write's intent record (its staged parts and the live mark), in as many
    /// transactions as it takes. Failures are logged: the next recovery deletes what is left.
    async fn drop_intent(&self, id: &str, keys: Vec<String>) {
        let per_txn = self.store.max_txn_ops().clamp(1, 1024);
        for chunk in keys.chunks(per_txn) {
            let txn = Txn {
                ops: chunk.iter().cloned().map(Op::Delete).collect(),
                ..Txn::default()
            };
            if let Err(e) = self.store.txn(txn).await {
                tracing::warn!(write = id, error = %e, "intent record not deleted; the next write's recovery will");
                return;
            }
        }
    }

    /// Completes split writes a crash interrupted, and deletes intent records that are done
    /// with (see the module's doc). Cheap when there is none: a listing of an empty prefix and
    /// a read of the serial key, at once.
    pub async fn recover(&self) -> Result<(), ApiError> {
        let dir = self.intents_dir();
        let serial_key = self.layout.serial();
        // Both reads at once: this runs before every write.
        let (listing, serial) =
            tokio::try_join!(self.store.list(&dir), self.store.get(&serial_key))?;
        if listing.kvs.is_empty() {
            return self.close_orphaned_mark(serial).await;
        }
        // id → (live, staged parts by number, keys)
        let mut records: std::collections::BTreeMap<String, Record> = Default::default();
        for kv in listing.kvs {
            let Some(name) = kv.key.strip_prefix(&dir) else {
                continue;
            };
            let (id, part) = match name.split_once('-') {
                Some((id, k)) => (id.to_owned(), k.parse::<u32>().ok()),
                None => (name.to_owned(), None),
            };
            let r = records.entry(id).or_default();
            match part {
                Some(k) => {
                    r.parts.insert(k, kv.value);
                }
                None => r.live = true,
            }
            r.keys.push(kv.key);
        }
        let mark = serial.as_ref().and_then(|kv| Serial::decode(&kv.value));
        let orphaned =
            mark.is_some_and(|m| m.is_open() && !records.get(&m.id_hex()).is_some_and(|r| r.live));
        for (id, r) in records {
            if r.live
                && let Some(m) = mark
                && m.id_hex() == id
                && m.is_open()
            {
                let mut revision = serial.as_ref().map_or(0, |kv| kv.mod_revision);
                for k in m.part + 1..=m.parts {
                    let (_, ops) = r
                        .parts
                        .get(&k)
                        .and_then(|v| decode(v))
                        .ok_or_else(|| damaged(&id))?;
                    let committed =
                        match self.commit_part(m.at(k), ops.clone(), revision, None).await {
                            // A lease the write bound resources to ended since: those resources
                            // would be gone by now anyway (and only resources on that lease name
                            // them), so the part goes without them rather than never.
                            Err(ApiError::Store(StoreError::LeaseNotFound(_))) => {
                                let ops = self.without_ended_leases(ops).await?;
                                self.commit_part(m.at(k), ops, revision, None).await?
                            }
                            other => other?,
                        };
                    match committed {
                        Some(rev) => revision = rev,
                        // Another control plane is completing it.
                        None => return Ok(()),
                    }
                }
                tracing::warn!(
                    write = %id,
                    parts = m.parts,
                    completed_from = m.part + 1,
                    revision,
                    "completed a split write that was interrupted"
                );
            } else if !r.live {
                let staged_at = r
                    .parts
                    .values()
                    .next()
                    .and_then(|v| decode(v))
                    .map(|(t, _)| t);
                let young = staged_at.is_some_and(|t| {
                    Duration::from_nanos(now_ns().saturating_sub(t)) < STALE_STAGING
                });
                if young {
                    continue;
                }
            }
            self.drop_intent(&id, r.keys).await;
        }
        if orphaned {
            let serial = self.store.get(&serial_key).await?;
            self.close_orphaned_mark(serial).await?;
        }
        Ok(())
    }
}

impl<S: Store> Api<S> {
    /// `ops` without the puts bound to leases that have ended.
    async fn without_ended_leases(&self, ops: Vec<Op>) -> Result<Vec<Op>, ApiError> {
        let ended = self.ended_leases(&ops).await?;
        Ok(ops
            .into_iter()
            .filter(|op| op.lease().is_none_or(|l| !ended.contains(&l)))
            .collect())
    }

    /// A serial key marking an unfinished write with no intent record to finish it from (the
    /// record deleted behind our back): nothing can complete or undo it, and every write would
    /// wait on it forever. Closing the mark lets the store's state, as the parts written left
    /// it, be applied — logged as the loss it is.
    async fn close_orphaned_mark(&self, serial: Option<KeyValue>) -> Result<(), ApiError> {
        let Some(kv) = serial else {
            return Ok(());
        };
        let Some(m) = Serial::decode(&kv.value).filter(Serial::is_open) else {
            return Ok(());
        };
        // A young mark may be a live writer whose record this listing raced.
        let age = Duration::from_nanos(now_ns().saturating_sub(m.time_ns));
        if age < STALE_STAGING {
            return Ok(());
        }
        tracing::error!(
            write = %m.id_hex(),
            parts_written = m.part,
            parts = m.parts,
            "a split write was left unfinished without its intent record; closing it as it stands"
        );
        self.commit_part(m.at(m.parts), Vec::new(), kv.mod_revision, None)
            .await
            .map(|_| ())
    }
}

#[derive(Debug, Default)]
struct Record {
    live: bool,
    parts: std::collections::BTreeMap<u32, Vec<u8>>,
    keys: Vec<String>,
}

/// A pause after each part of a split write but the last, from `TETHER_TEST_PAUSE_BETWEEN_PARTS_MS`:
/// what the end-to-end test uses to kill a control plane between parts. Read once; unset in
/// production.
pub(super) fn pause_between_parts() -> Option<Duration> {
    static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *PAUSE.get_or_init(|| {
        std::env::var("TETHER_TEST_PAUSE_BETWEEN_PARTS_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_parts_round_trip() {
        let ops = vec![
            Op::Put("/t/v1/backends/a".into(), vec![1, 2, 3]),
            Op::Delete("/t/v1/routes/r".into()),
            Op::Put("/t/v1/backends/b".into(), Vec::new()),
            Op::PutLeased("/t/v1/backends/c".into(), vec![4], 0x7f00_0000_0000_0001),
        ];
        assert_eq!(decode(&encode(7, &ops)), Some((7, ops.clone())));
        let bytes = encode(7, &ops);
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(&bytes[..4]), None);
    }
}
