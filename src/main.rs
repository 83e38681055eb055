//! `tether`: the one binary. Parses the command line and hands over to a command module.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod explain;

/// Dynamic-backend control plane and sticky HTTP proxy.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show which backend a director picks for each key, offline, from a declarative file.
    Explain(explain::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Explain(args) => {
            let stdout = std::io::stdout();
            match explain::run(&args, &mut stdout.lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tether explain: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}
