//! The Tether control plane.
//!
//! Modules:
//! - [`convert`]: the one validation boundary — tether.v1 messages into the data plane's
//!   domain types, every error naming its field — and the balanced-shard slot assignment;
//! - [`declarative`]: the YAML file of `tether explain -f` and `tether apply -f`, read into
//!   tether.v1 messages; [`schema`]: its JSON Schema, generated from the same types;
//! - [`duration`]: the duration syntax of files and flags (`500ms`, `30s`, `2m`, `1h`);
//! - [`store`]: the [`store::Store`] trait (etcd's KV semantics: revisions, compare-and-write
//!   transactions, watch from a revision, "compacted, re-list", leases) and
//!   [`store::embedded::EmbeddedStore`], its durable one-file implementation on redb;
//! - [`state`]: the stored configuration decoded at one revision, and the diff that becomes
//!   one transaction;
//! - [`service`]: the `Tether` gRPC service (with the lease RPCs and the rule that only
//!   resources on the same lease may name a leased one); [`error`] maps its errors to statuses (once);
//!   [`mask`] merges an Update's `update_mask` (AIP-134) over the stored resource;
//!   [`filter`] parses and matches List's label `filter` (an AIP-160 subset); [`metrics`]
//!   counts calls, store transactions and Watch streams for the admin listener;
//!   [`pattern`] parses backend patterns; [`auth`] checks bearer tokens (the token file
//!   re-read on change, noticed by `files`);
//!   [`server`] serves it all with the health and reflection services, over TLS from
//!   [`tls`] when given certificates;
//! - [`admin`]: `tether controlplane`'s admin listener (`/healthz`, `/readyz`, `/metrics`);
//! - [`client`]: how the CLI and a following data plane reach the API (URL, TLS, token);
//! - [`serial`]: the serial key's value — the last write's id, time and part (a split write
//!   in progress is invisible to data planes);
//! - [`node`]: the node agent — what a proxy node runs to follow the store: the follower
//!   state machine over a narrow [`node::Source`] (the embedded store, etcd, or a control
//!   plane's Watch stream), the snapshot cache, registration under a lease, the supervisor and
//!   the backoff;
//! - [`discovery`]: DNS discovery — Discovery resources resolved by the one replica holding
//!   the discovery election, their answers written as ordinary labelled backends;
//! - [`nodes`]: the agreement check of `ListNodes` / `tether nodes` (the API side).
//!
//! Data flow (write): request → [`service`] loads a [`state::State`] → changes a copy →
//! [`convert::validate`] → one [`store::Txn`] (puts bound to their lease; a lease's end deletes
//! its resources in the store, outside this path). (Read side): [`node::Source`] →
//! [`node::Follower`] → `State` → `convert::validate_with` (reusing the previous revision's conversions
//! and rings) → `Runtime::install`.

pub mod admin;
pub mod auth;
pub mod client;
pub mod convert;
pub mod declarative;
pub mod discovery;
pub mod duration;
pub mod error;
mod files;
pub mod filter;
pub mod mask;
pub mod metrics;
pub mod node;
pub mod nodes;
pub mod pattern;
pub mod schema;
pub mod selector;
pub mod serial;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;
