//! Compiles `proto/tether/v1/*.proto` in pure Rust (protox), so that a machine without
//! `protoc` builds the workspace; tonic-prost-build generates the messages and the gRPC
//! service from the same descriptor set, which is also saved for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tether/v1/resources.proto",
        "proto/tether/v1/api.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("tether_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;

    // etcd's v3 API: clients only, for the control plane's etcd store.
    let etcd = [
        "proto/etcd/rpc.proto",
        "proto/etcd/kv.proto",
        "proto/etcd/auth.proto",
    ];
    for f in etcd {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(etcd, ["proto/etcd"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
