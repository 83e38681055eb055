//! `tether backend|probe|director|route list|get|create|update|delete`: one generic path
//! ([`run`]) for every kind; [`CliResource`] says what differs — the gRPC calls (generated
//! from one template), the file document and the table columns.

use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tether_controlplane::declarative::{
    BackendDoc, CertificateDoc, DirectorDoc, DiscoveryDoc, FileError, ProbeDoc, RouteDoc,
};
use tether_controlplane::state::Resource;
use tether_proto::v1;
use tonic::Status;

use super::conn::{CallError, Client, Conn, connect};
use super::input::{InputError, parse_one};
use super::output::{
    admin_name, done, key_name, policy_name, print_list, print_one, print_table, print_value,
};

/// Operations on one kind of resource.
#[derive(Debug, Subcommand)]
pub(crate) enum ResourceCmd {
    /// List them.
    List {
        /// Only those whose labels match, as kubectl's `-l`: `app=web,zone!=b,tier` (sent as
        /// the API's `filter`).
        #[arg(
            short = 'l',
            long = "selector",
            value_name = "SELECTOR",
            conflicts_with = "filter"
        )]
        selector: Option<String>,
        /// The API's filter as it is: `labels.app = "web" AND labels.zone = "a"`.
        #[arg(long, value_name = "EXPR")]
        filter: Option<String>,
    },
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
        /// Backend only: one label (repeatable): `--label app=web`.
        #[arg(long = "label", value_name = "KEY=VALUE", requires = "name")]
        labels: Vec<String>,
    },
    /// Replace one with the YAML (or JSON) of a file (`-` for standard input), as `get`
    /// prints it: a `revision` in the document makes the update fail if the resource changed
    /// since.
    Update {
        /// The resource as YAML.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Fail unless the stored resource is at this revision (overrides the document's).
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Backend only: change some fields, leaving the others as stored (an update mask; no
    /// read-modify-write).
    Set(SetFlags),
    /// Backend only: create it bound to a lease and keep the lease alive until interrupted
    /// (then revoke it): the backend lives as long as this process (a sidecar's job).
    Register(super::register::RegisterFlags),
    /// Delete one.
    Delete {
        /// Its name.
        name: String,
        /// Fail unless the stored resource is at this revision.
        #[arg(long, default_value_t = 0)]
        revision: i64,
    },
}

/// What `create` takes besides `-f FILE` (backends only).
#[derive(Debug)]
pub(crate) struct CreateFlags {
    name: Option<String>,
    address: Option<String>,
    probe: Option<String>,
    weight: Option<f64>,
    labels: Vec<String>,
}

/// `--label KEY=VALUE` as a pair.
pub(super) fn label_flag(l: &str) -> Result<(String, String), InputError> {
    let Some((k, v)) = l.split_once('=') else {
        return Err(InputError(format!("--label {l:?}: give KEY=VALUE")));
    };
    Ok((k.to_owned(), v.to_owned()))
}

/// What `set` takes (backends only).
#[derive(Debug, clap::Args)]
pub(crate) struct SetFlags {
    /// Its name.
    name: String,
    /// Default member weight.
    #[arg(long)]
    weight: Option<f64>,
    /// No new requests (`true`) or back in service (`false`).
    #[arg(long)]
    drain: Option<bool>,
    /// `auto`, `healthy` or `sick`.
    #[arg(long, value_name = "STATE")]
    admin_health: Option<String>,
    /// Sets one label (repeatable): `--label zone=b`.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Removes one label (repeatable).
    #[arg(long = "remove-label", value_name = "KEY")]
    remove_labels: Vec<String>,
    /// Fail unless the stored resource is at this revision.
    #[arg(long, default_value_t = 0)]
    revision: i64,
}

/// What the CLI does differently per resource kind.
pub(crate) trait CliResource: Resource {
    /// The resource as a declarative file writes it.
    type Doc: Serialize + DeserializeOwned + for<'a> From<&'a Self>;
    /// Table columns of `list` (the last is the revision).
    const COLUMNS: &'static [&'static str];
    /// One `list` row; `leases` has the seconds left of every lease the listed resources are
    /// bound to (absent: gone).
    fn row(&self, leases: &Leases) -> Vec<String>;
    /// The resource from its file document.
    fn from_doc(doc: &Self::Doc) -> Result<Self, FileError>;
    /// The resource from `create`'s flags, for kinds that take them.
    fn from_flags(_flags: CreateFlags) -> Result<Self, InputError> {
        Err(InputError("give -f FILE".into()))
    }
    /// The resource and update-mask paths from `set`'s flags, for kinds that take them.
    fn from_set(_flags: SetFlags) -> Result<(Self, Vec<String>), InputError> {
        Err(InputError(format!(
            "set changes backends only; use {} update -f FILE",
            Self::FIELD
        )))
    }
    /// The RPCs.
    async fn create(c: &mut Client, r: Self) -> Result<Self, Status>;
    /// The RPCs.
    async fn get(c: &mut Client, name: String) -> Result<Self, Status>;
    /// The RPCs.
    async fn list(c: &mut Client, filter: String) -> Result<Vec<Self>, Status>;
    /// The RPCs.
    async fn update(c: &mut Client, r: Self, mask: Vec<String>) -> Result<Self, Status>;
    /// The RPCs.
    async fn delete(c: &mut Client, name: String, revision: i64) -> Result<(), Status>;
}

/// The file document and the RPCs of a [`CliResource`], from one template.
macro_rules! rpcs {
    ($field:ident, $plural:ident, $create:ident($create_req:ident), $get:ident, $list:ident,
     $update:ident($update_req:ident), $delete:ident) => {
        fn from_doc(doc: &Self::Doc) -> Result<Self, FileError> {
            doc.to_proto(Self::FIELD)
        }
        async fn create(c: &mut Client, r: Self) -> Result<Self, Status> {
            let req = v1::$create_req { $field: Some(r) };
            Ok(c.$create(req).await?.into_inner())
        }
        async fn get(c: &mut Client, name: String) -> Result<Self, Status> {
            Ok(c.$get(v1::GetRequest { name }).await?.into_inner())
        }
        async fn list(c: &mut Client, filter: String) -> Result<Vec<Self>, Status> {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = c
                    .$list(v1::ListRequest {
                        page_size: 0,
                        page_token,
                        filter: filter.clone(),
                    })
                    .await?
                    .into_inner();
                all.extend(page.$plural);
                if page.next_page_token.is_empty() {
                    return Ok(all);
                }
                page_token = page.next_page_token;
            }
        }
        async fn update(c: &mut Client, r: Self, mask: Vec<String>) -> Result<Self, Status> {
            let update_mask = (!mask.is_empty()).then(|| prost_types::FieldMask { paths: mask });
            let req = v1::$update_req {
                $field: Some(r),
                update_mask,
            };
            Ok(c.$update(req).await?.into_inner())
        }
        async fn delete(c: &mut Client, name: String, revision: i64) -> Result<(), Status> {
            let req = v1::DeleteRequest { name, revision };
            Ok(c.$delete(req).await?.into_inner())
        }
    };
}

/// Seconds left per lease id.
pub(crate) type Leases = std::collections::HashMap<i64, i64>;

/// A lease as `list` shows it: `-` for none, else its id and time left (`3f 7s left`).
fn lease_cell(id: i64, leases: &Leases) -> String {
    match (id, leases.get(&id)) {
        (0, _) => "-".into(),
        (id, Some(left)) => format!("{id:x} {left}s left"),
        (id, None) => format!("{id:x} ended"),
    }
}

/// The time left of every lease `items` are bound to, for kinds whose table shows leases.
async fn lease_times<R: CliResource>(c: &mut Client, items: &[R]) -> Result<Leases, Status> {
    if !R::COLUMNS.contains(&"LEASE") {
        return Ok(Leases::new());
    }
    let ids: std::collections::BTreeSet<i64> =
        items.iter().map(R::lease).filter(|&l| l != 0).collect();
    let mut out = Leases::new();
    for id in ids {
        match c.get_lease(v1::GetLeaseRequest { id }).await {
            Ok(l) => {
                out.insert(id, l.into_inner().remaining);
            }
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s),
        }
    }
    Ok(out)
}

/// `value`, or `dash` when it is empty.
fn or(value: &str, dash: &str) -> String {
    if value.is_empty() {
        dash.to_owned()
    } else {
        value.to_owned()
    }
}

impl CliResource for v1::Backend {
    type Doc = BackendDoc;
    const COLUMNS: &'static [&'static str] = &[
        "NAME", "ADDRESS", "WEIGHT", "PROBE", "ADMIN", "DRAIN", "LEASE", "REVISION",
    ];
    fn row(&self, leases: &Leases) -> Vec<String> {
        vec![
            self.name.clone(),
            self.address.clone(),
            self.weight.unwrap_or(1.0).to_string(),
            or(&self.probe, "-"),
            admin_name(self.admin_health).into(),
            if self.drain { "yes" } else { "no" }.into(),
            lease_cell(self.lease, leases),
            self.revision.to_string(),
        ]
    }
    fn from_flags(f: CreateFlags) -> Result<Self, InputError> {
        let (Some(name), Some(address)) = (f.name, f.address) else {
            return Err(InputError(
                "give -f FILE, or NAME --address HOST:PORT".into(),
            ));
        };
        Ok(v1::Backend {
            name,
            address,
            probe: f.probe.unwrap_or_default(),
            weight: f.weight,
            labels: f
                .labels
                .iter()
                .map(|l| label_flag(l))
                .collect::<Result<_, _>>()?,
            ..Default::default()
        })
    }
    fn from_set(f: SetFlags) -> Result<(Self, Vec<String>), InputError> {
        let mut b = v1::Backend {
            name: f.name,
            revision: f.revision,
            ..Default::default()
        };
        let mut paths = Vec::new();
        if let Some(w) = f.weight {
            b.weight = Some(w);
            paths.push("weight".to_owned());
        }
        if let Some(d) = f.drain {
            b.drain = d;
            paths.push("drain".to_owned());
        }
        if let Some(a) = f.admin_health {
            b.admin_health = match a.as_str() {
                "auto" => v1::AdminHealth::Auto,
                "healthy" => v1::AdminHealth::Healthy,
                "sick" => v1::AdminHealth::Sick,
                other => {
                    return Err(InputError(format!(
                        "--admin-health: auto, healthy or sick, not {other:?}"
                    )));
                }
            } as i32;
            paths.push("admin_health".to_owned());
        }
        for l in f.labels {
            let (k, v) = label_flag(&l)?;
            paths.push(format!("labels.{k}"));
            b.labels.insert(k, v);
        }
        // Named in the mask, absent from the request: removed.
        paths.extend(f.remove_labels.into_iter().map(|k| format!("labels.{k}")));
        if paths.is_empty() {
            return Err(InputError(
                "nothing to set: give --weight, --drain, --admin-health, --label or --remove-label"
                    .into(),
            ));
        }
        Ok((b, paths))
    }
    rpcs!(
        backend,
        backends,
        create_backend(CreateBackendRequest),
        get_backend,
        list_backends,
        update_backend(UpdateBackendRequest),
        delete_backend
    );
}

impl CliResource for v1::Probe {
    type Doc = ProbeDoc;
    const COLUMNS: &'static [&'static str] = &[
        "NAME",
        "REQUEST",
        "INTERVAL",
        "WINDOW",
        "THRESHOLD",
        "REVISION",
    ];
    fn row(&self, _: &Leases) -> Vec<String> {
        let d = ProbeDoc::from(self);
        vec![
            self.name.clone(),
            if self.request.is_empty() {
                d.url.unwrap_or_else(|| "/".into())
            } else {
                "(raw)".into()
            },
            d.interval.unwrap_or_else(|| "5s".into()),
            d.window.map_or("8".into(), |w| w.to_string()),
            d.threshold.map_or("3".into(), |t| t.to_string()),
            self.revision.to_string(),
        ]
    }
    rpcs!(
        probe,
        probes,
        create_probe(CreateProbeRequest),
        get_probe,
        list_probes,
        update_probe(UpdateProbeRequest),
        delete_probe
    );
}

impl CliResource for v1::Director {
    type Doc = DirectorDoc;
    const COLUMNS: &'static [&'static str] = &["NAME", "POLICY", "MEMBERS", "REVISION"];
    fn row(&self, _: &Leases) -> Vec<String> {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| match &m.target {
                Some(v1::member::Target::Backend(b)) => b.clone(),
                Some(v1::member::Target::Director(x)) => format!("director:{x}"),
                Some(v1::member::Target::Selector(s)) => {
                    format!("selector:{}", tether_controlplane::selector::to_text(s))
                }
                None => "?".into(),
            })
            .collect();
        vec![
            self.name.clone(),
            policy_name(self),
            members.join(","),
            self.revision.to_string(),
        ]
    }
    rpcs!(
        director,
        directors,
        create_director(CreateDirectorRequest),
        get_director,
        list_directors,
        update_director(UpdateDirectorRequest),
        delete_director
    );
}

impl CliResource for v1::Route {
    type Doc = RouteDoc;
    const COLUMNS: &'static [&'static str] =
        &["NAME", "HOSTS", "PATH", "DIRECTOR", "KEY", "REVISION"];
    fn row(&self, _: &Leases) -> Vec<String> {
        vec![
            self.name.clone(),
            or(&self.hosts.join(","), "*"),
            or(&self.path_prefix, "/"),
            self.director.clone(),
            key_name(self.key.as_ref()),
            self.revision.to_string(),
        ]
    }
    rpcs!(
        route,
        routes,
        create_route(CreateRouteRequest),
        get_route,
        list_routes,
        update_route(UpdateRouteRequest),
        delete_route
    );
}

impl CliResource for v1::Certificate {
    type Doc = CertificateDoc;
    const COLUMNS: &'static [&'static str] = &["NAME", "NAMES", "NOT AFTER", "SHA-256", "REVISION"];
    fn row(&self, _: &Leases) -> Vec<String> {
        vec![
            self.name.clone(),
            self.names.join(","),
            utc_date(self.not_after),
            // Enough to tell certificates apart; `get` shows it whole.
            self.fingerprint.chars().take(16).collect(),
            self.revision.to_string(),
        ]
    }
    rpcs!(
        certificate,
        certificates,
        create_certificate(CreateCertificateRequest),
        get_certificate,
        list_certificates,
        update_certificate(UpdateCertificateRequest),
        delete_certificate
    );
}

impl CliResource for v1::Discovery {
    type Doc = DiscoveryDoc;
    const COLUMNS: &'static [&'static str] = &[
        "NAME", "DNS NAME", "PORT", "STATE", "BACKENDS", "MISSING", "MESSAGE", "LEASE", "REVISION",
    ];
    fn row(&self, leases: &Leases) -> Vec<String> {
        let status = self.status.clone().unwrap_or_default();
        vec![
            self.name.clone(),
            self.dns_name.clone(),
            if self.srv {
                "srv".into()
            } else {
                self.port.to_string()
            },
            tether_controlplane::declarative::status_name(status.state).into(),
            status.addresses.len().to_string(),
            status.missing_since_unix_ms.len().to_string(),
            or(&status.message, "-"),
            lease_cell(self.lease, leases),
            self.revision.to_string(),
        ]
    }
    rpcs!(
        discovery,
        discoveries,
        create_discovery(CreateDiscoveryRequest),
        get_discovery,
        list_discoveries,
        update_discovery(UpdateDiscoveryRequest),
        delete_discovery
    );
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM UTC` (days to a civil date: Howard Hinnant's
/// algorithm; a dependency for one date was not worth it).
fn utc_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Runs a resource command for kind `R`.
pub(crate) async fn run<R: CliResource>(conn: &Conn, cmd: ResourceCmd) -> anyhow::Result<()> {
    let mut c = connect(conn).await?;
    let out = conn.output;
    match cmd {
        ResourceCmd::List { selector, filter } => {
            let filter = match (selector, filter) {
                (Some(s), _) => tether_controlplane::filter::Filter::from_selector(&s)
                    .map_err(|e| InputError(format!("-l: {e}")))?,
                (None, f) => f.unwrap_or_default(),
            };
            let items = R::list(&mut c, filter).await.map_err(CallError)?;
            if out.structured() {
                return print_list::<R, R::Doc>(&items, out);
            }
            let leases = lease_times(&mut c, &items).await.map_err(CallError)?;
            let rows: Vec<_> = items.iter().map(|r| r.row(&leases)).collect();
            print_table(R::COLUMNS, &rows);
        }
        ResourceCmd::Get { name } => {
            let r = R::get(&mut c, name).await.map_err(CallError)?;
            print_one(&R::Doc::from(&r), out)?;
        }
        ResourceCmd::Create {
            file,
            name,
            address,
            probe,
            weight,
            labels,
        } => {
            let r = match file {
                Some(f) => R::from_doc(&parse_one::<R::Doc>(&f)?)?,
                None => R::from_flags(CreateFlags {
                    name,
                    address,
                    probe,
                    weight,
                    labels,
                })?,
            };
            let r = R::create(&mut c, r).await.map_err(CallError)?;
            done(out, "created", r.revision());
        }
        ResourceCmd::Update { file, revision } => {
            let mut r = R::from_doc(&parse_one::<R::Doc>(&file)?)?;
            if let Some(rev) = revision {
                r.set_revision(rev);
            }
            let r = R::update(&mut c, r, Vec::new()).await.map_err(CallError)?;
            done(out, "updated", r.revision());
        }
        ResourceCmd::Register(flags) => {
            if R::KIND != tether_proto::keys::Kind::Backend {
                return Err(InputError("register takes backends only".into()).into());
            }
            drop(c);
            return super::register::register(conn, flags).await;
        }
        ResourceCmd::Set(flags) => {
            let (r, mask) = R::from_set(flags)?;
            let r = R::update(&mut c, r, mask).await.map_err(CallError)?;
            done(out, "updated", r.revision());
        }
        ResourceCmd::Delete { name, revision } => {
            R::delete(&mut c, name, revision).await.map_err(CallError)?;
            if out.structured() {
                print_value(out, serde_json::json!({"deleted": true}));
            } else {
                outln!("deleted");
            }
        }
    }
    Ok(())
}

/// A Watch event's resource as its file document (the shape `apply -f` takes, with its
/// revision); `None` for an event that carries none (health reports, undecodable objects).
pub(crate) fn event_document(e: &v1::WatchEvent) -> serde_json::Result<Option<serde_json::Value>> {
    use v1::watch_event::Resource as R;
    let Some(r) = &e.resource else {
        return Ok(None);
    };
    let v = match r {
        R::Backend(b) => serde_json::to_value(BackendDoc::from(b)),
        R::Probe(p) => serde_json::to_value(ProbeDoc::from(p)),
        R::Director(d) => serde_json::to_value(DirectorDoc::from(d)),
        R::Route(r) => serde_json::to_value(RouteDoc::from(r)),
        R::Certificate(c) => serde_json::to_value(CertificateDoc::from(c)),
        R::Discovery(d) => serde_json::to_value(DiscoveryDoc::from(d)),
    };
    v.map(Some)
}
