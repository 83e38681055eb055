//! The commands that are not per resource kind: `tether health`, `apply`, `watch`, online
//! `explain` and `nodes`.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use tether_controlplane::declarative;
use tether_controlplane::state::Resource;
use tether_proto::v1;

use super::conn::{CallError, Conn, call, connect};
use super::input::{InputError, apply_paths};
use super::output::{Output, action_name, admin_name, or_dash, print_table, print_value};
use crate::explain;

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
    /// Declarative YAML: a file (`-` for standard input) or a directory of `*.yaml` files;
    /// repeat to apply several as one configuration. A file may hold several documents
    /// (`---`), each sectioned or one resource with its `kind`.
    #[arg(short = 'f', long = "file", value_name = "FILE|DIR", required = true)]
    file: Vec<PathBuf>,
    /// Report what would change, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete stored resources that the file does not list (resources bound to a lease are
    /// left to their lease).
    #[arg(long)]
    prune: bool,
    /// Bind every resource of the file to this lease (its id in hex, as `backend register`
    /// and `backend list` print it): the whole set goes when the lease ends.
    #[arg(long, value_name = "ID", value_parser = lease_id)]
    lease: Option<i64>,
}

/// A lease id as printed (hex).
fn lease_id(s: &str) -> Result<i64, String> {
    i64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("a lease id in hex, as `backend list` prints it: {e}"))
}

/// `tether watch`.
#[derive(Debug, ClapArgs)]
pub(crate) struct WatchArgs {
    /// First revision to show (default: changes from now on).
    #[arg(long, default_value_t = 0)]
    from: i64,
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
                Output::Json | Output::Yaml => print_value(
                    conn.output,
                    serde_json::json!({"revision": r.revision, "backends": r.backends}),
                ),
                Output::Table => outln!(
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
            if conn.output.structured() {
                let v: Vec<_> = r
                    .backends
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "name": b.name, "address": b.address,
                            "admin": admin_name(b.admin_health), "probe": b.probe,
                            "window": b.window, "healthy": b.healthy, "observed": b.observed,
                            "fleet": b.fleet,
                            "reports": b.reports.iter().map(|r| serde_json::json!({
                                "node": r.node, "healthy": r.healthy, "good": r.good,
                                "window": r.window, "last_error": r.last_error,
                                "age_seconds": age_seconds(r.updated_unix_ms),
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let nodes: Vec<_> = r
                    .nodes
                    .iter()
                    .map(|n| {
                        serde_json::json!({
                            "id": n.id, "health_source": n.health_source,
                            "age_seconds": age_seconds(n.updated_unix_ms),
                        })
                    })
                    .collect();
                print_value(
                    conn.output,
                    serde_json::json!({"backends": v, "nodes": nodes}),
                );
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
                        or_dash(&b.fleet),
                        owner_results(&b.reports),
                        if b.healthy {
                            "healthy".into()
                        } else {
                            "sick".into()
                        },
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME", "ADDRESS", "ADMIN", "PROBE", "FLEET", "OWNERS", "HEALTH",
                ],
                &rows,
            );
            if !r.nodes.is_empty() {
                let rows: Vec<_> = r
                    .nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.clone(),
                            or_dash(&n.health_source),
                            format!("{:.1}s", age_seconds(n.updated_unix_ms)),
                        ]
                    })
                    .collect();
                outln!("");
                print_table(&["NODE", "VERDICTS FROM", "RECORD AGE"], &rows);
            }
        }
    }
    Ok(())
}

/// Seconds since a Unix-milliseconds time (0 for a time in the future).
fn age_seconds(unix_ms: i64) -> f64 {
    let now = tether_controlplane::node::register::unix_ms_now();
    (now.saturating_sub(unix_ms)).max(0) as f64 / 1000.0
}

/// Each owner's last report, as `node=healthy 3/3 2.1s` (`-` when none).
fn owner_results(reports: &[v1::HealthReport]) -> String {
    if reports.is_empty() {
        return "-".into();
    }
    reports
        .iter()
        .map(|r| {
            format!(
                "{}={} {}/{} {:.1}s",
                r.node,
                if r.healthy { "healthy" } else { "sick" },
                r.good,
                r.window,
                age_seconds(r.updated_unix_ms)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `tether apply`.
pub(crate) async fn apply(conn: &Conn, args: ApplyArgs) -> anyhow::Result<()> {
    let mut req = apply_paths(&args.file)?;
    req.dry_run = args.dry_run;
    req.prune = args.prune;
    req.lease = args.lease.unwrap_or(0);
    let mut c = connect(conn).await?;
    let r = call(c.apply(req).await)?;
    if conn.output.structured() {
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
        print_value(
            conn.output,
            serde_json::json!({"revision": r.revision, "dry_run": r.dry_run, "changes": changes, "keys_moved": moved}),
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
        outln!(
            "director {}: {:.1}% of keys move to another backend ({} keys sampled)",
            m.director,
            m.share * 100.0,
            m.sampled_keys
        );
    }
    if r.dry_run {
        outln!(
            "dry run: nothing written (store at revision {})",
            r.revision
        );
    } else {
        outln!("applied at revision {}", r.revision);
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
    let closed = super::output::stdout_closed();
    tokio::pin!(closed);
    loop {
        let msg = tokio::select! {
            m = stream.message() => m.map_err(CallError)?,
            // The reader went away (`| head -1`): done, quietly.
            () = &mut closed => return Ok(()),
        };
        let Some(msg) = msg else { break };
        for e in &msg.events {
            match conn.output {
                Output::Json | Output::Yaml => {
                    let mut v = serde_json::json!({"revision": msg.revision, "kind": e.kind, "name": e.name, "action": action_name(e.action)});
                    // The document as written; for a delete, its last value: what a
                    // follower needs to act on the event without a Get that may find
                    // nothing.
                    if let Some(doc) = super::resources::event_document(e)? {
                        v["resource"] = doc;
                    }
                    print_value(conn.output, v);
                }
                Output::Table => outln!(
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
            (Output::Json | Output::Yaml, _) => json.push(serde_json::json!({
                "key": key, "director": r.director, "backend": r.backend,
                "alternates": r.alternates, "revision": r.revision,
            })),
            (_, explain::Format::Csv) => outln!("{},{}", explain::csv_field(&key), r.backend),
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
                outln!("{key}\t{shown}\talternates: {alts}");
            }
        }
    }
    if conn.output.structured() {
        print_value(conn.output, serde_json::Value::Array(json));
    }
    Ok(())
}

/// Runs `tether nodes`.
pub(crate) async fn nodes(conn: &Conn) -> anyhow::Result<()> {
    let mut c = connect(conn).await?;
    let r = call(c.list_nodes(v1::ListNodesRequest {}).await)?;
    if conn.output.structured() {
        let nodes: Vec<_> = r
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.id, "proxy": n.proxy, "admin": n.admin,
                    "config_revision": n.config_revision, "applied_revision": n.applied_revision,
                    "fingerprint": n.fingerprint, "health_source": n.health_source,
                    "agrees": n.fingerprint == r.majority_fingerprint,
                })
            })
            .collect();
        print_value(
            conn.output,
            serde_json::json!({"agree": r.agree, "majority_fingerprint": r.majority_fingerprint, "nodes": nodes}),
        );
        return Ok(());
    }
    let rows: Vec<_> = r
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                or_dash(&n.proxy),
                n.config_revision.to_string(),
                n.applied_revision.to_string(),
                n.fingerprint.clone(),
                or_dash(&n.health_source),
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
            "HEALTH FROM",
            "AGREES",
        ],
        &rows,
    );
    if r.nodes.is_empty() {
        outln!("no nodes registered");
    } else if r.agree {
        outln!("all {} nodes agree", r.nodes.len());
    } else {
        let differ: Vec<&str> = r
            .nodes
            .iter()
            .filter(|n| n.fingerprint != r.majority_fingerprint)
            .map(|n| n.id.as_str())
            .collect();
        outln!("nodes differ from the majority: {}", differ.join(", "));
    }
    Ok(())
}

/// `tether version`'s flags.
#[derive(Debug, ClapArgs)]
pub(crate) struct VersionArgs {
    /// This binary's version only (no call to the server).
    #[arg(long)]
    client: bool,
}

/// Runs `tether version`: this binary's build, then the server's (kubectl's habit: the client
/// line is printed even when the server cannot be reached, and the command then fails).
pub(crate) async fn version(conn: &Conn, args: VersionArgs) -> anyhow::Result<()> {
    use tether_dataplane::build::{COMMIT, VERSION};
    let client = serde_json::json!({"version": VERSION, "commit": COMMIT});
    if args.client {
        if conn.output.structured() {
            print_value(conn.output, serde_json::json!({ "client": client }));
        } else {
            outln!("client: tether {VERSION} ({COMMIT})");
        }
        return Ok(());
    }
    if !conn.output.structured() {
        outln!("client: tether {VERSION} ({COMMIT})");
    }
    let mut c = connect(conn).await?;
    let s = call(c.get_version(v1::GetVersionRequest {}).await)?;
    if conn.output.structured() {
        print_value(
            conn.output,
            serde_json::json!({
                "client": client,
                "server": {"version": s.version, "commit": s.commit, "store": s.store},
            }),
        );
    } else {
        outln!(
            "server: tether {} ({}), {} store",
            s.version,
            s.commit,
            s.store
        );
    }
    Ok(())
}

/// Runs `tether export`: the whole configuration as a declarative file that `apply -f` takes
/// back (no revisions, so applying it later is not refused as stale). Certificates are left
/// out, with a note on standard error: their private keys are write-only, so an export could
/// not restore them.
pub(crate) async fn export(conn: &Conn) -> anyhow::Result<()> {
    use tether_controlplane::declarative::Document;
    let mut c = connect(conn).await?;
    let s = call(c.get_snapshot(v1::GetSnapshotRequest {}).await)?;
    // Leased resources belong to their lease's holder (a registered backend): a file has no
    // lease, so exported and applied elsewhere they would live forever.
    fn leased<R: Resource>(items: &[R]) -> usize {
        items.iter().filter(|r| r.lease() != 0).count()
    }
    let leased = leased(&s.backends)
        + leased(&s.probes)
        + leased(&s.directors)
        + leased(&s.routes)
        + leased(&s.discoveries);
    // Backends a Discovery keeps come back from its DNS name wherever the file is applied.
    let discovered = s
        .backends
        .iter()
        .filter(|b| !b.discovery.is_empty())
        .count();
    fn docs<'a, R: Resource + 'a, D: From<&'a R>>(
        items: &'a [R],
        clear: impl Fn(&mut D),
    ) -> Vec<D> {
        items
            .iter()
            .filter(|r| r.lease() == 0 && !r.kept_by_discovery())
            .map(|r| {
                let mut d = D::from(r);
                clear(&mut d);
                d
            })
            .collect()
    }
    let doc = Document {
        backends: docs(&s.backends, |d: &mut declarative::BackendDoc| {
            d.revision = None
        }),
        probes: docs(&s.probes, |d: &mut declarative::ProbeDoc| d.revision = None),
        directors: docs(&s.directors, |d: &mut declarative::DirectorDoc| {
            d.revision = None;
        }),
        routes: docs(&s.routes, |d: &mut declarative::RouteDoc| d.revision = None),
        certificates: Vec::new(),
        discoveries: docs(&s.discoveries, |d: &mut declarative::DiscoveryDoc| {
            d.revision = None;
            d.status = None;
        }),
    };
    if discovered > 0 {
        eprintln!(
            "tether export: {discovered} backend(s) kept by a discovery left out (its DNS name recreates them)"
        );
    }
    if !s.certificates.is_empty() {
        eprintln!(
            "tether export: {} certificate(s) left out (private keys are write-only; apply them from their PEM files)",
            s.certificates.len()
        );
    }
    if leased > 0 {
        eprintln!(
            "tether export: {leased} resource(s) bound to a lease left out (they live as long as their lease's holder)"
        );
    }
    match conn.output {
        Output::Json => outln!("{}", serde_json::to_value(&doc)?),
        _ => super::output::write_out(format_args!(
            "# tether export at revision {}\n{}",
            s.revision,
            yaml_serde::to_string(&doc)?
        )),
    }
    Ok(())
}
