//! `DatabaseServer`: a database server the platform team lends to
//! application teams, and the rules for what they may ask of it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ConnectionSecretRef;

/// A database server on which application teams get their own databases.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dbqo.dev",
    version = "v1alpha1",
    kind = "DatabaseServer",
    plural = "databaseservers",
    shortname = "dbserver",
    namespaced,
    doc = "A database server on which application teams get databases of their own (db-query-operator).",
    status = "DatabaseServerStatus",
    printcolumn = r#"{"name":"Engine","type":"string","jsonPath":".spec.engine"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.serverVersion"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseServerSpec {
    /// The server's engine.
    pub engine: Engine,
    /// Secret with the admin connection (same keys and TLS settings as a DBQR's
    /// `database.connectionSecretRef`). PostgreSQL: a role with CREATEDB and CREATEROLE;
    /// MySQL/MariaDB: a user with CREATE USER and GRANT OPTION.
    pub connection_secret_ref: ConnectionSecretRef,
    /// Namespaces whose `Database`s may use this server; `*` allows every namespace.
    /// Empty (the default): only this server's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
    /// Host and port written into the credentials Secrets, when applications reach the
    /// server under another address than the operator does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_endpoint: Option<ClientEndpoint>,
    /// Generated passwords.
    #[serde(default)]
    pub password_policy: PasswordPolicy,
    /// Named privilege sets a `Database` may ask for by name, e.g.
    /// `readonly: [SELECT]`, `readwrite: [SELECT, INSERT, UPDATE, DELETE]`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub privilege_presets: std::collections::BTreeMap<String, Vec<String>>,
    /// Privileges of a `Database` that names none: a list or a preset's name.
    #[serde(default = "default_privileges")]
    #[schemars(default = "default_privileges")]
    pub default_privileges: Vec<String>,
    /// Privileges a `Database` may ask for (`ALL` or a list). Empty: every privilege the
    /// engine knows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_privileges: Vec<String>,
    /// PostgreSQL extensions a `Database` may ask for. Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_extensions: Vec<String>,
    /// Whether a `Database` with `deletionPolicy: Delete` may drop its database and user.
    #[serde(default)]
    pub allow_delete: bool,
    /// Where dumps of this server's databases go (`DatabaseBackup`, `Database.spec.backup`).
    /// Unset: backups are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_storage: Option<super::backup::BackupStorage>,
}

/// Engines a `DatabaseServer` can be.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    Mysql,
    Mariadb,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Mariadb => "mariadb",
        }
    }

    /// MySQL and MariaDB speak the same protocol and SQL for what is done here.
    pub fn is_mysql_family(self) -> bool {
        matches!(self, Self::Mysql | Self::Mariadb)
    }
}

/// Where applications reach the server.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientEndpoint {
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

/// How passwords are generated (from the operating system's CSPRNG).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordPolicy {
    /// Characters in a password.
    #[serde(default = "default_password_length")]
    #[schemars(default = "default_password_length", range(min = 12, max = 128))]
    pub length: u32,
    /// Characters a password is drawn from (at least 10 distinct, printable ASCII).
    /// Default: letters and digits.
    #[serde(default = "default_alphabet")]
    #[schemars(default = "default_alphabet")]
    pub alphabet: String,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { length: default_password_length(), alphabet: default_alphabet() }
    }
}

fn default_privileges() -> Vec<String> {
    vec!["ALL".into()]
}

fn default_password_length() -> u32 {
    32
}

fn default_alphabet() -> String {
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".into()
}

/// Observed state of a `DatabaseServer`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseServerStatus {
    /// `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Whether the operator could connect with the admin Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<bool>,
    /// The server's version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Rights the admin lacks (e.g. `CREATEROLE`, `GRANT OPTION`); empty when it has them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_rights: Vec<String>,
    /// `Ready`: reachable and the admin has every right it needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
