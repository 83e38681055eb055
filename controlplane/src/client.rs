//! Reaching the API as a client — the CLI and `tether dataplane --controlplane` alike: the URL,
//! TLS ([`crate::tls::ClientTls`] for `https://`), and the bearer token added to every call.
//! A token is never sent in plaintext off loopback unless the caller said `--insecure`.

use tether_proto::v1::tether_client::TetherClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::tls::{ClientTls, TlsError};

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse.
    #[error("{url:?} is not a URL (as https://tether.example:7070 or http://127.0.0.1:7070)")]
    Url {
        /// The URL.
        url: String,
    },
    /// A token would cross the network unencrypted.
    #[error(
        "refusing to send a token over plaintext http:// to {host} (anyone on the path could read it): use https:// with --ca, or --insecure"
    )]
    PlaintextToken {
        /// The server's host.
        host: String,
    },
    /// TLS files were given for a plaintext URL.
    #[error("--ca, --cert and --key need an https:// server URL, not {url:?}")]
    TlsWithoutHttps {
        /// The URL.
        url: String,
    },
    /// The token holds characters a header cannot carry.
    #[error("the token holds characters not allowed in a header")]
    Token,
    /// The TLS files do not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// How to reach an API.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// TLS for `https://`.
    pub tls: ClientTls,
    /// Allow a token over plaintext to a non-loopback host.
    pub insecure: bool,
    /// The caller is a data-plane node: it says so (`tether-node`), which an API without
    /// tokens believes (certificates' keys are returned to it; with tokens, the role decides).
    pub node: bool,
}

/// Adds the bearer token (and the node marker) to every call.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>, bool);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if self.1 {
            req.metadata_mut()
                .insert(crate::auth::NODE_HEADER, MetadataValue::from_static("1"));
        }
        Ok(req)
    }
}

/// The API client type both callers use.
pub type Client = TetherClient<InterceptedService<Channel, Bearer>>;

/// Whether a URL's host is a loopback address or `localhost`.
fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ClientOptions {
    /// The endpoint (not yet connected) and the interceptor carrying the token.
    pub fn endpoint(&self) -> Result<(Endpoint, Bearer), ClientError> {
        let url_error = || ClientError::Url {
            url: self.url.clone(),
        };
        // `host:port` without a scheme: plaintext, as etcdctl and kubectl take it.
        let url = if self.url.contains("://") {
            self.url.clone()
        } else {
            format!("http://{}", self.url)
        };
        let uri: http::Uri = url.parse().map_err(|_| url_error())?;
        let host = uri.host().ok_or_else(url_error)?.to_owned();
        let mut endpoint = Endpoint::from_shared(url).map_err(|_| url_error())?;
        match uri.scheme_str() {
            Some("https") => {
                endpoint = endpoint
                    .tls_config(self.tls.config()?)
                    .map_err(|e| ClientError::Tls(TlsError::Rustls(e.to_string())))?;
            }
            Some("http") => {
                if self.tls.ca.is_some() || self.tls.identity.is_some() {
                    return Err(ClientError::TlsWithoutHttps {
                        url: self.url.clone(),
                    });
                }
                if self.token.is_some() && !self.insecure && !is_loopback_host(&host) {
                    return Err(ClientError::PlaintextToken { host });
                }
            }
            _ => return Err(url_error()),
        }
        let token = self
            .token
            .as_ref()
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| ClientError::Token)?;
        Ok((endpoint, Bearer(token, self.node)))
    }
}

/// A client on `channel`, sending what `bearer` holds.
pub fn client(channel: Channel, bearer: Bearer, max_message_bytes: usize) -> Client {
    TetherClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str, token: bool) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            token: token.then(|| "aaaaaaaaaaaaaaaaaaaa".into()),
            ..ClientOptions::default()
        }
    }

    #[test]
    fn tokens_stay_off_plaintext_networks() {
        assert!(opts("http://127.0.0.1:7070", true).endpoint().is_ok());
        assert!(opts("http://[::1]:7070", true).endpoint().is_ok());
        assert!(opts("http://localhost:7070", true).endpoint().is_ok());
        assert!(
            opts("127.0.0.1:7070", true).endpoint().is_ok(),
            "no scheme: http"
        );
        assert!(
            opts("10.0.0.1:7070", true).endpoint().is_err(),
            "…with its rules"
        );
        assert!(opts("http://10.0.0.1:7070", false).endpoint().is_ok());
        let e = opts("http://10.0.0.1:7070", true).endpoint().unwrap_err();
        assert!(matches!(e, ClientError::PlaintextToken { .. }), "{e}");
        let mut o = opts("http://10.0.0.1:7070", true);
        o.insecure = true;
        assert!(o.endpoint().is_ok());
        assert!(opts("ftp://127.0.0.1:7070", false).endpoint().is_err());
        assert!(opts("not a url", false).endpoint().is_err());
        let mut o = opts("http://127.0.0.1:7070", false);
        o.tls.ca = Some("/nonexistent".into());
        assert!(matches!(
            o.endpoint().unwrap_err(),
            ClientError::TlsWithoutHttps { .. }
        ));
    }
}
