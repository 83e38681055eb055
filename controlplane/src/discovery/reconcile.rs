//! One resolution applied to the configuration: the pure part of discovery, run inside the
//! write engine's change (so it is recomputed from the fresh state when another write wins).
//!
//! The backends a Discovery keeps are those whose `discovery` field names it. An address in
//! the answer gets its backend (created, or brought up to date with the template — an
//! operator's `admin_health` and `drain` kept); a kept backend whose address is missing from
//! the answer is marked missing in the status and deleted once it has been missing for the
//! grace period; a failed resolution changes no backend and marks the status failing.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tether_proto::v1;
use tether_proto::v1::discovery_status::State as Phase;

use super::spec::{self, Spec};
use crate::state::State;

/// What one resolution found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The addresses answered, sorted and without duplicates.
    Answer(Vec<SocketAddr>),
    /// Why it failed.
    Failed(String),
}

/// What [`reconcile`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Whether it changed anything (backends or the status).
    pub changed: bool,
    /// When the next missing backend's grace period ends (Unix ms), if any is missing.
    pub next_expiry_ms: Option<i64>,
    /// Backends the Discovery keeps after it.
    pub backends: usize,
}

/// Applies `outcome` for the Discovery `name` to `new` (a copy of `old`), as `replica` at
/// `now_ms`. A Discovery gone or invalid in `old` changes nothing.
pub fn reconcile(
    old: &State,
    new: &mut State,
    name: &str,
    outcome: &Outcome,
    now_ms: i64,
    replica: &str,
) -> Reconciled {
    let Some(d) = old.discoveries.get(name) else {
        return Reconciled::default();
    };
    let Ok(spec) = spec::spec(d, &format!("discoveries/{name}")) else {
        return Reconciled::default();
    };
    let stored = d.status.clone().unwrap_or_default();
    let kept: BTreeMap<&str, &v1::Backend> = old
        .backends
        .iter()
        .filter(|(_, b)| b.discovery == name)
        .map(|(n, b)| (n.as_str(), &**b))
        .collect();
    let mut status = v1::DiscoveryStatus {
        resolver: replica.to_owned(),
        ..stored.clone()
    };
    let mut changed = false;
    let mut next_expiry_ms = None;
    match outcome {
        Outcome::Failed(why) => {
            status.state = Phase::Failing as i32;
            status.message = why.clone();
        }
        Outcome::Answer(addrs) => {
            let (changes, notes) = answer(&spec, addrs, old, &kept, &mut status, now_ms);
            changed |= !changes.puts.is_empty() || !changes.deletes.is_empty();
            next_expiry_ms = changes.next_expiry_ms;
            for b in changes.puts {
                let label = format!("backends/{}", b.name);
                new.insert(b, label);
            }
            for n in &changes.deletes {
                new.backends.remove(n);
            }
            status.state = Phase::Ok as i32;
            status.message = notes;
        }
    }
    if status.state != stored.state {
        status.since_unix_ms = now_ms;
    }
    // The status alone is written only when it says something new (not on every refresh).
    let says_new = status.state != stored.state
        || status.message != stored.message
        || status.addresses != stored.addresses
        || status.missing_since_unix_ms != stored.missing_since_unix_ms;
    if says_new || changed {
        let mut d = v1::Discovery::clone(d);
        d.status = Some(status);
        new.insert(d, format!("discoveries/{name}"));
        changed = true;
    }
    Reconciled {
        changed,
        next_expiry_ms,
        // Counted where it stands rather than added up from the changes.
        backends: new
            .backends
            .values()
            .filter(|b| b.discovery == name)
            .count(),
    }
}

/// The backend writes an answer calls for.
#[derive(Debug, Default)]
struct Changes {
    puts: Vec<v1::Backend>,
    deletes: Vec<String>,
    next_expiry_ms: Option<i64>,
}

fn answer(
    spec: &Spec,
    addrs: &[SocketAddr],
    old: &State,
    kept: &BTreeMap<&str, &v1::Backend>,
    status: &mut v1::DiscoveryStatus,
    now_ms: i64,
) -> (Changes, String) {
    let mut notes = Vec::new();
    let mut out = Changes::default();
    let mut addrs = addrs.to_vec();
    if addrs.len() > spec.max_backends {
        notes.push(format!(
            "the answer holds {} addresses; the first {} (max_backends) are kept",
            addrs.len(),
            spec.max_backends
        ));
        addrs.truncate(spec.max_backends);
    }
    status.addresses = addrs.iter().map(ToString::to_string).collect();
    let mut wanted = std::collections::BTreeSet::new();
    for a in &addrs {
        let mut b = spec.backend(*a);
        wanted.insert(b.name.clone());
        match old.backends.get(&b.name) {
            Some(s) if s.discovery != spec.name => {
                notes.push(format!(
                    "backend {:?} exists and is not this discovery's: {a} left out",
                    b.name
                ));
            }
            Some(s) => {
                // An operator's override stays.
                b.admin_health = s.admin_health;
                b.drain = s.drain;
                b.revision = s.revision;
                if old.differs(&b) {
                    out.puts.push(b);
                }
            }
            None => out.puts.push(b),
        }
    }
    let mut missing = BTreeMap::new();
    for name in kept.keys().filter(|n| !wanted.contains(**n)) {
        let since = status
            .missing_since_unix_ms
            .get(*name)
            .copied()
            .unwrap_or(now_ms);
        let grace_ms = i64::try_from(spec.grace.as_millis()).unwrap_or(i64::MAX);
        let ends = since.saturating_add(grace_ms);
        if ends <= now_ms {
            out.deletes.push((*name).to_owned());
        } else {
            missing.insert((*name).to_owned(), since);
            out.next_expiry_ms = Some(out.next_expiry_ms.map_or(ends, |e: i64| e.min(ends)));
        }
    }
    status.missing_since_unix_ms = missing.into_iter().collect();
    (out, notes.join("; "))
}

/// Deletes from `state` every backend kept by a Discovery it does not hold (deleted in the
/// same write, or gone with its lease); whether there were any. The write engine runs it on
/// every write, so a Discovery's delete takes its backends in the same revision; the resolver
/// runs a write for it when it begins and when a Discovery goes (a lease's end is not a
/// write).
pub fn remove_orphans(state: &mut State) -> bool {
    let orphans: Vec<String> = state
        .backends
        .iter()
        .filter(|(_, b)| !b.discovery.is_empty() && !state.discoveries.contains_key(&b.discovery))
        .map(|(n, _)| n.clone())
        .collect();
    for n in &orphans {
        state.backends.remove(n);
    }
    !orphans.is_empty()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::PutResource;

    fn state() -> State {
        let mut s = State::default();
        s.discoveries.put(
            "web".into(),
            v1::Discovery {
                name: "web".into(),
                dns_name: "web.example".into(),
                port: 80,
                labels: [("app".to_owned(), "web".to_owned())].into(),
                grace: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                ..Default::default()
            },
        );
        s
    }

    fn status(s: &State) -> v1::DiscoveryStatus {
        s.discoveries["web"].status.clone().unwrap()
    }

    fn addrs(list: &[&str]) -> Outcome {
        Outcome::Answer(list.iter().map(|a| a.parse().unwrap()).collect())
    }

    /// Runs one resolution and returns the state it leaves.
    fn step(s: &State, o: &Outcome, now: i64) -> (State, Reconciled) {
        let mut new = s.clone();
        let r = reconcile(s, &mut new, "web", o, now, "r1");
        (new, r)
    }

    #[test]
    fn answers_become_labelled_backends_and_missing_ones_go_after_the_grace() {
        let s = state();
        let (s, r) = step(
            &s,
            &addrs(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]),
            1000,
        );
        assert!(r.changed);
        assert_eq!(r.backends, 3);
        let b = &s.backends["web-10-0-0-2-80"];
        assert_eq!(b.address, "10.0.0.2:80");
        assert_eq!(b.labels["app"], "web");
        assert_eq!(b.discovery, "web");
        let st = status(&s);
        assert_eq!(st.state, Phase::Ok as i32);
        assert_eq!(st.addresses.len(), 3);
        // The same answer again: nothing to write.
        let (s, r) = step(
            &s,
            &addrs(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]),
            2000,
        );
        assert!(!r.changed);
        // One address leaves: kept, marked missing, until the grace has passed.
        let (s, r) = step(&s, &addrs(&["10.0.0.1:80", "10.0.0.3:80"]), 3000);
        assert!(r.changed);
        assert_eq!(r.next_expiry_ms, Some(13_000));
        assert!(s.backends.contains_key("web-10-0-0-2-80"));
        let (s, r) = step(&s, &addrs(&["10.0.0.1:80", "10.0.0.3:80"]), 12_999);
        assert!(!r.changed, "{r:?}");
        let (s, r) = step(&s, &addrs(&["10.0.0.1:80", "10.0.0.3:80"]), 13_000);
        assert!(r.changed);
        assert!(!s.backends.contains_key("web-10-0-0-2-80"));
        assert_eq!(r.backends, 2);
        assert!(status(&s).missing_since_unix_ms.is_empty());
    }

    #[test]
    fn a_returning_address_is_no_longer_missing() {
        let (s, _) = step(&state(), &addrs(&["10.0.0.1:80", "10.0.0.2:80"]), 0);
        let (s, _) = step(&s, &addrs(&["10.0.0.1:80"]), 1000);
        let (s, r) = step(&s, &addrs(&["10.0.0.1:80", "10.0.0.2:80"]), 2000);
        assert!(r.changed);
        assert_eq!(r.next_expiry_ms, None);
        let (s, _) = step(&s, &addrs(&["10.0.0.1:80"]), 20_000);
        assert!(
            s.backends.contains_key("web-10-0-0-2-80"),
            "the grace starts again"
        );
    }

    #[test]
    fn a_failing_resolver_keeps_the_backends_and_says_so_once() {
        let (s, _) = step(&state(), &addrs(&["10.0.0.1:80"]), 0);
        let fail = Outcome::Failed("timed out".into());
        let (s, r) = step(&s, &fail, 1000);
        assert!(r.changed);
        assert!(s.backends.contains_key("web-10-0-0-1-80"));
        let st = status(&s);
        assert_eq!(st.state, Phase::Failing as i32);
        assert_eq!(st.message, "timed out");
        assert_eq!(st.since_unix_ms, 1000);
        assert_eq!(st.addresses, vec!["10.0.0.1:80".to_owned()]);
        let (s, r) = step(&s, &fail, 2000);
        assert!(!r.changed, "the same failure again is not written");
        let (s, r) = step(&s, &addrs(&["10.0.0.1:80"]), 3000);
        assert!(r.changed);
        let st = status(&s);
        assert_eq!(
            (st.state, st.since_unix_ms, st.message.as_str()),
            (Phase::Ok as i32, 3000, "")
        );
    }

    #[test]
    fn operator_overrides_stay_and_foreign_backends_are_not_taken() {
        let (mut s, _) = step(&state(), &addrs(&["10.0.0.1:80"]), 0);
        std::sync::Arc::make_mut(s.backends.get_mut("web-10-0-0-1-80").unwrap()).admin_health =
            v1::AdminHealth::Sick as i32;
        s.backends.put(
            "web-10-0-0-2-80".into(),
            v1::Backend {
                name: "web-10-0-0-2-80".into(),
                address: "10.9.9.9:80".into(),
                ..Default::default()
            },
        );
        let (s, _) = step(&s, &addrs(&["10.0.0.1:80", "10.0.0.2:80"]), 1000);
        assert_eq!(
            s.backends["web-10-0-0-1-80"].admin_health,
            v1::AdminHealth::Sick as i32
        );
        assert_eq!(s.backends["web-10-0-0-2-80"].address, "10.9.9.9:80");
        let st = status(&s);
        assert!(
            st.message.contains("is not this discovery's"),
            "{}",
            st.message
        );
    }

    #[test]
    fn answers_beyond_max_backends_are_cut_and_orphans_go() {
        let mut s = state();
        std::sync::Arc::make_mut(s.discoveries.get_mut("web").unwrap()).max_backends = 2;
        let (s, r) = step(
            &s,
            &addrs(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]),
            0,
        );
        assert_eq!(r.backends, 2);
        assert!(status(&s).message.contains("max_backends"));
        let mut gone = s;
        gone.discoveries.clear();
        assert!(remove_orphans(&mut gone));
        assert!(gone.backends.is_empty());
        assert!(!remove_orphans(&mut gone));
    }
}
