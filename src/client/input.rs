//! Input the CLI reads: files (or standard input) of declarative YAML, and the error that
//! makes a bad one exit with status 2.

use std::path::Path;

use anyhow::Context;
use tether_controlplane::declarative;
use tether_proto::v1;

pub(super) fn read(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        Ok(s)
    } else {
        // A file that is missing or unreadable is input to fix, like a bad one: exit status 2.
        std::fs::read_to_string(path)
            .map_err(|e| InputError(format!("cannot read {}: {e}", path.display())).into())
    }
}

/// A local input error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InputError(pub(crate) String);

pub(super) fn parse_one<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = read(path)?;
    declarative::parse_one(&text).map_err(|e| InputError(format!("{}: {e}", path.display())).into())
}

/// The file's resources as an Apply request (errors name the field in the file).
pub(crate) fn apply_request(text: &str, path: &str) -> Result<v1::ApplyRequest, InputError> {
    declarative::parse(text)
        .and_then(|d| d.to_request())
        .map_err(|e| InputError(format!("{path}: {e}")))
}
