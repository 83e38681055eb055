//! [`EtcdStore`]: the [`Store`] of the cluster mode, over etcd's v3 gRPC API.
//!
//! Our own client (generated from `proto/etcd/`), because etcd-client neither skips a dead
//! member nor re-opens streams. Every unary call goes to the current endpoint and, on a
//! transport failure, a missing leader or a timeout, moves on to the next one — reads at once;
//! a transaction only after finding out whether it committed, by reading back its witness key
//! (a timeout during a leader change leaves the outcome unknown). A watch is opened on the
//! current endpoint with `hasleader` (so a member cut off from the quorum does not keep a stream
//! silently open) and progress notifications; when it ends, the caller re-watches from its last
//! applied revision (see [`crate::node::follower`]), which lands on a live endpoint.
//!
//! Lists are paged (every page read at the first page's revision) and decode limits raised, so
//! neither a large configuration nor a watch catch-up after an outage exceeds gRPC's 4 MiB
//! default.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tether_proto::etcd::etcdserverpb as pb;
use tether_proto::etcd::mvccpb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::{
    Compare, Event, KeyValue, LeaseStatus, Listing, Op, Store, StoreError, Txn, TxnOutcome,
    WatchBatch, WatchReceiver,
};

/// Keys per page of a list.
const PAGE: i64 = 1000;
/// Largest message accepted from etcd (a catch-up after an outage can be large).
const MAX_DECODE: usize = 256 * 1024 * 1024;
/// Batches a watch may have queued for a slow reader.
const WATCH_QUEUE: usize = 64;

mod keeper;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs, as `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// User and password, when etcd has authentication enabled.
    pub user: Option<(String, String)>,
    /// Bound on one unary call (the connect included).
    pub timeout: Duration,
    /// TLS to etcd (`https://` endpoints).
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd: the CA that signed etcd's certificate, and optionally a client certificate
/// (when etcd runs with `--client-cert-auth`). All PEM.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA certificate(s).
    pub ca: Vec<u8>,
    /// Client certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdOptions {
    /// Endpoints from a comma-separated list, with a 2 s call timeout.
    pub fn new(endpoints: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    if s.contains("://") {
                        s.to_owned()
                    } else {
                        format!("http://{s}")
                    }
                })
                .collect(),
            user: None,
            timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

#[derive(Debug)]
struct Inner {
    urls: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
    user: Option<(String, String)>,
    token: Mutex<Option<MetadataValue<Ascii>>>,
    timeout: Duration,
    /// The shared lease keep-alive stream's task ([`keeper`]), once started.
    keeper: Mutex<Option<mpsc::Sender<keeper::Renewal>>>,
}

/// The etcd store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

/// Whether a failed call may succeed on another endpoint (or later).
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
    ) || s.message().contains("leader")
        || s.message().contains("request timed out")
}

/// etcd's answer to a put bound to (or a revoke of) a lease that does not exist.
fn lease_not_found(s: &Status) -> bool {
    s.code() == Code::NotFound && s.message().contains("lease not found")
}

fn token_expired(s: &Status) -> bool {
    s.code() == Code::Unauthenticated || s.message().contains("invalid auth token")
}

fn status_error(what: &str, s: &Status) -> StoreError {
    if lease_not_found(s) {
        // The id is the caller's to fill in: etcd does not say which lease.
        return StoreError::LeaseNotFound(0);
    }
    if s.code() == Code::OutOfRange || s.message().contains("compacted") {
        return StoreError::Compacted {
            requested: 0,
            compact_revision: 0,
        };
    }
    if retryable(s) {
        StoreError::Unavailable(format!("etcd {what}: {}", s.message()))
    } else {
        StoreError::Storage(format!("etcd {what}: {:?}: {}", s.code(), s.message()))
    }
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn to_kv(kv: mvccpb::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: String::from_utf8(kv.key)
            .map_err(|e| StoreError::Corrupt(format!("a key is not UTF-8: {e}")))?,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    })
}

impl EtcdStore {
    /// A store over these endpoints. Connects lazily: this succeeds while etcd is down, and
    /// calls then fail with [`StoreError::Unavailable`].
    pub fn connect(opts: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Storage("no etcd endpoint given".into()));
        }
        let mut channels = Vec::with_capacity(opts.endpoints.len());
        for url in &opts.endpoints {
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| StoreError::Storage(format!("etcd endpoint {url:?}: {e}")))?;
            if let Some(tls) = &opts.tls {
                let mut cfg = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca));
                if let Some((cert, key)) = &tls.identity {
                    cfg = cfg.identity(tonic::transport::Identity::from_pem(cert, key));
                }
                ep = ep
                    .tls_config(cfg)
                    .map_err(|e| StoreError::Storage(format!("etcd TLS for {url:?}: {e}")))?;
            }
            let ep = ep
                .connect_timeout(opts.timeout)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            channels.push(ep.connect_lazy());
        }
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                urls: opts.endpoints.clone(),
                channels,
                current: AtomicUsize::new(0),
                user: opts.user.clone(),
                token: Mutex::new(None),
                timeout: opts.timeout,
                keeper: Mutex::new(None),
            }),
        })
    }

    fn lease(&self, i: usize) -> pb::lease_client::LeaseClient<Channel> {
        pb::lease_client::LeaseClient::new(self.inner.channels[i].clone())
    }

    fn kv(&self, i: usize) -> pb::kv_client::KvClient<Channel> {
        pb::kv_client::KvClient::new(self.inner.channels[i].clone())
            .max_decoding_message_size(MAX_DECODE)
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = self
            .inner
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            r.metadata_mut().insert("token", t);
        }
        r
    }

    async fn authenticate(&self, i: usize) -> Result<(), StoreError> {
        let Some((name, password)) = self.inner.user.clone() else {
            return Ok(());
        };
        let mut auth = pb::auth_client::AuthClient::new(self.inner.channels[i].clone());
        let resp = tokio::time::timeout(
            self.inner.timeout,
            auth.authenticate(pb::AuthenticateRequest { name, password }),
        )
        .await
        .map_err(|_| StoreError::Unavailable("etcd authenticate: timed out".into()))?
        .map_err(|s| status_error("authenticate", &s))?;
        let token = resp
            .into_inner()
            .token
            .parse()
            .map_err(|_| StoreError::Storage("etcd returned an unusable auth token".into()))?;
        *self
            .inner
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(token);
        Ok(())
    }

    /// Authenticates on endpoint `i` when a user is configured and no token is held.
    async fn ensure_token(&self, i: usize) -> Result<(), StoreError> {
        let missing = self.inner.user.is_some()
            && self
                .inner
                .token
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none();
        if missing {
            self.authenticate(i).await?;
        }
        Ok(())
    }

    fn clear_token(&self) {
        *self
            .inner
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Runs an idempotent call on the current endpoint, then on each other one.
    async fn read<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        // A lost answer to a read is just a failed attempt: ask the next endpoint.
        self.failover(what, f, |_| async { Ok(None) }).await
    }

    /// The one failover loop: runs `f(i)` on the current endpoint `i`, then on each other one
    /// (twice around), authenticating first when a user is configured and once more when etcd
    /// says the token expired (refused before it ran). When an attempt's outcome is unknown (a
    /// transport error or a timeout after it was sent), `lost(why)` decides: `Some(v)` is the
    /// answer after all, `None` tries the next endpoint, an error ends the call.
    async fn failover<T, F, Fut, L, LFut>(&self, what: &str, f: F, lost: L) -> Result<T, StoreError>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
        L: Fn(String) -> LFut,
        LFut: Future<Output = Result<Option<T>, StoreError>>,
    {
        let n = self.inner.channels.len();
        let start = self.inner.current.load(Ordering::Relaxed);
        let mut last = String::new();
        let mut reauthed = false;
        for attempt in 0..2 * n {
            let i = (start + attempt) % n;
            let url = &self.inner.urls[i];
            if let Err(e) = self.ensure_token(i).await {
                // Nothing was sent: try the next endpoint.
                last = format!("{url}: {e}");
                continue;
            }
            let failure = match tokio::time::timeout(self.inner.timeout, f(i)).await {
                Ok(Ok(v)) => {
                    self.inner.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(s)) if token_expired(&s) && self.inner.user.is_some() && !reauthed => {
                    // Refused before it ran: authenticate again on the next attempt.
                    self.clear_token();
                    reauthed = true;
                    last = format!("{url}: {}", s.message());
                    continue;
                }
                Ok(Err(s)) if retryable(&s) => format!("{url}: {}", s.message()),
                Ok(Err(s)) => return Err(status_error(what, &s)),
                Err(_) => format!("{url}: timed out after {:?}", self.inner.timeout),
            };
            match lost(failure.clone()).await? {
                Some(v) => return Ok(v),
                None => last = failure,
            }
        }
        Err(StoreError::Unavailable(format!(
            "etcd {what}: no endpoint answered ({last})"
        )))
    }

    async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, StoreError> {
        self.read("range", |i| {
            let mut kv = self.kv(i);
            let r = self.request(req.clone());
            async move { kv.range(r).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    fn txn_request(txn: &Txn) -> pb::TxnRequest {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        let compare = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::Exists(k) => pb::Compare {
                    result: CompareResult::Greater as i32,
                    target: CompareTarget::Create as i32,
                    key: k.as_bytes().to_vec(),
                    range_end: Vec::new(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                },
                Compare::Missing(k) => pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: k.as_bytes().to_vec(),
                    range_end: Vec::new(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                },
                Compare::ModRevision(k, r) => pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: k.as_bytes().to_vec(),
                    range_end: Vec::new(),
                    target_union: Some(TargetUnion::ModRevision(*r)),
                },
            })
            .collect();
        let success = txn
            .ops
            .iter()
            .map(|op| pb::RequestOp {
                request: Some(match op {
                    Op::Put(k, v) => pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: k.as_bytes().to_vec(),
                        value: v.clone(),
                        ..Default::default()
                    }),
                    Op::PutLeased(k, v, lease) => {
                        pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: k.as_bytes().to_vec(),
                            value: v.clone(),
                            lease: *lease,
                            ..Default::default()
                        })
                    }
                    Op::Delete(k) => {
                        pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                            key: k.as_bytes().to_vec(),
                            ..Default::default()
                        })
                    }
                }),
            })
            .collect();
        pb::TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        }
    }

    /// After a transaction's outcome was lost: did it commit? Reads the witness back.
    async fn resolve(&self, txn: &Txn) -> Result<Option<TxnOutcome>, StoreError> {
        let Some((key, value)) = &txn.witness else {
            return Ok(None);
        };
        let r = self
            .range(pb::RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await?;
        Ok(r.kvs
            .first()
            .filter(|kv| &kv.value == value)
            .map(|kv| TxnOutcome::Committed {
                revision: kv.mod_revision,
            }))
    }
}

/// Writes outside the API's transactions (node registration, shared-health reports), and the
/// lease keep-alive paths.
impl EtcdStore {
    /// The shared keep-alive stream's sender, starting its task on the current endpoint when
    /// there is none.
    async fn keeper(&self) -> Result<mpsc::Sender<keeper::Renewal>, StoreError> {
        if let Some(tx) = self
            .inner
            .keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|tx| !tx.is_closed())
        {
            return Ok(tx.clone());
        }
        let i = self.inner.current.load(Ordering::Relaxed);
        self.ensure_token(i).await?;
        let (out, out_rx) = mpsc::channel(keeper::QUEUE);
        let tx = keeper::spawn(
            self.lease(i),
            self.request(ReceiverStream::new(out_rx)),
            out,
        );
        *self
            .inner
            .keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(tx.clone());
        Ok(tx)
    }

    /// Renews a lease on a stream of its own, with endpoint failover.
    async fn lease_keep_alive_once(&self, id: i64) -> Result<i64, StoreError> {
        self.read("lease keepalive", |i| {
            let mut c = self.lease(i);
            let (tx, rx) = mpsc::channel(1);
            let r = self.request(ReceiverStream::new(rx));
            async move {
                tx.send(pb::LeaseKeepAliveRequest { id })
                    .await
                    .map_err(|_| Status::unavailable("keepalive not sent"))?;
                let mut s = c.lease_keep_alive(r).await?.into_inner();
                match s.message().await? {
                    Some(resp) => Ok(resp.ttl.max(0)),
                    None => Err(Status::unavailable("keepalive stream ended")),
                }
            }
        })
        .await
    }

    /// Deletes one key (outside any API write: shared-health reports).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.read("delete", |i| {
            let mut kv = self.kv(i);
            let r = self.request(pb::DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            });
            async move { kv.delete_range(r).await.map(|_| ()) }
        })
        .await
    }

    /// Puts `key` bound to a lease (deleted when the lease expires).
    pub async fn put_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<(), StoreError> {
        self.read("put", |i| {
            let mut kv = self.kv(i);
            let r = self.request(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.clone(),
                lease,
                ..Default::default()
            });
            async move { kv.put(r).await.map(|_| ()) }
        })
        .await
    }
}

impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }
    async fn revision(&self) -> Result<i64, StoreError> {
        let r = self
            .range(pb::RangeRequest {
                key: vec![0],
                count_only: true,
                ..Default::default()
            })
            .await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self
            .range(pb::RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await?;
        r.kvs.into_iter().next().map(to_kv).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut kvs = Vec::new();
        let mut revision = 0;
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let r = self
                .range(pb::RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: PAGE,
                    revision,
                    ..Default::default()
                })
                .await?;
            if revision == 0 {
                revision = r.header.as_ref().map_or(0, |h| h.revision);
            }
            let more = r.more;
            if let Some(last) = r.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            for kv in r.kvs {
                kvs.push(to_kv(kv)?);
            }
            if !more {
                return Ok(Listing { revision, kvs });
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let req = Self::txn_request(&txn);
        let run = |i: usize| {
            let mut kv = self.kv(i);
            let r = self.request(req.clone());
            async move {
                let resp = kv.txn(r).await?.into_inner();
                Ok(if resp.succeeded {
                    TxnOutcome::Committed {
                        revision: resp.header.map_or(0, |h| h.revision),
                    }
                } else {
                    TxnOutcome::Failed { compare: None }
                })
            }
        };
        // The outcome is unknown: find out before trying again, never retry blindly.
        let lost = |failure: String| {
            let txn = &txn;
            async move {
                match self.resolve(txn).await? {
                    Some(outcome) => Ok(Some(outcome)),
                    None if txn.witness.is_some() => Ok(None),
                    None => Err(StoreError::Unavailable(format!(
                        "etcd txn: outcome unknown ({failure})"
                    ))),
                }
            }
        };
        match self.failover("txn", run, lost).await {
            Err(StoreError::LeaseNotFound(_)) => Err(StoreError::LeaseNotFound(
                txn.ops.iter().find_map(Op::lease).unwrap_or(0),
            )),
            other => other,
        }
    }

    async fn lease_grant(&self, ttl: i64) -> Result<i64, StoreError> {
        self.read("lease grant", |i| {
            let mut c = self.lease(i);
            let r = self.request(pb::LeaseGrantRequest { ttl, id: 0 });
            async move { c.lease_grant(r).await.map(|r| r.into_inner().id) }
        })
        .await
    }

    async fn lease_keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        // On the shared stream; a stream that failed is opened again once, then the one-off
        // path (with its endpoint failover) answers.
        for _ in 0..2 {
            let tx = self.keeper().await?;
            let (reply, answer) = tokio::sync::oneshot::channel();
            if tx.send(keeper::Renewal { id, reply }).await.is_ok()
                && let Ok(Ok(ttl)) = tokio::time::timeout(self.inner.timeout, answer).await
            {
                return Ok(ttl);
            }
            // The stream ended (or did not answer in time): forget it.
            let mut k = self
                .inner
                .keeper
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if k.as_ref().is_some_and(|k| k.same_channel(&tx)) {
                *k = None;
            }
        }
        self.lease_keep_alive_once(id).await
    }

    async fn lease_revoke(&self, id: i64) -> Result<bool, StoreError> {
        let r = self
            .read("lease revoke", |i| {
                let mut c = self.lease(i);
                let r = self.request(pb::LeaseRevokeRequest { id });
                async move { c.lease_revoke(r).await.map(|_| ()) }
            })
            .await;
        match r {
            Ok(()) => Ok(true),
            Err(StoreError::LeaseNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn lease_time_to_live(&self, id: i64) -> Result<Option<LeaseStatus>, StoreError> {
        let r = self
            .read("lease time to live", |i| {
                let mut c = self.lease(i);
                let r = self.request(pb::LeaseTimeToLiveRequest { id, keys: false });
                async move { c.lease_time_to_live(r).await.map(|r| r.into_inner()) }
            })
            .await?;
        // etcd answers a missing or expired lease with TTL -1.
        Ok((r.ttl > 0).then_some(LeaseStatus {
            id,
            granted_ttl: r.granted_ttl,
            remaining: r.ttl,
        }))
    }

    async fn watch(&self, prefix: &str, from: i64) -> Result<WatchReceiver, StoreError> {
        self.watch_from(prefix, from, false).await
    }

    async fn watch_with_prev(&self, prefix: &str, from: i64) -> Result<WatchReceiver, StoreError> {
        self.watch_from(prefix, from, true).await
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.read("compact", |i| {
            let mut kv = self.kv(i);
            let r = self.request(pb::CompactionRequest {
                revision,
                physical: false,
            });
            async move { kv.compact(r).await.map(|_| ()) }
        })
        .await
    }

    fn max_txn_ops(&self) -> usize {
        128
    }

    fn max_txn_bytes(&self) -> usize {
        // etcd's default request limit is 1.5 MiB; keep room for framing.
        1_400_000
    }
}

impl EtcdStore {
    /// A watch on `prefix` from `from`; deletes carry the last value when `prev_kv`.
    async fn watch_from(
        &self,
        prefix: &str,
        from: i64,
        prev_kv: bool,
    ) -> Result<WatchReceiver, StoreError> {
        let key = prefix.as_bytes().to_vec();
        let range_end = prefix_end(&key);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key,
                    range_end,
                    start_revision: from.max(0),
                    progress_notify: true,
                    prev_kv,
                    ..Default::default()
                },
            )),
        };
        // Open on the first endpoint that answers with `created`.
        let (mut stream, requests) = self
            .read("watch", |i| {
                let mut w = pb::watch_client::WatchClient::new(self.inner.channels[i].clone())
                    .max_decoding_message_size(MAX_DECODE);
                let (tx, rx) = mpsc::channel(1);
                let create = create.clone();
                let mut req = self.request(ReceiverStream::new(rx));
                req.metadata_mut()
                    .insert("hasleader", MetadataValue::from_static("true"));
                async move {
                    tx.send(create)
                        .await
                        .map_err(|_| Status::unavailable("watch request not sent"))?;
                    let mut s = w.watch(req).await?.into_inner();
                    match s.message().await? {
                        Some(first) if first.created && !first.canceled => Ok((s, tx)),
                        Some(first) if first.compact_revision > 0 => Err(Status::out_of_range(
                            format!("compacted at {}", first.compact_revision),
                        )),
                        Some(first) => Err(Status::unavailable(format!(
                            "watch not created: {}",
                            first.cancel_reason
                        ))),
                        None => Err(Status::unavailable("watch stream ended")),
                    }
                }
            })
            .await
            .map_err(|e| match e {
                StoreError::Compacted { .. } => StoreError::Compacted {
                    requested: from,
                    compact_revision: 0,
                },
                e => e,
            })?;
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        tokio::spawn(async move {
            // Held so that etcd keeps the watch open.
            let _requests = requests;
            loop {
                let item = tokio::select! {
                    m = stream.message() => m,
                    () = tx.closed() => return,
                };
                let resp = match item {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(StoreError::Unavailable(
                                "etcd watch stream ended".into(),
                            )))
                            .await;
                        return;
                    }
                    Err(s) => {
                        let _ = tx.send(Err(status_error("watch", &s))).await;
                        return;
                    }
                };
                if resp.canceled {
                    let e = if resp.compact_revision > 0 {
                        StoreError::Compacted {
                            requested: from,
                            compact_revision: resp.compact_revision,
                        }
                    } else {
                        StoreError::Unavailable(format!(
                            "etcd cancelled the watch: {}",
                            resp.cancel_reason
                        ))
                    };
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                if resp.events.is_empty() {
                    // A progress notification: an empty batch tells the reader the store is
                    // still there; its revision must not be applied (etcd 3.4.23 can send
                    // progress ahead of events, etcd issue 15220).
                    let revision = resp.header.map_or(0, |h| h.revision);
                    if tx
                        .send(Ok(WatchBatch {
                            revision,
                            events: Vec::new(),
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                // All events of one response become one batch, applied as one snapshot.
                let mut events = Vec::with_capacity(resp.events.len());
                let mut revision = 0;
                for e in resp.events {
                    let Some(kv) = e.kv else { continue };
                    revision = revision.max(kv.mod_revision);
                    let ev = if e.r#type == mvccpb::event::EventType::Delete as i32 {
                        match String::from_utf8(kv.key) {
                            Ok(key) => Event::Delete {
                                key,
                                mod_revision: kv.mod_revision,
                                prev: e.prev_kv.and_then(|p| to_kv(p).ok()),
                            },
                            Err(_) => continue,
                        }
                    } else {
                        match to_kv(kv) {
                            Ok(kv) => Event::Put(kv),
                            Err(_) => continue,
                        }
                    };
                    events.push(ev);
                }
                if tx.send(Ok(WatchBatch { revision, events })).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn endpoints_parse() {
        let o = EtcdOptions::new("127.0.0.1:2379, http://[::1]:2379,");
        assert_eq!(o.endpoints, ["http://127.0.0.1:2379", "http://[::1]:2379"]);
    }
}
