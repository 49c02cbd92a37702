//! Backups of teams' databases (seed 002's model): where a server's dumps
//! go (`DatabaseServer.spec.backupStorage`), when a `Database` is dumped
//! (`spec.backup`), what it is restored from (`spec.restoreFrom`), and the
//! `DatabaseBackup`, one dump.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// S3-compatible object storage a server's dumps are written to. The
/// credentials Secret lives in the server's namespace; teams never see it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorage {
    /// The S3 endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or a MinIO URL.
    /// Default: AWS S3 of `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: Option<String>,
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Prefix of every key, e.g. `backups/`. Dumps go under
    /// `<prefix><namespace>/<database>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    #[serde(default = "default_region")]
    #[schemars(default = "default_region", length(min = 1, max = 64))]
    pub region: String,
    /// Secret (in the server's namespace) with `accessKeyId` and `secretAccessKey`.
    pub credentials_secret_ref: StorageSecretRef,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// The storage credentials' Secret and its keys.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Default `accessKeyId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_key: Option<String>,
    /// Default `secretAccessKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_key: Option<String>,
}

/// Scheduled dumps of a `Database`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSchedule {
    /// Cron syntax, five fields, UTC: `0 3 * * *` is every day at 03:00.
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// Completed scheduled backups kept (older ones are deleted with their dumps).
    #[serde(default = "default_retention")]
    #[schemars(default = "default_retention", range(min = 1, max = 1000))]
    pub retention: u32,
}

fn default_retention() -> u32 {
    7
}

/// What a new database is restored from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreFrom {
    /// A `Completed` `DatabaseBackup` in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub backup: String,
}

/// One logical dump of a `Database`, written to its server's backup storage.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dbqo.dev",
    version = "v1alpha1",
    kind = "DatabaseBackup",
    plural = "databasebackups",
    shortname = "dbbackup",
    namespaced,
    doc = "One logical dump of a Database to its server's object storage (db-query-operator).",
    status = "DatabaseBackupStatus",
    printcolumn = r#"{"name":"Database","type":"string","jsonPath":".spec.databaseRef.name"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".status.sizeBytes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBackupSpec {
    /// The `Database` (in this namespace) to dump.
    pub database_ref: DatabaseRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct DatabaseRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where a backup stands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    Starting,
    BackingUp,
    Completed,
    Failed,
}

impl BackupPhase {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// Observed state of a `DatabaseBackup`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseBackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "backup_phase_schema")]
    pub phase: Option<BackupPhase>,
    /// `s3://bucket/key` of the dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The database dumped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    /// The Job that writes the dump (in the server's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// `Ready` (the dump is complete) with a stable reason when it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn backup_phase_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Starting", "BackingUp", "Completed", "Failed"],
    })
}
