//! Data-plane node registration (cluster mode): each node keeps a record under
//! `<prefix>/v1/nodes/<id>` bound to a lease (TTL 12 s, renewed every 3 s, granted again when
//! lost), with its addresses, applied revision and routing fingerprint; and the agreement check
//! behind `tether nodes`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tether_dataplane::runtime::Runtime;
use tether_proto::keys::{Kind, Layout};
use tether_proto::v1;

use crate::follow::Backoff;
use crate::store::etcd::EtcdStore;

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

/// This node's record now.
pub fn record(me: &Identity, rt: &Runtime) -> v1::Node {
    let snap = rt.snapshot();
    v1::Node {
        id: me.id.clone(),
        proxy: me.proxy.clone(),
        admin: me.admin.clone(),
        applied_revision: snap.revision,
        fingerprint: snap.fingerprint(),
        updated_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    }
}

/// Keeps this node registered until `shutdown` resolves, then revokes nothing: the record
/// expires with its lease.
pub async fn register(
    store: EtcdStore,
    layout: Layout,
    rt: Arc<Runtime>,
    me: Identity,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let key = layout.key(Kind::Node, &me.id);
    let mut lease: Option<i64> = None;
    let mut written: Option<(i64, String)> = None;
    let mut renewed = tokio::time::Instant::now();
    let mut backoff = Backoff::default();
    loop {
        let step = async {
            let id = match lease {
                Some(id) => id,
                None => {
                    let id = store.lease_grant(TTL).await?;
                    lease = Some(id);
                    written = None;
                    renewed = tokio::time::Instant::now();
                    id
                }
            };
            if renewed.elapsed() >= TICK {
                if store.lease_keep_alive(id).await? <= 0 {
                    // Expired (an outage longer than the TTL): register again.
                    lease = None;
                    return Ok(());
                }
                renewed = tokio::time::Instant::now();
            }
            let now = record(&me, &rt);
            let state = (now.applied_revision, now.fingerprint.clone());
            if written.as_ref() != Some(&state) {
                store.put_leased(&key, now.encode_to_vec(), id).await?;
                written = Some(state);
            }
            Ok::<(), crate::store::StoreError>(())
        };
        let delay = match step.await {
            Ok(()) => {
                backoff.reset();
                CHECK
            }
            Err(e) => {
                tracing::warn!(error = %e, "node registration failed; retrying");
                backoff.delay()
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut shutdown => return,
        }
    }
}

/// Whether all nodes agree, and the fingerprint most of them have.
pub fn agreement(nodes: &[v1::Node]) -> (bool, String) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in nodes {
        *counts.entry(n.fingerprint.as_str()).or_default() += 1;
    }
    let majority = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(f, _)| (*f).to_owned())
        .unwrap_or_default();
    (counts.len() <= 1, majority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, f: &str) -> v1::Node {
        v1::Node {
            id: id.into(),
            fingerprint: f.into(),
            ..Default::default()
        }
    }

    #[test]
    fn agreement_and_majority() {
        assert_eq!(agreement(&[]), (true, String::new()));
        assert_eq!(
            agreement(&[node("a", "x"), node("b", "x")]),
            (true, "x".into())
        );
        assert_eq!(
            agreement(&[node("a", "x"), node("b", "y"), node("c", "x")]),
            (false, "x".into())
        );
    }
}
