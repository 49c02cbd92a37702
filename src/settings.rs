//! Operator-wide settings the reconcile code needs (the `run` flags, parsed).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::kube_api::InvalidGvk;
use crate::render::ObjectPolicy;

/// Settings the operator refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--allowed-kinds: {0}")]
    AllowedKind(#[from] InvalidGvk),
    #[error(
        "--{flag}: {value:?} is not an address (expected host:port, :port, or 0 to turn it off)"
    )]
    Address { flag: &'static str, value: String },
    #[error("--leader-election-renew-deadline ({renew:?}) must be shorter than --leader-election-lease-duration ({lease:?}), and the retry period shorter than both")]
    LeaseTimings { lease: Duration, renew: Duration },
}

/// How the operator runs as a process: its HTTP endpoints and leader
/// election. (The reconcile code never sees these.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operations {
    /// Where `/metrics` is served; `None` turns it off.
    pub metrics: Option<SocketAddr>,
    /// Where `/healthz` and `/readyz` are served; `None` turns them off.
    pub health: Option<SocketAddr>,
    /// `None`: this process is the only writer and needs no Lease.
    pub leader_election: Option<LeaderElection>,
}

/// A `coordination.k8s.io` Lease that lets one replica of several write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: String,
    /// Who this replica is (the pod name in a cluster).
    pub identity: String,
    /// How long a lease is good for without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long stops, before the lease
    /// can expire and another replica take over.
    pub renew_deadline: Duration,
    /// How often candidates try and the leader renews.
    pub retry_period: Duration,
}

/// `:8080` (every interface), `127.0.0.1:8080`, `[::1]:8080`, or `0` (off),
/// as controller-runtime reads its bind addresses.
pub fn bind_address(flag: &'static str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value == "0" {
        return Ok(None);
    }
    let full = match value.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => value.to_owned(),
    };
    full.parse().map(Some).map_err(|_| ConfigError::Address { flag, value: value.to_owned() })
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Arc<ObjectPolicy>,
    pub allow_cross_namespace_secrets: bool,
    /// The ServiceAccount (of each DBQR's own namespace) a DBQR without
    /// `serviceAccountName` acts as; `None`: the operator's own rights.
    pub default_service_account: Option<String>,
    /// Namespace to watch for DBQRs; `None` for all.
    pub watch_namespace: Option<String>,
    /// Label selector on DBQRs (sharding several operators).
    pub label_selector: Option<String>,
    /// Concurrent API calls of the writer.
    pub concurrency: usize,
    /// Timeout of each API call.
    pub api_timeout: Duration,
    /// API calls admitted to the writer at once (running or waiting for one
    /// of the `concurrency` slots); a further caller waits before its call
    /// is queued.
    pub writer_queue: usize,
    /// How long in-flight API calls may take to finish after SIGTERM.
    pub drain: Duration,
    /// Connections per database server (host, port, database, user), for
    /// the process's `db::Connections`.
    pub connections_per_server: usize,
    /// How backup and restore Jobs run.
    pub backups: crate::backup::database::BackupSettings,
}

impl Settings {
    /// The one namespace every object of every DBQR is in, when there is
    /// one: DBQRs of a single namespace (`--watch-namespace`) that may write
    /// only to their own. Then the operator watches managed objects in that
    /// namespace only, and a namespace-scoped install (Roles, no
    /// ClusterRoles) is enough.
    pub fn object_namespace(&self) -> Option<&str> {
        let own_only = self.policy.extra_namespaces.as_ref().is_some_and(|extra| extra.is_empty());
        self.watch_namespace.as_deref().filter(|_| own_only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_read_like_controller_runtime() {
        let addr = |v| bind_address("metrics-bind-address", v);
        assert_eq!(addr(":8080").unwrap(), Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(addr("127.0.0.1:0").unwrap(), Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(addr("[::1]:9090").unwrap(), Some("[::1]:9090".parse().unwrap()));
        assert_eq!(addr("0").unwrap(), None);
        let err = addr("localhost").unwrap_err();
        assert!(err.to_string().contains("--metrics-bind-address"), "{err}");
    }
}
