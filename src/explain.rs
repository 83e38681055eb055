//! `tether explain -f FILE --director NAME KEY…`: the backend a director picks for each key,
//! and its alternates, computed offline from a declarative file with the same code the proxy
//! runs. Health comes from the file's `admin_health` (there are no probes offline).
//! Without `-f`, `tether explain --route R KEY…` (or `--director D`) asks the running system
//! (see [`crate::client`]).

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use clap::ValueEnum;
use tether_controlplane::declarative::{self, FileError, Loaded};
use tether_dataplane::config::AdminHealth;
use tether_dataplane::director::{
    BackendId, HealthView, HealthyMode, Key, SelectError, SelectOpts, Target,
};

/// Arguments of `tether explain`.
#[derive(Debug, clap::Args)]
#[command(arg_required_else_help = true)]
pub(crate) struct Args {
    /// The declarative YAML file (offline); without it, the running system is asked.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    /// The director to ask.
    #[arg(long, value_name = "NAME", required_unless_present = "route")]
    pub(crate) director: Option<String>,
    /// The route to ask (running system only): its director, and for a `client_ip` key the
    /// key read as an IP address.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["director", "file"])]
    pub(crate) route: Option<String>,
    /// Which alternate to pick (0 is the first choice).
    #[arg(long, default_value_t = 0)]
    alt: u32,
    /// Shard health mode, overriding the director's.
    #[arg(long, value_enum)]
    healthy: Option<HealthyArg>,
    /// How keys are read: strings, integers used as given, or client IP addresses.
    #[arg(long = "key-type", value_enum, default_value_t = KeyType::String)]
    key_type: KeyType,
    /// Read keys from this file, one per line (`-` for standard input).
    #[arg(long, value_name = "PATH", conflicts_with = "keys_args")]
    keys: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub(crate) format: Format,
    /// How many alternates the text format lists.
    #[arg(long, default_value_t = 3)]
    pub(crate) alternates: usize,
    /// Keys to explain.
    #[arg(value_name = "KEY", id = "keys_args", required_unless_present = "keys")]
    key_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HealthyArg {
    Chosen,
    Ignore,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KeyType {
    String,
    Int,
    Ip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Text,
    Csv,
}

/// Why explain failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExplainError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is invalid.
    #[error("{path}: {error}")]
    File {
        /// Which file.
        path: String,
        /// What is wrong, naming the field.
        error: FileError,
    },
    /// No such director in the file.
    #[error("--director: no director named {name:?} in {path} (it has: {known})")]
    UnknownDirector {
        /// The name asked for.
        name: String,
        /// The file.
        path: String,
        /// The directors it has.
        known: String,
    },
    /// A key that does not parse as the key type.
    #[error("key {key:?} is not {what}")]
    BadKey {
        /// The key.
        key: String,
        /// What it should have been.
        what: &'static str,
    },
    /// A key the director cannot take.
    #[error("key {key:?}: {source}")]
    Select {
        /// The key.
        key: String,
        /// Why.
        source: SelectError,
    },
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// Offline explain needs a file and a director.
    #[error("offline explain needs -f FILE and --director NAME")]
    Offline,
}

impl ExplainError {
    /// 2 for bad input (file, flags, keys), 1 for output failures.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ExplainError::Output(_) => 1,
            _ => 2,
        }
    }
}

/// Health from the file's admin overrides.
struct AdminView<'a>(&'a Loaded);

impl HealthView for AdminView<'_> {
    fn is_healthy(&self, b: BackendId) -> bool {
        self.0.config.backends[b as usize].admin_health != AdminHealth::Sick
    }
}

/// Runs `tether explain -f`, writing to `out`.
pub(crate) fn run(args: &Args, out: &mut dyn Write) -> Result<(), ExplainError> {
    let (Some(file), Some(director)) = (&args.file, &args.director) else {
        return Err(ExplainError::Offline);
    };
    let path = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|source| ExplainError::Read {
        path: path.clone(),
        source,
    })?;
    let loaded = declarative::load(&text).map_err(|error| ExplainError::File {
        path: path.clone(),
        error,
    })?;
    let d = loaded
        .directors
        .id(director)
        .ok_or_else(|| ExplainError::UnknownDirector {
            name: director.clone(),
            path: path.clone(),
            known: loaded
                .config
                .directors
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let keys = read_keys(args)?;
    let opts = SelectOpts {
        alt: args.alt,
        healthy: args.healthy.map(|h| match h {
            HealthyArg::Chosen => HealthyMode::Chosen,
            HealthyArg::Ignore => HealthyMode::Ignore,
            HealthyArg::All => HealthyMode::All,
        }),
    };
    let health = AdminView(&loaded);
    let mut out = std::io::BufWriter::new(out);
    for raw in &keys {
        let ip;
        let key = match args.key_type {
            KeyType::String => Key::str(raw),
            KeyType::Int => Key::int(raw.trim().parse().map_err(|_| ExplainError::BadKey {
                key: raw.clone(),
                what: "an integer in 0..=18446744073709551615",
            })?),
            KeyType::Ip => {
                ip = raw
                    .trim()
                    .parse::<IpAddr>()
                    .map_err(|_| ExplainError::BadKey {
                        key: raw.clone(),
                        what: "an IP address",
                    })?;
                Key::ip(ip)
            }
        };
        let select_err = |source| ExplainError::Select {
            key: raw.clone(),
            source,
        };
        // The preference order is read before the pick, which advances stateful directors
        // (round_robin, sticky fallback).
        let order = match args.format {
            Format::Text => loaded
                .directors
                .order(d, &key, args.alternates + 1)
                .map_err(select_err)?,
            Format::Csv => Vec::new(),
        };
        let chosen = loaded
            .directors
            .select(d, &key, opts, &health)
            .map_err(select_err)?;
        let name = chosen.map_or("", |b| loaded.directors.backend_name(b));
        match args.format {
            Format::Csv => writeln!(out, "{},{}", csv_field(raw), name)?,
            Format::Text => {
                let alts = alternates(&loaded, order, chosen, &key, &health, args.alternates)
                    .map_err(select_err)?;
                let shown = if name.is_empty() {
                    "(none available)"
                } else {
                    name
                };
                writeln!(out, "{raw}\t{shown}\talternates: {alts}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The director's preference order without its pick, each entry marked when it cannot take
/// requests and, for a nested director, with the backend it resolves to.
fn alternates(
    loaded: &Loaded,
    order: Vec<Target>,
    chosen: Option<BackendId>,
    key: &Key<'_>,
    health: &AdminView<'_>,
    limit: usize,
) -> Result<String, SelectError> {
    let set = &loaded.directors;
    let mut parts = Vec::new();
    let mut skipped_pick = false;
    for t in order {
        let resolved = match t {
            Target::Backend(b) => Some(b),
            Target::Director(inner) => set.select(inner, key, SelectOpts::default(), health)?,
        };
        if !skipped_pick && chosen.is_some() && resolved == chosen {
            skipped_pick = true;
            continue;
        }
        if parts.len() == limit {
            break;
        }
        let mut s = set.target_name(t).to_owned();
        if let (Target::Director(_), Some(b)) = (t, resolved) {
            s = format!("{s}->{}", set.backend_name(b));
        }
        if !set.is_healthy(t, health) {
            s.push_str(" (sick)");
        }
        parts.push(s);
    }
    Ok(if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    })
}

/// Keys from the arguments or from `--keys` (blank lines skipped).
pub(crate) fn read_keys(args: &Args) -> Result<Vec<String>, ExplainError> {
    let Some(path) = &args.keys else {
        return Ok(args.key_args.clone());
    };
    let read_err = |source| ExplainError::Read {
        path: path.display().to_string(),
        source,
    };
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(read_err)?,
        ))
    };
    let mut keys = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(read_err)?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if !line.is_empty() {
            keys.push(line.to_owned());
        }
    }
    Ok(keys)
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
