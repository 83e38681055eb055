//! What this binary was built from: the crate version and the git commit (set by
//! `build.rs`; `TETHER_COMMIT` in the build environment overrides it, for builds without a
//! `.git`, such as a container image's).

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short git commit, or `unknown`.
pub const COMMIT: &str = env!("TETHER_COMMIT");

/// Appends `tether_build_info{version,commit} 1` (both admin listeners' `/metrics`).
pub fn write_metric(w: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(w, "# HELP tether_build_info The running build.");
    let _ = writeln!(w, "# TYPE tether_build_info gauge");
    let _ = writeln!(
        w,
        "tether_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\"}} 1"
    );
}
