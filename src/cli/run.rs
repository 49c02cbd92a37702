//! `run`: the operator.

use std::{sync::Arc, time::Duration};

use clap::{Args, ValueEnum};

use super::policy::PolicyArgs;
use crate::settings::Settings;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Let DBQRs use connection Secrets in other namespaces.
    #[arg(long, env = "DBQO_ALLOW_CROSS_NAMESPACE_SECRETS")]
    pub allow_cross_namespace_secrets: bool,
    /// Only watch DBQRs in this namespace (default: all namespaces).
    #[arg(long, env = "DBQO_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Only handle DBQRs matching this label selector (to run several operators as shards).
    #[arg(long, env = "DBQO_LABEL_SELECTOR")]
    pub label_selector: Option<String>,
    /// Concurrent requests to the API server.
    #[arg(long, env = "DBQO_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Timeout of each API request, in seconds.
    #[arg(long, env = "DBQO_API_TIMEOUT_SECONDS", default_value_t = 30)]
    pub api_timeout_seconds: u64,
    /// Log format.
    #[arg(long, env = "DBQO_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl RunArgs {
    pub fn settings(&self) -> Result<Settings, String> {
        Ok(Settings {
            policy: Arc::new(self.policy.policy()?),
            allow_cross_namespace_secrets: self.allow_cross_namespace_secrets,
            watch_namespace: self.watch_namespace.clone(),
            label_selector: self.label_selector.clone(),
            concurrency: self.concurrency.max(1),
            api_timeout: Duration::from_secs(self.api_timeout_seconds.max(1)),
            mailbox: 1024,
        })
    }
}

/// Runs the operator until a signal stops it.
pub fn run(args: RunArgs) -> i32 {
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let outcome = crate::actors::run_system(settings, Duration::from_secs(10));
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
