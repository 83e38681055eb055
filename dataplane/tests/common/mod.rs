//! Helpers shared by the director integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;

use tether_dataplane::config::{
    Address, BackendSpec, Config, DirectorSpec, MemberSpec, Policy, ShardSpec, TargetRef,
};
use tether_dataplane::director::{Algorithm, BackendId, Directors, HealthView};

/// Backends by id that are sick; all others healthy.
#[derive(Debug, Default, Clone)]
pub struct SickSet(pub HashSet<BackendId>);

impl HealthView for SickSet {
    fn is_healthy(&self, b: BackendId) -> bool {
        !self.0.contains(&b)
    }
}

pub fn backend(name: &str, port: u16) -> BackendSpec {
    BackendSpec::new(
        name.to_owned(),
        format!("127.0.0.1:{port}")
            .parse::<Address>()
            .expect("address"),
    )
}

/// One shard director "d" over `members` = (backend name, weight, ident, slot).
pub fn shard_config(
    algorithm: Algorithm,
    replicas: u32,
    members: &[(String, f64, Option<String>, Option<u32>)],
) -> Config {
    let mut names: Vec<&String> = Vec::new();
    for m in members {
        if !names.contains(&&m.0) {
            names.push(&m.0);
        }
    }
    Config {
        backends: names
            .iter()
            .enumerate()
            .map(|(i, n)| std::sync::Arc::new(backend(n, 20000 + i as u16)))
            .collect(),
        directors: vec![std::sync::Arc::new(DirectorSpec {
            name: "d".into(),
            policy: Policy::Shard(ShardSpec {
                algorithm,
                replicas,
                ..ShardSpec::default()
            }),
            members: members
                .iter()
                .map(|(b, w, ident, slot)| MemberSpec {
                    weight: Some(*w),
                    ident: ident.clone(),
                    slot: *slot,
                    ..MemberSpec::new(TargetRef::Backend(b.clone()))
                })
                .collect(),
        })],
        ..Default::default()
    }
}

/// `n` equally weighted members `backend-00000…` in slots 0…n−1.
pub fn uniform(n: usize) -> Vec<(String, f64, Option<String>, Option<u32>)> {
    (0..n)
        .map(|i| (format!("backend-{i:05}"), 1.0, None, Some(i as u32)))
        .collect()
}

pub fn build(c: &Config) -> Directors {
    Directors::build(c, None).expect("config builds")
}

#[path = "../support/keys.rs"]
mod keys_impl;
#[allow(unused_imports)]
pub use keys_impl::keys;
