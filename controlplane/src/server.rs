//! The gRPC server: the `Tether` service, the standard health service and server reflection,
//! all behind the [`crate::auth`] layer, on a listener the caller bound.

use std::future::Future;

use tether_proto::v1::tether_server::TetherServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::auth::{AuthLayer, Tokens};
use crate::service::Api;
use crate::store::Store;

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not read the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Largest request or response message (an Apply of many resources).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve<S: Store>(
    listener: TcpListener,
    api: Api<S>,
    tokens: Tokens,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<TetherServer<Api<S>>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let tether = TetherServer::new(api)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .layer(AuthLayer::new(tokens))
        .add_service(health)
        .add_service(reflection)
        .add_service(tether)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
