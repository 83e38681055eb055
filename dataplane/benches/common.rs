//! Shared set-up of the director benchmarks.
#![allow(dead_code, unreachable_pub)]

use tether_dataplane::config::{
    Address, BackendSpec, Config, DirectorSpec, MemberSpec, Policy, ShardSpec, TargetRef,
};
use tether_dataplane::director::{Algorithm, BackendId, HealthView};

/// Health as a flat table, as the data plane keeps it.
#[derive(Debug)]
pub struct Table(pub Vec<bool>);

impl HealthView for Table {
    #[inline]
    fn is_healthy(&self, b: BackendId) -> bool {
        self.0[b as usize]
    }
}

/// `n` backends `backend-00000.pool.local:8080`… (hashing.md's names) in one shard director
/// "d"; `skip` leaves one member out, `extra` adds one.
pub fn config(algorithm: Algorithm, n: usize, skip: Option<usize>, extra: bool) -> Config {
    config_with_base(algorithm, n, skip, extra, 1)
}

/// [`config`] with the balanced algorithm's flat base of `base_slots` slots.
pub fn config_with_base(
    algorithm: Algorithm,
    n: usize,
    skip: Option<usize>,
    extra: bool,
    base_slots: u32,
) -> Config {
    let name = |i: usize| format!("backend-{i:05}.pool.local:8080");
    let mut idx: Vec<usize> = (0..n).filter(|&i| Some(i) != skip).collect();
    if extra {
        idx.push(n);
    }
    Config {
        backends: (0..=n)
            .map(|i| {
                std::sync::Arc::new(BackendSpec::new(
                    format!("b{i}"),
                    "127.0.0.1:8080".parse::<Address>().expect("address"),
                ))
            })
            .collect(),
        directors: vec![std::sync::Arc::new(DirectorSpec {
            name: "d".into(),
            policy: Policy::Shard(ShardSpec {
                algorithm,
                base_slots,
                ..ShardSpec::default()
            }),
            members: idx
                .iter()
                .map(|&i| MemberSpec {
                    ident: Some(name(i)),
                    slot: Some(i as u32),
                    ..MemberSpec::new(TargetRef::Backend(format!("b{i}")))
                })
                .collect(),
        })],
        ..Default::default()
    }
}

#[path = "../tests/support/keys.rs"]
mod keys_impl;
#[allow(unused_imports)]
pub use keys_impl::keys;

/// Every tenth backend sick.
pub fn ten_percent_sick(n: usize) -> Table {
    Table((0..=n).map(|i| i % 10 != 3).collect())
}
