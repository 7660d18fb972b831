//! Stand-alone `lavic-catalog` binary: the same commands as `lavic catalog ...` (used by tests
//! that need a child process, e.g. killing a build mid-way).

use std::process::ExitCode;

use clap::Parser;
use lavic_catalog::cli::{run, CatalogCommand};

/// Build, inspect, verify and merge lavic catalogs.
#[derive(Parser)]
#[command(name = "lavic-catalog", version)]
struct Cli {
    #[command(subcommand)]
    cmd: CatalogCommand,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAVIC_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
