//! [`RemoteStore`]: a read-only [`Store`] over a control plane's gRPC API (`GetSnapshot`, then
//! `Watch`), for `tether dataplane --controlplane URL`: a data plane that follows the state
//! without etcd credentials. The follower runs over it unchanged; writes are refused.

use prost::Message;
use tether_proto::keys::{Kind, Layout};
use tether_proto::v1::tether_client::TetherClient;
use tether_proto::v1::{self, Action};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{
    Event, KeyValue, Listing, Store, StoreError, Txn, TxnOutcome, WatchBatch, WatchReceiver,
};

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = TetherClient<InterceptedService<Channel, Bearer>>;

/// The control plane as a read-only store.
#[derive(Debug, Clone)]
pub struct RemoteStore {
    client: Client,
    layout: Layout,
}

fn status_error(what: &str, s: &Status) -> StoreError {
    match s.code() {
        Code::OutOfRange => StoreError::Compacted {
            requested: 0,
            compact_revision: 0,
        },
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            StoreError::Unavailable(format!("control plane {what}: {}", s.message()))
        }
        _ => StoreError::Storage(format!(
            "control plane {what}: {:?}: {}",
            s.code(),
            s.message()
        )),
    }
}

fn read_only() -> StoreError {
    StoreError::Storage("the control plane's stream is read-only here".into())
}

fn kv<R: Message>(layout: &Layout, kind: Kind, name: &str, r: &R, revision: i64) -> KeyValue {
    KeyValue {
        key: layout.key(kind, name),
        value: r.encode_to_vec(),
        create_revision: revision,
        mod_revision: revision,
    }
}

impl RemoteStore {
    /// A store following the control plane at `url` (lazily connected), sending `token`.
    pub fn connect(
        url: &str,
        token: Option<&str>,
        layout: Layout,
    ) -> Result<RemoteStore, StoreError> {
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| StoreError::Storage(format!("--controlplane {url:?}: {e}")))?
            .connect_lazy();
        let token = token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| {
                StoreError::Storage("the token holds characters not allowed in a header".into())
            })?;
        Ok(RemoteStore {
            client: TetherClient::with_interceptor(channel, Bearer(token))
                .max_decoding_message_size(256 << 20),
            layout,
        })
    }
}

impl Store for RemoteStore {
    async fn revision(&self) -> Result<i64, StoreError> {
        Ok(self.list(self.layout.root()).await?.revision)
    }

    async fn get(&self, _key: &str) -> Result<Option<KeyValue>, StoreError> {
        Err(read_only())
    }

    async fn list(&self, _prefix: &str) -> Result<Listing, StoreError> {
        let s = self
            .client
            .clone()
            .get_snapshot(v1::GetSnapshotRequest {})
            .await
            .map_err(|e| status_error("snapshot", &e))?
            .into_inner();
        let l = &self.layout;
        let mut kvs = Vec::new();
        // Values are stored without their revision; keys carry it.
        for mut r in s.backends {
            let rev = std::mem::take(&mut r.revision);
            kvs.push(kv(l, Kind::Backend, &r.name.clone(), &r, rev));
        }
        for mut r in s.probes {
            let rev = std::mem::take(&mut r.revision);
            kvs.push(kv(l, Kind::Probe, &r.name.clone(), &r, rev));
        }
        for mut r in s.directors {
            let rev = std::mem::take(&mut r.revision);
            kvs.push(kv(l, Kind::Director, &r.name.clone(), &r, rev));
        }
        for mut r in s.routes {
            let rev = std::mem::take(&mut r.revision);
            kvs.push(kv(l, Kind::Route, &r.name.clone(), &r, rev));
        }
        Ok(Listing {
            revision: s.revision,
            kvs,
        })
    }

    async fn txn(&self, _txn: Txn) -> Result<TxnOutcome, StoreError> {
        Err(read_only())
    }

    async fn watch(&self, _prefix: &str, from: i64) -> Result<WatchReceiver, StoreError> {
        let mut stream = self
            .client
            .clone()
            .watch(v1::WatchRequest {
                from_revision: from,
            })
            .await
            .map_err(|e| status_error("watch", &e))?
            .into_inner();
        let layout = self.layout.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    () = tx.closed() => return,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(StoreError::Unavailable(
                                "control plane watch ended".into(),
                            )))
                            .await;
                        return;
                    }
                    Err(s) => {
                        let _ = tx.send(Err(status_error("watch", &s))).await;
                        return;
                    }
                };
                let rev = resp.revision;
                let mut events = Vec::new();
                for e in resp.events {
                    use v1::watch_event::Resource as R;
                    let kind = match Kind::from_singular(&e.kind) {
                        Some(k @ (Kind::Backend | Kind::Probe | Kind::Director | Kind::Route)) => k,
                        _ => continue,
                    };
                    if e.action == Action::Delete as i32 {
                        events.push(Event::Delete {
                            key: layout.key(kind, &e.name),
                            mod_revision: rev,
                        });
                        continue;
                    }
                    let value = match e.resource {
                        Some(R::Backend(mut r)) => {
                            r.revision = 0;
                            r.encode_to_vec()
                        }
                        Some(R::Probe(mut r)) => {
                            r.revision = 0;
                            r.encode_to_vec()
                        }
                        Some(R::Director(mut r)) => {
                            r.revision = 0;
                            r.encode_to_vec()
                        }
                        Some(R::Route(mut r)) => {
                            r.revision = 0;
                            r.encode_to_vec()
                        }
                        None => continue,
                    };
                    events.push(Event::Put(KeyValue {
                        key: layout.key(kind, &e.name),
                        value,
                        create_revision: rev,
                        mod_revision: rev,
                    }));
                }
                if tx
                    .send(Ok(WatchBatch {
                        revision: rev,
                        events,
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn compact(&self, _revision: i64) -> Result<(), StoreError> {
        Err(read_only())
    }
}
