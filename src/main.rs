//! `tether`: the one binary. Parses the command line and hands over to a command module:
//! [`up`] (control plane and proxy in one process), [`cluster`] (the etcd-backed
//! `controlplane` and `dataplane`), [`explain`] (offline, from a file),
//! [`client`] (everything that talks to a running API), [`echo`] (a demo upstream).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tether_proto::v1;

mod client;
mod cluster;
mod echo;
mod explain;
mod process;
mod up;

/// jemalloc instead of glibc's malloc: with thousands of client connections held open,
/// glibc's heap fragments and every request's allocations get slower (`_int_malloc` and
/// `malloc_consolidate` rise from 2% to 8% of the proxy's time); jemalloc's per-size arenas do
/// not. Measured in docs/benchmarks.md (the edge under attack).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Dynamic-backend control plane and sticky HTTP proxy.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    conn: client::Conn,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane and the proxy in one process on the embedded store.
    Up(up::Args),
    /// Run the control-plane API on etcd (any number of replicas).
    Controlplane(cluster::ControlPlaneArgs),
    /// Run a proxy node that follows etcd (or a control plane's Watch stream).
    Dataplane(cluster::DataPlaneArgs),
    /// Show which backend a director or route picks for each key: offline from a file
    /// (-f), or from the running system.
    Explain(explain::Args),
    /// Backends: list, get, create, update, set, delete.
    Backend {
        #[command(subcommand)]
        op: client::ResourceCmd,
    },
    /// Health probes: list, get, create, update, delete.
    Probe {
        #[command(subcommand)]
        op: client::ResourceCmd,
    },
    /// Directors: list, get, create, update, delete.
    Director {
        #[command(subcommand)]
        op: client::ResourceCmd,
    },
    /// Routes: list, get, create, update, delete.
    Route {
        #[command(subcommand)]
        op: client::ResourceCmd,
    },
    /// TLS certificates: list, get, create, update, delete (the key is write-only).
    Certificate {
        #[command(subcommand)]
        op: client::ResourceCmd,
    },
    /// DNS discovery: names whose addresses the control plane keeps as labelled backends
    /// (list shows each one's state: ok, failing, pending).
    Discovery {
        #[command(subcommand)]
        op: client::ResourceCmd,
    },
    /// Backend health: set the admin state by pattern, list.
    Health {
        #[command(subcommand)]
        op: client::HealthCmd,
    },
    /// Apply a declarative file in one transaction.
    Apply(client::ApplyArgs),
    /// Stream every configuration change.
    Watch(client::WatchArgs),
    /// Data-plane nodes, and whether they agree on their routing state.
    Nodes,
    /// A tiny HTTP server answering with its name (quickstart and benchmark upstream).
    Echo(echo::Args),
    /// This binary's version and the server's (`--client`: this binary's only).
    Version(client::VersionArgs),
    /// Print the whole configuration as a declarative file `apply -f` takes back.
    Export,
    /// Print the declarative file's JSON Schema (for editors' YAML language servers).
    Schema,
    /// Print a shell completion script: `source <(tether completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Exit code of a failed command: 2 for input the user must fix before retrying (a bad file,
/// bad flags, a field the server refused), 1 for everything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<client::InputError>().is_some() {
        return 2;
    }
    if let Some(c) = e.downcast_ref::<client::CallError>() {
        return match c.0.code() {
            tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::NotFound
            | tonic::Code::AlreadyExists => 2,
            _ => 1,
        };
    }
    1
}

/// The client connection's flags (global, so `tether --server X backend list` works) that a
/// server command does not read: hidden from its help, and refused when given to it.
const CLIENT_ONLY: [(&str, &[&str]); 4] = [
    ("up", &["server", "token", "ca", "cert", "key", "output"]),
    (
        "controlplane",
        &["server", "token", "ca", "cert", "key", "output"],
    ),
    // A data plane following a control plane (--api-url) authenticates as a client does.
    ("dataplane", &["server", "output"]),
    (
        "echo",
        &["server", "token", "ca", "cert", "key", "output", "insecure"],
    ),
];

/// The command line's definition, with [`CLIENT_ONLY`] flags hidden where they do not apply:
/// each such subcommand gets a hidden copy of the global flag (clap then does not copy the
/// visible one in, and a value given before the subcommand still reaches it).
fn command() -> clap::Command {
    let mut cmd = Cli::command();
    let globals: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    for (sub, flags) in CLIENT_ONLY {
        cmd = cmd.mut_subcommand(sub, |mut s| {
            for a in globals
                .iter()
                .filter(|a| flags.contains(&a.get_id().as_str()))
            {
                s = s.arg(a.clone().global(false).hide(true));
            }
            s
        });
    }
    cmd
}

/// Parses the command line; a client-only flag given to a server command is a usage error.
fn parse() -> Cli {
    let mut cmd = command();
    let matches = cmd.clone().get_matches();
    if let Some((sub, m)) = matches.subcommand()
        && let Some((_, flags)) = CLIENT_ONLY.iter().find(|(s, _)| *s == sub)
        && let Some(flag) = flags
            .iter()
            .find(|f| m.value_source(f) == Some(clap::parser::ValueSource::CommandLine))
    {
        let long = cmd
            .find_subcommand(sub)
            .and_then(|c| c.get_arguments().find(|a| a.get_id() == *flag))
            .and_then(clap::Arg::get_long)
            .unwrap_or(flag);
        cmd.error(
            clap::error::ErrorKind::ArgumentConflict,
            format!("--{long} is a client flag: `tether {sub}` does not read it"),
        )
        .exit();
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse();
    if let Command::Completion { shell } = cli.command {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command(), "tether", &mut out);
        client::write_out(format_args!("{}", String::from_utf8_lossy(&out)));
        return ExitCode::SUCCESS;
    }
    if let Command::Schema = cli.command {
        let schema = tether_controlplane::schema::declarative();
        match serde_json::to_string_pretty(&schema) {
            Ok(s) => client::write_out(format_args!("{s}\n")),
            Err(e) => {
                eprintln!("tether schema: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if let Command::Explain(args) = &cli.command
        && args.file.is_some()
    {
        let stdout = std::io::stdout();
        return match explain::run(args, &mut stdout.lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tether explain: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    match &cli.command {
        Command::Up(a) => process::init_log(a.log),
        Command::Controlplane(a) => process::init_log(a.log),
        Command::Dataplane(a) => process::init_log(a.log),
        _ => {}
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let conn = cli.conn;
    let server = conn.server().to_owned();
    let result = rt.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args, conn.insecure).await,
            Command::Controlplane(args) => cluster::controlplane(args, conn.insecure).await,
            Command::Dataplane(args) => cluster::dataplane(args, &conn).await,
            Command::Explain(args) => client::explain(&conn, &args).await,
            Command::Backend { op } => client::resource::<v1::Backend>(&conn, op).await,
            Command::Probe { op } => client::resource::<v1::Probe>(&conn, op).await,
            Command::Director { op } => client::resource::<v1::Director>(&conn, op).await,
            Command::Route { op } => client::resource::<v1::Route>(&conn, op).await,
            Command::Certificate { op } => client::resource::<v1::Certificate>(&conn, op).await,
            Command::Discovery { op } => client::resource::<v1::Discovery>(&conn, op).await,
            Command::Health { op } => client::health(&conn, op).await,
            Command::Apply(args) => client::apply(&conn, args).await,
            Command::Watch(args) => client::watch(&conn, args).await,
            Command::Nodes => client::nodes(&conn).await,
            Command::Version(args) => client::version(&conn, args).await,
            Command::Export => client::export(&conn).await,
            Command::Echo(args) => echo::run(args).await,
            Command::Completion { .. } | Command::Schema => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether: {e:#}");
            if let Some(h) = client::hint(&e, &server) {
                eprintln!("  ({h})");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}
