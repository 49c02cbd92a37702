//! What a `Database` asks of its server, resolved (defaults filled in) and
//! checked against the server's rules and the engine's grammar before any
//! SQL is written. Everything that reaches SQL text from a spec passes one
//! of these checks.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::database::{Database, DatabaseDeletionPolicy};
use crate::api::server::{DatabaseServer, Engine};

use super::password::{self, PolicyError};
use super::secret_template::{SecretTemplate, SecretTemplateError};

/// A `Database` the operator will not act on. Messages name fields and
/// values from the spec, never anything read from a server or a Secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("namespace {namespace} may not use DatabaseServer {server} (see its spec.allowedNamespaces)")]
    NamespaceNotAllowed { namespace: String, server: String },
    #[error("spec.{field} {value:?} is not valid: {rule}")]
    InvalidName { field: &'static str, value: String, rule: &'static str },
    #[error("privilege {0:?} is not a {1} database privilege")]
    UnknownPrivilege(String, &'static str),
    #[error("privilege {privilege} is not allowed by DatabaseServer {server}")]
    PrivilegeNotAllowed { privilege: String, server: String },
    #[error("extension {extension:?} is not allowed by DatabaseServer {server}")]
    ExtensionNotAllowed { extension: String, server: String },
    #[error("spec.{field} applies to {applies_to} only; this server is {engine}")]
    WrongEngine { field: &'static str, applies_to: &'static str, engine: &'static str },
    #[error("spec.{field} and spec.{alias} say the same on PostgreSQL; set one of them")]
    Both { field: &'static str, alias: &'static str },
    #[error("spec.privileges cannot be set with spec.owner: the owner of a database holds every privilege on it")]
    OwnerWithPrivileges,
    #[error(transparent)]
    SecretTemplate(#[from] SecretTemplateError),
    #[error(transparent)]
    Schedule(#[from] crate::backup::schedule::ScheduleError),
    #[error("spec.{field} needs backups, and DatabaseServer {server} has no spec.backupStorage")]
    NoBackupStorage { field: &'static str, server: String },
    #[error("DatabaseServer {server}: {source}")]
    Policy {
        server: String,
        #[source]
        source: PolicyError,
    },
}

impl RequestError {
    /// Stable reason, used as condition and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NamespaceNotAllowed { .. } => crate::reason::NAMESPACE_NOT_ALLOWED,
            Self::PrivilegeNotAllowed { .. } | Self::ExtensionNotAllowed { .. } => {
                crate::reason::NOT_ALLOWED
            }
            Self::Policy { .. } => crate::reason::SERVER_POLICY_INVALID,
            Self::NoBackupStorage { .. } => crate::reason::BACKUP_NOT_CONFIGURED,
            _ => crate::reason::INVALID_SPEC,
        }
    }
}

/// A `Database`, resolved against its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub engine: Engine,
    pub database: String,
    pub username: String,
    /// Sorted, upper case; `["ALL"]` for everything.
    pub privileges: Vec<String>,
    pub extensions: Vec<String>,
    pub options: CreateOptions,
    pub secret_name: String,
    /// Keys added to the credentials Secret (checked: they compile).
    pub secret_template: BTreeMap<String, String>,
    /// The database is owned by its user.
    pub owner: bool,
    pub deletion: DatabaseDeletionPolicy,
}

/// Settings used only when the database is created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    pub encoding: Option<String>,
    pub locale: Option<String>,
    pub charset: Option<String>,
    pub collation: Option<String>,
}

impl Request {
    /// The privileges as recorded on the server (what "unchanged" is compared with).
    pub fn privileges_text(&self) -> String {
        let list = self.privileges.join(",");
        if self.owner {
            format!("{list};OWNER")
        } else {
            list
        }
    }
}

const POSTGRES_PRIVILEGES: &[&str] = &[
    "ALL",
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
    "CREATE",
    "CONNECT",
    "TEMPORARY",
];

pub const MYSQL_PRIVILEGES: &[&str] = &[
    "ALL",
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "CREATE",
    "DROP",
    "ALTER",
    "INDEX",
    "REFERENCES",
    "CREATE VIEW",
    "SHOW VIEW",
    "TRIGGER",
    "EXECUTE",
    "CREATE ROUTINE",
    "ALTER ROUTINE",
    "EVENT",
    "LOCK TABLES",
    "CREATE TEMPORARY TABLES",
];

/// Whether `namespace` may use `server` (its own namespace always may).
pub fn namespace_allowed(server: &DatabaseServer, namespace: &str) -> bool {
    server.namespace().as_deref() == Some(namespace)
        || server.spec.allowed_namespaces.iter().any(|n| n == "*" || n == namespace)
}

/// Resolves `database` against `server`, or says why it cannot be served.
pub fn resolve(database: &Database, server: &DatabaseServer) -> Result<Request, RequestError> {
    let namespace = database.namespace().unwrap_or_default();
    let server_name = format!("{}/{}", server.namespace().unwrap_or_default(), server.name_any());
    if !namespace_allowed(server, &namespace) {
        return Err(RequestError::NamespaceNotAllowed { namespace, server: server_name });
    }
    password::check(&server.spec.password_policy)
        .map_err(|source| RequestError::Policy { server: server_name.clone(), source })?;
    let engine = server.spec.engine;
    let spec = &database.spec;
    let database_name = match &spec.database_name {
        Some(name) => name.clone(),
        None => database.name_any().replace('-', "_"),
    };
    check_name("databaseName", &database_name, 63)?;
    let username = spec.username.clone().unwrap_or_else(|| database_name.clone());
    // MySQL user names are at most 32 characters (MariaDB allows 80).
    let user_max = if engine == Engine::Mysql { 32 } else { 63 };
    check_name("username", &username, user_max)?;

    let owns = spec.owner;
    let all = ["ALL".to_owned()];
    let asked = match &spec.privileges {
        // An owner holds every privilege: the server must allow them all.
        _ if owns => &all[..],
        Some(asked) => asked,
        None => &server.spec.default_privileges,
    };
    let privileges = allowed_privileges(asked, server, &server_name)?;
    if owns
        && spec.privileges.as_ref().is_some_and(|p| self::privileges(p, engine) != Ok(all.to_vec()))
    {
        return Err(RequestError::OwnerWithPrivileges);
    }
    SecretTemplate::compile(
        &spec.credentials_secret_template,
        super::secret_template::OPERATOR_KEYS,
    )?;
    if let Some(backup) = &spec.backup {
        crate::backup::schedule::Schedule::parse(&backup.schedule)?;
    }
    let needs_storage = [
        ("backup", spec.backup.is_some()),
        ("restoreFrom", spec.restore_from.is_some()),
        ("deletionPolicy", spec.deletion_policy == DatabaseDeletionPolicy::BackupThenDelete),
    ];
    if let Some((field, _)) = needs_storage.into_iter().find(|(_, asks)| *asks) {
        if server.spec.backup_storage.is_none() {
            return Err(RequestError::NoBackupStorage { field, server: server_name });
        }
    }
    let extensions = allowed_extensions(spec, server, &server_name)?;
    let options = create_options(spec, engine)?;
    let secret_name = spec
        .credentials_secret
        .clone()
        .unwrap_or_else(|| format!("{}-credentials", database.name_any()));
    Ok(Request {
        engine,
        database: database_name,
        username,
        privileges,
        extensions,
        options,
        secret_name,
        secret_template: spec.credentials_secret_template.clone(),
        owner: owns,
        deletion: spec.deletion_policy,
    })
}

/// The privileges asked (or the server's default), presets expanded, each
/// one the server allows.
fn allowed_privileges(
    asked: &[String],
    server: &DatabaseServer,
    server_name: &str,
) -> Result<Vec<String>, RequestError> {
    let engine = server.spec.engine;
    let privileges = privileges(&with_presets(asked, server), engine)?;
    if !server.spec.allowed_privileges.is_empty() {
        let allowed = self::privileges(&server.spec.allowed_privileges, engine)?;
        for privilege in &privileges {
            if !allowed.contains(privilege) && !allowed.iter().any(|a| a == "ALL") {
                return Err(RequestError::PrivilegeNotAllowed {
                    privilege: privilege.clone(),
                    server: server_name.to_owned(),
                });
            }
        }
    }
    Ok(privileges)
}

/// The extensions asked, sorted and unique: PostgreSQL only, each one the
/// server allows.
fn allowed_extensions(
    spec: &crate::api::database::DatabaseSpec,
    server: &DatabaseServer,
    server_name: &str,
) -> Result<Vec<String>, RequestError> {
    let mut extensions = spec.extensions.clone();
    extensions.sort();
    extensions.dedup();
    if !extensions.is_empty() && server.spec.engine != Engine::Postgres {
        return Err(wrong_engine("extensions", "PostgreSQL", server.spec.engine));
    }
    for extension in &extensions {
        if !server.spec.allowed_extensions.contains(extension) {
            return Err(RequestError::ExtensionNotAllowed {
                extension: extension.clone(),
                server: server_name.to_owned(),
            });
        }
    }
    Ok(extensions)
}

/// The settings used when the database is created, each for its engine only.
fn create_options(
    spec: &crate::api::database::DatabaseSpec,
    engine: Engine,
) -> Result<CreateOptions, RequestError> {
    let options = CreateOptions {
        encoding: setting("encoding", &spec.encoding)?,
        locale: setting("locale", &spec.locale)?,
        charset: setting("charset", &spec.charset)?,
        collation: setting("collation", &spec.collation)?,
    };
    if engine != Engine::Postgres {
        // encoding and locale are PostgreSQL's words only.
        let misplaced =
            [("encoding", options.encoding.is_some()), ("locale", options.locale.is_some())];
        if let Some((field, _)) = misplaced.into_iter().find(|(_, set)| *set) {
            return Err(wrong_engine(field, "PostgreSQL", engine));
        }
        return Ok(options);
    }
    // On PostgreSQL, charset and collation are seed 004's names for the
    // encoding and LC_COLLATE; LOCALE sets LC_COLLATE itself.
    if options.encoding.is_some() && options.charset.is_some() {
        return Err(RequestError::Both { field: "encoding", alias: "charset" });
    }
    if options.locale.is_some() && options.collation.is_some() {
        return Err(RequestError::Both { field: "locale", alias: "collation" });
    }
    Ok(CreateOptions { encoding: options.encoding.or(options.charset), charset: None, ..options })
}

/// The privileges with every preset name of the server replaced by its list.
fn with_presets(list: &[String], server: &DatabaseServer) -> Vec<String> {
    let mut out = Vec::new();
    for entry in list {
        match server.spec.privilege_presets.get(entry.trim()) {
            Some(preset) => out.extend(preset.iter().cloned()),
            None => out.push(entry.clone()),
        }
    }
    out
}

fn wrong_engine(field: &'static str, applies_to: &'static str, engine: Engine) -> RequestError {
    RequestError::WrongEngine { field, applies_to, engine: engine.as_str() }
}

/// Database and user names: `^[a-z][a-z0-9_]*$`, at most `max` characters
/// (the CRD schema says so too; checked here for servers that skip it).
fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), RequestError> {
    let mut chars = value.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        return Err(RequestError::InvalidName {
            field,
            value: value.to_owned(),
            rule: "lower-case letters, digits and _, starting with a letter",
        });
    }
    if value.len() > max {
        return Err(RequestError::InvalidName {
            field,
            value: value.to_owned(),
            rule: if max == 32 {
                "at most 32 characters on MySQL"
            } else {
                "at most 63 characters"
            },
        });
    }
    Ok(())
}

/// Encodings, locales, character sets and collations: letters, digits and
/// `_ . - @` only (they are written into CREATE DATABASE).
fn setting(field: &'static str, value: &Option<String>) -> Result<Option<String>, RequestError> {
    let Some(value) = value else { return Ok(None) };
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "_.-@".contains(c));
    if !ok {
        return Err(RequestError::InvalidName {
            field,
            value: value.clone(),
            rule: "letters, digits and _ . - @ only",
        });
    }
    Ok(Some(value.clone()))
}

/// Privileges normalised: upper case, single spaces, known to the engine,
/// sorted; `ALL` (or `ALL PRIVILEGES`) alone stands for everything.
fn privileges(list: &[String], engine: Engine) -> Result<Vec<String>, RequestError> {
    let known = if engine == Engine::Postgres { POSTGRES_PRIVILEGES } else { MYSQL_PRIVILEGES };
    let mut out = Vec::new();
    for privilege in list {
        let normal =
            privilege.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_uppercase();
        let normal = if normal == "ALL PRIVILEGES" { "ALL".to_owned() } else { normal };
        if !known.contains(&normal.as_str()) {
            return Err(RequestError::UnknownPrivilege(
                privilege.clone(),
                if engine == Engine::Postgres { "PostgreSQL" } else { "MySQL" },
            ));
        }
        out.push(normal);
    }
    if out.is_empty() || out.iter().any(|p| p == "ALL") {
        return Ok(vec!["ALL".into()]);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::database::{DatabaseSpec, ServerRef};
    use crate::api::server::DatabaseServerSpec;
    use serde_json::json;

    fn server(engine: &str, extra: serde_json::Value) -> DatabaseServer {
        let mut spec = json!({"engine": engine, "connectionSecretRef": {"name": "admin"}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let spec: DatabaseServerSpec = serde_json::from_value(spec).unwrap();
        let mut s = DatabaseServer::new("main", spec);
        s.metadata.namespace = Some("platform".into());
        s
    }

    fn database(ns: &str, name: &str, extra: serde_json::Value) -> Database {
        let mut spec = json!({"serverRef": {"name": "main", "namespace": "platform"}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let spec: DatabaseSpec = serde_json::from_value(spec).unwrap();
        let mut d = Database::new(name, spec);
        d.metadata.namespace = Some(ns.into());
        d
    }

    #[test]
    fn defaults_come_from_the_name() {
        let s = server("postgres", json!({"allowedNamespaces": ["team-a"]}));
        let r = resolve(&database("team-a", "orders-db", json!({})), &s).unwrap();
        assert_eq!(r.database, "orders_db");
        assert_eq!(r.username, "orders_db");
        assert_eq!(r.privileges, vec!["ALL"]);
        assert_eq!(r.secret_name, "orders-db-credentials");
        assert_eq!(r.deletion, DatabaseDeletionPolicy::Retain);
        let _ = ServerRef { name: "x".into(), namespace: None };
    }

    #[test]
    fn namespaces_must_be_allowed() {
        let s = server("postgres", json!({"allowedNamespaces": ["team-a"]}));
        let e = resolve(&database("team-b", "x", json!({})), &s).unwrap_err();
        assert_eq!(e.reason(), "NamespaceNotAllowed");
        assert!(resolve(&database("platform", "x", json!({})), &s).is_ok());
        let any = server("postgres", json!({"allowedNamespaces": ["*"]}));
        assert!(resolve(&database("team-b", "x", json!({})), &any).is_ok());
    }

    #[test]
    fn hostile_names_are_refused() {
        let s = server("mariadb", json!({"allowedNamespaces": ["*"]}));
        for name in
            ["a\"; DROP DATABASE x; --", "a`b", "A", "1abc", "a-b", "a'b", "a\\b", &"a".repeat(64)]
        {
            let e = resolve(&database("t", "x", json!({ "databaseName": name })), &s).unwrap_err();
            assert_eq!(e.reason(), "InvalidSpec", "{name}");
        }
        let e = resolve(&database("t", "x", json!({"charset": "utf8'; DROP"})), &s).unwrap_err();
        assert_eq!(e.reason(), "InvalidSpec");
    }

    #[test]
    fn mysql_user_names_are_short() {
        let s = server("mysql", json!({"allowedNamespaces": ["*"]}));
        let long = "u".repeat(33);
        assert!(resolve(&database("t", "x", json!({ "username": long })), &s).is_err());
        let m = server("mariadb", json!({"allowedNamespaces": ["*"]}));
        assert!(resolve(&database("t", "x", json!({ "username": long })), &m).is_ok());
    }

    #[test]
    fn privileges_are_normalised_and_checked() {
        let s = server(
            "postgres",
            json!({"allowedNamespaces": ["*"], "allowedPrivileges": ["select", "insert"]}),
        );
        let r =
            resolve(&database("t", "x", json!({"privileges": ["insert", "SELECT", "select"]})), &s)
                .unwrap();
        assert_eq!(r.privileges, vec!["INSERT", "SELECT"]);
        assert_eq!(r.privileges_text(), "INSERT,SELECT");
        let e = resolve(&database("t", "x", json!({"privileges": ["DELETE"]})), &s).unwrap_err();
        assert_eq!(e.reason(), "NotAllowed");
        let e =
            resolve(&database("t", "x", json!({"privileges": ["SELECT; DROP"]})), &s).unwrap_err();
        assert_eq!(e.reason(), "InvalidSpec");
        let m = server("mariadb", json!({"allowedNamespaces": ["*"]}));
        let r =
            resolve(&database("t", "x", json!({"privileges": ["all privileges"]})), &m).unwrap();
        assert_eq!(r.privileges, vec!["ALL"]);
        let r = resolve(&database("t", "x", json!({"privileges": ["create  view"]})), &m).unwrap();
        assert_eq!(r.privileges, vec!["CREATE VIEW"]);
    }

    #[test]
    fn presets_and_server_defaults() {
        let s = server(
            "postgres",
            json!({"allowedNamespaces": ["*"],
                   "privilegePresets": {"readonly": ["SELECT"], "readwrite": ["SELECT", "INSERT", "UPDATE", "DELETE"]},
                   "defaultPrivileges": ["readonly"]}),
        );
        let r = resolve(&database("t", "x", json!({})), &s).unwrap();
        assert_eq!(r.privileges, vec!["SELECT"], "the server's default, a preset");
        let r = resolve(&database("t", "x", json!({"privileges": ["readwrite", "TRUNCATE"]})), &s)
            .unwrap();
        assert_eq!(r.privileges, vec!["DELETE", "INSERT", "SELECT", "TRUNCATE", "UPDATE"]);
        let e =
            resolve(&database("t", "x", json!({"privileges": ["superpowers"]})), &s).unwrap_err();
        assert_eq!(e.reason(), "InvalidSpec");
    }

    #[test]
    fn engine_specific_fields_are_checked() {
        let pg = server(
            "postgres",
            json!({"allowedNamespaces": ["*"], "allowedExtensions": ["pgcrypto"]}),
        );
        assert!(resolve(&database("t", "x", json!({"extensions": ["pgcrypto"]})), &pg).is_ok());
        let e =
            resolve(&database("t", "x", json!({"extensions": ["plpython3u"]})), &pg).unwrap_err();
        assert_eq!(e.reason(), "NotAllowed");
        let r = resolve(&database("t", "x", json!({"charset": "UTF8", "collation": "C"})), &pg)
            .unwrap();
        assert_eq!(r.options.encoding.as_deref(), Some("UTF8"), "seed 004's charset");
        assert_eq!(r.options.collation.as_deref(), Some("C"), "LC_COLLATE");
        let both = json!({"charset": "UTF8", "encoding": "UTF8"});
        assert_eq!(resolve(&database("t", "x", both), &pg).unwrap_err().reason(), "InvalidSpec");
        let both = json!({"locale": "C", "collation": "C"});
        assert_eq!(resolve(&database("t", "x", both), &pg).unwrap_err().reason(), "InvalidSpec");
        let m = server("mariadb", json!({"allowedNamespaces": ["*"]}));
        assert!(resolve(&database("t", "x", json!({"encoding": "UTF8"})), &m).is_err());
        assert!(resolve(&database("t", "x", json!({"extensions": ["pgcrypto"]})), &m).is_err());
    }

    #[test]
    fn an_owner_holds_everything_only_where_the_server_allows_it() {
        let s = server("postgres", json!({"allowedNamespaces": ["*"]}));
        let r = resolve(&database("t", "x", json!({"owner": true})), &s).unwrap();
        assert_eq!((r.owner, r.privileges.clone()), (true, vec!["ALL".to_owned()]));
        assert_eq!(r.privileges_text(), "ALL;OWNER", "a change of owner is a change of privileges");
        assert!(
            resolve(&database("t", "x", json!({"owner": true, "privileges": ["ALL"]})), &s).is_ok()
        );
        let e = resolve(&database("t", "x", json!({"owner": true, "privileges": ["SELECT"]})), &s)
            .unwrap_err();
        assert_eq!(e.reason(), "InvalidSpec");
        let limited = server(
            "postgres",
            json!({"allowedNamespaces": ["*"], "allowedPrivileges": ["SELECT"]}),
        );
        let e = resolve(&database("t", "x", json!({"owner": true})), &limited).unwrap_err();
        assert_eq!(e.reason(), "NotAllowed", "owner would bypass allowedPrivileges");
    }

    #[test]
    fn a_bad_secret_template_is_an_invalid_spec() {
        let s = server("postgres", json!({"allowedNamespaces": ["*"]}));
        for template in
            [json!({"password": "{{uri}}"}), json!({"A": "{{#each"}), json!({"a b": "x"})]
        {
            let e =
                resolve(&database("t", "x", json!({ "credentialsSecretTemplate": template })), &s)
                    .unwrap_err();
            assert_eq!(e.reason(), "InvalidSpec", "{template}");
        }
    }

    #[test]
    fn backups_need_a_schedule_that_parses_and_a_server_with_storage() {
        let s = server("postgres", json!({"allowedNamespaces": ["*"]}));
        for asks in [
            json!({"backup": {"schedule": "0 3 * * *"}}),
            json!({"restoreFrom": {"backup": "b"}}),
            json!({"deletionPolicy": "BackupThenDelete"}),
        ] {
            let e = resolve(&database("t", "x", asks.clone()), &s).unwrap_err();
            assert_eq!(e.reason(), "BackupNotConfigured", "{asks}");
        }
        let stored = server(
            "postgres",
            json!({"allowedNamespaces": ["*"],
                   "backupStorage": {"bucket": "b", "credentialsSecretRef": {"name": "s3"}}}),
        );
        assert!(resolve(
            &database("t", "x", json!({"backup": {"schedule": "0 3 * * *"}})),
            &stored
        )
        .is_ok());
        let e = resolve(&database("t", "x", json!({"backup": {"schedule": "daily"}})), &stored)
            .unwrap_err();
        assert_eq!(e.reason(), "InvalidSpec");
    }

    #[test]
    fn a_bad_password_policy_is_the_servers_fault() {
        let s = server(
            "postgres",
            json!({"allowedNamespaces": ["*"], "passwordPolicy": {"alphabet": "ab"}}),
        );
        let e = resolve(&database("t", "x", json!({})), &s).unwrap_err();
        assert_eq!(e.reason(), "ServerPolicyInvalid");
    }
}
