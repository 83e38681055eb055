//! Leases through the API (GrantLease, KeepAlive, RevokeLease, GetLease) and the rule that
//! keeps lease expiry safe.
//!
//! A lease ends outside any API write — etcd (or the embedded store's reaper) deletes its
//! resources at one revision — so nothing checks the configuration that leaves. It stays
//! valid because of one rule, enforced on every write by [`check_references`]: **a resource
//! bound to a lease may be named only by resources bound to the same lease.** Whatever names
//! it then goes at the same revision, so no reference is ever left dangling. Label selectors
//! are not names: a director that selects backends by label loses a leased one from its
//! membership, which is the point.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tether_proto::keys::Kind;
use tether_proto::v1;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::Api;
use crate::convert::{self, FieldError};
use crate::error::ApiError;
use crate::state::State;
use crate::store::{LeaseStatus, Op, Store, StoreError};

/// The shortest lease: etcd raises shorter ones to ~1.5 s, and a holder renewing at a third of
/// the TTL needs room for one lost round trip.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
/// Renewals one KeepAlive stream may have in flight at once.
pub const KEEP_ALIVE_IN_FLIGHT: usize = 64;
/// The longest lease: one day, as every other duration the API takes.
pub const MAX_LEASE_TTL: Duration = convert::MAX_DURATION;

fn lease_message(id: i64, s: Option<LeaseStatus>) -> v1::Lease {
    v1::Lease {
        id,
        ttl: s.map_or(0, |s| s.granted_ttl),
        remaining: s.map_or(0, |s| s.remaining),
    }
}

fn not_found(id: i64) -> ApiError {
    ApiError::NotFound {
        kind: "lease",
        name: format!("{id:x}"),
    }
}

impl<S: Store> Api<S> {
    pub(super) async fn grant_lease(
        &self,
        req: v1::GrantLeaseRequest,
    ) -> Result<v1::Lease, ApiError> {
        let Some(ttl) = req.ttl else {
            return Err(ApiError::Required("ttl"));
        };
        let ttl = convert::duration(Some(&ttl), || "ttl".into(), Duration::ZERO)?;
        if ttl < MIN_LEASE_TTL || ttl.subsec_nanos() != 0 {
            return Err(FieldError::invalid(
                "ttl",
                format!(
                    "must be whole seconds, at least {} s, got {ttl:?}",
                    MIN_LEASE_TTL.as_secs()
                ),
            )
            .into());
        }
        // `convert::duration` bounded it by MAX_LEASE_TTL.
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let id = self.store.lease_grant(secs).await?;
        let status = self.store.lease_time_to_live(id).await?;
        Ok(lease_message(id, status))
    }

    pub(super) async fn revoke_lease(&self, id: i64) -> Result<(), ApiError> {
        if self.store.lease_revoke(id).await? {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    pub(super) async fn get_lease(&self, id: i64) -> Result<v1::Lease, ApiError> {
        match self.store.lease_time_to_live(id).await? {
            Some(s) => Ok(lease_message(id, Some(s))),
            None => Err(not_found(id)),
        }
    }

    /// Answers each id the client sends with the renewed lease (ttl 0: gone, so the holder
    /// knows to grant a new one and register again). Up to [`KEEP_ALIVE_IN_FLIGHT`] renewals
    /// run at once, so a holder of many leases is not paced by one store round trip per lease
    /// (answers name their lease and may come out of order). The stream ends with the
    /// client's, with a store error, or when the server stops.
    pub(super) fn keep_alive(
        &self,
        mut requests: impl Stream<Item = Result<v1::KeepAliveRequest, Status>> + Send + Unpin + 'static,
    ) -> ReceiverStream<Result<v1::Lease, Status>> {
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(KEEP_ALIVE_IN_FLIGHT);
        let closed = self.closed();
        tokio::spawn(async move {
            tokio::pin!(closed);
            let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(KEEP_ALIVE_IN_FLIGHT));
            loop {
                let req = tokio::select! {
                    r = requests.next() => r,
                    () = &mut closed => {
                        let _ = tx.send(Err(super::shutting_down())).await;
                        return;
                    }
                };
                let id = match req {
                    Some(Ok(req)) => req.id,
                    Some(Err(s)) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                    None => return,
                };
                let Ok(slot) = std::sync::Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let (store, tx) = (store.clone(), tx.clone());
                tokio::spawn(async move {
                    let answer = store
                        .lease_keep_alive(id)
                        .await
                        .map(|ttl| v1::Lease {
                            id,
                            ttl,
                            remaining: ttl,
                        })
                        .map_err(|e| Status::from(ApiError::Store(e)));
                    let _ = tx.send(answer).await;
                    drop(slot);
                });
            }
        });
        ReceiverStream::new(rx)
    }

    /// The leases that `ops` bind keys to and that are gone (each asked once).
    pub(super) async fn ended_leases(&self, ops: &[Op]) -> Result<BTreeSet<i64>, ApiError> {
        let mut ended = BTreeSet::new();
        for id in ops.iter().filter_map(Op::lease).collect::<BTreeSet<_>>() {
            if self.store.lease_time_to_live(id).await?.is_none() {
                ended.insert(id);
            }
        }
        Ok(ended)
    }

    /// Fails with the first lease that `ops` bind keys to and that is gone.
    pub(super) async fn check_leases_exist(&self, ops: &[Op]) -> Result<(), ApiError> {
        match self.ended_leases(ops).await?.first() {
            Some(&id) => Err(ApiError::Store(StoreError::LeaseNotFound(id))),
            None => Ok(()),
        }
    }
}

/// Enforces the module's rule on a configuration about to be written: every name that refers
/// to a leased resource comes from a resource bound to the same lease. Free when nothing is
/// leased.
pub(super) fn check_references(state: &State) -> Result<(), ApiError> {
    fn leased<R: crate::state::Resource>(
        map: &std::collections::BTreeMap<String, std::sync::Arc<R>>,
    ) -> HashMap<&str, i64> {
        map.iter()
            .filter(|(_, r)| r.lease() != 0)
            .map(|(n, r)| (n.as_str(), r.lease()))
            .collect()
    }
    let backends = leased(&state.backends);
    let probes = leased(&state.probes);
    let directors = leased(&state.directors);
    let certificates = leased(&state.certificates);
    if backends.is_empty() && probes.is_empty() && directors.is_empty() && certificates.is_empty() {
        return Ok(());
    }
    let label = |kind: Kind, name: &str| state.label_of(kind, name);
    let check = |target: &HashMap<&str, i64>,
                 what: &str,
                 name: &str,
                 referrer_lease: i64,
                 field: &dyn Fn() -> String|
     -> Result<(), ApiError> {
        match target.get(name) {
            Some(&lease) if lease != referrer_lease => Err(FieldError::precondition(
                field(),
                format!(
                    "{what} {name:?} is bound to lease {lease:x} and goes when it ends; only a \
                     resource bound to the same lease may name it (select it by label instead)"
                ),
            )
            .into()),
            _ => Ok(()),
        }
    };
    for (name, d) in &state.directors {
        for (j, m) in d.members.iter().enumerate() {
            let field = || format!("{}.members[{j}]", label(Kind::Director, name));
            match &m.target {
                Some(v1::member::Target::Backend(b)) => {
                    check(&backends, "backend", b, d.lease, &|| {
                        format!("{}.backend", field())
                    })?;
                }
                Some(v1::member::Target::Director(x)) => {
                    check(&directors, "director", x, d.lease, &|| {
                        format!("{}.director", field())
                    })?;
                }
                Some(v1::member::Target::Selector(_)) | None => {}
            }
        }
    }
    for (name, b) in &state.backends {
        check(&probes, "probe", &b.probe, b.lease, &|| {
            format!("{}.probe", label(Kind::Backend, name))
        })?;
        if let Some(tls) = &b.tls {
            check(
                &certificates,
                "certificate",
                &tls.client_certificate,
                b.lease,
                &|| format!("{}.tls.client_certificate", label(Kind::Backend, name)),
            )?;
        }
    }
    for (name, r) in &state.routes {
        check(&directors, "director", &r.director, r.lease, &|| {
            format!("{}.director", label(Kind::Route, name))
        })?;
    }
    Ok(())
}
