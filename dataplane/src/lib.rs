//! The Tether data plane.
//!
//! Modules:
//! - [`config`]: validated domain types (backends, probes, directors, routes) and the name and
//!   address rules every entry point shares; [`limits`]: the bounds on a configuration;
//! - [`director`]: the directors as pure code — shard (`varnish` and `balanced` algorithms),
//!   round_robin, fallback, random, hash — built from a [`config::Config`] into an immutable
//!   [`director::Directors`] set;
//! - [`runtime`]: the current [`snapshot::Snapshot`] behind an `ArcSwap`, and the registry of
//!   per-backend runtime state ([`backend`]: connection [`pool`], probe window, counters) kept
//!   across revisions for unchanged backend identities; [`resolve`]: DNS names of backends
//!   (hickory, TTLs clamped), which the pool resolves and re-resolves; [`tls`]: TLS to backends
//!   (and the PEM helpers); [`h1`]: HTTP/1.1 to backends, spoken in the request's own task
//!   (HTTP/2 to backends is hyper's client);
//! - [`health`]: Varnish probe semantics — the window, one probe attempt (the probe loop, one
//!   per backend identity, is spawned and run by [`runtime`]); [`fleet`]: shared health's data
//!   plane side — whether verdicts are this node's probes or the fleet's, and the outbox of
//!   owned backends' probe results the node agent publishes;
//! - [`route`]: route matching and key extraction;
//! - [`proxy`]: the HTTP server and forwarding (retries on the director's alternates), with
//!   [`body`] streaming responses back (a [`pool::Checkout`] guard gives the connection back
//!   at the body's end); [`proxy::respond`] maps errors to HTTP once;
//! - [`edge`]: what no client may do to a listener — timeouts, connection caps, head limits —
//!   and [`listener`]: the one accept loop and HTTP server of the proxy and admin listeners;
//!   [`proxy_protocol`]: the client address an L4 balancer announces (v1, v2);
//!   [`client_ip`]: the client behind trusted proxies (`X-Forwarded-For`);
//! - [`tunnel`]: WebSocket and other HTTP/1.1 Upgrades, spliced after the backend's `101`;
//! - [`certs`]: the TLS listener's certificates (resources and `--cert-dir`), picked by SNI;
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, `/state`, `/explain`; [`process_metrics`]: the
//!   standard `process_*` metrics from `/proc`; [`build`]: the version and commit built from;
//!   [`traffic`]: client requests as a whole — per-route counters, in flight, the access log —
//!   recorded when each request's [`traffic::Exchange`] is dropped at its response's end;
//!   [`histogram`]: the latency histogram every listener uses; [`exposition`]: Prometheus text
//!   or OpenMetrics, as the scraper's `Accept` asks;
//! - [`fingerprint`]: the routing fingerprint over a stable, versioned encoding (`tether nodes`).
//!
//! Data flow: resources → [`config`] types → [`runtime::Runtime::install`] (directors, routes and
//! backend states built, then one atomic swap) → per request: [`proxy`] loads the snapshot,
//! [`route`] picks a route and key, the director selects with live health, the [`pool`]
//! supplies a connection, [`body`] streams the answer and carries the request's exchange to
//! [`traffic`] at its end.

pub mod admin;
pub mod backend;
pub mod body;
pub mod build;
pub mod certs;
pub mod client_ip;
pub mod config;
pub mod director;
pub mod edge;
pub mod exposition;
pub mod fingerprint;
pub mod fleet;
pub mod h1;
pub mod health;
pub mod histogram;
pub mod limits;
pub mod listener;
pub mod pool;
pub mod process_metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod resolve;
pub mod route;
pub mod runtime;
pub mod snapshot;
pub mod tls;
pub mod traffic;
pub mod tunnel;
