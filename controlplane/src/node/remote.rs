//! [`RemoteSource`]: a control plane's gRPC API (`GetSnapshot`, then `Watch`) as a
//! [`Source`], for `tether dataplane --controlplane URL`: a node that follows the state without
//! etcd credentials. Read-only by construction: a source has no write methods.

use tether_proto::v1::{self};
use tonic::codec::Streaming;
use tonic::{Code, Status};

use super::source::{Batch, Listed, Source, Watch};
use crate::client::{Client, ClientOptions};
use crate::state::{Change, State};
use crate::store::StoreError;

/// The control plane as a source.
#[derive(Debug, Clone)]
pub struct RemoteSource {
    client: Client,
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

impl RemoteSource {
    /// A source following the control plane `opts` names (lazily connected).
    pub fn connect(opts: &ClientOptions) -> Result<RemoteSource, StoreError> {
        let (endpoint, bearer) = opts
            .endpoint()
            .map_err(|e| StoreError::Storage(format!("--controlplane: {e}")))?;
        Ok(RemoteSource {
            client: crate::client::client(endpoint.connect_lazy(), bearer, 256 << 20),
        })
    }
}

/// The control plane's Watch stream.
#[derive(Debug)]
pub struct RemoteWatch(Streaming<v1::WatchResponse>);

impl Watch for RemoteWatch {
    async fn next(&mut self) -> Option<Result<Batch, StoreError>> {
        Some(match self.0.message().await {
            Ok(Some(resp)) => Ok(Batch {
                revision: resp.revision,
                progress: resp.events.is_empty(),
                changes: resp
                    .events
                    .into_iter()
                    .filter_map(Change::from_watch_event)
                    .collect(),
                ..Batch::default()
            }),
            Ok(None) => Err(StoreError::Unavailable("control plane watch ended".into())),
            Err(s) => Err(status_error("watch", &s)),
        })
    }
}

impl Source for RemoteSource {
    type Watch = RemoteWatch;

    async fn list(&self) -> Result<Listed, StoreError> {
        let s = self
            .client
            .clone()
            .get_snapshot(v1::GetSnapshotRequest {})
            .await
            .map_err(|e| status_error("snapshot", &e))?
            .into_inner();
        let (state, undecodable) = State::from_snapshot(s);
        Ok(Listed {
            state,
            undecodable,
            health: Vec::new(),
        })
    }

    async fn watch(&self, from: i64) -> Result<RemoteWatch, StoreError> {
        let stream = self
            .client
            .clone()
            .watch(v1::WatchRequest {
                from_revision: from,
            })
            .await
            .map_err(|e| status_error("watch", &e))?
            .into_inner();
        Ok(RemoteWatch(stream))
    }
}
