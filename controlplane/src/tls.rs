//! TLS for the gRPC API, both ends.
//!
//! Server: [`ServerTls`] holds the certificate, key and optional client CA files and the rustls
//! configuration built from them. Each accepted connection asks [`ServerTls::config`], which
//! re-reads the files when their modification time, size or inode changed — so a certificate
//! rotated on disk is served to the next connection, and open connections (an open Watch
//! stream) keep the session they have. A file that fails to load keeps the previous
//! configuration (and says why in the log): a half-written rotation never takes the API down.
//! tonic's own `ServerTlsConfig` builds its acceptor once, which is why this is ours.
//! [`incoming`] turns a listener into the stream of handshaken connections tonic serves, each
//! handshake on its own task under a deadline, so a client that never finishes one holds
//! nothing but its socket.
//!
//! Client: [`ClientTls`] (the CLI's `--ca`/`--cert`/`--key`, a data plane's the same) into
//! tonic's client configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::files::Stamp;

/// Why TLS files were refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no PEM object of the kind wanted, or a broken one.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, say).
    #[error("{0}")]
    Rustls(String),
}

/// The files of the API's TLS (`--api-cert`, `--api-key`, `--api-client-ca`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates: clients must then present a certificate one of them signed.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }
}

/// The server side: the files and the configuration last built from them.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    current: Mutex<(Stamp, Arc<rustls::ServerConfig>)>,
}

impl ServerTls {
    /// Loads the files (an error names the file and what is wrong with it).
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let stamp = Stamp::of(files.paths());
        let config = server_config(&files)?;
        Ok(ServerTls {
            files,
            current: Mutex::new((stamp, config)),
        })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The configuration for the next connection: rebuilt first if a file changed on disk.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let stamp = Stamp::of(self.files.paths());
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != stamp {
            match server_config(&self.files) {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "API certificate reloaded");
                    *current = (stamp, config);
                }
                Err(e) => {
                    // Retried at the next connection; the previous certificate serves meanwhile.
                    tracing::warn!(error = %e, "API certificate files changed but do not load; still serving the previous ones");
                }
            }
        }
        Arc::clone(&current.1)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        what: what.to_string(),
    }
}

/// Every certificate of a PEM file (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| pem_error(path, e))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| pem_error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::Rustls(format!(
            "{} and {}: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at most; more connections wait in the listen backlog.
const MAX_HANDSHAKES: usize = 256;

/// The stream of TLS connections accepted on `listener`, for tonic's
/// `serve_with_incoming_shutdown`. Failed handshakes (a plaintext client, an unknown client
/// certificate, a timeout) are logged at debug and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: back off rather than spin.
                        tracing::warn!(error = %e, "API accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let acceptor = TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Some(conn) = handshake(acceptor, tcp, peer).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "API TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "API TLS handshake timed out");
            None
        }
    }
}

/// The client side: how a CLI or a data plane trusts the API and proves itself.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM CA certificates to trust (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, for an API that requires one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    /// tonic's configuration for these files.
    pub fn config(&self) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        let mut cfg = tonic::transport::ClientTlsConfig::new();
        cfg = match &self.ca {
            Some(ca) => {
                certificates(ca)?;
                cfg.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
            }
            None => cfg.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            certificates(cert)?;
            private_key(key)?;
            cfg = cfg.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
