//! [`RemoteSource`]: a control plane's gRPC API (`GetSnapshot`, then `Watch`) as a
//! [`Source`], for `tether dataplane --controlplane URL`: a node that follows the state without
//! etcd credentials. Read-only by construction: a source has no write methods. The stream also
//! carries the fleet's shared-health reports (a follower of the control plane routes on them,
//! and never owns: it holds no lease to publish under).

use tether_proto::v1::{self};
use tonic::codec::Streaming;
use tonic::{Code, Status};

use super::fleet::{self, HealthEvent};
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
            Ok(Some(resp)) => {
                let revision = resp.revision;
                let (health, config): (Vec<_>, Vec<_>) = resp
                    .events
                    .into_iter()
                    .partition(|e| e.kind == fleet::WATCH_KIND);
                Ok(Batch {
                    revision,
                    progress: health.is_empty() && config.is_empty(),
                    changes: config
                        .into_iter()
                        .filter_map(Change::from_watch_event)
                        .collect(),
                    health: health
                        .iter()
                        .filter_map(|e| HealthEvent::from_watch_event(e, revision))
                        .collect(),
                    ..Batch::default()
                })
            }
            Ok(None) => Err(StoreError::Unavailable("control plane watch ended".into())),
            Err(s) => Err(status_error("watch", &s)),
        })
    }
}

impl Source for RemoteSource {
    type Watch = RemoteWatch;

    async fn list(&self) -> Result<Listed, StoreError> {
        let mut s = self
            .client
            .clone()
            .get_snapshot(v1::GetSnapshotRequest {})
            .await
            .map_err(|e| status_error("snapshot", &e))?
            .into_inner();
        let revision = s.revision;
        let reports = std::mem::take(&mut s.health);
        let (state, undecodable) = State::from_snapshot(s);
        Ok(Listed {
            state,
            undecodable,
            health: reports
                .into_iter()
                .map(|r| HealthEvent::from_report(r, revision))
                .collect(),
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
