//! The gRPC server: the `Tether` service, the standard health service and server reflection
//! (v1 and v1alpha),
//! all behind the [`crate::auth`] layer, on a listener the caller bound — over TLS
//! ([`crate::tls`]) when given certificates.

use std::future::Future;
use std::sync::Arc;

use tether_proto::v1::tether_server::TetherServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::auth::{AuthLayer, TokenFile};
use crate::service::Api;
use crate::store::Store;
use crate::tls::ServerTls;

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

/// HTTP/2 streams one client connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Largest request or response message (an Apply of many resources).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Serves the API on `listener` — with TLS when `tls` is given — until `shutdown` resolves.
pub async fn serve<S: Store>(
    listener: TcpListener,
    api: Api<S>,
    tokens: Arc<TokenFile>,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<TetherServer<Api<S>>>().await;
    // Both reflection versions (grpcurl speaks v1; Python's grpcio-reflection client and older
    // tools v1alpha), knowing the health service's and google.rpc's messages too, so stock
    // clients can call health and decode error details without .proto files.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let metrics = api.metrics();
    // Streams that would hold the graceful shutdown open end when it begins.
    let closer = api.clone();
    let shutdown = async move {
        shutdown.await;
        closer.close_streams();
    };
    let tether = TetherServer::new(api)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let router = tonic::transport::Server::builder()
        // Streams per connection (above the Watch cap per connection, so that cap answers
        // RESOURCE_EXHAUSTED rather than leaving calls queued), and keep-alive pings so a
        // client that vanished frees its Watch streams.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .layer(crate::metrics::MetricsLayer::new(metrics))
        .layer(AuthLayer::new(tokens))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tether);
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), shutdown)
                .await?
        }
        None => {
            // Without TCP_NODELAY a response's frames wait out the client's delayed ACK
            // (measured: 40 ms added to every answer larger than one segment).
            let incoming = TcpListenerStream::new(listener).map(|conn| {
                conn.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?
        }
    }
    Ok(())
}
