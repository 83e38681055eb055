//! Node registration (cluster mode): each node keeps a record under `<prefix>/v1/nodes/<id>`
//! bound to a lease (TTL 12 s, renewed every 3 s, granted again when lost), with its addresses,
//! applied and configuration revisions and routing fingerprint. `tether nodes` reads them
//! (`crate::nodes::agreement`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tether_dataplane::runtime::Runtime;
use tether_proto::keys::{Kind, Layout};
use tether_proto::v1;
use tokio::time::Instant;

use super::backoff::{Backoff, Streak};
use super::shutdown::Shutdown;
use crate::store::etcd::EtcdStore;
use crate::store::{Store, StoreError};

/// How long a stopping node waits for its lease to be revoked.
const REVOKE_LIMIT: Duration = Duration::from_secs(1);
/// Lease TTL of a registration, in seconds.
pub const TTL: i64 = 12;
/// How often the lease is renewed and the record refreshed when it changed.
const TICK: Duration = Duration::from_secs(3);
/// How often the record is compared with the node's state (so a change shows within this).
const CHECK: Duration = Duration::from_millis(250);

/// Who this node is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Node id (unique in the installation).
    pub id: String,
    /// Proxy URL.
    pub proxy: String,
    /// Admin URL.
    pub admin: String,
}

/// The time now in Unix milliseconds (as node records and health reports carry it).
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// This node's record now.
pub fn record(me: &Identity, rt: &Runtime) -> v1::Node {
    let snap = rt.snapshot();
    v1::Node {
        id: me.id.clone(),
        proxy: me.proxy.clone(),
        admin: me.admin.clone(),
        applied_revision: snap.revision,
        fingerprint: snap.fingerprint(),
        updated_unix_ms: unix_ms_now(),
        config_revision: rt.config_revision(),
        health_source: rt.fleet.source().as_str().to_owned(),
    }
}

/// The registration loop's backoff: 100 ms doubling to 3 s (the lease renewal tick), reset
/// after 10 s of successful rounds.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), TICK, Duration::from_secs(10))
}

/// Where and as whom a node registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The etcd store.
    pub store: EtcdStore,
    /// Its key layout.
    pub layout: Layout,
    /// The node.
    pub me: Identity,
}

/// Keeps this node registered until `shutdown`, then revokes its lease (bounded by
/// [`REVOKE_LIMIT`]; if the store does not answer, the record expires with the lease): its record
/// and its shared-health reports go at one revision, so the other nodes take over its backends
/// at once. The lease in use goes to `lease_out` (shared-health reports are bound to it too).
pub async fn register(
    reg: Registration,
    rt: Arc<Runtime>,
    lease_out: tokio::sync::watch::Sender<Option<i64>>,
    shutdown: Shutdown,
) {
    let Registration { store, layout, me } = reg;
    let key = layout.key(Kind::Node, &me.id);
    let mut lease: Option<i64> = None;
    let mut written: Option<(i64, i64, String, String)> = None;
    let mut renewed = Instant::now();
    let mut backoff = backoff();
    let mut healthy_since: Option<Instant> = None;
    let mut streak = Streak::default();
    loop {
        let step = async {
            let id = match lease {
                Some(id) => id,
                None => {
                    let id = store.lease_grant(TTL).await?;
                    rt.mark_contact();
                    lease = Some(id);
                    written = None;
                    renewed = Instant::now();
                    id
                }
            };
            if renewed.elapsed() >= TICK {
                if store.lease_keep_alive(id).await? <= 0 {
                    // Expired (an outage longer than the TTL): register again.
                    lease = None;
                    lease_out.send_replace(None);
                    return Ok(());
                }
                rt.mark_contact();
                renewed = Instant::now();
            }
            let now = record(&me, &rt);
            let state = (
                now.applied_revision,
                now.config_revision,
                now.fingerprint.clone(),
                now.health_source.clone(),
            );
            if written.as_ref() != Some(&state) {
                store.put_leased(&key, now.encode_to_vec(), id).await?;
                rt.mark_contact();
                written = Some(state);
                // Reports under this lease are valid once the node's own record is.
                lease_out.send_if_modified(|l| l.replace(id) != Some(id));
            }
            Ok::<(), StoreError>(())
        };
        let delay = match step.await {
            Ok(()) => {
                streak.succeeded("node registration");
                healthy_since.get_or_insert_with(Instant::now);
                CHECK
            }
            Err(e) => {
                streak.failed("node registration", &e);
                let worked = healthy_since.take().map_or(Duration::ZERO, |t| t.elapsed());
                backoff.after_failure(worked)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.wait() => {
                if let Some(id) = lease {
                    lease_out.send_replace(None);
                    match tokio::time::timeout(REVOKE_LIMIT, store.lease_revoke(id)).await {
                        Ok(Ok(_)) => tracing::info!("node registration revoked"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "node registration not revoked: it expires with its lease"),
                        Err(_) => tracing::warn!("node registration not revoked in time: it expires with its lease"),
                    }
                }
                return;
            }
        }
    }
}
