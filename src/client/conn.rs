//! Connection and authentication: how the CLI reaches the API (`--server`, `--token`), and
//! what a failed call prints.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args as ClapArgs;
use tether_controlplane::client::ClientOptions;
use tether_controlplane::tls::ClientTls;
use tonic_types::StatusExt;

use super::output::Output;

/// How to reach the API.
#[derive(Debug, Clone, ClapArgs)]
pub(crate) struct Conn {
    /// The control-plane API to talk to (https:// for TLS).
    #[arg(
        long,
        global = true,
        env = "TETHER_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    server: String,
    /// Bearer token (admin, read-only or dataplane).
    #[arg(long, global = true, env = "TETHER_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// CA certificate (PEM) that signed the API's certificate (https:// servers; default: the
    /// system's roots).
    #[arg(long, global = true, env = "TETHER_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM), for an API that requires one (mTLS).
    #[arg(
        long,
        global = true,
        env = "TETHER_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    cert: Option<PathBuf>,
    /// Client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "TETHER_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    key: Option<PathBuf>,
    /// Allow what is unsafe off loopback: sending a token over plaintext http://; for `up`,
    /// `controlplane` and `dataplane`, serving the API or the admin listener on a non-loopback
    /// address without TLS or without tokens.
    #[arg(long, global = true)]
    pub(crate) insecure: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

pub(super) type Client = tether_controlplane::client::Client;

impl Conn {
    /// How to reach the API at `url` with this command line's token, TLS files and
    /// `--insecure`.
    pub(crate) fn options(&self, url: &str) -> ClientOptions {
        ClientOptions {
            url: url.to_owned(),
            token: self.token.clone(),
            tls: ClientTls {
                ca: self.ca.clone(),
                identity: self.cert.clone().zip(self.key.clone()),
            },
            insecure: self.insecure,
            node: false,
        }
    }
}

pub(super) async fn connect(c: &Conn) -> anyhow::Result<Client> {
    let (endpoint, bearer) = c.options(&c.server).endpoint().context("--server")?;
    let channel = endpoint.connect().await.with_context(|| {
        format!(
            "cannot reach the Tether API at {} (is `tether up` running?)",
            c.server
        )
    })?;
    Ok(tether_controlplane::client::client(
        channel,
        bearer,
        tether_controlplane::server::MAX_MESSAGE_BYTES,
    ))
}

/// A failed call, with what the server said to fix.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
pub(crate) struct CallError(pub(crate) tonic::Status);

pub(super) fn describe(s: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", s.code(), s.message());
    if let Some(br) = s.get_details_bad_request() {
        for v in br.field_violations {
            if !s.message().contains(&v.field) {
                out.push_str(&format!("\n  field {}: {}", v.field, v.description));
            }
        }
    }
    out
}

/// What to try when a call failed at the connection: a plaintext client talking to a TLS
/// port sees only a cancelled or reset stream.
pub(crate) fn hint(e: &anyhow::Error, server: &str) -> Option<&'static str> {
    let c = e.downcast_ref::<CallError>()?;
    let broken = match c.0.code() {
        // A control plane that is stopping says so: nothing to hint.
        tonic::Code::Unavailable => !c.0.message().contains("shutting down"),
        tonic::Code::Cancelled | tonic::Code::Unknown => true,
        // TLS records read as HTTP/2 frames.
        tonic::Code::Internal => c.0.message().contains("h2 protocol error"),
        _ => false,
    };
    (broken && server.starts_with("http://")).then_some(
        "the connection to the API failed: if it serves TLS, use an https:// --server (and --ca FILE for its CA)",
    )
}

impl Conn {
    /// The API's URL (`--server`).
    pub(crate) fn server(&self) -> &str {
        &self.server
    }
}

pub(super) fn call<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, CallError> {
    r.map(tonic::Response::into_inner).map_err(CallError)
}
