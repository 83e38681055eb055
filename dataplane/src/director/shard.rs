//! The shard director: one of two consistent-hash algorithms ([`super::varnish`] or
//! [`super::balanced`]) plus rampup and warmup.
//!
//! Rampup and warmup choose between the chosen member `c` and the next healthy member `a` of
//! the same walk. Varnish draws a process-local random number for that; Tether derives the
//! number from the key's hash instead, so every node with the same health view and clock makes
//! the same choice for the same key, and a key that has moved to a ramping member stays there
//! as the ramp proceeds.

use std::time::Duration;

use super::balanced::SlotTable;
use super::key::{Key, unit};
use super::varnish::Ring;
use super::{HealthyMode, SelectError};

const RAMPUP_TAG: u64 = 1;
const WARMUP_TAG: u64 = 2;

#[derive(Debug, Clone)]
pub(crate) enum Table {
    Varnish(Ring),
    Balanced(SlotTable),
}

/// A built shard director. Hosts are its ring hosts (varnish: members with duplicate idents
/// dropped; `host_member` maps them back to members) or its members themselves (balanced,
/// where `host_member` is empty).
#[derive(Debug, Clone)]
pub(crate) struct Shard {
    pub(crate) table: Table,
    pub(crate) host_member: Vec<usize>,
    pub(crate) healthy: HealthyMode,
    pub(crate) rampup: Duration,
    pub(crate) warmup: f64,
    /// Per host: rampup overriding the director's.
    pub(crate) host_rampup: Vec<Option<Duration>>,
    /// Whether rampup or warmup can apply at all (computed once, not per request).
    pub(crate) ramps: bool,
    /// Varnish: per ring host, its member's backend id, when every member is a backend.
    pub(crate) host_backend: Option<Vec<u32>>,
}

/// What the shard director needs to know about its members' health (generic, so that the
/// checks inline into the walk).
pub(crate) struct MemberHealth<'a, H, S> {
    pub(crate) healthy: &'a H,
    pub(crate) since_change: &'a S,
}

impl Shard {
    /// Whether any rampup or warmup is configured.
    pub(crate) fn ramps(rampup: Duration, warmup: f64, host_rampup: &[Option<Duration>]) -> bool {
        rampup > Duration::ZERO
            || warmup > 0.0
            || host_rampup.iter().flatten().any(|r| *r > Duration::ZERO)
    }

    /// The backend for `key` on the usual request — a first pick (alt 0) without rampup or
    /// warmup, from a director whose members are all backends — read from a per-slot (flat
    /// balanced) or per-host (varnish) table of backend ids, with no host → member → backend
    /// steps. `None` when this path does not apply and [`Shard::select`] answers.
    #[inline(always)]
    pub(crate) fn select_backend<H: Fn(u32) -> bool>(
        &self,
        key: &Key<'_>,
        alt: u32,
        mode: Option<HealthyMode>,
        healthy: &H,
    ) -> Option<Option<u32>> {
        if alt != 0 || self.ramps {
            return None;
        }
        let mode = mode.unwrap_or(self.healthy);
        match &self.table {
            Table::Balanced(slots) => {
                if !slots.is_flat() {
                    return None;
                }
                slots.first_flat_backend(key.h64(), mode != HealthyMode::Ignore, healthy)
            }
            Table::Varnish(ring) => {
                let host_backend = self.host_backend.as_deref()?;
                // A key out of range takes the general path, which reports it.
                let k = key.h32().ok()?;
                let backend = |h: u32| host_backend.get(h as usize).copied();
                let accept =
                    |h: u32| mode == HealthyMode::Ignore || backend(h).is_some_and(healthy);
                ring.first(k, &accept).map(backend)
            }
        }
    }

    /// The member for `key`.
    #[inline]
    pub(crate) fn select<H: Fn(usize) -> bool, S: Fn(usize) -> Duration>(
        &self,
        key: &Key<'_>,
        alt: u32,
        mode: Option<HealthyMode>,
        health: &MemberHealth<'_, H, S>,
    ) -> Result<Option<usize>, SelectError> {
        let mode = mode.unwrap_or(self.healthy);
        let ramp = self.ramps;
        let (pick, hash) = match &self.table {
            Table::Varnish(ring) => {
                let k = key.h32()?;
                let host_healthy = |h: u32| (health.healthy)(self.host_member[h as usize]);
                (ring.pick(k, alt, mode, ramp, &host_healthy), u64::from(k))
            }
            Table::Balanced(slots) => {
                let k = key.h64();
                let member_healthy = |m: u32| (health.healthy)(m as usize);
                (slots.pick(k, alt, mode, ramp, &member_healthy), k)
            }
        };
        let Some(c) = pick.chosen else {
            return Ok(None);
        };
        let chosen = match pick.successor {
            Some(a) => self.ramp_or_warm(c, a, hash, health),
            None => c,
        };
        Ok(Some(self.member(chosen)))
    }

    /// The member index of host `h`.
    #[inline]
    fn member(&self, h: u32) -> usize {
        match self.table {
            Table::Varnish(_) => self.host_member[h as usize],
            Table::Balanced(_) => h as usize,
        }
    }

    /// Varnish's rampup/warmup rule (reference §1.6) with a key-derived number in `[0, 1)`.
    fn ramp_or_warm<H: Fn(usize) -> bool, S: Fn(usize) -> Duration>(
        &self,
        c: u32,
        a: u32,
        hash: u64,
        health: &MemberHealth<'_, H, S>,
    ) -> u32 {
        let rampup_of = |h: u32| self.host_rampup[h as usize].unwrap_or(self.rampup);
        let since = |h: u32| (health.since_change)(self.member(h));
        let (tc, rc) = (since(c), rampup_of(c));
        if tc < rc {
            // c is ramping up: P(c) = tc / rc, unless a is ramping too.
            let (ta, ra) = (since(a), rampup_of(a));
            if ta < ra || unit(hash, RAMPUP_TAG) * rc.as_secs_f64() < tc.as_secs_f64() {
                c
            } else {
                a
            }
        } else if self.warmup == 0.0 || unit(hash, WARMUP_TAG) > self.warmup {
            c
        } else {
            a
        }
    }

    /// Members in walk order for `key`, whatever their health.
    pub(crate) fn order(&self, key: &Key<'_>, limit: usize) -> Result<Vec<usize>, SelectError> {
        let hosts = match &self.table {
            Table::Varnish(ring) => ring.order(key.h32()?, limit),
            Table::Balanced(slots) => slots.order(key.h64(), limit),
        };
        Ok(hosts.into_iter().map(|h| self.member(h)).collect())
    }
}
