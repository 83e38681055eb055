//! Output formatting: tables by default (YAML for one resource), `-o json` and `-o yaml` for
//! scripts — a resource in either is the document `update -f` and `apply -f` take back, with
//! its revision as a field.

use clap::ValueEnum;
use serde::Serialize;
use tether_controlplane::state::Resource;
use tether_proto::v1::{self, Action};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns (YAML for `get`).
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

impl Output {
    /// JSON or YAML.
    pub(crate) fn structured(self) -> bool {
        self != Output::Table
    }
}

/// Prints `v` as JSON (one line) or YAML (a document, with its `---` so a stream of them
/// splits).
pub(crate) fn print_value(out: Output, v: serde_json::Value) {
    match out {
        Output::Yaml => match yaml_serde::to_string(&v) {
            Ok(y) => write_out(format_args!("---\n{y}")),
            Err(e) => {
                eprintln!("tether: cannot write YAML: {e}");
                std::process::exit(1);
            }
        },
        _ => outln!("{v}"),
    }
}

/// Writes to standard output; a closed pipe ends the process with status 0, any other write
/// error with 1 (see `outln!`).
pub(crate) fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("tether: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

/// Resolves once standard output is a pipe whose reader went away (`tether watch | head -1`):
/// a stream that writes only when something changes would otherwise notice only at its next
/// write. A blocking thread waits in poll(2), which reports POLLERR on a pipe whose reader
/// closed (and never returns for a terminal or a file, which is as it should be).
pub(crate) async fn stdout_closed() {
    use rustix::event::{PollFd, PollFlags, poll};
    let waited = tokio::task::spawn_blocking(|| {
        let out = std::io::stdout();
        loop {
            let mut fds = [PollFd::new(&out, PollFlags::empty())];
            match poll(&mut fds, None) {
                Ok(_) if fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) => {
                    return true;
                }
                // Not a descriptor poll(2) can watch (POLLNVAL): give up watching.
                Ok(_) if !fds[0].revents().is_empty() => return false,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    if !matches!(waited, Ok(true)) {
        std::future::pending::<()>().await;
    }
}

pub(super) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        outln!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Prints resources as a JSON array (or YAML sequence) of their file-shaped documents, each
/// with its revision.
pub(super) fn print_list<'a, R, D>(items: &'a [R], out: Output) -> anyhow::Result<()>
where
    R: Resource,
    D: Serialize + From<&'a R>,
{
    let v: Vec<_> = items
        .iter()
        .map(|r| serde_json::to_value(D::from(r)))
        .collect::<Result<_, _>>()?;
    print_value(out, serde_json::Value::Array(v));
    Ok(())
}

/// Prints one resource's document (with its revision): YAML unless JSON is asked for.
pub(super) fn print_one<T: Serialize>(doc: &T, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => outln!("{}", serde_json::to_value(doc)?),
        Output::Table | Output::Yaml => write_out(format_args!("{}", yaml_serde::to_string(doc)?)),
    }
    Ok(())
}

pub(super) fn admin_name(a: i32) -> &'static str {
    match v1::AdminHealth::try_from(a) {
        Ok(v1::AdminHealth::Healthy) => "healthy",
        Ok(v1::AdminHealth::Sick) => "sick",
        _ => "auto",
    }
}

/// A value for a table cell: `-` when empty.
pub(super) fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

pub(super) fn key_name(k: Option<&v1::KeySource>) -> String {
    use v1::key_source::Source;
    match k.and_then(|k| k.source.as_ref()) {
        Some(Source::ClientIp(_)) => "client_ip".into(),
        Some(Source::Header(h)) => format!("header:{h}"),
        Some(Source::Cookie(c)) => format!("cookie:{c}"),
        Some(Source::Query(q)) => format!("query:{q}"),
        Some(Source::Url(_)) => "url".into(),
        Some(Source::Path(_)) => "path".into(),
        None => "-".into(),
    }
}

pub(super) fn policy_name(d: &v1::Director) -> String {
    use v1::director::Policy;
    match &d.policy {
        Some(Policy::RoundRobin(_)) => "round_robin".into(),
        Some(Policy::Fallback(f)) if f.sticky => "fallback(sticky)".into(),
        Some(Policy::Fallback(_)) => "fallback".into(),
        Some(Policy::Random(_)) => "random".into(),
        Some(Policy::Hash(_)) => "hash".into(),
        Some(Policy::Shard(s)) if s.algorithm == v1::ShardAlgorithm::Balanced as i32 => {
            "shard(balanced)".into()
        }
        Some(Policy::Shard(_)) => "shard(varnish)".into(),
        None => "-".into(),
    }
}

pub(super) fn done(out: Output, what: &str, revision: i64) {
    match out {
        Output::Table => outln!("{what} at revision {revision}"),
        _ => print_value(out, serde_json::json!({ what: true, "revision": revision })),
    }
}

pub(super) fn action_name(a: i32) -> &'static str {
    match Action::try_from(a) {
        Ok(Action::Create) => "create",
        Ok(Action::Update) => "update",
        Ok(Action::Delete) => "delete",
        Ok(Action::Unchanged) => "unchanged",
        _ => "?",
    }
}
