//! The declarative YAML file: backends and directors (probes and routes join them with the
//! API). The same file serves `tether explain -f` offline and, later, `tether apply -f`.
//!
//! Parsing is strict (unknown fields are errors). Every error names the field as a path such as
//! `directors[1].members[0].weight`, with the line where the YAML parser knows it.

use std::collections::HashMap;

use serde::Deserialize;
use tether_dataplane::config::{
    self, AdminHealth, BackendSpec, Config, DirectorSpec, MemberSpec, Policy, ShardSpec, TargetRef,
};
use tether_dataplane::director::{Algorithm, BuildError, Directors, HealthyMode};

use crate::duration;

/// Why a file was refused: the field's path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FileError {
    /// Where, as `directors[0].members[1].weight` (`.` for the document itself).
    pub path: String,
    /// What is wrong; YAML syntax and type errors end with "at line L column C".
    pub message: String,
}

impl FileError {
    fn new(path: impl Into<String>, message: impl ToString) -> FileError {
        FileError {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// The file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Backends.
    #[serde(default)]
    pub backends: Vec<BackendDoc>,
    /// Directors.
    #[serde(default)]
    pub directors: Vec<DirectorDoc>,
}

/// A backend as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDoc {
    /// Name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// `auto` (default), `healthy` or `sick`.
    #[serde(default)]
    pub admin_health: AdminHealthDoc,
}

/// Admin health as written.
#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum AdminHealthDoc {
    #[default]
    Auto,
    Healthy,
    Sick,
}

/// A director as written: a name, exactly one policy, members.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorDoc {
    /// Name.
    pub name: String,
    /// `round_robin: {}`.
    pub round_robin: Option<Empty>,
    /// `fallback: { sticky: true }`.
    pub fallback: Option<FallbackDoc>,
    /// `random: {}`.
    pub random: Option<Empty>,
    /// `hash: {}`.
    pub hash: Option<Empty>,
    /// `shard: { … }`.
    pub shard: Option<ShardDoc>,
    /// Members, in order.
    #[serde(default)]
    pub members: Vec<MemberDoc>,
}

/// A policy without parameters.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Fallback parameters.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FallbackDoc {
    /// Stay on the current member while it is healthy.
    #[serde(default)]
    pub sticky: bool,
}

/// Shard parameters as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShardDoc {
    /// `varnish` (default) or `balanced`.
    #[serde(default)]
    pub algorithm: AlgorithmDoc,
    /// Ring points per unit of weight (default 67).
    pub replicas: Option<u32>,
    /// `chosen` (default), `ignore` or `all`.
    #[serde(default)]
    pub healthy: HealthyDoc,
    /// Rampup duration, as `30s`.
    pub rampup: Option<String>,
    /// Warmup share in `[0, 1)`.
    pub warmup: Option<f64>,
    /// Balanced: the flat base of the slot space (a power of two; default 1).
    pub base_slots: Option<u32>,
}

/// Shard algorithm as written.
#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum AlgorithmDoc {
    #[default]
    Varnish,
    Balanced,
}

/// Shard health mode as written.
#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum HealthyDoc {
    #[default]
    Chosen,
    Ignore,
    All,
}

/// A member as written: exactly one of `backend`, `director`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberDoc {
    /// A backend name.
    pub backend: Option<String>,
    /// A director name.
    pub director: Option<String>,
    /// Weight (default 1).
    pub weight: Option<f64>,
    /// Shard ident.
    pub ident: Option<String>,
    /// Shard (balanced) slot.
    pub slot: Option<u32>,
    /// Shard per-member rampup.
    pub rampup: Option<String>,
}

/// A loaded file: its configuration and the directors built from it.
#[derive(Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// The built directors.
    pub directors: Directors,
}

/// Parses, validates and builds a file.
pub fn load(text: &str) -> Result<Loaded, FileError> {
    let doc = parse(text)?;
    let config = doc.to_config()?;
    let directors = Directors::build(&config, None).map_err(|e| locate(&config, e))?;
    Ok(Loaded { config, directors })
}

/// Parses the YAML strictly.
pub fn parse(text: &str) -> Result<Document, FileError> {
    let de = serde_yaml::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Option<Document>>(de) {
        Ok(doc) => Ok(doc.unwrap_or_default()),
        Err(e) => {
            let path = e.path().to_string();
            // serde_yaml already starts its message with the path; keep it once.
            let inner = e.into_inner().to_string();
            let message = inner
                .strip_prefix(&format!("{path}: "))
                .map_or(inner.clone(), str::to_owned);
            Err(FileError::new(path, message))
        }
    }
}

impl Document {
    /// Checks names, addresses and fields, and converts to the domain configuration.
    pub fn to_config(&self) -> Result<Config, FileError> {
        let mut config = Config::default();
        for (i, b) in self.backends.iter().enumerate() {
            let at = |f: &str| format!("backends[{i}].{f}");
            config::validate_name(&b.name).map_err(|e| FileError::new(at("name"), e))?;
            let address = b
                .address
                .parse()
                .map_err(|e| FileError::new(at("address"), e))?;
            config.backends.push(BackendSpec {
                name: b.name.clone(),
                address,
                admin_health: match b.admin_health {
                    AdminHealthDoc::Auto => AdminHealth::Auto,
                    AdminHealthDoc::Healthy => AdminHealth::Healthy,
                    AdminHealthDoc::Sick => AdminHealth::Sick,
                },
            });
        }
        for (i, d) in self.directors.iter().enumerate() {
            config
                .directors
                .push(d.to_spec(&format!("directors[{i}]"))?);
        }
        Ok(config)
    }
}

impl DirectorDoc {
    fn to_spec(&self, at: &str) -> Result<DirectorSpec, FileError> {
        config::validate_name(&self.name).map_err(|e| FileError::new(format!("{at}.name"), e))?;
        let mut policies = Vec::new();
        if self.round_robin.is_some() {
            policies.push(Policy::RoundRobin);
        }
        if let Some(f) = &self.fallback {
            policies.push(Policy::Fallback { sticky: f.sticky });
        }
        if self.random.is_some() {
            policies.push(Policy::Random);
        }
        if self.hash.is_some() {
            policies.push(Policy::Hash);
        }
        if let Some(s) = &self.shard {
            policies.push(Policy::Shard(s.to_spec(&format!("{at}.shard"))?));
        }
        if policies.len() != 1 {
            return Err(FileError::new(
                at,
                format!(
                    "director {:?} needs exactly one policy of round_robin, fallback, random, hash, shard (found {})",
                    self.name,
                    policies.len()
                ),
            ));
        }
        let policy = policies.remove(0);
        let members = self
            .members
            .iter()
            .enumerate()
            .map(|(j, m)| m.to_spec(&format!("{at}.members[{j}]")))
            .collect::<Result<_, _>>()?;
        Ok(DirectorSpec {
            name: self.name.clone(),
            policy,
            members,
        })
    }
}

impl ShardDoc {
    fn to_spec(&self, at: &str) -> Result<ShardSpec, FileError> {
        let rampup = match &self.rampup {
            Some(r) => duration::parse(r).map_err(|e| FileError::new(format!("{at}.rampup"), e))?,
            None => std::time::Duration::ZERO,
        };
        // Ranges (replicas, warmup, base_slots, weights) are checked once, by
        // `Directors::build`; `locate` turns its errors into file paths.
        let replicas = self.replicas.unwrap_or(config::DEFAULT_REPLICAS);
        let warmup = self.warmup.unwrap_or(0.0);
        Ok(ShardSpec {
            algorithm: match self.algorithm {
                AlgorithmDoc::Varnish => Algorithm::Varnish,
                AlgorithmDoc::Balanced => Algorithm::Balanced,
            },
            replicas,
            healthy: match self.healthy {
                HealthyDoc::Chosen => HealthyMode::Chosen,
                HealthyDoc::Ignore => HealthyMode::Ignore,
                HealthyDoc::All => HealthyMode::All,
            },
            rampup,
            warmup,
            base_slots: self.base_slots.unwrap_or(1),
        })
    }
}

impl MemberDoc {
    fn to_spec(&self, at: &str) -> Result<MemberSpec, FileError> {
        let target = match (&self.backend, &self.director) {
            (Some(b), None) => {
                config::validate_name(b).map_err(|e| FileError::new(format!("{at}.backend"), e))?;
                TargetRef::Backend(b.clone())
            }
            (None, Some(d)) => {
                config::validate_name(d)
                    .map_err(|e| FileError::new(format!("{at}.director"), e))?;
                TargetRef::Director(d.clone())
            }
            _ => {
                return Err(FileError::new(
                    at,
                    "a member needs exactly one of backend, director",
                ));
            }
        };
        let weight = self.weight.unwrap_or(1.0);
        if self.ident.as_deref() == Some("") {
            return Err(FileError::new(
                format!("{at}.ident"),
                "must not be empty when given",
            ));
        }
        let rampup = self
            .rampup
            .as_deref()
            .map(duration::parse)
            .transpose()
            .map_err(|e| FileError::new(format!("{at}.rampup"), e))?;
        Ok(MemberSpec {
            target,
            weight,
            ident: self.ident.clone(),
            slot: self.slot,
            rampup,
        })
    }
}

/// Turns a build error (which names the director) into a file path.
fn locate(config: &Config, e: BuildError) -> FileError {
    let index: HashMap<&str, usize> = config
        .directors
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.as_str(), i))
        .collect();
    let director_path = |name: &str| {
        index
            .get(name)
            .map_or_else(|| "directors".to_owned(), |i| format!("directors[{i}]"))
    };
    match &e {
        BuildError::DuplicateBackend(_) => FileError::new("backends", e),
        BuildError::DuplicateDirector(_) | BuildError::Cycle(_) => FileError::new("directors", e),
        BuildError::Unknown {
            director,
            field,
            kind,
            name,
        } => FileError::new(
            format!("{}.{field}", director_path(director)),
            format!("no {kind} named {name:?}"),
        ),
        BuildError::Invalid {
            director,
            field,
            reason,
        } => FileError::new(format!("{}.{field}", director_path(director)), reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
backends:
  - name: b0
    address: 127.0.0.1:19000
    admin_health: sick
  - name: b1
    address: "[::1]:19001"
directors:
  - name: sh
    shard: { algorithm: varnish, replicas: 67 }
    members:
      - backend: b0
      - backend: b1
        weight: 2
        ident: node-1.example:8080
  - name: rr
    round_robin: {}
    members: [{ backend: b0 }, { director: sh }]
"#;

    #[test]
    fn the_issue_example_loads() {
        let l = load(GOOD).unwrap();
        assert_eq!(l.config.backends.len(), 2);
        assert_eq!(l.config.backends[0].admin_health, AdminHealth::Sick);
        assert_eq!(l.config.directors[0].members[1].weight, 2.0);
        assert!(l.directors.id("rr").is_some());
    }

    fn err(text: &str) -> FileError {
        load(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&GOOD.replace("weight: 2", "weight: heavy"));
        assert_eq!(e.path, "directors[0].members[1].weight");
        assert!(e.message.ends_with("at line 14 column 17"), "{e}");
        assert!(!e.message.starts_with("directors"), "{e}");

        let e = err(&GOOD.replace("algorithm: varnish", "algorithm: ketama"));
        assert_eq!(e.path, "directors[0].shard.algorithm");

        let e = err(&GOOD.replace("127.0.0.1:19000", "127.0.0.1"));
        assert_eq!(e.path, "backends[0].address");

        let e = err(&GOOD.replace("name: b1", "name: B1"));
        assert_eq!(e.path, "backends[1].name");

        let e = err(&GOOD.replace("{ director: sh }", "{ director: nope }"));
        assert_eq!(
            e.to_string(),
            "directors[1].members[1].director: no director named \"nope\""
        );

        let e = err(&GOOD.replace("round_robin: {}", "round_robin: {}\n    hash: {}"));
        assert_eq!(e.path, "directors[1]");

        let e = err(&GOOD.replace("admin_health: sick", "admin_health: sick\n    colour: red"));
        assert!(e.message.contains("unknown field `colour`"), "{e}");

        let e = err(&GOOD.replace("replicas: 67", "replicas: 0"));
        assert_eq!(e.path, "directors[0].shard.replicas");
        assert_eq!(e.message, "must be at least 1");

        let e = err(&GOOD.replace("replicas: 67", "replicas: 67, warmup: 1.5"));
        assert_eq!(e.path, "directors[0].shard.warmup");
        assert_eq!(e.message, "must be in [0, 1), got 1.5");

        let e = err(&GOOD.replace("weight: 2", "weight: -2"));
        assert_eq!(e.path, "directors[0].members[1].weight");
        assert_eq!(e.message, "must be a finite number >= 0, got -2");

        let e = err(&GOOD.replace("replicas: 67", "replicas: 67, base_slots: 12"));
        assert_eq!(e.path, "directors[0].shard.base_slots");
        assert!(e.message.contains("power of two"), "{e}");

        let e = err("backends: [");
        assert!(e.message.contains("line"), "{e}");
    }

    #[test]
    fn cycles_are_reported() {
        let text = "directors:\n  - name: a\n    hash: {}\n    members: [{ director: b }]\n  - name: b\n    hash: {}\n    members: [{ director: a }]\n";
        let e = err(text);
        assert_eq!(e.path, "directors");
        assert!(e.message.contains("a -> b -> a"), "{e}");
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        assert_eq!(load("").unwrap().config, Config::default());
    }
}
