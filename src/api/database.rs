//! `Database`: a database, its user and a credentials Secret, asked for by
//! an application team on a `DatabaseServer`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A database with its own user on a `DatabaseServer`, and a Secret to connect with.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dbqo.dev",
    version = "v1alpha1",
    kind = "Database",
    plural = "databases",
    shortname = "db",
    namespaced,
    doc = "A database with its own user on a DatabaseServer, and a Secret to connect with (db-query-operator).",
    status = "DatabaseStatus",
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.serverRef.name"}"#,
    printcolumn = r#"{"name":"Database","type":"string","jsonPath":".status.databaseName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// The `DatabaseServer` to create the database on.
    pub server_ref: ServerRef,
    /// Name of the database: `^[a-z][a-z0-9_]*$`, at most 63 characters. Default:
    /// `metadata.name` with `-` replaced by `_`. Cannot be changed once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub database_name: Option<String>,
    /// The database's user, same rules (MySQL: at most 32 characters). Default: the
    /// database name. Cannot be changed once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub username: Option<String>,
    /// Privileges of the user on the database: `ALL`, a list such as `SELECT`, `INSERT`,
    /// `UPDATE`, `DELETE`, or the name of one of the server's `privilegePresets`.
    /// Default: the server's `defaultPrivileges` (`ALL` unless it says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileges: Option<Vec<String>>,
    /// PostgreSQL extensions to create in the database (only those the server allows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    /// PostgreSQL: encoding at creation (e.g. `UTF8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// PostgreSQL: locale at creation (e.g. `C`, `en_US.UTF-8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Character set at creation: MySQL/MariaDB (default `utf8mb4`); on PostgreSQL
    /// another name for `encoding` (seed 004's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charset: Option<String>,
    /// Collation at creation: MySQL/MariaDB; on PostgreSQL its `LC_COLLATE` (e.g.
    /// `de_DE.UTF-8`), not together with `locale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation: Option<String>,
    /// Name of the Secret with `host`, `port`, `dbname`, `username`, `password`, `sslmode`
    /// and `uri`. Default: `<name>-credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
    /// Keys added to the credentials Secret, each a Handlebars template over `host`,
    /// `hostname`, `port`, `dbname`, `username`, `password`, `sslmode` and `uri`, e.g.
    /// `DATABASE_URL: "{{uri}}"` or `DB_HOST: "{{host}}"`. At most 32 keys of at most
    /// 4 KiB each; the keys the operator writes itself cannot be replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials_secret_template: BTreeMap<String, String>,
    /// The database is owned by its user (PostgreSQL: its `OWNER`; MySQL/MariaDB: every
    /// privilege on it, with GRANT OPTION). `privileges` must then be `ALL` or unset.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner: bool,
    /// Scheduled dumps to the server's `backupStorage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<super::backup::BackupSchedule>,
    /// Fill the new database from a backup (only when this `Database` creates it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<super::backup::RestoreFrom>,
    /// What deleting this resource does: `Retain` (default) keeps the database, the user
    /// and the Secret; `Delete` drops database and user (only if the server allows it);
    /// `BackupThenDelete` dumps it first and drops it only once the dump is complete.
    #[serde(default)]
    pub deletion_policy: DatabaseDeletionPolicy,
}

/// Which `DatabaseServer`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Default: the `Database`'s namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What deleting a `Database` does on the server.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DatabaseDeletionPolicy {
    /// Keep the database, the user and the credentials Secret.
    #[default]
    Retain,
    /// Drop the database and the user (if the server's `allowDelete` is true).
    Delete,
    /// Dump the database to the server's backup storage, then drop it as `Delete` does.
    BackupThenDelete,
}

/// Where a `Database` stands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Creating,
    Ready,
    Error,
    Deleting,
}

/// Observed state of a `Database`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "phase_schema")]
    pub phase: Option<Phase>,
    /// The database name in use (the default resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    /// The user name in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The restore of `spec.restoreFrom` into the new database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
    /// When the last scheduled backup was due (it was created then or later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_backup: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The value of the `dbqo.dev/requested-at` annotation the last pass started under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_requested_at: Option<String>,
    /// `Ready`, with a stable reason when it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where the restore of a new database stands.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// The `DatabaseBackup` restored.
    pub backup: String,
    /// `Restoring`, `Restored` or `Failed`.
    pub phase: String,
    /// The restore Job (in the server's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// The phase as a plain string enum: an `Option` would add `null` to the
/// enum, which API servers before 1.21 refuse in a CRD.
fn phase_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Pending", "Creating", "Ready", "Error", "Deleting"],
    })
}
