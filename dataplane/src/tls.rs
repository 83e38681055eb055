//! TLS on the connections to backends (rustls, ring): a backend's [`BackendTls`] is built once
//! per configuration change — its CA parsed, its client configurations made — and shared by
//! its pool and its probes. Also the PEM helpers every TLS setting of Tether uses.

use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{Host, Protocol};

/// Why TLS settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A PEM text that does not parse, or has nothing of what is needed.
    #[error("{0}")]
    Pem(String),
    /// A server name that is neither a DNS name nor an IP address.
    #[error("{0:?} is not a DNS name or an IP address")]
    ServerName(String),
    /// rustls refused the settings.
    #[error("{0}")]
    Rustls(String),
}

/// The crypto provider of every TLS setting (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM text (at least one).
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no CERTIFICATE in the PEM text".into()));
    }
    Ok(certs)
}

/// The private key of a PEM text.
pub fn pem_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem(e.to_string()))
}

/// The system's trusted roots, read once (an unreadable store leaves it empty: every
/// verification without a `ca` then fails, and says so).
static SYSTEM_ROOTS: LazyLock<Arc<RootCertStore>> = LazyLock::new(|| {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system's CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    Arc::new(roots)
});

/// A backend's TLS settings, with the client configurations built from them. Two settings
/// are equal when their fields are (the built configurations follow from them).
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// The name sent (SNI) and verified; `None`: the address's host.
    pub server_name: Option<String>,
    /// PEM CA certificates; `None`: the system's roots.
    pub ca: Option<String>,
    /// Whether the backend's certificate is verified.
    pub verify: bool,
    /// The Certificate resource presented as the client certificate, by name.
    pub client_certificate: Option<String>,
    /// The fingerprint of the certificate bound by [`BackendTls::with_client`] (`None`: none
    /// bound yet, or none named).
    pub client_fingerprint: Option<String>,
    protocol: Protocol,
    roots: Arc<RootCertStore>,
    /// ALPN as the backend's protocol says.
    config: Arc<ClientConfig>,
    /// ALPN `http/1.1` only: Upgrade tunnels.
    http1: Arc<ClientConfig>,
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name
            && self.ca == other.ca
            && self.verify == other.verify
            && self.client_certificate == other.client_certificate
            && self.client_fingerprint == other.client_fingerprint
    }
}

/// Presents one client certificate to every server that asks.
#[derive(Debug)]
struct Present(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Present {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl BackendTls {
    /// Checks the settings and builds their client configurations for `protocol`, without a
    /// client certificate (one named in `client_certificate` is bound by
    /// [`BackendTls::with_client`], once the certificates are known).
    pub fn new(
        server_name: Option<String>,
        ca: Option<String>,
        verify: bool,
        protocol: Protocol,
        client_certificate: Option<String>,
    ) -> Result<BackendTls, TlsError> {
        if let Some(n) = &server_name {
            ServerName::try_from(n.as_str()).map_err(|_| TlsError::ServerName(n.clone()))?;
        }
        let roots = match &ca {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for c in pem_certificates(pem.as_bytes())? {
                    roots
                        .add(c)
                        .map_err(|e| TlsError::Pem(format!("a CA certificate: {e}")))?;
                }
                Arc::new(roots)
            }
            None => Arc::clone(&SYSTEM_ROOTS),
        };
        let mut tls = BackendTls {
            server_name,
            ca,
            verify,
            client_certificate,
            client_fingerprint: None,
            protocol,
            roots,
            config: Arc::new(placeholder()?),
            http1: Arc::new(placeholder()?),
        };
        tls.build(None)?;
        Ok(tls)
    }

    /// These settings presenting `cert` as the client certificate.
    pub fn with_client(&self, cert: &crate::certs::Certificate) -> Result<BackendTls, TlsError> {
        let mut tls = self.clone();
        tls.client_fingerprint = Some(cert.fingerprint.clone());
        tls.build(Some(cert.certified_key()))?;
        Ok(tls)
    }

    fn build(&mut self, client: Option<Arc<rustls::sign::CertifiedKey>>) -> Result<(), TlsError> {
        let build = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, TlsError> {
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            let builder = if self.verify {
                builder.with_root_certificates(Arc::clone(&self.roots))
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            };
            let mut cfg = match &client {
                Some(k) => builder.with_client_cert_resolver(Arc::new(Present(Arc::clone(k)))),
                None => builder.with_no_client_auth(),
            };
            cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(cfg))
        };
        let alpn: &[&[u8]] = match self.protocol {
            Protocol::H2 | Protocol::H2c => &[b"h2"],
            Protocol::Auto => &[b"h2", b"http/1.1"],
            Protocol::Http1 => &[b"http/1.1"],
        };
        self.config = build(alpn)?;
        self.http1 = build(&[b"http/1.1"])?;
        Ok(())
    }

    /// The client configuration for requests (`http1_only`: for Upgrade tunnels).
    pub fn config(&self, http1_only: bool) -> Arc<ClientConfig> {
        Arc::clone(if http1_only {
            &self.http1
        } else {
            &self.config
        })
    }

    /// The name to send and verify when connecting to `host`.
    pub fn name_for(&self, host: &Host) -> Result<ServerName<'static>, TlsError> {
        match (&self.server_name, host) {
            (Some(n), _) | (None, Host::Dns(n)) => {
                ServerName::try_from(n.clone()).map_err(|_| TlsError::ServerName(n.clone()))
            }
            (None, Host::Ip(ip)) => Ok(ServerName::IpAddress((*ip).into())),
        }
    }
}

/// A configuration replaced by [`BackendTls::build`] before use.
fn placeholder() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// `verify: false`: any certificate is taken (signatures are still checked, so the session
/// keys belong to whoever holds the certificate's key — it just is not anyone vouched for).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A backend connection, over TLS or not.
#[derive(Debug)]
pub enum BackendIo {
    /// Plain TCP.
    Plain(tokio::net::TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl BackendIo {
    /// Whether ALPN chose HTTP/2.
    pub fn alpn_h2(&self) -> bool {
        match self {
            BackendIo::Plain(_) => false,
            BackendIo::Tls(t) => t.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

/// `tcp` as is, or after a TLS handshake with `tls` for `host` (`http1_only`: ALPN
/// `http/1.1`, for Upgrade tunnels). A handshake error names what failed (an unknown CA,
/// a name mismatch).
pub async fn wrap(
    tcp: tokio::net::TcpStream,
    tls: Option<&BackendTls>,
    host: &Host,
    http1_only: bool,
) -> std::io::Result<BackendIo> {
    let Some(tls) = tls else {
        return Ok(BackendIo::Plain(tcp));
    };
    let name = tls.name_for(host).map_err(std::io::Error::other)?;
    let connector = tokio_rustls::TlsConnector::from(tls.config(http1_only));
    let stream = connector.connect(name, tcp).await?;
    Ok(BackendIo::Tls(Box::new(stream)))
}

impl tokio::io::AsyncRead for BackendIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            BackendIo::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for BackendIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            BackendIo::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            BackendIo::Tls(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendIo::Plain(s) => s.is_write_vectored(),
            BackendIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            BackendIo::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            BackendIo::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}
