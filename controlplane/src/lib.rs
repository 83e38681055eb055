//! The Tether control plane.
//!
//! Modules:
//! - [`declarative`]: the YAML file of `tether explain -f` (and later `tether apply -f`):
//!   parsed strictly, every error naming the field (and line, where the parser knows it),
//!   converted into the data plane's validated [`tether_dataplane::config::Config`];
//! - [`duration`]: the duration syntax of files and flags (`500ms`, `30s`, `2m`, `1h`);
//! - [`store`]: the [`store::Store`] trait (etcd's KV semantics: revisions, compare-and-write
//!   transactions, watch from a revision, "compacted, re-list") and
//!   [`store::embedded::EmbeddedStore`], its durable one-file implementation on redb. The gRPC
//!   API that writes through it is not built yet.
//!
//! Data flow: file text → [`declarative::Document`] (serde) → checks of names, addresses and
//! fields → `Config` → [`tether_dataplane::director::Directors::build`] (references, cycles,
//! weights, slots).

pub mod convert;
pub mod declarative;
pub mod duration;
pub mod store;
