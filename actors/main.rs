#![forbid(unsafe_code)]

use clap::Parser;
use dbqo::cli::{self, Cli, Command, LogFormat};

/// jemalloc returns what a pass frees to the system (its background thread
/// purges unused pages); glibc's malloc kept the freed memory of a pass over
/// thousands of rows fragmented in its heap (BENCHMARKS.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match &cli.command {
        Command::Run(args) if matches!(args.log_format, LogFormat::Json) => builder.json().init(),
        _ => builder.init(),
    }
    std::process::exit(cli::run(cli, dbqo_actors::run));
}
