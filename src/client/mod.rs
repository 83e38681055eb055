//! The client commands over the gRPC API: `tether backend|probe|director|route …`, `tether
//! health …`, `tether apply`, `tether watch`, online `tether explain` and `tether nodes`.
//! Tables by default, `-o json` for scripts; errors print the status and the field to fix.
//!
//! Modules: [`conn`] (reaching the API, the token, what a failed call prints), [`input`]
//! (files and standard input), [`output`] (tables, JSON, YAML), [`resources`] (one generic
//! path for the per-kind commands), [`register`] (`backend register`: a backend bound to a
//! lease this process keeps alive), [`commands`] (the rest).

/// `println!` that ends the process quietly (status 0) when standard output is a closed pipe
/// (`tether watch | head -1`), as `cat` and kubectl do, instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::client::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod commands;
mod conn;
mod input;
mod output;
mod register;
mod resources;

pub(crate) use commands::{
    ApplyArgs, HealthCmd, VersionArgs, WatchArgs, apply, explain, export, health, nodes, version,
    watch,
};
pub(crate) use conn::{CallError, Conn, hint};
pub(crate) use input::{InputError, apply_paths};
pub(crate) use output::write_out;
pub(crate) use resources::{ResourceCmd, run as resource};
