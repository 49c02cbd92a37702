//! The `dbqo.dev/v1alpha1` API: `DatabaseQueryResource` here, `DatabaseServer`
//! and `Database` in [`server`] and [`database`]; specs, statuses and their
//! validation. The CRD YAML under `chart/crds` is generated from these types.

pub mod backup;
pub mod database;
mod duration;
pub mod names;
pub mod server;
mod validate;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use duration::{Duration, DurationError};
pub use validate::SpecError;

/// API group of every type this operator defines.
pub const GROUP: &str = "dbqo.dev";
/// Finalizer the operator places on every DBQR.
pub const FINALIZER: &str = "dbqo.dev/finalizer";
/// A new value of this DBQR annotation asks for a full pass at once
/// (Flux's `reconcile.fluxcd.io/requestedAt` convention); the status echoes
/// it in `lastHandledRequestedAt` once that pass ended.
pub const REQUESTED_AT_ANNOTATION: &str = "dbqo.dev/requested-at";

/// Turns the rows of a SQL query into Kubernetes objects and keeps them in step.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dbqo.dev",
    version = "v1alpha1",
    kind = "DatabaseQueryResource",
    plural = "databasequeryresources",
    shortname = "dbqr",
    namespaced,
    doc = "A SQL query whose rows become Kubernetes objects, kept in step by db-query-operator.",
    status = "DatabaseQueryResourceStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Objects","type":"integer","jsonPath":".status.objectCount"}"#,
    printcolumn = r#"{"name":"Last Poll","type":"date","jsonPath":".status.lastPollTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseQueryResourceSpec {
    /// Stop reconciling: no query, apply, prune, drift repair, status write-back or LISTEN until
    /// set back to false (which runs a pass at once). The objects stay as they are.
    #[serde(default)]
    pub suspend: bool,
    /// Interval of the full reconcile (query, render, apply, prune), e.g. `30s`, `5m`, `1h`. At least 1s.
    pub poll_interval: Duration,
    /// Delete objects whose rows are gone.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub prune: bool,
    /// Holds large deletions until a later pass confirms them (a table reloaded with TRUNCATE
    /// then INSERT, a lagging replica or row-level security can make a query return too little).
    #[serde(default)]
    pub prune_guard: PruneGuardSpec,
    /// The ServiceAccount of this namespace whose rights every read, apply, prune and delete of
    /// this DBQR's objects, and the read of its connection Secret, are made with (Kubernetes
    /// impersonation). Unset: the operator's `--default-service-account`, or its own rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Where the rows come from.
    pub database: ConnectionSpec,
    /// SQL returning one row per object (or group of objects). Several statements may be given
    /// (`SET ...; SELECT ...`): all but the last are setup, the last returns the rows.
    #[schemars(length(min = 1))]
    pub query: String,
    /// Run the query in a READ ONLY transaction (default). Set to false for queries that must write.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub read_only: bool,
    /// A result with more rows than this is an error: nothing is applied and nothing is pruned.
    #[serde(default = "default_max_rows")]
    #[schemars(default = "default_max_rows", range(min = 1, max = 1_000_000))]
    pub max_rows: u32,
    /// A row larger than this many bytes (as the database sends it) fails alone; the other rows go on.
    #[serde(default = "default_max_row_bytes")]
    #[schemars(default = "default_max_row_bytes", range(min = 1024, max = 67_108_864))]
    pub max_row_bytes: u64,
    /// A result larger than this many bytes in all is an error: nothing is applied and nothing is pruned.
    #[serde(default = "default_max_result_bytes")]
    #[schemars(default = "default_max_result_bytes", range(min = 1024, max = 1_073_741_824))]
    pub max_result_bytes: u64,
    /// Handlebars template rendered once per row into zero, one or several YAML documents.
    /// Context: `Row` (the row's columns) and `Metadata` (`Name`, `Namespace`, `Labels`, `Annotations`, `Uid` of this DBQR).
    #[schemars(length(min = 1))]
    pub template: String,
    /// Handlebars SQL run when a generated object's status changes. Every `{{expr}}` becomes a bound parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_update_query_template: Option<String>,
    /// How changes in the database are noticed between full polls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_detection: Option<ChangeDetectionSpec>,
    /// What happens to the generated objects when this DBQR is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// When a pass's deletions are held back.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneGuardSpec {
    /// A pass that would delete all of this DBQR's objects, or more than this percentage of them,
    /// holds those deletions (condition `PruneHeld`, an Event).
    #[serde(default = "default_max_prune_percent")]
    #[schemars(default = "default_max_prune_percent", range(min = 0, max = 100))]
    pub max_prune_percent: u32,
    /// Held deletions are carried out by a full pass at least this long after they were first
    /// held, if the rows still do not produce those objects. `0s` prunes at once (no guard).
    /// The annotation `dbqo.dev/release-prune` releases a held prune at once.
    #[serde(default = "default_confirmation_interval")]
    #[schemars(default = "default_confirmation_interval")]
    pub confirmation_interval: Duration,
}

impl Default for PruneGuardSpec {
    fn default() -> Self {
        Self {
            max_prune_percent: default_max_prune_percent(),
            confirmation_interval: default_confirmation_interval(),
        }
    }
}

/// Connection to the database the query runs against.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSpec {
    /// Database engine.
    #[serde(default, rename = "type")]
    pub kind: DatabaseType,
    /// Secret holding the connection parameters.
    pub connection_secret_ref: ConnectionSecretRef,
    /// Connection pool settings.
    #[serde(default)]
    pub pool: PoolSpec,
    /// Applied to every statement the operator runs against this database.
    #[serde(default = "default_statement_timeout")]
    #[schemars(default = "default_statement_timeout")]
    pub statement_timeout: Duration,
}

/// Database engines. Only PostgreSQL is implemented; the enum leaves room for more.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseType {
    #[default]
    Postgres,
}

/// Where in a Secret the connection parameters live.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Secret namespace; defaults to the DBQR's. Other namespaces only when the operator allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Key holding a full libpq URI (`postgresql://user:pass@host:5432/db?sslmode=require`). Wins over the individual keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_key: Option<String>,
    /// Key of the host (default `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// Key of the port (default `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_key: Option<String>,
    /// Key of the user name (default `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_key: Option<String>,
    /// Key of the password (default `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_key: Option<String>,
    /// Key of the database name (default `dbname`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_name_key: Option<String>,
    /// Key of the sslmode (default `sslmode`; `prefer` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode_key: Option<String>,
    /// Key of a PEM CA bundle used to verify the server (sslrootcert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_key: Option<String>,
}

/// Connection pool settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Upper bound of open connections for this DBQR.
    #[serde(default = "default_max_connections")]
    #[schemars(default = "default_max_connections", range(min = 1, max = 100))]
    pub max_connections: u32,
    /// Time allowed to establish one connection.
    #[serde(default = "default_connect_timeout")]
    #[schemars(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            connect_timeout: default_connect_timeout(),
        }
    }
}

/// Notices changes between full polls.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeDetectionSpec {
    /// Turn change detection on.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub enabled: bool,
    /// `timestamp` probes `max(timestampColumn)` of `tableName`; `notify` LISTENs on `channel`.
    #[serde(default)]
    pub mode: ChangeDetectionMode,
    /// Table to probe in `timestamp` mode; may be schema-qualified (`app.users`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_name: Option<String>,
    /// Column bumped on every change, in `timestamp` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_column: Option<String>,
    /// How often the `timestamp` probe runs.
    #[serde(default = "default_change_poll_interval")]
    #[schemars(default = "default_change_poll_interval")]
    pub change_poll_interval: Duration,
    /// Channel to LISTEN on, in `notify` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A column of the query's result that identifies a row, in `notify` mode. A notification
    /// whose payload is a JSON array of keys (`db-query-operator trigger-sql --key-column`)
    /// then runs a key-scoped pass: the query restricted to those keys (`<column>::text`),
    /// only their rows rendered, applied and pruned. An empty or other payload, a reconnect
    /// and `pollInterval` still run a full pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_column: Option<String>,
}

/// Change-detection strategies.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeDetectionMode {
    #[default]
    Timestamp,
    Notify,
}

/// What deleting the DBQR does to the objects it generated.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete every generated object, in any namespace.
    #[default]
    Delete,
    /// Leave them in place, detached from this DBQR.
    Orphan,
}

/// Observed state of a DBQR.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseQueryResourceStatus {
    /// `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `DatabaseConnected` and `Synced`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When a successful pass last changed this status (a converged DBQR's
    /// passes write nothing, so this is not refreshed by every poll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll_time: Option<Time>,
    /// Reserved: not written, since a time per change probe would cost a status
    /// write per probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_check_time: Option<Time>,
    /// Objects produced by the last successful pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_count: Option<i64>,
    /// Kinds this DBQR has written (`group/version/Kind`): the prune inventory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_kinds: Vec<String>,
    /// Rows whose later waves (`dbqo.dev/wave`) wait for an earlier wave to be Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_rows: Option<i64>,
    /// The value of the `dbqo.dev/requested-at` annotation the last pass started under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_requested_at: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_max_prune_percent() -> u32 {
    50
}

fn default_confirmation_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_max_rows() -> u32 {
    10_000
}

fn default_max_row_bytes() -> u64 {
    1 << 20
}

fn default_max_result_bytes() -> u64 {
    64 << 20
}

fn default_max_connections() -> u32 {
    2
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_statement_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_change_poll_interval() -> Duration {
    Duration::from_secs(10)
}
