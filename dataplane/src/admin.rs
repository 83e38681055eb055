//! The admin listener: `/healthz` (the process runs), `/readyz` (the first full snapshot is
//! applied), `/metrics` (Prometheus text format), `/state` (JSON: applied revision, backends
//! with health) and `/explain?route=R&key=K` (or `director=D`).

use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::backend::BackendRuntime;
use crate::config::{AdminHealth, BackendSpec};
use crate::edge::{Edge, EdgeCounters};
use crate::exposition::{counters, label};
use crate::listener::serve_http;
use crate::pool::Failure;
use crate::runtime::Runtime;
use crate::snapshot::{ExplainTarget, Snapshot, backend_healthy};
use crate::traffic::RouteCounters;

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", format!("{v}\n"))
}

/// Who may read the admin listener: with tokens, every path but `/healthz` and `/readyz` (the
/// orchestrator's probes) — and `/metrics` when it is public — needs `Authorization: Bearer T`
/// with a configured token. Tokens are kept as SHA-256 digests.
/// The digests are shared with whoever re-reads the token file ([`Access::replace`]): a
/// rotated token takes effect on the next request.
#[derive(Debug, Clone, Default)]
pub struct Access {
    digests: Arc<arc_swap::ArcSwap<Vec<[u8; 32]>>>,
    metrics_public: bool,
}

impl Access {
    /// Open to anyone who can reach it.
    pub fn open() -> Access {
        Access::default()
    }

    /// Only for holders of a token whose SHA-256 is one of `digests`, but `/healthz`,
    /// `/readyz` and — when `metrics_public` — `/metrics`.
    pub fn digests(digests: impl IntoIterator<Item = [u8; 32]>, metrics_public: bool) -> Access {
        Access {
            digests: Arc::new(arc_swap::ArcSwap::from_pointee(
                digests.into_iter().collect(),
            )),
            metrics_public,
        }
    }

    /// Replaces the tokens (their digests) of an access that has some; an open one stays
    /// open (whether a token is needed is decided at start).
    pub fn replace(&self, digests: impl IntoIterator<Item = [u8; 32]>) {
        if self.is_open() {
            return;
        }
        let next: Vec<[u8; 32]> = digests.into_iter().collect();
        if !next.is_empty() {
            self.digests.store(Arc::new(next));
        }
    }

    /// Whether any token is required.
    pub fn is_open(&self) -> bool {
        self.digests.load().is_empty()
    }

    fn allows(&self, req: &Request<Incoming>) -> bool {
        use sha2::Digest;
        let path = req.uri().path();
        if self.is_open()
            || path == "/healthz"
            || path == "/readyz"
            || (self.metrics_public && path == "/metrics")
        {
            return true;
        }
        let Some(token) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Digests compared in constant time, every one of them: the time taken says nothing of
        // which token, or how much of one, was right.
        use subtle::ConstantTimeEq;
        let d: [u8; 32] = sha2::Sha256::digest(token.trim().as_bytes()).into();
        self.digests
            .load()
            .iter()
            .fold(subtle::Choice::from(0), |found, e| found | e.ct_eq(&d))
            .into()
    }
}

/// Answers one admin request.
pub fn handle(rt: &Runtime, access: &Access, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if !access.allows(req) {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            TEXT,
            "unauthorized: send Authorization: Bearer TOKEN (a token of --admin-token-file)\n"
                .into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if rt.is_ready() => reply(StatusCode::OK, TEXT, "ready\n".into()),
        "/readyz" if rt.cache_is_stale() => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "not ready: serving the snapshot cache, which the store last confirmed longer ago than --cache-max-age\n"
                .into(),
        ),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "not ready: no full snapshot applied yet, or the node's follower is restarting\n"
                .into(),
        ),
        "/metrics" => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (content_type, page) = crate::exposition::negotiate(accept, metrics(rt));
            reply(StatusCode::OK, content_type, page)
        }
        "/state" => json(
            StatusCode::OK,
            &state(rt, req.uri().query() != Some("backends=false")),
        ),
        "/explain" => explain(rt, req.uri().query().unwrap_or("")),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /healthz, /readyz, /metrics, /state, /explain?route=R&key=K\n".into(),
        ),
    }
}

fn query_param(q: &str, name: &str) -> Option<String> {
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn explain(rt: &Runtime, q: &str) -> Response<Full<Bytes>> {
    let snap = rt.snapshot();
    let route = query_param(q, "route");
    let director = query_param(q, "director");
    let target = match (&route, &director) {
        (Some(r), None) => ExplainTarget::Route(r),
        (None, Some(d)) => ExplainTarget::Director(d),
        _ => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "give exactly one of route=, director="}),
            );
        }
    };
    let Some(key) = query_param(q, "key") else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "key= is required"}),
        );
    };
    match snap.explain(target, &key, 4) {
        Ok(e) => json(
            StatusCode::OK,
            &serde_json::json!({
                "revision": snap.revision,
                "director": e.director,
                "key": key,
                "backend": e.backend,
                "alternates": e.alternates,
            }),
        ),
        Err(e) => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": e.to_string()}),
        ),
    }
}

/// The state as JSON; `with_backends: false` (`/state?backends=false`) leaves out the
/// per-backend list, which is large at thousands of backends.
fn state(rt: &Runtime, with_backends: bool) -> serde_json::Value {
    let snap = rt.snapshot();
    let backends: Vec<_> = snap
        .config
        .backends
        .iter()
        .zip(&snap.backends)
        .filter(|_| with_backends)
        .map(|(spec, st)| {
            serde_json::json!({
                "name": spec.name,
                "address": spec.address.to_string(),
                "admin_health": format!("{:?}", spec.admin_health).to_lowercase(),
                "drain": spec.drain,
                "probe": st.probe_window().map(|(g, w)| format!("{g}/{w}")),
                "probe_healthy": st.probe_healthy(),
                "probe_error": st.probe_error(),
                "probe_owned": st.owned(),
                "probe_role": st.role().as_str(),
                "probe_fleet": st.fleet_verdict(),
                "healthy": backend_healthy(spec, st),
                "connections_open": st.pool.open(),
                "connections_idle": st.pool.idle(),
            })
        })
        .collect();
    serde_json::json!({
        "ready": rt.is_ready(),
        "applied_revision": snap.revision,
        "config_revision": rt.config_revision(),
        "seen_revision": rt.seen_revision(),
        "from_cache": rt.from_cache(),
        "confirmed_age_seconds": rt.confirmed_age().map(|d| d.as_secs_f64()),
        "health_source": rt.fleet.source().as_str(),
        "store_contact_age_seconds": rt.contact_age().map(|d| d.as_secs_f64()),
        "backends": backends,
        "directors": snap.config.directors.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        "routes": snap.config.routes.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
    })
}

/// Shared health: where verdicts come from, what this node probed and published.
fn fleet_metrics(w: &mut String, rt: &Runtime, snap: &Snapshot) {
    let f = &rt.fleet;
    let _ = writeln!(
        w,
        "# HELP tether_health_source Where this node's probe verdicts come from (1 for the one in use): the fleet's published reports, or its own probes."
    );
    let _ = writeln!(w, "# TYPE tether_health_source gauge");
    for s in [crate::fleet::Source::Fleet, crate::fleet::Source::Local] {
        let _ = writeln!(
            w,
            "tether_health_source{{source=\"{}\"}} {}",
            s.as_str(),
            u8::from(f.source() == s)
        );
    }
    counters(
        w,
        &[
            (
                "tether_health_probes_sent_total",
                "Health probes this node sent.",
                &f.probes_sent,
            ),
            (
                "tether_health_reports_published_total",
                "Shared-health reports this node wrote to the store.",
                &f.published,
            ),
            (
                "tether_health_source_changes_total",
                "Switches between the fleet verdict and local probes.",
                &f.source_changes,
            ),
        ],
    );
    let owned = snap.backends.iter().filter(|b| b.owned()).count();
    let _ = writeln!(
        w,
        "# HELP tether_health_owned_backends Backends this node probes for the fleet."
    );
    let _ = writeln!(w, "# TYPE tether_health_owned_backends gauge");
    let _ = writeln!(w, "tether_health_owned_backends {owned}");
    let _ = writeln!(
        w,
        "# HELP tether_store_contact_age_seconds Time since the store last answered this node (the age of its fleet view)."
    );
    let _ = writeln!(w, "# TYPE tether_store_contact_age_seconds gauge");
    if let Some(age) = rt.contact_age() {
        let _ = writeln!(w, "tether_store_contact_age_seconds {}", age.as_secs_f64());
    }
}

/// The node's `/metrics` page (Prometheus text format 0.0.4). Public for the exposition
/// benchmark.
pub fn metrics(rt: &Runtime) -> String {
    let snap: Arc<Snapshot> = rt.snapshot();
    let mut out = String::with_capacity(4096);
    let w = &mut out;
    let _ = writeln!(
        w,
        "# HELP tether_applied_revision Store revision of the applied snapshot."
    );
    let _ = writeln!(w, "# TYPE tether_applied_revision gauge");
    let _ = writeln!(w, "tether_applied_revision {}", snap.revision);
    let _ = writeln!(w, "# HELP tether_seen_revision Latest store revision seen.");
    let _ = writeln!(w, "# TYPE tether_seen_revision gauge");
    let _ = writeln!(w, "tether_seen_revision {}", rt.seen_revision());
    let c = &rt.counters;
    counters(
        w,
        &[
            (
                "tether_no_route_total",
                "Requests that matched no route (404).",
                &c.no_route,
            ),
            (
                "tether_no_backend_total",
                "Requests with no healthy backend (503).",
                &c.no_backend,
            ),
            (
                "tether_connect_retries_total",
                "Connect failures retried on the next alternate.",
                &c.retries,
            ),
            (
                "tether_rejected_revisions_total",
                "Store revisions that could not be applied.",
                &c.rejected_revisions,
            ),
            (
                "tether_invalid_objects_total",
                "Stored objects left out because they do not decode or validate.",
                &c.invalid_objects,
            ),
            (
                "tether_store_relists_total",
                "Full listings of the store after the first (compaction, restored store).",
                &c.relists,
            ),
        ],
    );
    edge_metrics(w, rt);
    tls_metrics(w, rt);
    fleet_metrics(w, rt, &snap);
    let _ = writeln!(
        w,
        "# HELP tether_task_restarts_total Node agent tasks restarted by their supervisor after ending early."
    );
    let _ = writeln!(w, "# TYPE tether_task_restarts_total counter");
    for (task, v) in [
        ("follower", &c.follower_restarts),
        ("registration", &c.registration_restarts),
        ("health_publisher", &c.publisher_restarts),
    ] {
        let _ = writeln!(
            w,
            "tether_task_restarts_total{{task=\"{task}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        w,
        "# HELP tether_backend_healthy Whether a backend takes new requests."
    );
    let _ = writeln!(w, "# TYPE tether_backend_healthy gauge");
    for (spec, st) in snap.config.backends.iter().zip(&snap.backends) {
        let _ = writeln!(
            w,
            "tether_backend_healthy{{backend=\"{}\"}} {}",
            label(&spec.name),
            u8::from(backend_healthy(spec, st))
        );
    }
    let _ = writeln!(
        w,
        "# HELP tether_backend_admin_state A backend's administrative health (auto: the probe decides)."
    );
    let _ = writeln!(w, "# TYPE tether_backend_admin_state gauge");
    for spec in &snap.config.backends {
        for (state, value) in [
            ("auto", AdminHealth::Auto),
            ("healthy", AdminHealth::Healthy),
            ("sick", AdminHealth::Sick),
        ] {
            let _ = writeln!(
                w,
                "tether_backend_admin_state{{backend=\"{}\",state=\"{state}\"}} {}",
                label(&spec.name),
                u8::from(spec.admin_health == value)
            );
        }
    }
    /// A per-backend gauge from its configuration: name, help, value.
    type Setting = (&'static str, &'static str, fn(&BackendSpec) -> f64);
    let settings: [Setting; 3] = [
        (
            "tether_backend_draining",
            "Whether a backend is draining (no new keys; its sessions finish).",
            |b| f64::from(u8::from(b.drain)),
        ),
        ("tether_backend_weight", "A backend's weight.", |b| b.weight),
        (
            "tether_backend_max_connections",
            "A backend's max_connections (0: no limit).",
            |b| f64::from(b.max_connections),
        ),
    ];
    for (metric, help, value) in settings {
        let _ = writeln!(w, "# HELP {metric} {help}");
        let _ = writeln!(w, "# TYPE {metric} gauge");
        for spec in &snap.config.backends {
            let _ = writeln!(
                w,
                "{metric}{{backend=\"{}\"}} {}",
                label(&spec.name),
                value(spec)
            );
        }
    }
    let _ = writeln!(
        w,
        "# HELP tether_backend_failures_total Failed exchanges with a backend by cause (each alternate tried counts): the causes of 502, 503 and 504 answers and of responses cut short."
    );
    let _ = writeln!(w, "# TYPE tether_backend_failures_total counter");
    for st in &snap.backends {
        let name = label(&st.name);
        for f in Failure::ALL {
            let _ = writeln!(
                w,
                "tether_backend_failures_total{{backend=\"{name}\",cause=\"{}\"}} {}",
                f.label(),
                st.pool.counters.failures.get(f)
            );
        }
    }
    for (metric, help, healthy) in [
        ("tether_director_members", "Members of a director.", false),
        (
            "tether_director_healthy_members",
            "Members of a director that can take requests now.",
            true,
        ),
    ] {
        let _ = writeln!(w, "# HELP {metric} {help}");
        let _ = writeln!(w, "# TYPE {metric} gauge");
        for (d, all, up) in snap.directors.membership(&*snap) {
            let v = if healthy { up } else { all };
            let _ = writeln!(w, "{metric}{{director=\"{}\"}} {v}", label(d));
        }
    }
    let routes: Vec<(&str, &Arc<RouteCounters>)> = snap
        .config
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .zip(&snap.route_counters)
        .collect();
    rt.traffic.write_metrics(w, &routes);
    let _ = writeln!(
        w,
        "# HELP tether_backend_requests_total Responses by backend and status."
    );
    let _ = writeln!(w, "# TYPE tether_backend_requests_total counter");
    for st in &snap.backends {
        let by = st.counters.by_status.snapshot();
        for (status, n) in by {
            let _ = writeln!(
                w,
                "tether_backend_requests_total{{backend=\"{}\",status=\"{status}\"}} {n}",
                label(&st.name)
            );
        }
    }
    let _ = writeln!(
        w,
        "# HELP tether_backend_response_seconds Time to the response head, by backend."
    );
    let _ = writeln!(w, "# TYPE tether_backend_response_seconds histogram");
    for st in &snap.backends {
        let labels = format!("backend=\"{}\",", label(&st.name));
        st.counters
            .latency
            .write_prometheus(w, "tether_backend_response_seconds", &labels);
    }
    let _ = writeln!(
        w,
        "# HELP tether_apply_delay_seconds From a change's commit in the store to its application here."
    );
    let _ = writeln!(w, "# TYPE tether_apply_delay_seconds histogram");
    rt.apply_delay
        .write_prometheus(w, "tether_apply_delay_seconds", "");
    let _ = writeln!(
        w,
        "# HELP tether_config_confirmed_age_seconds Seconds since the store last confirmed the applied state is current (-1: never)."
    );
    let _ = writeln!(w, "# TYPE tether_config_confirmed_age_seconds gauge");
    let _ = writeln!(
        w,
        "tether_config_confirmed_age_seconds {}",
        rt.confirmed_age().map_or(-1.0, |d| d.as_secs_f64())
    );
    let _ = writeln!(
        w,
        "# HELP tether_config_from_cache Whether the applied state came from the local cache (the store not reached yet)."
    );
    let _ = writeln!(w, "# TYPE tether_config_from_cache gauge");
    let _ = writeln!(w, "tether_config_from_cache {}", u8::from(rt.from_cache()));
    let _ = writeln!(
        w,
        "# HELP tether_probe_results_total Probe results by backend."
    );
    let _ = writeln!(w, "# TYPE tether_probe_results_total counter");
    for st in &snap.backends {
        let name = label(&st.name);
        for (result, n) in [
            ("good", &st.counters.probes_good),
            ("bad", &st.counters.probes_bad),
        ] {
            let _ = writeln!(
                w,
                "tether_probe_results_total{{backend=\"{name}\",result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
    /// A per-backend series: name, help, type, and its value for one backend.
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&BackendRuntime) -> u64,
    );
    let series: [Series; 7] = [
        (
            "tether_health_transitions_total",
            "Health changes (probe, admin, drain).",
            "counter",
            |b| b.counters.transitions.load(Ordering::Relaxed),
        ),
        (
            "tether_backend_connects_total",
            "Connections opened to a backend.",
            "counter",
            |b| b.pool.counters.connects.load(Ordering::Relaxed),
        ),
        (
            "tether_backend_connect_failures_total",
            "Failed connect attempts.",
            "counter",
            |b| b.pool.counters.connect_failures.load(Ordering::Relaxed),
        ),
        (
            "tether_backend_queued_total",
            "Requests that found the backend at max_connections and waited (queue_timeout).",
            "counter",
            |b| b.pool.counters.queued.load(Ordering::Relaxed),
        ),
        (
            "tether_backend_queue_timeouts_total",
            "Queued requests no connection came free for within queue_timeout (503).",
            "counter",
            |b| b.pool.counters.queue_timeouts.load(Ordering::Relaxed),
        ),
        (
            "tether_backend_resolve_failures_total",
            "Failed DNS lookups of a backend's names (the previous answer is kept).",
            "counter",
            |b| b.pool.counters.resolve_failures.load(Ordering::Relaxed),
        ),
        (
            "tether_backend_connections",
            "Open connections to a backend.",
            "gauge",
            |b| b.pool.open() as u64,
        ),
    ];
    for (metric, help, kind, value) in series {
        let _ = writeln!(w, "# HELP {metric} {help}");
        let _ = writeln!(w, "# TYPE {metric} {kind}");
        for st in &snap.backends {
            let _ = writeln!(
                w,
                "{metric}{{backend=\"{}\"}} {}",
                label(&st.name),
                value(st)
            );
        }
    }
    rt.write_extra_metrics(w);
    // The build and the standard process metrics, as every Prometheus client library exports.
    crate::build::write_metric(w);
    crate::process_metrics::write(w);
    out
}

/// The TLS listener's handshakes and failures, and every certificate's time left.
fn tls_metrics(w: &mut String, rt: &Runtime) {
    let c = &rt.certs.counters;
    counters(
        w,
        &[(
            "tether_tls_handshakes_total",
            "TLS handshakes completed on --https.",
            &c.handshakes,
        )],
    );
    let _ = writeln!(
        w,
        "# HELP tether_tls_handshake_failures_total TLS handshakes that failed, by reason."
    );
    let _ = writeln!(w, "# TYPE tether_tls_handshake_failures_total counter");
    for (reason, v) in [
        ("timeout", &c.timeouts),
        ("no_certificate", &c.no_certificate),
        ("incompatible", &c.incompatible),
        ("bad_message", &c.bad_message),
        ("alert", &c.alerts),
        ("other", &c.other),
    ] {
        let _ = writeln!(
            w,
            "tether_tls_handshake_failures_total{{reason=\"{reason}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        w,
        "# HELP tether_tls_certificate_expiry_seconds Seconds until a served certificate expires (negative: expired)."
    );
    let _ = writeln!(w, "# TYPE tether_tls_certificate_expiry_seconds gauge");
    for cert in &rt.certs.current().all {
        let _ = writeln!(
            w,
            "tether_tls_certificate_expiry_seconds{{certificate=\"{}\",source=\"{}\"}} {}",
            label(&cert.name),
            cert.source.label(),
            cert.seconds_left()
        );
    }
}

/// Each listener's open connections and what its edge refused or cut off.
fn edge_metrics(w: &mut String, rt: &Runtime) {
    type Get = fn(&EdgeCounters) -> &AtomicU64;
    /// A counter family: name, help, and its series (label, counter).
    type Family<'a> = (&'a str, &'a str, &'a [(&'a str, Get)]);
    let edges = rt.listeners();
    let _ = writeln!(
        w,
        "# HELP tether_client_connections Open client connections, by listener."
    );
    let _ = writeln!(w, "# TYPE tether_client_connections gauge");
    for e in &edges {
        let _ = writeln!(
            w,
            "tether_client_connections{{listener=\"{}\"}} {}",
            e.name,
            e.open()
        );
    }
    let _ = writeln!(
        w,
        "# HELP tether_tunnels_open Open WebSocket and other Upgrade tunnels, by listener."
    );
    let _ = writeln!(w, "# TYPE tether_tunnels_open gauge");
    for e in &edges {
        let c = &e.counters;
        let open = c
            .tunnels_opened
            .load(Ordering::Relaxed)
            .saturating_sub(c.tunnels_closed.load(Ordering::Relaxed));
        let _ = writeln!(w, "tether_tunnels_open{{listener=\"{}\"}} {open}", e.name);
    }
    let families: [Family<'_>; 5] = [
        (
            "tether_client_connections_refused_total",
            "Connections accepted and closed at once at a cap, by listener and cap.",
            &[
                ("cap=\"max_connections\"", |c| &c.refused_max_connections),
                ("cap=\"max_connections_per_ip\"", |c| &c.refused_per_ip),
            ],
        ),
        (
            "tether_client_timeouts_total",
            "Client connections cut off by a timeout, by listener and timeout.",
            &[
                ("timeout=\"header\"", |c| &c.header_timeouts),
                ("timeout=\"idle\"", |c| &c.idle_timeouts),
                ("timeout=\"send\"", |c| &c.send_timeouts),
                ("timeout=\"body\"", |c| &c.body_timeouts),
            ],
        ),
        (
            "tether_client_requests_refused_total",
            "Request heads refused at the edge, by listener and reason (414, 431, 400).",
            &[
                ("reason=\"uri_too_long\"", |c| &c.uri_too_long),
                ("reason=\"head_too_large\"", |c| &c.head_too_large),
                ("reason=\"ambiguous_framing\"", |c| &c.ambiguous_framing),
                ("reason=\"bad_proxy_header\"", |c| &c.bad_proxy_header),
                ("reason=\"upgrade_not_allowed\"", |c| &c.upgrades_refused),
            ],
        ),
        (
            "tether_tunnels_total",
            "WebSocket and other Upgrade tunnels opened (the backend answered 101).",
            &[("", |c| &c.tunnels_opened)],
        ),
        (
            "tether_tunnels_closed_total",
            "Tunnels closed, by listener and reason (closed: by either side, or an error).",
            &[
                ("reason=\"idle\"", |c| &c.tunnel_idle_timeouts),
                ("reason=\"drain\"", |c| &c.tunnels_drained),
            ],
        ),
    ];
    for (metric, help, series) in families {
        let _ = writeln!(w, "# HELP {metric} {help}");
        let _ = writeln!(w, "# TYPE {metric} counter");
        for e in &edges {
            for (label, get) in series {
                let v = get(&e.counters).load(Ordering::Relaxed);
                let sep = if label.is_empty() { "" } else { "," };
                let _ = writeln!(w, "{metric}{{listener=\"{}\"{sep}{label}}} {v}", e.name);
            }
        }
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves, under `edge`'s timeouts
/// and caps.
pub async fn serve(
    listener: TcpListener,
    rt: Arc<Runtime>,
    access: Access,
    edge: Arc<Edge>,
    shutdown: impl Future<Output = ()>,
) {
    serve_http(listener, edge, None, shutdown, move |req, _, _| {
        std::future::ready(handle(&rt, &access, &req))
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_param("route=r&key=a%20b+c", "key").as_deref(),
            Some("a b c")
        );
        assert_eq!(query_param("route=r", "key"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
