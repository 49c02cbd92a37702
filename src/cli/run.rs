//! `run`: the operator's settings. The actor system that runs it lives in the
//! `db-query-operator` package (actors/).

use std::{sync::Arc, time::Duration};

use clap::{Args, ValueEnum};

use super::policy::PolicyArgs;
use crate::settings::{ConfigError, Settings};

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
    /// Connections the operator opens to one database server (host, port,
    /// database, user) at most, across every DBQR, pass, probe, status
    /// write-back and LISTEN connection.
    #[arg(long, env = "DBQO_MAX_CONNECTIONS_PER_DATABASE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_database: u32,
    /// Seconds in-flight API calls may take to finish after SIGTERM before the process exits.
    #[arg(long, env = "DBQO_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 10)]
    pub shutdown_timeout_seconds: u64,
    /// Log format.
    #[arg(long, env = "DBQO_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl RunArgs {
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        Ok(Settings {
            policy: Arc::new(self.policy.policy()?),
            allow_cross_namespace_secrets: self.allow_cross_namespace_secrets,
            watch_namespace: self.watch_namespace.clone(),
            label_selector: self.label_selector.clone(),
            concurrency: self.concurrency.max(1),
            api_timeout: Duration::from_secs(self.api_timeout_seconds.max(1)),
            mailbox: 1024,
            drain: Duration::from_secs(self.shutdown_timeout_seconds),
            budget: crate::db::ConnectionBudget::new(self.max_connections_per_database as usize),
            listeners: crate::db::Listeners::default(),
        })
    }
}
