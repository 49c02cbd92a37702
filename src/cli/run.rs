//! `run`: the operator's settings. The actor system that runs it lives in the
//! `db-query-operator` package (actors/).

use std::{sync::Arc, time::Duration};

use clap::{Args, ValueEnum};

use super::policy::PolicyArgs;
use crate::settings::{bind_address, ConfigError, LeaderElection, Operations, Settings};

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
    /// The ServiceAccount, in each DBQR's own namespace, that DBQRs without
    /// spec.serviceAccountName act as (Kubernetes impersonation): the
    /// lock-down for clusters shared by several teams. Unset: such DBQRs use
    /// the operator's own rights.
    #[arg(long, env = "DBQO_DEFAULT_SERVICE_ACCOUNT")]
    pub default_service_account: Option<String>,
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
    /// Where /metrics is served (`:8080`, `127.0.0.1:8080`; `0` turns it off).
    #[arg(long, env = "DBQO_METRICS_BIND_ADDRESS", default_value = ":8080")]
    pub metrics_bind_address: String,
    /// Where /healthz and /readyz are served (`0` turns them off).
    #[arg(long, env = "DBQO_HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081")]
    pub health_probe_bind_address: String,
    /// Run only while holding a Lease, so that of several replicas one writes.
    #[arg(long, env = "DBQO_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the Lease (default: the pod's namespace, or `default` outside a cluster).
    #[arg(long, env = "DBQO_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the Lease (default `db-query-operator`; with --label-selector,
    /// `db-query-operator-<12 hex digits of the selector's SHA-256>`, so each
    /// shard elects its own leader).
    #[arg(long, env = "DBQO_LEADER_ELECTION_ID")]
    pub leader_election_id: Option<String>,
    /// Seconds a lease is good for without renewal.
    #[arg(long, env = "DBQO_LEADER_ELECTION_LEASE_DURATION", default_value_t = 15)]
    pub leader_election_lease_duration: u64,
    /// Seconds a leader keeps trying to renew before it stops.
    #[arg(long, env = "DBQO_LEADER_ELECTION_RENEW_DEADLINE", default_value_t = 10)]
    pub leader_election_renew_deadline: u64,
    /// Seconds between tries to acquire or renew the lease.
    #[arg(long, env = "DBQO_LEADER_ELECTION_RETRY_PERIOD", default_value_t = 2)]
    pub leader_election_retry_period: u64,
    /// The image backup and restore Jobs run: the engines' client tools and
    /// this binary (`hack/image.sh backup` builds it).
    #[arg(long, env = "DBQO_BACKUP_IMAGE", default_value = concat!("ghcr.io/dbqo/db-query-operator-backup:", env!("CARGO_PKG_VERSION")))]
    pub backup_image: String,
    /// Seconds a Database's scheduled backups are apart at least, whatever
    /// its schedule says (each one is a Job on the platform's nodes).
    #[arg(long, env = "DBQO_MIN_BACKUP_INTERVAL_SECONDS", default_value_t = 300)]
    pub min_backup_interval_seconds: u64,
}

/// The Lease of a shard: one per label selector, so shards never wait for
/// each other's leader.
pub fn default_lease_name(label_selector: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    match label_selector {
        None => "db-query-operator".to_owned(),
        Some(selector) => {
            let digest = Sha256::digest(selector.as_bytes());
            let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
            format!("db-query-operator-{hex}")
        }
    }
}

/// Where a pod finds its own namespace.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl RunArgs {
    /// The process-level settings: HTTP endpoints and leader election.
    pub fn operations(&self) -> Result<Operations, ConfigError> {
        let leader_election = self.leader_elect.then(|| self.leader_election()).transpose()?;
        Ok(Operations {
            metrics: bind_address("metrics-bind-address", &self.metrics_bind_address)?,
            health: bind_address("health-probe-bind-address", &self.health_probe_bind_address)?,
            leader_election,
        })
    }

    fn leader_election(&self) -> Result<LeaderElection, ConfigError> {
        let lease = Duration::from_secs(self.leader_election_lease_duration);
        let renew = Duration::from_secs(self.leader_election_renew_deadline);
        let retry = Duration::from_secs(self.leader_election_retry_period);
        if renew >= lease || retry >= renew || retry.is_zero() {
            return Err(ConfigError::LeaseTimings { lease, renew });
        }
        let namespace = self.leader_election_namespace.clone().unwrap_or_else(|| {
            std::fs::read_to_string(POD_NAMESPACE_FILE)
                .map(|ns| ns.trim().to_owned())
                .ok()
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| "default".to_owned())
        });
        // The pod name in a cluster (HOSTNAME), and the process id, so two
        // replicas on one host never share an identity.
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "db-query-operator".to_owned());
        Ok(LeaderElection {
            namespace,
            name: self.leader_election_id.clone().unwrap_or_else(|| {
                default_lease_name(self.label_selector.as_deref().filter(|s| !s.is_empty()))
            }),
            identity: format!("{host}_{}", std::process::id()),
            lease_duration: lease,
            renew_deadline: renew,
            retry_period: retry,
        })
    }

    pub fn settings(&self) -> Result<Settings, ConfigError> {
        Ok(Settings {
            policy: Arc::new(self.policy.policy()?),
            allow_cross_namespace_secrets: self.allow_cross_namespace_secrets,
            default_service_account: self.default_service_account.clone(),
            watch_namespace: self.watch_namespace.clone(),
            label_selector: self.label_selector.clone(),
            concurrency: self.concurrency.max(1),
            api_timeout: Duration::from_secs(self.api_timeout_seconds.max(1)),
            writer_queue: 1024,
            drain: Duration::from_secs(self.shutdown_timeout_seconds),
            connections_per_server: self.max_connections_per_database as usize,
            backups: crate::backup::database::BackupSettings {
                image: self.backup_image.clone(),
                min_interval: Duration::from_secs(self.min_backup_interval_seconds.max(1)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::default_lease_name;

    #[test]
    fn each_shard_has_a_lease_of_its_own() {
        assert_eq!(default_lease_name(None), "db-query-operator");
        let a = default_lease_name(Some("shard=a"));
        let b = default_lease_name(Some("shard=b"));
        assert_ne!(a, b);
        assert_eq!(a, default_lease_name(Some("shard=a")), "stable across restarts");
        assert!(a.starts_with("db-query-operator-") && a.len() == "db-query-operator-".len() + 12);
    }
}
