//! What this binary was built from: the crate version and the git commit (set by
//! `build.rs`; `TETHER_COMMIT` in the build environment overrides it, for builds without a
//! `.git`, such as a container image's).

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short git commit, or `unknown`.
pub const COMMIT: &str = env!("TETHER_COMMIT");
