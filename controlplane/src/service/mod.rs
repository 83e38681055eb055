//! The tether.v1 `Tether` gRPC service over a [`Store`], in three parts:
//!
//! - this module: the [`Api`] handle, the reads (get, list, health, snapshot, nodes, the Watch
//!   stream's events) and the tonic glue — every RPC a one-line call, the per-kind ones
//!   generated from one template (`tether_rpcs!`);
//! - `write`: the write engine — list the configuration at revision R → change a copy →
//!   validate the whole result ([`crate::convert::validate`]) → one transaction with the
//!   difference, guarded by the serial key (split into referentially complete parts when it is
//!   too large for one, invisible to data planes until its last part); nothing partial is ever
//!   stored;
//! - `explain`: Explain (which backend a key goes to) and the keys-moved report of Apply;
//! - `leases`: GrantLease, KeepAlive, RevokeLease, GetLease, and the rule that only resources
//!   bound to the same lease may name a leased one (so a lease's end never leaves a dangling
//!   reference);
//! - `intent`: split writes all or nothing — the staged intent record, and the recovery that
//!   completes a split write a crash interrupted;
//! - `watches`: the caps on open Watch streams per token and per connection;
//! - `cache`: the write path's copy of the configuration, kept current by a watch (a write
//!   starts from it when it is at the store's revision, instead of listing the store).

mod cache;
mod explain;
mod intent;
mod leases;
mod watches;
mod write;

pub use explain::{MAX_ALTERNATES, MAX_KEY_BYTES};
pub use leases::{KEEP_ALIVE_IN_FLIGHT, MAX_LEASE_TTL, MIN_LEASE_TTL};
pub use watches::{MAX_WATCHES_PER_CONNECTION, MAX_WATCHES_PER_TOKEN};

use std::pin::Pin;
use std::sync::Arc;

use tether_dataplane::config::AdminHealth;
use tether_dataplane::director::Directors;
use tether_dataplane::runtime::Runtime;
use tether_dataplane::snapshot;
use tether_proto::keys::{Kind, Layout};
use tether_proto::v1;
use tether_proto::v1::tether_server::Tether;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::pattern::Pattern;
use crate::state::{self, Change, DecodeError, Resource, State};
use crate::store::Store;

/// List page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Largest list page a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 10_000;

/// The service.
#[derive(Debug, Clone)]
pub struct Api<S> {
    store: S,
    layout: Layout,
    live: Option<Arc<Runtime>>,
    /// Directors of the last configuration this replica validated: handed to the next
    /// validation so unchanged shard rings are reused rather than rebuilt.
    last_built: Arc<std::sync::Mutex<Option<Arc<Directors>>>>,
    /// Conversions of stored objects by stored revision, for the next validation to reuse
    /// (objects a write changes are marked "not stored" first: `State::mark_written`).
    /// Valid within one store history: emptied whenever the write path lists the store.
    converted: Arc<std::sync::Mutex<crate::convert::Converted>>,
    /// Open Watch streams, per token and per connection.
    watches: Arc<watches::Watches>,
    /// The stored configuration as last validated for Explain and ListHealth, with its store
    /// revision: rebuilt only when the store moved (one rebuild at a time).
    current: Arc<tokio::sync::Mutex<Option<Arc<Current>>>>,
    /// Calls, store transactions (for the admin listener's `/metrics`).
    metrics: Arc<crate::metrics::ApiMetrics>,
    /// The configuration as the store's watch leaves it, for writes to start from.
    cache: Arc<cache::StateCache>,
    /// Set when the server stops: long-lived streams (Watch, KeepAlive) end with UNAVAILABLE
    /// so their clients reconnect elsewhere, instead of holding a graceful shutdown open for
    /// as long as they stay connected.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The stored configuration validated at one store revision.
#[derive(Debug)]
struct Current {
    revision: i64,
    validated: crate::convert::Validated,
}

impl<S: Store> Api<S> {
    /// A service writing through `store` under `layout`. `live` is the data plane running in
    /// the same process (`tether up`), whose health Explain and ListHealth report.
    pub fn new(store: S, layout: Layout, live: Option<Arc<Runtime>>) -> Api<S> {
        Api {
            store,
            layout,
            live,
            last_built: Arc::default(),
            converted: Arc::default(),
            watches: Arc::default(),
            current: Arc::default(),
            metrics: Arc::default(),
            cache: Arc::default(),
            closing: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// The store it writes through.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Its key layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Ends every open Watch and KeepAlive stream, now and from now on (the server is
    /// stopping).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Api::close_streams`] was called.
    fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// What this service counts (the server's [`crate::metrics::MetricsLayer`] adds the
    /// calls).
    pub fn metrics(&self) -> Arc<crate::metrics::ApiMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Watch streams open now.
    pub fn watches_open(&self) -> usize {
        self.watches.total()
    }

    /// Whether the store answers (the admin listener's `/readyz`).
    pub async fn store_ready(&self) -> Result<i64, crate::store::StoreError> {
        self.store.revision().await
    }

    /// The stored configuration as validated at the store's current revision, from the
    /// last call's build when the store has not moved since. Validation (seconds at 100,000
    /// backends) runs on the blocking pool, off the async workers that serve other calls.
    async fn current(&self) -> Result<Arc<Current>, ApiError> {
        let mut cached = self.current.lock().await;
        let revision = self.store.revision().await?;
        if let Some(c) = cached.as_ref()
            && c.revision == revision
        {
            return Ok(Arc::clone(c));
        }
        let state = self.load().await?;
        let api = self.clone();
        let c = Arc::new(
            self.off_workers(move || {
                api.validate(&state).map(|validated| Current {
                    revision: state.revision,
                    validated,
                })
            })
            .await?,
        );
        *cached = Some(Arc::clone(&c));
        Ok(c)
    }

    /// Runs synchronous work that grows with the configuration on the blocking pool.
    async fn off_workers<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
            Err(ApiError::Store(crate::store::StoreError::Storage(format!(
                "validation task failed: {e}"
            ))))
        })
    }

    async fn load(&self) -> Result<State, ApiError> {
        Ok(self.load_reporting().await?.0)
    }

    /// The configuration a write starts from: the cache when it is at (or past) the store's
    /// revision now, else a listing (which the cache then starts again from).
    async fn load_for_write(&self, revision: i64) -> Result<State, ApiError> {
        if let Some(s) = self.cache.at_least(revision).await {
            return Ok(s);
        }
        let state = self.load().await?;
        // A listing may begin a new store history (a restored store), where revisions no
        // longer identify contents.
        *self
            .converted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            crate::convert::Converted::default();
        self.cache.seed(state.clone(), &self.store, &self.layout);
        Ok(state)
    }

    /// The stored configuration, and the objects left out of it because they do not decode.
    async fn load_reporting(&self) -> Result<(State, Vec<DecodeError>), ApiError> {
        let (state, errors, _) = self.load_listing().await?;
        Ok((state, errors))
    }

    /// [`Api::load_reporting`], with the listing it was read from.
    async fn load_listing(
        &self,
    ) -> Result<(State, Vec<DecodeError>, crate::store::Listing), ApiError> {
        let listing = self.store.list(self.layout.root()).await?;
        let (state, errors) = State::from_listing(&self.layout, &listing);
        for e in &errors {
            tracing::warn!(error = %e, "stored object does not decode; ignored");
        }
        Ok((state, errors, listing))
    }

    async fn get<R: Resource>(&self, name: &str) -> Result<R, ApiError> {
        let key = self.layout.key(R::KIND, name);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                kind: R::FIELD,
                name: name.to_owned(),
            })?;
        state::decode(name, &kv.value, kv.mod_revision)
            .map_err(|e| ApiError::Store(crate::store::StoreError::Corrupt(e.to_string())))
    }

    async fn list<R: Resource>(
        &self,
        req: &v1::ListRequest,
    ) -> Result<(Vec<R>, String, i64), ApiError> {
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(ApiError::Field(crate::convert::FieldError::invalid(
                    "page_size",
                    format!("at most {MAX_PAGE_SIZE}, got {n}"),
                )));
            }
            n => n,
        } as usize;
        let filter = crate::filter::Filter::parse(&req.filter)?;
        let listing = self.store.list(&self.layout.dir(R::KIND)).await?;
        let mut out = Vec::new();
        let mut next = String::new();
        for kv in &listing.kvs {
            let Some((_, name)) = self.layout.parse(&kv.key) else {
                continue;
            };
            if !req.page_token.is_empty() && name <= req.page_token.as_str() {
                continue;
            }
            match state::decode::<R>(name, &kv.value, kv.mod_revision) {
                Ok(r) if filter.matches(r.name(), r.labels()) => {
                    // A further match: the page is full, and another page follows.
                    if out.len() == page_size {
                        next = out
                            .last()
                            .map(|r: &R| r.name().to_owned())
                            .unwrap_or_default();
                        break;
                    }
                    out.push(r);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "stored object does not decode; skipped"),
            }
        }
        Ok((out, next, listing.revision))
    }

    async fn list_health(
        &self,
        req: v1::ListHealthRequest,
    ) -> Result<v1::ListHealthResponse, ApiError> {
        let pattern = if req.pattern.is_empty() {
            None
        } else {
            Some(Pattern::parse(&req.pattern).map_err(|e| ApiError::Pattern(e.to_string()))?)
        };
        let keep = |name: &str, addrs: &[tether_dataplane::config::Address]| {
            pattern.as_ref().is_none_or(|p| p.matches(name, addrs))
        };
        let admin = |a: AdminHealth| match a {
            AdminHealth::Auto => v1::AdminHealth::Auto,
            AdminHealth::Healthy => v1::AdminHealth::Healthy,
            AdminHealth::Sick => v1::AdminHealth::Sick,
        } as i32;
        let mut out = Vec::new();
        let reports = self.health_reports().await?;
        let fleet = |spec: &tether_dataplane::config::BackendSpec| {
            let mine = reports.get(&spec.name).cloned().unwrap_or_default();
            let ids = crate::node::fleet::identity_addresses(spec);
            let v = crate::node::fleet::verdict(&mine, &ids);
            let word = match v {
                Some(true) => "healthy",
                Some(false) => "sick",
                None => "",
            };
            (word.to_owned(), mine)
        };
        if let Some(rt) = &self.live {
            let snap = rt.snapshot();
            for (spec, st) in snap.config.backends.iter().zip(&snap.backends) {
                let addrs: Vec<_> = spec.addresses().cloned().collect();
                if !keep(&spec.name, &addrs) {
                    continue;
                }
                let window = st.probe_window();
                let (fleet, reports) = fleet(spec);
                out.push(v1::BackendHealth {
                    name: spec.name.clone(),
                    address: spec.address.to_string(),
                    admin_health: admin(spec.admin_health),
                    probe: match window {
                        None => "-".into(),
                        Some(_) if st.probe_healthy() => "healthy".into(),
                        Some(_) => "sick".into(),
                    },
                    window: window.map(|(g, w)| format!("{g}/{w}")).unwrap_or_default(),
                    healthy: snapshot::backend_healthy(spec, st),
                    observed: true,
                    fleet,
                    reports,
                });
            }
        } else {
            let current = self.current().await?;
            for spec in &current.validated.config.backends {
                let addrs: Vec<_> = spec.addresses().cloned().collect();
                if !keep(&spec.name, &addrs) {
                    continue;
                }
                let (fleet, reports) = fleet(spec);
                out.push(v1::BackendHealth {
                    name: spec.name.clone(),
                    address: spec.address.to_string(),
                    admin_health: admin(spec.admin_health),
                    probe: if spec.probe.is_some() {
                        "?".into()
                    } else {
                        "-".into()
                    },
                    window: String::new(),
                    healthy: !spec.drain
                        && match spec.admin_health {
                            AdminHealth::Sick => false,
                            AdminHealth::Healthy => true,
                            // The fleet verdict, where owners report (a probed backend no
                            // owner reported on is as its probe's fresh window says).
                            AdminHealth::Auto => fleet != "sick",
                        },
                    observed: false,
                    fleet,
                    reports,
                });
            }
        }
        if out.is_empty()
            && let Some(p) = &pattern
            && p.is_exact()
        {
            return Err(ApiError::NotFound {
                kind: "backend",
                name: req.pattern.clone(),
            });
        }
        Ok(v1::ListHealthResponse {
            backends: out,
            nodes: self.list_nodes().await?.nodes,
        })
    }

    async fn snapshot(&self) -> Result<v1::ConfigSnapshot, ApiError> {
        let (state, undecodable, listing) = self.load_listing().await?;
        if state.write_open {
            // Not a state any call asked for; the follower asks again.
            return Err(ApiError::WriteInProgress);
        }
        let mut snap = state.to_snapshot(&undecodable);
        // The shared-health reports of the same listing.
        snap.health = crate::node::fleet::stored_reports(&self.layout, &listing.kvs).collect();
        Ok(snap)
    }

    /// The shared-health reports in the store, by backend, in node order.
    async fn health_reports(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<v1::HealthReport>>, ApiError> {
        let listing = self.store.list(&self.layout.dir(Kind::Health)).await?;
        let mut out: std::collections::BTreeMap<String, Vec<v1::HealthReport>> =
            std::collections::BTreeMap::new();
        for r in crate::node::fleet::stored_reports(&self.layout, &listing.kvs) {
            out.entry(r.backend.clone()).or_default().push(r);
        }
        Ok(out)
    }

    async fn list_nodes(&self) -> Result<v1::ListNodesResponse, ApiError> {
        let listing = self.store.list(&self.layout.dir(Kind::Node)).await?;
        let mut nodes = Vec::new();
        for kv in &listing.kvs {
            use prost::Message;
            match v1::Node::decode(kv.value.as_slice()) {
                Ok(n) => nodes.push(n),
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "node record does not decode"),
            }
        }
        if let Some(rt) = &self.live {
            // `tether up`: the data plane in this process is the one node.
            nodes.push(crate::node::register::record(
                &crate::node::Identity {
                    id: "local".into(),
                    proxy: String::new(),
                    admin: String::new(),
                },
                rt,
            ));
        }
        let (agree, majority_fingerprint) = crate::nodes::agreement(&nodes);
        Ok(v1::ListNodesResponse {
            nodes,
            agree,
            majority_fingerprint,
        })
    }

    /// The Watch stream from `from`: each store revision's resource changes and shared-health
    /// reports (revisions that changed neither are not sent; a quiet stream carries a progress
    /// response every [`HEARTBEAT`]); a store error ends it with that status.
    async fn watch_stream(
        &self,
        from: i64,
        guard: watches::WatchGuard,
        node: bool,
    ) -> Result<WatchStream, Status> {
        // Nodes apply deletes by name; other clients get each deleted resource's last value
        // (from etcd only when asked: it then comes with every put too).
        let watch = if node {
            self.store.watch(self.layout.root(), from).await
        } else {
            self.store.watch_with_prev(self.layout.root(), from).await
        };
        let mut rx = watch.map_err(|e| Status::from(ApiError::Store(e)))?;
        let (tx, out) = tokio::sync::mpsc::channel(16);
        let api = self.clone();
        let serial = self.layout.serial();
        let closed = self.closed();
        tokio::spawn(async move {
            // Counted until this task ends.
            let _guard = guard;
            tokio::pin!(closed);
            // The events of a split write still in progress: sent together with its last part,
            // as data planes following the store apply them.
            let mut held: Vec<v1::WatchEvent> = Vec::new();
            let mut open = false;
            let mut last = from.saturating_sub(1).max(0);
            loop {
                // A client that went away ends the stream now, not at the next change. A quiet
                // stream carries a progress response (no events) every HEARTBEAT, so a follower
                // can tell a quiet store from a lost control plane (shared health's grace).
                let batch = tokio::select! {
                    b = rx.recv() => b,
                    () = tx.closed() => return,
                    () = &mut closed => {
                        let _ = tx.send(Err(shutting_down())).await;
                        return;
                    }
                    () = tokio::time::sleep(HEARTBEAT) => {
                        let progress = v1::WatchResponse { revision: last, events: Vec::new() };
                        if tx.send(Ok(progress)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let Some(batch) = batch else { return };
                if let Ok(b) = &batch {
                    last = last.max(b.revision);
                }
                if let Ok(b) = &batch
                    && let Some(v) = b.events.iter().rev().find_map(|e| match e {
                        crate::store::Event::Put(kv) if kv.key == serial => Some(&kv.value),
                        _ => None,
                    })
                {
                    open = crate::serial::marks_open_write(v);
                }
                let mut item = batch
                    .map(|b| api.watch_events(b, node))
                    .map_err(|e| Status::from(ApiError::Store(e)));
                let end = item.is_err();
                if let Ok(resp) = &mut item {
                    if open {
                        held.append(&mut resp.events);
                        continue;
                    }
                    if !held.is_empty() {
                        held.append(&mut resp.events);
                        resp.events = std::mem::take(&mut held);
                    }
                    if resp.events.is_empty() {
                        continue;
                    }
                }
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(out)))
    }

    fn watch_events(&self, batch: crate::store::WatchBatch, node: bool) -> v1::WatchResponse {
        use crate::node::fleet::HealthEvent;
        v1::WatchResponse {
            revision: batch.revision,
            events: batch
                .events
                .iter()
                .filter_map(|e| match Change::from_event(&self.layout, e) {
                    Some(c) => Some(c.into_watch_event()),
                    // Shared-health reports, for followers of the control plane.
                    None => HealthEvent::from_event(&self.layout, e)
                        .and_then(HealthEvent::into_watch_event),
                })
                .map(|mut e| {
                    if let (false, Some(v1::watch_event::Resource::Certificate(c))) =
                        (node, &mut e.resource)
                    {
                        c.redact();
                    }
                    e
                })
                .collect(),
        }
    }
}

/// How long a Watch stream stays silent before it carries a progress response.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

type Resp<T> = Result<Response<T>, Status>;

/// What a long-lived stream ends with when the server stops.
fn shutting_down() -> Status {
    Status::unavailable("the control plane is shutting down; reconnect")
}
type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchResponse, Status>> + Send>>;

/// `r` as any read returns it: without what only a node may see.
fn redacted<R: Resource>(mut r: R) -> R {
    r.redact();
    r
}

/// Whether the caller is a data-plane node (certificates' keys are theirs to read).
fn is_node<T>(r: &Request<T>) -> bool {
    r.extensions()
        .get::<crate::auth::Caller>()
        .is_some_and(|c| c.1)
}

fn ok<T>(r: Result<T, ApiError>) -> Resp<T> {
    r.map(Response::new).map_err(Status::from)
}

/// The `Tether` service: the per-kind RPCs (create, get, list, update, delete for each
/// resource kind) from one template, then the rest. Each RPC is one call into [`Api`].
macro_rules! tether_rpcs {
    ($(
        $t:ident, $field:ident, $plural:ident:
        $create:ident($create_req:ident), $get:ident, $list:ident($list_resp:ident),
        $update:ident($update_req:ident), $delete:ident;
    )*) => {
        #[tonic::async_trait]
        impl<S: Store> Tether for Api<S> {
            $(
                async fn $create(&self, r: Request<v1::$create_req>) -> Resp<v1::$t> {
                    ok(self.create(r.into_inner().$field).await.map(redacted))
                }
                async fn $get(&self, r: Request<v1::GetRequest>) -> Resp<v1::$t> {
                    ok(self.get(&r.into_inner().name).await.map(redacted))
                }
                async fn $list(&self, r: Request<v1::ListRequest>) -> Resp<v1::$list_resp> {
                    ok(self.list(r.get_ref()).await.map(
                        |($plural, next_page_token, revision)| v1::$list_resp {
                            $plural: $plural.into_iter().map(redacted).collect(),
                            next_page_token,
                            revision,
                        },
                    ))
                }
                async fn $update(&self, r: Request<v1::$update_req>) -> Resp<v1::$t> {
                    let r = r.into_inner();
                    ok(self.update(r.$field, r.update_mask).await.map(redacted))
                }
                async fn $delete(&self, r: Request<v1::DeleteRequest>) -> Resp<()> {
                    ok(self.delete::<v1::$t>(r.into_inner()).await)
                }
            )*
            async fn apply(&self, r: Request<v1::ApplyRequest>) -> Resp<v1::ApplyResponse> {
                ok(Api::apply(self, r.into_inner()).await)
            }
            async fn set_health(
                &self,
                r: Request<v1::SetHealthRequest>,
            ) -> Resp<v1::SetHealthResponse> {
                ok(Api::set_health(self, r.into_inner()).await)
            }
            async fn list_health(
                &self,
                r: Request<v1::ListHealthRequest>,
            ) -> Resp<v1::ListHealthResponse> {
                ok(Api::list_health(self, r.into_inner()).await)
            }
            async fn explain(&self, r: Request<v1::ExplainRequest>) -> Resp<v1::ExplainResponse> {
                ok(Api::explain(self, r.into_inner()).await)
            }

            async fn get_snapshot(
                &self,
                r: Request<v1::GetSnapshotRequest>,
            ) -> Resp<v1::ConfigSnapshot> {
                let node = is_node(&r);
                ok(self.snapshot().await.map(|mut s| {
                    if !node {
                        s.certificates = s.certificates.into_iter().map(redacted).collect();
                    }
                    s
                }))
            }
            async fn list_nodes(
                &self,
                _: Request<v1::ListNodesRequest>,
            ) -> Resp<v1::ListNodesResponse> {
                ok(Api::list_nodes(self).await)
            }

            async fn get_version(&self, _: Request<v1::GetVersionRequest>) -> Resp<v1::VersionInfo> {
                Ok(Response::new(v1::VersionInfo {
                    version: tether_dataplane::build::VERSION.to_owned(),
                    commit: tether_dataplane::build::COMMIT.to_owned(),
                    store: self.store.kind().to_owned(),
                }))
            }

            async fn grant_lease(&self, r: Request<v1::GrantLeaseRequest>) -> Resp<v1::Lease> {
                ok(Api::grant_lease(self, r.into_inner()).await)
            }
            async fn revoke_lease(&self, r: Request<v1::RevokeLeaseRequest>) -> Resp<()> {
                ok(Api::revoke_lease(self, r.into_inner().id).await)
            }
            async fn get_lease(&self, r: Request<v1::GetLeaseRequest>) -> Resp<v1::Lease> {
                ok(Api::get_lease(self, r.into_inner().id).await)
            }

            type KeepAliveStream = ReceiverStream<Result<v1::Lease, Status>>;

            async fn keep_alive(
                &self,
                r: Request<tonic::Streaming<v1::KeepAliveRequest>>,
            ) -> Resp<Self::KeepAliveStream> {
                Ok(Response::new(Api::keep_alive(self, r.into_inner())))
            }

            type WatchStream = WatchStream;

            async fn watch(&self, r: Request<v1::WatchRequest>) -> Resp<WatchStream> {
                let token = r
                    .extensions()
                    .get::<crate::auth::Caller>()
                    .and_then(|c| c.0);
                let guard = self.watches.open(token, r.remote_addr())?;
                let node = is_node(&r);
                self.watch_stream(r.into_inner().from_revision, guard, node)
                    .await
                    .map(Response::new)
            }
        }
    };
}

tether_rpcs! {
    Backend, backend, backends:
        create_backend(CreateBackendRequest), get_backend, list_backends(ListBackendsResponse),
        update_backend(UpdateBackendRequest), delete_backend;
    Probe, probe, probes:
        create_probe(CreateProbeRequest), get_probe, list_probes(ListProbesResponse),
        update_probe(UpdateProbeRequest), delete_probe;
    Director, director, directors:
        create_director(CreateDirectorRequest), get_director,
        list_directors(ListDirectorsResponse),
        update_director(UpdateDirectorRequest), delete_director;
    Route, route, routes:
        create_route(CreateRouteRequest), get_route, list_routes(ListRoutesResponse),
        update_route(UpdateRouteRequest), delete_route;
    Certificate, certificate, certificates:
        create_certificate(CreateCertificateRequest), get_certificate,
        list_certificates(ListCertificatesResponse),
        update_certificate(UpdateCertificateRequest), delete_certificate;
    Discovery, discovery, discoveries:
        create_discovery(CreateDiscoveryRequest), get_discovery,
        list_discoveries(ListDiscoveriesResponse),
        update_discovery(UpdateDiscoveryRequest), delete_discovery;
}

#[cfg(test)]
mod tests;
