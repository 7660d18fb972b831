//! The `lavic` binary: `serve` (the gRPC server), `healthcheck` (exit 0 iff SERVING),
//! `recommend` (a client to try it), `catalog ...` (build and manage item catalogs), `eval`
//! (HR@1 / VR of a model, or of a baseline, on a Reddit-Amazon conversation file), `prompt`
//! (the exact prompts), `train base|distill|recommend` (the demo's stage 0 and LaViC's two
//! training stages), `demo-world` (the demo world of a seed) and `dev ...` (real-size random
//! checkpoints and probes).

mod baseline;
mod dataset;
mod demo_cmd;
mod describe;
mod dev;
mod eval;
mod eval_metrics;
mod progress;
mod prompt_cmd;
mod train_attributes;
mod train_base;
mod train_cmd;
mod train_data;
mod train_loop;

use clap::{Parser, Subcommand};
use lavic_server::client::{HealthcheckArgs, RecommendArgs};
use lavic_server::config::{unknown_env_vars, LogFormat};
use lavic_server::{Config, Hooks, Listeners, ServeArgs};
use tracing_subscriber::EnvFilter;

/// Keeps freed memory in the process. A training step (and a CPU forward) frees and
/// re-allocates the same tensor buffers of up to tens of MB in every layer; glibc's malloc
/// serves each one over its mmap threshold with a fresh `mmap` and returns it with `munmap`, so
/// every layer page-faults its buffers in again and shoots down TLBs on every core: about a
/// fifth of a CPU training step on our 2-core VM in perf; the stage-2 step went from 4.77 to
/// 3.70 s (median, docs/PERFORMANCE.md "Allocator"). Raising the mmap threshold
/// to its maximum (32 MiB) and the trim threshold to 1 GiB makes malloc reuse them. The process
/// keeps its peak footprint, which it reaches again on the next step or request anyway.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes glibc's allocator parameters; it is called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// LaViC visually-aware conversational recommendation over gRPC.
#[derive(Debug, Parser)]
#[command(name = "lavic", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server (with no configuration: the embedded demo model and catalog).
    Serve(Box<ServeArgs>),
    /// Check a server's grpc.health.v1 status; exit 0 iff SERVING.
    Healthcheck(HealthcheckArgs),
    /// Ask a running server for a recommendation.
    Recommend(RecommendArgs),
    /// Build, verify and inspect item catalogs.
    Catalog {
        /// What to do.
        #[command(subcommand)]
        command: lavic_catalog::cli::CatalogCommand,
    },
    /// Evaluate a model (or a baseline: --baseline random|title-similarity) on a Reddit-Amazon
    /// conversation file: HR@1 (per ground-truth pair, as the reference, and per conversation),
    /// VR, candidate recall, prompt tokens, latency.
    Eval(Box<eval::EvalCommand>),
    /// Print the exact recommendation prompt of each conversation as JSON lines.
    Prompt(prompt_cmd::PromptArgs),
    /// Write the demo world of a seed: items with procedurally drawn images, and train / valid /
    /// test conversations in the Reddit-Amazon format.
    DemoWorld(demo_cmd::DemoWorldArgs),
    /// Train: `base` (the demo's stage 0, every parameter), then LaViC's two LoRA stages,
    /// `distill` (stage 1) and `recommend` (stage 2).
    Train {
        /// Which stage.
        #[command(subcommand)]
        command: train_cmd::TrainCommand,
    },
    /// Developer tools: real-size random checkpoints, load/latency probes, synthetic catalogs.
    Dev {
        /// What to do.
        #[command(subcommand)]
        command: dev::DevCommand,
    },
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = match Config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            init_logging(LogFormat::Text, "info");
            return Err(e.into());
        }
    };
    if args.print_config {
        print!("{}", config.to_toml_redacted());
        return Ok(());
    }
    init_logging(config.log_format, &config.log);
    for name in unknown_env_vars(std::env::vars()) {
        tracing::warn!(variable = %name, "unknown LAVIC_* environment variable ignored");
    }
    tracing::info!(?config, "configuration");
    let shutdown = lavic_server::shutdown_signal();
    let listeners = Listeners::bind(&config).await?;
    lavic_server::serve(listeners, config, Hooks::default(), shutdown).await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lavic: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(&args)),
        Command::Healthcheck(args) => match runtime.block_on(lavic_server::client::healthcheck(&args)) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Recommend(args) => runtime.block_on(lavic_server::client::recommend(&args)),
        Command::Catalog { command } => {
            init_logging(LogFormat::Text, &std::env::var("LAVIC_LOG").unwrap_or_else(|_| "info".into()));
            lavic_catalog::cli::run(command)
        }
        Command::Eval(args) => {
            init_logging(LogFormat::Text, &std::env::var("LAVIC_LOG").unwrap_or_else(|_| "warn".into()));
            eval::run(&args).map(|_| ())
        }
        Command::Prompt(args) => prompt_cmd::run(&args),
        Command::DemoWorld(args) => demo_cmd::run(&args),
        Command::Train { command } => train_cmd::run(command),
        Command::Dev { command } => {
            init_logging(LogFormat::Text, &std::env::var("LAVIC_LOG").unwrap_or_else(|_| "warn".into()));
            dev::run(command)
        }
    };
    // Never wait on blocking tasks still running at exit (a drain bounded by the grace period
    // has already left them behind): dropping the runtime would.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lavic: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
