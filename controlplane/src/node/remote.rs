//! [`RemoteSource`]: a control plane's gRPC API (`GetSnapshot`, then `Watch`) as a
//! [`Source`], for `tether dataplane --controlplane URL`: a node that follows the state without
//! etcd credentials. Read-only by construction: a source has no write methods.

use tether_proto::v1::tether_client::TetherClient;
use tether_proto::v1::{self};
use tonic::codec::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::source::{Batch, Listed, Source, Watch};
use crate::state::{Change, State};
use crate::store::StoreError;

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
    /// A source following the control plane at `url` (lazily connected), sending `token`.
    pub fn connect(url: &str, token: Option<&str>) -> Result<RemoteSource, StoreError> {
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| StoreError::Storage(format!("--controlplane {url:?}: {e}")))?
            .connect_lazy();
        let token = token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| {
                StoreError::Storage("the token holds characters not allowed in a header".into())
            })?;
        Ok(RemoteSource {
            client: TetherClient::with_interceptor(channel, Bearer(token))
                .max_decoding_message_size(256 << 20),
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
        Ok(Listed { state, undecodable })
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
