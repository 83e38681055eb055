//! Compiles `proto/tether/v1/*.proto` in pure Rust (protox), so that a machine without
//! `protoc` builds the workspace.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/tether/v1/resources.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
