//! tether.v1: the protobuf resources and where they live in etcd.
//!
//! Modules:
//! - [`v1`]: the generated `tether.v1` messages (Backend, Probe, Director, Route) and the
//!   `Tether` gRPC service (server and client), compiled from `proto/tether/v1/*.proto` by
//!   `build.rs` with protox, so no `protoc` is needed;
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection;
//! - [`etcd`]: etcd's v3 API messages and gRPC clients, for the etcd store.
//! - [`keys`]: the etcd key layout of `shared/DESIGN.md` §4, the one place that turns a
//!   resource kind and name into a key and back.
//!
//! Data flow: the control plane encodes these messages into etcd values under [`keys`]; the
//! data plane decodes them and converts them into its own validated domain types.

pub mod keys;

/// Generated `tether.v1` messages.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tether.v1.rs"));
}

/// etcd's v3 API (clients only), compiled from `proto/etcd/` (see its README).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod etcd {
    /// `etcdserverpb`: KV, Watch, Lease, Auth, Maintenance services.
    pub mod etcdserverpb {
        include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    }
    /// `mvccpb`: stored key-values and watch events.
    pub mod mvccpb {
        include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    }
    /// `authpb`: users and roles.
    pub mod authpb {
        include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    }
}

/// The encoded `FileDescriptorSet` of tether.v1, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tether_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn the_descriptor_set_is_self_contained_for_reflection() {
        let fds =
            prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("decodes");
        let names: Vec<_> = fds.file.iter().filter_map(|f| f.name.as_deref()).collect();
        for f in [
            "tether/v1/api.proto",
            "tether/v1/resources.proto",
            "google/protobuf/empty.proto",
            "google/protobuf/duration.proto",
        ] {
            assert!(names.contains(&f), "{f} missing from {names:?}");
        }
    }
}
