//! The Tether control plane.
//!
//! Modules:
//! - [`convert`]: the one validation boundary — tether.v1 messages into the data plane's
//!   domain types, every error naming its field — and the balanced-shard slot assignment;
//! - [`declarative`]: the YAML file of `tether explain -f` and `tether apply -f`, read into
//!   tether.v1 messages;
//! - [`duration`]: the duration syntax of files and flags (`500ms`, `30s`, `2m`, `1h`);
//! - [`store`]: the [`store::Store`] trait (etcd's KV semantics: revisions, compare-and-write
//!   transactions, watch from a revision, "compacted, re-list") and
//!   [`store::embedded::EmbeddedStore`], its durable one-file implementation on redb;
//! - [`state`]: the stored configuration decoded at one revision, and the diff that becomes
//!   one transaction;
//! - [`service`]: the `Tether` gRPC service; [`error`] maps its errors to statuses (once);
//!   [`pattern`] parses backend patterns; [`auth`] checks bearer tokens;
//!   [`server`] serves it all with the health and reflection services;
//! - [`follow`]: keeps a data-plane [`tether_dataplane::runtime::Runtime`] on the store's
//!   latest revision (list, then watch), with a local snapshot cache;
//! - [`nodes`]: data-plane registration under a lease (cluster mode) and the agreement check
//!   of `tether nodes`.
//!
//! Data flow (write): request → [`service`] loads a [`state::State`] → changes a copy →
//! [`convert::validate`] → one [`store::Txn`]. (Read side): [`store::Store::watch`] →
//! [`follow`] → `State` → `convert::validate_with` (reusing the previous revision's conversions
//! and rings) → `Runtime::install`.

pub mod auth;
pub mod convert;
pub mod declarative;
pub mod duration;
pub mod error;
pub mod follow;
pub mod nodes;
pub mod pattern;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
