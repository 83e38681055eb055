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

/// The declarative files at `paths` as one Apply request: each a file (`-` for standard
/// input) or a directory, whose `*.yaml` and `*.yml` files are read in name order (not its
/// subdirectories, as `kubectl apply -f DIR`). Errors name the file and the field.
pub(crate) fn apply_paths(paths: &[std::path::PathBuf]) -> anyhow::Result<v1::ApplyRequest> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(p)
                .map_err(|e| InputError(format!("cannot read {}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            if found.is_empty() {
                return Err(InputError(format!("{}: no .yaml or .yml files", p.display())).into());
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let mut all = declarative::Document::default();
    for f in &files {
        let text = read(f)?;
        let doc =
            declarative::parse(&text).map_err(|e| InputError(format!("{}: {e}", f.display())))?;
        all.extend(doc);
    }
    all.to_request()
        .map_err(|e| InputError(format!("{}: {e}", describe(&files))).into())
}

/// The files of one request, for an error about the whole of them.
fn describe(files: &[std::path::PathBuf]) -> String {
    match files {
        [one] => one.display().to_string(),
        _ => format!("{} files", files.len()),
    }
}
