//! The client commands: `tether backend|probe|director|route …`, `tether health …`,
//! `tether apply`, `tether watch` and online `tether explain`, over the gRPC API. Tables by
//! default, `-o json` for scripts; errors print the status and the field to fix.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use serde::Serialize;
use tether_controlplane::declarative::{self, BackendDoc, DirectorDoc, ProbeDoc, RouteDoc};
use tether_controlplane::state::Resource;
use tether_proto::v1::tether_client::TetherClient;
use tether_proto::v1::{self, Action};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::explain;

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

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns (YAML for `get`).
    Table,
    /// JSON.
    Json,
}

/// Operations on one kind of resource.
#[derive(Debug, Subcommand)]
pub(crate) enum ResourceCmd {
    /// List them.
    List,
    /// Show one (YAML, the shape `create -f` takes).
    Get {
        /// Its name.
        name: String,
    },
    /// Create one from a YAML file (`-` for standard input), or a backend from flags.
    Create {
        /// The resource as YAML, as one entry of a declarative file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// Backend only: its name (with --address).
        #[arg(conflicts_with = "file")]
        name: Option<String>,
        /// Backend only: host:port.
        #[arg(long, requires = "name")]
        address: Option<String>,
        /// Backend only: probe name.
        #[arg(long, requires = "name")]
        probe: Option<String>,
        /// Backend only: default member weight.
        #[arg(long, requires = "name")]
        weight: Option<f64>,
    },
    /// Replace one with the YAML of a file (`-` for standard input).
    Update {
        /// The resource as YAML.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Fail unless the stored resource is at this revision.
        #[arg(long, default_value_t = 0)]
        revision: i64,
    },
    /// Delete one.
    Delete {
        /// Its name.
        name: String,
        /// Fail unless the stored resource is at this revision.
        #[arg(long, default_value_t = 0)]
        revision: i64,
    },
}

/// `tether health …`.
#[derive(Debug, Subcommand)]
pub(crate) enum HealthCmd {
    /// Set the admin health of every backend matching a pattern.
    Set {
        /// `b1`, `b1()`, `b1(127.0.0.1)`, `b1(:8080)`, `web-*` …
        pattern: String,
        /// The admin state.
        #[arg(value_enum)]
        state: HealthState,
    },
    /// Backends with their admin state, probe and effective health.
    List {
        /// Only backends matching this pattern.
        pattern: Option<String>,
    },
}

/// Admin health.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum HealthState {
    /// Forced sick.
    Sick,
    /// Forced healthy.
    Healthy,
    /// The probe decides.
    Auto,
}

/// `tether apply`.
#[derive(Debug, ClapArgs)]
pub(crate) struct ApplyArgs {
    /// The declarative YAML file (`-` for standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Report what would change, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete stored resources that the file does not list.
    #[arg(long)]
    prune: bool,
}

/// `tether watch`.
#[derive(Debug, ClapArgs)]
pub(crate) struct WatchArgs {
    /// First revision to show (default: changes from now on).
    #[arg(long, default_value_t = 0)]
    from: i64,
}

type Client = TetherClient<InterceptedService<Channel, Auth>>;

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

async fn connect(c: &Conn) -> anyhow::Result<Client> {
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

fn describe(s: &tonic::Status) -> String {
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

fn call<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, CallError> {
    r.map(tonic::Response::into_inner).map_err(CallError)
}

fn read(path: &Path) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// A local input error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InputError(pub(crate) String);

fn parse_one<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = read(path)?;
    declarative::parse_one(&text).map_err(|e| InputError(format!("{}: {e}", path.display())).into())
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
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
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn with_revision<T: Serialize>(doc: &T, revision: i64) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(doc)?;
    if let Some(m) = v.as_object_mut() {
        m.insert("revision".into(), revision.into());
    }
    Ok(v)
}

/// Prints resources as a JSON array of their file-shaped documents, each with its revision.
fn print_json_list<'a, R, D>(items: &'a [R]) -> anyhow::Result<()>
where
    R: Resource,
    D: Serialize + From<&'a R>,
{
    let v: Vec<_> = items
        .iter()
        .map(|r| with_revision(&D::from(r), r.revision()))
        .collect::<Result<_, _>>()?;
    println!("{}", serde_json::Value::Array(v));
    Ok(())
}

fn print_one<T: Serialize>(doc: &T, revision: i64, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", with_revision(doc, revision)?),
        Output::Table => print!("# revision: {revision}\n{}", serde_yaml::to_string(doc)?),
    }
    Ok(())
}

fn admin_name(a: i32) -> &'static str {
    match v1::AdminHealth::try_from(a) {
        Ok(v1::AdminHealth::Healthy) => "healthy",
        Ok(v1::AdminHealth::Sick) => "sick",
        _ => "auto",
    }
}

fn key_name(k: Option<&v1::KeySource>) -> String {
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

fn policy_name(d: &v1::Director) -> String {
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

/// Which kind a resource command is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Backend,
    Probe,
    Director,
    Route,
}

/// Runs a resource command.
pub(crate) async fn resource(conn: &Conn, kind: Kind, cmd: ResourceCmd) -> anyhow::Result<()> {
    let mut c = connect(conn).await?;
    let out = conn.output;
    match cmd {
        ResourceCmd::List => list(&mut c, kind, out).await,
        ResourceCmd::Get { name } => {
            let req = v1::GetRequest { name };
            match kind {
                Kind::Backend => {
                    let r = call(c.get_backend(req).await)?;
                    print_one(&BackendDoc::from(&r), r.revision, out)
                }
                Kind::Probe => {
                    let r = call(c.get_probe(req).await)?;
                    print_one(&ProbeDoc::from(&r), r.revision, out)
                }
                Kind::Director => {
                    let r = call(c.get_director(req).await)?;
                    print_one(&DirectorDoc::from(&r), r.revision, out)
                }
                Kind::Route => {
                    let r = call(c.get_route(req).await)?;
                    print_one(&RouteDoc::from(&r), r.revision, out)
                }
            }
        }
        ResourceCmd::Create {
            file,
            name,
            address,
            probe,
            weight,
        } => {
            let revision = match (kind, file) {
                (Kind::Backend, None) => {
                    let (Some(name), Some(address)) = (name, address) else {
                        return Err(
                            InputError("give -f FILE, or NAME --address HOST:PORT".into()).into(),
                        );
                    };
                    let b = v1::Backend {
                        name,
                        address,
                        probe: probe.unwrap_or_default(),
                        weight,
                        ..Default::default()
                    };
                    let req = v1::CreateBackendRequest { backend: Some(b) };
                    call(c.create_backend(req).await)?.revision
                }
                (_, None) => return Err(InputError("give -f FILE".into()).into()),
                (Kind::Backend, Some(f)) => {
                    let b = parse_one::<BackendDoc>(&f)?.to_proto("backend")?;
                    let req = v1::CreateBackendRequest { backend: Some(b) };
                    call(c.create_backend(req).await)?.revision
                }
                (Kind::Probe, Some(f)) => {
                    let p = parse_one::<ProbeDoc>(&f)?.to_proto("probe")?;
                    call(
                        c.create_probe(v1::CreateProbeRequest { probe: Some(p) })
                            .await,
                    )?
                    .revision
                }
                (Kind::Director, Some(f)) => {
                    let d = parse_one::<DirectorDoc>(&f)?.to_proto("director")?;
                    let req = v1::CreateDirectorRequest { director: Some(d) };
                    call(c.create_director(req).await)?.revision
                }
                (Kind::Route, Some(f)) => {
                    let r = parse_one::<RouteDoc>(&f)?.to_proto("route")?;
                    call(
                        c.create_route(v1::CreateRouteRequest { route: Some(r) })
                            .await,
                    )?
                    .revision
                }
            };
            done(out, "created", revision);
            Ok(())
        }
        ResourceCmd::Update { file, revision } => {
            let rev = match kind {
                Kind::Backend => {
                    let mut b = parse_one::<BackendDoc>(&file)?.to_proto("backend")?;
                    b.revision = revision;
                    let req = v1::UpdateBackendRequest { backend: Some(b) };
                    call(c.update_backend(req).await)?.revision
                }
                Kind::Probe => {
                    let mut p = parse_one::<ProbeDoc>(&file)?.to_proto("probe")?;
                    p.revision = revision;
                    call(
                        c.update_probe(v1::UpdateProbeRequest { probe: Some(p) })
                            .await,
                    )?
                    .revision
                }
                Kind::Director => {
                    let mut d = parse_one::<DirectorDoc>(&file)?.to_proto("director")?;
                    d.revision = revision;
                    let req = v1::UpdateDirectorRequest { director: Some(d) };
                    call(c.update_director(req).await)?.revision
                }
                Kind::Route => {
                    let mut r = parse_one::<RouteDoc>(&file)?.to_proto("route")?;
                    r.revision = revision;
                    call(
                        c.update_route(v1::UpdateRouteRequest { route: Some(r) })
                            .await,
                    )?
                    .revision
                }
            };
            done(out, "updated", rev);
            Ok(())
        }
        ResourceCmd::Delete { name, revision } => {
            let req = v1::DeleteRequest { name, revision };
            match kind {
                Kind::Backend => call(c.delete_backend(req).await)?,
                Kind::Probe => call(c.delete_probe(req).await)?,
                Kind::Director => call(c.delete_director(req).await)?,
                Kind::Route => call(c.delete_route(req).await)?,
            }
            if out == Output::Json {
                println!("{}", serde_json::json!({"deleted": true}));
            } else {
                println!("deleted");
            }
            Ok(())
        }
    }
}

fn done(out: Output, what: &str, revision: i64) {
    match out {
        Output::Json => println!(
            "{}",
            serde_json::json!({ what: true, "revision": revision })
        ),
        Output::Table => println!("{what} at revision {revision}"),
    }
}

async fn list(c: &mut Client, kind: Kind, out: Output) -> anyhow::Result<()> {
    let req = v1::ListRequest::default;
    match kind {
        Kind::Backend => {
            let r = call(c.list_backends(req()).await)?;
            if out == Output::Json {
                return print_json_list::<_, BackendDoc>(&r.backends);
            }
            let rows: Vec<_> = r
                .backends
                .iter()
                .map(|b| {
                    vec![
                        b.name.clone(),
                        b.address.clone(),
                        b.weight.unwrap_or(1.0).to_string(),
                        if b.probe.is_empty() {
                            "-".into()
                        } else {
                            b.probe.clone()
                        },
                        admin_name(b.admin_health).into(),
                        if b.drain { "yes".into() } else { "no".into() },
                        b.revision.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME", "ADDRESS", "WEIGHT", "PROBE", "ADMIN", "DRAIN", "REVISION",
                ],
                &rows,
            );
        }
        Kind::Probe => {
            let r = call(c.list_probes(req()).await)?;
            if out == Output::Json {
                return print_json_list::<_, ProbeDoc>(&r.probes);
            }
            let rows: Vec<_> = r
                .probes
                .iter()
                .map(|p| {
                    let d = ProbeDoc::from(p);
                    vec![
                        p.name.clone(),
                        if p.request.is_empty() {
                            d.url.unwrap_or_else(|| "/".into())
                        } else {
                            "(raw)".into()
                        },
                        d.interval.unwrap_or_else(|| "5s".into()),
                        d.window.map_or("8".into(), |w| w.to_string()),
                        d.threshold.map_or("3".into(), |t| t.to_string()),
                        p.revision.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "REQUEST",
                    "INTERVAL",
                    "WINDOW",
                    "THRESHOLD",
                    "REVISION",
                ],
                &rows,
            );
        }
        Kind::Director => {
            let r = call(c.list_directors(req()).await)?;
            if out == Output::Json {
                return print_json_list::<_, DirectorDoc>(&r.directors);
            }
            let rows: Vec<_> = r
                .directors
                .iter()
                .map(|d| {
                    let members: Vec<String> = d
                        .members
                        .iter()
                        .map(|m| match &m.target {
                            Some(v1::member::Target::Backend(b)) => b.clone(),
                            Some(v1::member::Target::Director(x)) => format!("director:{x}"),
                            None => "?".into(),
                        })
                        .collect();
                    vec![
                        d.name.clone(),
                        policy_name(d),
                        members.join(","),
                        d.revision.to_string(),
                    ]
                })
                .collect();
            print_table(&["NAME", "POLICY", "MEMBERS", "REVISION"], &rows);
        }
        Kind::Route => {
            let r = call(c.list_routes(req()).await)?;
            if out == Output::Json {
                return print_json_list::<_, RouteDoc>(&r.routes);
            }
            let rows: Vec<_> = r
                .routes
                .iter()
                .map(|x| {
                    vec![
                        x.name.clone(),
                        if x.hosts.is_empty() {
                            "*".into()
                        } else {
                            x.hosts.join(",")
                        },
                        if x.path_prefix.is_empty() {
                            "/".into()
                        } else {
                            x.path_prefix.clone()
                        },
                        x.director.clone(),
                        key_name(x.key.as_ref()),
                        x.revision.to_string(),
                    ]
                })
                .collect();
            print_table(
                &["NAME", "HOSTS", "PATH", "DIRECTOR", "KEY", "REVISION"],
                &rows,
            );
        }
    }
    Ok(())
}

/// Runs a health command.
pub(crate) async fn health(conn: &Conn, cmd: HealthCmd) -> anyhow::Result<()> {
    let mut c = connect(conn).await?;
    match cmd {
        HealthCmd::Set { pattern, state } => {
            let state = match state {
                HealthState::Sick => v1::AdminHealth::Sick,
                HealthState::Healthy => v1::AdminHealth::Healthy,
                HealthState::Auto => v1::AdminHealth::Auto,
            };
            let r = call(
                c.set_health(v1::SetHealthRequest {
                    pattern,
                    state: state as i32,
                })
                .await,
            )?;
            match conn.output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"revision": r.revision, "backends": r.backends})
                ),
                Output::Table => println!(
                    "set {} backend(s) at revision {}: {}",
                    r.backends.len(),
                    r.revision,
                    r.backends.join(", ")
                ),
            }
        }
        HealthCmd::List { pattern } => {
            let r = call(
                c.list_health(v1::ListHealthRequest {
                    pattern: pattern.unwrap_or_default(),
                })
                .await,
            )?;
            if conn.output == Output::Json {
                let v: Vec<_> = r
                    .backends
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "name": b.name, "address": b.address,
                            "admin": admin_name(b.admin_health), "probe": b.probe,
                            "window": b.window, "healthy": b.healthy, "observed": b.observed,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
                return Ok(());
            }
            let rows: Vec<_> = r
                .backends
                .iter()
                .map(|b| {
                    vec![
                        b.name.clone(),
                        b.address.clone(),
                        admin_name(b.admin_health).into(),
                        format!(
                            "{}{}",
                            b.probe,
                            if b.window.is_empty() {
                                String::new()
                            } else {
                                format!(" {}", b.window)
                            }
                        ),
                        if b.healthy {
                            "healthy".into()
                        } else {
                            "sick".into()
                        },
                    ]
                })
                .collect();
            print_table(&["NAME", "ADDRESS", "ADMIN", "PROBE", "HEALTH"], &rows);
        }
    }
    Ok(())
}

/// The file's resources as an Apply request (errors name the field in the file).
pub(crate) fn apply_request(text: &str, path: &str) -> Result<v1::ApplyRequest, InputError> {
    declarative::parse(text)
        .and_then(|d| d.to_request())
        .map_err(|e| InputError(format!("{path}: {e}")))
}

fn action_name(a: i32) -> &'static str {
    match Action::try_from(a) {
        Ok(Action::Create) => "create",
        Ok(Action::Update) => "update",
        Ok(Action::Delete) => "delete",
        Ok(Action::Unchanged) => "unchanged",
        _ => "?",
    }
}

/// Runs `tether apply`.
pub(crate) async fn apply(conn: &Conn, args: ApplyArgs) -> anyhow::Result<()> {
    let text = read(&args.file)?;
    let mut req = apply_request(&text, &args.file.display().to_string())?;
    req.dry_run = args.dry_run;
    req.prune = args.prune;
    let mut c = connect(conn).await?;
    let r = call(c.apply(req).await)?;
    if conn.output == Output::Json {
        let changes: Vec<_> = r
            .changes
            .iter()
            .map(|ch| serde_json::json!({"kind": ch.kind, "name": ch.name, "action": action_name(ch.action)}))
            .collect();
        let moved: Vec<_> = r
            .keys_moved
            .iter()
            .map(|m| serde_json::json!({"director": m.director, "share": m.share, "sampled_keys": m.sampled_keys}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"revision": r.revision, "dry_run": r.dry_run, "changes": changes, "keys_moved": moved})
        );
        return Ok(());
    }
    let rows: Vec<_> = r
        .changes
        .iter()
        .map(|ch| {
            vec![
                action_name(ch.action).to_owned(),
                ch.kind.clone(),
                ch.name.clone(),
            ]
        })
        .collect();
    print_table(&["ACTION", "KIND", "NAME"], &rows);
    for m in &r.keys_moved {
        println!(
            "director {}: {:.1}% of keys move to another backend ({} keys sampled)",
            m.director,
            m.share * 100.0,
            m.sampled_keys
        );
    }
    if r.dry_run {
        println!(
            "dry run: nothing written (store at revision {})",
            r.revision
        );
    } else {
        println!("applied at revision {}", r.revision);
    }
    Ok(())
}

/// Runs `tether watch` until interrupted.
pub(crate) async fn watch(conn: &Conn, args: WatchArgs) -> anyhow::Result<()> {
    let mut c = connect(conn).await?;
    let mut stream = call(
        c.watch(v1::WatchRequest {
            from_revision: args.from,
        })
        .await,
    )?;
    while let Some(msg) = stream.message().await.map_err(CallError)? {
        for e in &msg.events {
            match conn.output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"revision": msg.revision, "kind": e.kind, "name": e.name, "action": action_name(e.action)})
                ),
                Output::Table => println!(
                    "{}\t{}\t{}\t{}",
                    msg.revision,
                    action_name(e.action),
                    e.kind,
                    e.name
                ),
            }
        }
    }
    bail!("the watch stream ended")
}

/// Runs `tether explain` against the running system.
pub(crate) async fn explain(conn: &Conn, args: &explain::Args) -> anyhow::Result<()> {
    let keys = explain::read_keys(args)?;
    let target = match (&args.route, &args.director) {
        (Some(r), _) => v1::explain_request::Target::Route(r.clone()),
        (None, Some(d)) => v1::explain_request::Target::Director(d.clone()),
        (None, None) => {
            return Err(InputError("give --route NAME or --director NAME".into()).into());
        }
    };
    let mut c = connect(conn).await?;
    let mut json = Vec::new();
    for key in keys {
        let r = call(
            c.explain(v1::ExplainRequest {
                target: Some(target.clone()),
                key: key.clone(),
                alternates: u32::try_from(args.alternates + 1).unwrap_or(u32::MAX),
            })
            .await,
        )?;
        let alts: Vec<&String> = r
            .alternates
            .iter()
            .filter(|a| **a != r.backend)
            .take(args.alternates)
            .collect();
        match (conn.output, args.format) {
            (Output::Json, _) => json.push(serde_json::json!({
                "key": key, "director": r.director, "backend": r.backend,
                "alternates": r.alternates, "revision": r.revision,
            })),
            (_, explain::Format::Csv) => println!("{},{}", explain::csv_field(&key), r.backend),
            (_, explain::Format::Text) => {
                let shown = if r.backend.is_empty() {
                    "(none available)"
                } else {
                    &r.backend
                };
                let alts = if alts.is_empty() {
                    "-".to_owned()
                } else {
                    alts.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("{key}\t{shown}\talternates: {alts}");
            }
        }
    }
    if conn.output == Output::Json {
        println!("{}", serde_json::Value::Array(json));
    }
    Ok(())
}

/// Runs `tether nodes`.
pub(crate) async fn nodes(conn: &Conn) -> anyhow::Result<()> {
    let mut c = connect(conn).await?;
    let r = call(c.list_nodes(v1::ListNodesRequest {}).await)?;
    if conn.output == Output::Json {
        let nodes: Vec<_> = r
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.id, "proxy": n.proxy, "admin": n.admin,
                    "config_revision": n.config_revision, "applied_revision": n.applied_revision,
                    "fingerprint": n.fingerprint,
                    "agrees": n.fingerprint == r.majority_fingerprint,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"agree": r.agree, "majority_fingerprint": r.majority_fingerprint, "nodes": nodes})
        );
        return Ok(());
    }
    let rows: Vec<_> = r
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                if n.proxy.is_empty() {
                    "-".into()
                } else {
                    n.proxy.clone()
                },
                n.config_revision.to_string(),
                n.applied_revision.to_string(),
                n.fingerprint.clone(),
                if n.fingerprint == r.majority_fingerprint {
                    "yes".into()
                } else {
                    "DIFFERS".into()
                },
            ]
        })
        .collect();
    print_table(
        &[
            "NODE",
            "PROXY",
            "CONFIG REVISION",
            "APPLIED",
            "FINGERPRINT",
            "AGREES",
        ],
        &rows,
    );
    if r.nodes.is_empty() {
        println!("no nodes registered");
    } else if r.agree {
        println!("all {} nodes agree", r.nodes.len());
    } else {
        let differ: Vec<&str> = r
            .nodes
            .iter()
            .filter(|n| n.fingerprint != r.majority_fingerprint)
            .map(|n| n.id.as_str())
            .collect();
        println!("nodes differ from the majority: {}", differ.join(", "));
    }
    Ok(())
}
