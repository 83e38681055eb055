//! The Tether data plane.
//!
//! Modules:
//! - [`config`]: validated domain types (backends, directors, members) and the name and
//!   address rules every entry point shares;
//! - [`director`]: the directors as pure code — shard (`varnish` and `balanced` algorithms),
//!   round_robin, fallback, random, hash — built from a [`config::Config`] into an immutable
//!   [`director::Directors`] set.
//!
//! Data flow: resources → [`config`] types → [`director::Directors::build`] (rings and slot
//! tables computed once per revision) → `select(director, key, health)` per request.

pub mod config;
pub mod director;
