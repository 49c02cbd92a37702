//! Operator-wide settings the reconcile code needs (the `run` flags, parsed).

use std::{sync::Arc, time::Duration};

use crate::db::{ConnectionBudget, Listeners};
use crate::render::{InvalidGvk, ObjectPolicy};

/// Settings the operator refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--allowed-kinds: {0}")]
    AllowedKind(#[from] InvalidGvk),
}

impl ConfigError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::AllowedKind(_) => "InvalidAllowedKind",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Arc<ObjectPolicy>,
    pub allow_cross_namespace_secrets: bool,
    /// Namespace to watch for DBQRs; `None` for all.
    pub watch_namespace: Option<String>,
    /// Label selector on DBQRs (sharding several operators).
    pub label_selector: Option<String>,
    /// Concurrent API calls of the writer.
    pub concurrency: usize,
    /// Timeout of each API call.
    pub api_timeout: Duration,
    /// Requests the writer queues before producers wait.
    pub mailbox: usize,
    /// How long in-flight API calls may take to finish after SIGTERM.
    pub drain: Duration,
    /// Connections per database server (host, port, database, user), shared by every DBQR.
    pub budget: ConnectionBudget,
    /// The shared LISTEN connections, one per connection identity.
    pub listeners: Listeners,
}
