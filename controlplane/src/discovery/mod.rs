//! DNS discovery: Discovery resources resolved by one control-plane replica at a time and
//! kept as ordinary labelled backends, so every node routes by the same members whatever its
//! own resolver would say.
//!
//! Modules: [`spec`] checks a Discovery and names the backends it keeps; [`reconcile`] applies
//! one resolution to the configuration (create, update, mark missing, delete after the grace);
//! [`metrics`] is what the resolving replica shows on `/metrics`. This module runs it:
//!
//! election (a key under `<prefix>/v1/election/discovery` created bound to this replica's
//! lease; the others watch it and try again when it goes) → while held: every 500 ms list the Discovery
//! resources → resolve those due (their records' TTL clamped to `[min_refresh, refresh]`, or
//! sooner when a missing backend's grace ends) → [`reconcile`] inside a write fenced by the
//! election key's revision (a replica that lost the election without noticing cannot write).
//! A replica that loses its lease stops resolving at once; the next takes over within the
//! lease TTL and, resolving the same answer, changes nothing.

pub mod metrics;
pub mod reconcile;
pub mod spec;

pub use spec::check;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_dataplane::resolve::{Dns, DnsConfig};
use tether_proto::keys::Kind;
use tether_proto::v1;

use crate::service::Api;
use crate::store::{Compare, Op, Store, StoreError, Txn, TxnOutcome};
use metrics::DiscoveryMetrics;
use reconcile::Outcome;

/// How often the resolving replica lists the Discovery resources (a new one is resolved
/// within this).
const TICK: Duration = Duration::from_millis(500);
/// The pause before a waiting replica looks at the election key again when it cannot watch it.
const POLL: Duration = Duration::from_millis(250);
/// The longest one resolution may take (a dead name server): then it counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a replica takes part in discovery.
#[derive(Debug, Clone)]
pub struct Options {
    /// The name servers and TTL clamp of its resolver.
    pub dns: DnsConfig,
    /// The TTL of its election lease: how long a dead resolver holds the job (whole seconds,
    /// 2 s at least).
    pub election_ttl: Duration,
    /// How this replica names itself in the election key and the status.
    pub replica: String,
}

impl Options {
    /// The default election TTL.
    pub const DEFAULT_ELECTION_TTL: Duration = Duration::from_secs(10);

    /// Options for `replica` with the system resolver.
    pub fn new(replica: impl Into<String>) -> Options {
        Options {
            // No cache: each Discovery's schedule honours the TTL itself (clamped to its
            // own `min_refresh` and `refresh`), so every resolution asks the name servers.
            dns: DnsConfig {
                servers: Vec::new(),
                min_ttl: spec::MIN_REFRESH,
                max_ttl: spec::MAX_REFRESH,
                cache: false,
            },
            election_ttl: Options::DEFAULT_ELECTION_TTL,
            replica: replica.into(),
        }
    }
}

/// Runs discovery for `api`'s store until `shutdown`: takes part in the election and, while
/// holding it, resolves. On shutdown the election lease is revoked, so another replica takes
/// over at once.
pub async fn run<S: Store>(
    api: Api<S>,
    opts: Options,
    metrics: Arc<DiscoveryMetrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let dns = Arc::new(Dns::new(opts.dns.clone()));
    let ttl = opts.election_ttl.max(Duration::from_secs(2));
    let key = api.layout().election("discovery");
    loop {
        let won = tokio::select! {
            () = &mut shutdown => return,
            r = campaign(api.store(), &key, &opts.replica, ttl) => r,
        };
        let (lease, fence) = match won {
            Ok(Campaign::Won(lease, fence)) => (lease, fence),
            Ok(Campaign::Held(revision)) => {
                // Watched, not polled: a dead holder's key is taken the moment its lease
                // ends. Looked at again after a TTL whatever the watch says.
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(ttl) => continue,
                    () = deleted(api.store(), &key, revision) => continue,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "discovery election: the store failed; retrying");
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(ttl / 3) => continue,
                }
            }
        };
        tracing::info!(replica = %opts.replica, "resolving discoveries (holding the election)");
        metrics.set_leader(true);
        let worker = tokio::spawn(resolve_loop(
            api.clone(),
            Arc::clone(&dns),
            fence,
            opts.replica.clone(),
            Arc::clone(&metrics),
        ));
        let stop = hold(api.store(), lease, ttl, &mut shutdown).await;
        worker.abort();
        metrics.set_leader(false);
        metrics.clear();
        if stop {
            if let Err(e) = api.store().lease_revoke(lease).await {
                tracing::warn!(error = %e, "could not give up the discovery election");
            }
            return;
        }
        tracing::warn!("lost the discovery election lease; stopped resolving");
    }
}

/// What one attempt to win found.
#[derive(Debug)]
enum Campaign {
    /// This replica holds the election: its lease, and the fence (the key at the revision
    /// this replica created it).
    Won(i64, Compare),
    /// Another holds it; the key's revision.
    Held(i64),
}

/// One attempt to win: the election key created bound to a fresh lease, if it is free.
async fn campaign<S: Store>(
    store: &S,
    key: &str,
    replica: &str,
    ttl: Duration,
) -> Result<Campaign, StoreError> {
    // Asked first: granting a lease is a store write, not to be done for a held key.
    if let Some(kv) = store.get(key).await? {
        return Ok(Campaign::Held(kv.mod_revision));
    }
    let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let lease = store.lease_grant(secs).await?;
    let txn = Txn {
        compares: vec![Compare::Missing(key.to_owned())],
        ops: vec![Op::PutLeased(
            key.to_owned(),
            replica.as_bytes().to_vec(),
            lease,
        )],
        witness: None,
    };
    match store.txn(txn).await {
        Ok(TxnOutcome::Committed { revision }) => Ok(Campaign::Won(
            lease,
            Compare::ModRevision(key.to_owned(), revision),
        )),
        other => {
            let _ = store.lease_revoke(lease).await;
            // Another replica won between the look and the write: wait for its key.
            other.map(|_| Campaign::Held(0))
        }
    }
}

/// Resolves once `key` (at `revision`) is deleted — or soon when the store cannot watch it,
/// for the caller to look again.
async fn deleted<S: Store>(store: &S, key: &str, revision: i64) {
    let from = if revision > 0 { revision + 1 } else { 0 };
    let Ok(mut rx) = store.watch(key, from).await else {
        tokio::time::sleep(POLL).await;
        return;
    };
    while let Some(Ok(batch)) = rx.recv().await {
        if batch
            .events
            .iter()
            .any(|e| e.key() == key && matches!(e, crate::store::Event::Delete { .. }))
        {
            return;
        }
    }
    // The watch ended (the store failed): look again after a pause.
    tokio::time::sleep(POLL).await;
}

/// Keeps the election lease alive until it is lost (false) or `shutdown` (true). A renewal
/// that fails for longer than the TTL counts as lost: the store may have let it expire.
async fn hold<S: Store>(
    store: &S,
    lease: i64,
    ttl: Duration,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.as_mut() => return true,
            () = tokio::time::sleep(ttl / 3) => {}
        }
        match store.lease_keep_alive(lease).await {
            Ok(t) if t > 0 => renewed = Instant::now(),
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "renewing the discovery election lease failed");
                if renewed.elapsed() >= ttl {
                    return false;
                }
            }
        }
    }
}

/// When each Discovery is next resolved, and the spec it was resolved with (a changed spec
/// is resolved at once).
#[derive(Debug)]
struct Due {
    at: Instant,
    spec: spec::Spec,
}

/// A Discovery whose last resolution changed nothing: the same answer again, with its
/// resource unchanged, is not written (a write loads and validates the whole configuration).
/// Checked in full at least every [`STEADY_RECHECK`] all the same, so a backend deleted by
/// hand comes back.
#[derive(Debug)]
struct Steady {
    outcome: Outcome,
    revision: i64,
    since: Instant,
}

/// How long a steady Discovery goes without a full reconcile.
const STEADY_RECHECK: Duration = Duration::from_secs(60);

impl Steady {
    fn new(outcome: Outcome, revision: i64) -> Steady {
        Steady {
            outcome,
            revision,
            since: Instant::now(),
        }
    }

    fn holds(&self, outcome: &Outcome, revision: i64) -> bool {
        self.outcome == *outcome
            && self.revision == revision
            && self.since.elapsed() < STEADY_RECHECK
    }
}

/// The resolving replica's work, until aborted.
async fn resolve_loop<S: Store>(
    api: Api<S>,
    dns: Arc<Dns>,
    fence: Compare,
    replica: String,
    metrics: Arc<DiscoveryMetrics>,
) {
    let mut due: HashMap<String, Due> = HashMap::new();
    let mut steady: HashMap<String, Steady> = HashMap::new();
    // Orphans are looked for when holding the job begins and whenever a Discovery goes.
    let mut look_for_orphans = true;
    let dir = api.layout().dir(Kind::Discovery);
    loop {
        let listing = match api.store().list(&dir).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing discoveries failed");
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        // Each valid Discovery with its stored revision.
        let mut specs = HashMap::new();
        for kv in &listing.kvs {
            let Some((_, name)) = api.layout().parse(&kv.key) else {
                continue;
            };
            let Ok(d) = crate::state::decode::<v1::Discovery>(name, &kv.value, kv.mod_revision)
            else {
                continue;
            };
            if let Ok(s) = spec::spec(&d, &format!("discoveries/{name}")) {
                specs.insert(name.to_owned(), (s, kv.mod_revision));
            }
        }
        let before = due.len();
        due.retain(|n, _| specs.contains_key(n));
        steady.retain(|n, _| specs.contains_key(n));
        metrics.retain(|n| specs.contains_key(n));
        look_for_orphans |= due.len() < before;
        if look_for_orphans {
            match api
                .write_fenced(false, Some(&fence), |_, new| {
                    Ok(reconcile::remove_orphans(new))
                })
                .await
            {
                Ok(_) => look_for_orphans = false,
                Err(e) => {
                    tracing::warn!(error = %e, "removing backends of deleted discoveries failed")
                }
            }
        }
        let now = Instant::now();
        let work: Vec<(spec::Spec, i64)> = specs
            .into_values()
            .filter(|(s, _)| due.get(&s.name).is_none_or(|d| d.at <= now || d.spec != *s))
            .collect();
        // Concurrently, each written as it comes: one dead name server must not hold up the
        // others.
        let mut resolving = tokio::task::JoinSet::new();
        for (s, revision) in work {
            let dns = Arc::clone(&dns);
            resolving.spawn(async move {
                let o = resolve(&dns, &s).await;
                (s, revision, o)
            });
        }
        while let Some(joined) = resolving.join_next().await {
            let Ok((s, revision, (outcome, valid_for))) = joined else {
                continue;
            };
            metrics.resolved(&s.name, &outcome);
            if let Outcome::Failed(why) = &outcome {
                tracing::warn!(discovery = %s.name, error = %why, "resolving failed; the last answer's backends are kept");
            }
            let name = s.name.clone();
            let mut next = s.next_refresh(valid_for);
            let unchanged = steady
                .get(&name)
                .is_some_and(|st| st.holds(&outcome, revision));
            if !unchanged {
                let now_ms = crate::node::register::unix_ms_now();
                let written = api
                    .write_fenced(false, Some(&fence), |old, new| {
                        Ok(reconcile::reconcile(
                            old, new, &name, &outcome, now_ms, &replica,
                        ))
                    })
                    .await;
                match written {
                    Ok(w) => {
                        metrics.kept(&name, w.value.backends);
                        match w.value.next_expiry_ms {
                            Some(e) => {
                                let ms = u64::try_from(e - now_ms).unwrap_or(0);
                                next = next.min(Duration::from_millis(ms));
                                steady.remove(&name);
                            }
                            // Nothing changed and nothing is pending: the same answer
                            // again needs no write (nor the load and validation before it).
                            None if !w.value.changed => {
                                steady.insert(name.clone(), Steady::new(outcome, revision));
                            }
                            None => {
                                steady.remove(&name);
                            }
                        }
                    }
                    Err(crate::error::ApiError::Fenced(_)) => return,
                    Err(e) => {
                        tracing::warn!(discovery = %name, error = %e, "writing what discovery found failed");
                        steady.remove(&name);
                        next = s.min_refresh;
                    }
                }
            }
            due.insert(
                name,
                Due {
                    at: Instant::now() + next,
                    spec: s,
                },
            );
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Resolves one Discovery: the outcome and how long it holds.
async fn resolve(dns: &Dns, s: &spec::Spec) -> (Outcome, Duration) {
    let work = async {
        let now = Instant::now();
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut until;
        if s.srv {
            let srv = dns.lookup_srv(&s.dns_name).await?;
            until = srv.valid_until;
            // Each target is a lookup of its own: no more than the backends it may keep.
            for (target, port) in srv.targets.iter().take(s.max_backends) {
                let a = dns.lookup(target).await?;
                until = until.min(a.valid_until);
                addrs.extend(a.addresses.iter().map(|ip| SocketAddr::new(*ip, *port)));
            }
        } else {
            let a = dns.lookup(&s.dns_name).await?;
            until = a.valid_until;
            addrs.extend(a.addresses.iter().map(|ip| SocketAddr::new(*ip, s.port)));
        }
        addrs.sort_unstable();
        addrs.dedup();
        Ok::<_, tether_dataplane::resolve::ResolveError>((
            addrs,
            until.saturating_duration_since(now),
        ))
    };
    match tokio::time::timeout(RESOLVE_TIMEOUT, work).await {
        Ok(Ok((addrs, valid_for))) => (Outcome::Answer(addrs), valid_for),
        Ok(Err(e)) => (Outcome::Failed(e.to_string()), Duration::ZERO),
        Err(_) => (
            Outcome::Failed(format!(
                "resolving {}: no answer within {RESOLVE_TIMEOUT:?}",
                s.dns_name
            )),
            Duration::ZERO,
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_steady_discovery_is_skipped_only_for_the_same_answer_and_revision() {
        let a = Outcome::Answer(vec!["10.0.0.1:80".parse().unwrap()]);
        let st = Steady::new(a.clone(), 7);
        assert!(st.holds(&a, 7));
        assert!(!st.holds(&Outcome::Answer(vec![]), 7), "another answer");
        assert!(!st.holds(&Outcome::Failed("x".into()), 7), "a failure");
        assert!(!st.holds(&a, 8), "the resource changed");
        let old = Steady {
            since: Instant::now() - STEADY_RECHECK,
            ..Steady::new(a.clone(), 7)
        };
        assert!(!old.holds(&a, 7), "checked in full once a minute");
    }
}
