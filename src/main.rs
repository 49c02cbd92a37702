#![forbid(unsafe_code)]

use clap::Parser;
use dbqo::cli::{self, Cli};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    std::process::exit(cli::run(cli).await);
}
