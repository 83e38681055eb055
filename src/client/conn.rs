//! Connection and authentication: how the CLI reaches the API (`--server`, `--token`), and
//! what a failed call prints.

use anyhow::Context;
use clap::Args as ClapArgs;
use tether_proto::v1::tether_client::TetherClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use super::output::Output;

/// How to reach the API.
#[derive(Debug, Clone, ClapArgs)]
pub(crate) struct Conn {
    /// The control-plane API to talk to.
    #[arg(
        long,
        global = true,
        env = "TETHER_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    server: String,
    /// Bearer token (admin or read-only).
    #[arg(long, global = true, env = "TETHER_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

pub(super) type Client = TetherClient<InterceptedService<Channel, Auth>>;

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
pub(crate) struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub(super) async fn connect(c: &Conn) -> anyhow::Result<Client> {
    let token = c
        .token
        .as_ref()
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .context("--token holds characters not allowed in a header")?;
    let channel = Channel::from_shared(c.server.clone())
        .with_context(|| {
            format!(
                "--server {:?} is not a URL (as http://127.0.0.1:7070)",
                c.server
            )
        })?
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach the Tether API at {} (is `tether up` running?)",
                c.server
            )
        })?;
    Ok(TetherClient::with_interceptor(channel, Auth(token))
        .max_decoding_message_size(tether_controlplane::server::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(tether_controlplane::server::MAX_MESSAGE_BYTES))
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

pub(super) fn call<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, CallError> {
    r.map(tonic::Response::into_inner).map_err(CallError)
}
