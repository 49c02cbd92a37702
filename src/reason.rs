//! Every reason the operator reports, in one place: condition reasons,
//! Event reasons and the `reason` label of the error metrics. Code names a
//! reason by its constant here; the README's reason table lists exactly
//! these (a test compares them), so a new reason is added here and there.

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident = $text:literal,)*) => {
        $($(#[doc = $doc])* pub const $name: &str = $text;)*
        /// Every reason, in the order of the README's table.
        pub const ALL: &[&str] = &[$($text),*];
    };
}

reasons! {
    /// Everything the resource asks for is in place (condition).
    READY = "Ready",
    /// The DBQR's database answers (condition).
    CONNECTED = "Connected",
    /// Every row's object is applied, and nothing extra is left (condition).
    SYNCED = "Synced",
    /// Object status is written back to the database (condition).
    WRITTEN = "Written",
    /// Not known yet: the spec is invalid or no connection was tried (condition).
    NOT_CHECKED = "NotChecked",
    /// Not synced because the database cannot be read (condition).
    DATABASE_UNAVAILABLE = "DatabaseUnavailable",
    /// No deletion is held by the prune guard (condition).
    NOTHING_HELD = "NothingHeld",
    /// The query returned far fewer rows; deletions wait for a confirming pass or the release annotation (condition).
    PRUNE_HELD = "PruneHeld",
    /// Held deletions were confirmed by a later pass and carried out (condition).
    PRUNE_CONFIRMED = "PruneConfirmed",
    /// Held deletions were released by the annotation and carried out (condition).
    PRUNE_RELEASED = "PruneReleased",
    /// `spec.suspend` is true: nothing runs for this DBQR until it is set back (condition).
    SUSPENDED = "Suspended",
    /// Rows whose later waves wait for every object of an earlier wave to be Ready (condition).
    WAITING_FOR_WAVE = "WaitingForWave",
    /// The connection (or admin) Secret is missing (error).
    SECRET_NOT_FOUND = "SecretNotFound",
    /// The Secret lacks a key or holds a value that is not a connection (error).
    SECRET_INVALID = "SecretInvalid",
    /// The Secret is in another namespace and the operator does not allow that (error).
    SECRET_NOT_ALLOWED = "SecretNotAllowed",
    /// The Secret's URI or key=value string does not parse, or sets a parameter the operator refuses (error).
    INVALID_CONNECTION_STRING = "InvalidConnectionString",
    /// The database server cannot be reached (error).
    CONNECTION_FAILED = "ConnectionFailed",
    /// The database server (or the path to it) stopped answering: a round trip ran past its client-side deadline (error).
    DATABASE_UNRESPONSIVE = "DatabaseUnresponsive",
    /// The server refuses the credentials (error).
    AUTHENTICATION_FAILED = "AuthenticationFailed",
    /// Sslmode and the CA do not fit together (error).
    TLS_CONFIG_ERROR = "TlsConfigError",
    /// The server's max_connections is used up (error).
    TOO_MANY_CONNECTIONS = "TooManyConnections",
    /// The operator's own connection budget for this server is used up (error).
    WAITING_FOR_CONNECTION = "WaitingForConnection",
    /// No admin connection to this server is free in the operator's budget (error).
    CONNECTION_BUDGET_EXHAUSTED = "ConnectionBudgetExhausted",
    /// The connection pool could not be made (error).
    POOL_BUILD_FAILED = "PoolBuildFailed",
    /// The pool closed under a pass (the DBQR changed or the operator stops) (error).
    POOL_CLOSED = "PoolClosed",
    /// The query fails; the SQLSTATE is in the message (error).
    QUERY_FAILED = "QueryFailed",
    /// The query runs over its statement timeout (error).
    QUERY_TIMEOUT = "QueryTimeout",
    /// A statement before the query is not a setting the operator allows (error).
    SETUP_STATEMENT_REFUSED = "SetupStatementRefused",
    /// A column has a type the operator cannot decode (error).
    DECODE_FAILED = "DecodeFailed",
    /// The query returns more rows than maxRows (error).
    TOO_MANY_ROWS = "TooManyRows",
    /// One row is larger than maxRowBytes (error).
    ROW_TOO_LARGE = "RowTooLarge",
    /// The result is larger than maxResultBytes (error).
    RESULT_TOO_LARGE = "ResultTooLarge",
    /// The template does not compile (error).
    TEMPLATE_INVALID = "TemplateInvalid",
    /// A row does not render (error).
    RENDER_FAILED = "RenderFailed",
    /// A row's render goes over a bound (output size, iterations, time, helper arguments) (error).
    RENDER_LIMIT_EXCEEDED = "RenderLimitExceeded",
    /// A rendered row is not YAML (error).
    INVALID_YAML = "InvalidYaml",
    /// A row's value would change the structure of the rendered YAML (error).
    UNSAFE_VALUE = "UnsafeValue",
    /// A rendered object lacks apiVersion, kind or metadata.name, or is not a mapping (error).
    INVALID_OBJECT = "InvalidObject",
    /// A rendered object's name is not a valid Kubernetes name (error).
    INVALID_NAME = "InvalidName",
    /// Two rows render the same object (error).
    DUPLICATE_OBJECT = "DuplicateObject",
    /// A row renders a kind outside allowedKinds (error).
    KIND_NOT_ALLOWED = "KindNotAllowed",
    /// A row renders into a namespace outside allowedNamespaces; or a team may not use that DatabaseServer (error).
    NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed",
    /// The cluster serves no such kind (error).
    UNKNOWN_KIND = "UnknownKind",
    /// The cluster does not serve the template's apiVersion (error).
    VERSION_NOT_SERVED = "VersionNotServed",
    /// An object of that name exists and was not made by this DBQR (error).
    OBJECT_EXISTS = "ObjectExists",
    /// An object of that name belongs to another DBQR or controller (error).
    OBJECT_OWNED_ELSEWHERE = "ObjectOwnedElsewhere",
    /// The API server refused: RBAC (of the operator or of the DBQR's ServiceAccount) does not cover it (error).
    FORBIDDEN = "Forbidden",
    /// The object changed under the operator; retried (error).
    CONFLICT = "Conflict",
    /// The API server refused the object as invalid (error).
    INVALID = "Invalid",
    /// The API server did not answer within --api-timeout-seconds (error).
    API_TIMEOUT = "ApiTimeout",
    /// The API server, or an aggregated API, is unavailable (error).
    API_UNAVAILABLE = "ApiUnavailable",
    /// Another API server error (its code is in the message) (error).
    API_ERROR = "ApiError",
    /// The operator stops (error).
    SHUTTING_DOWN = "ShuttingDown",
    /// Rows failed to sync (error).
    SYNC_FAILED = "SyncFailed",
    /// An object that no row produces could not be deleted (error).
    PRUNE_FAILED = "PruneFailed",
    /// The statusTemplate quotes a {{...}} or does not compile (error).
    STATUS_TEMPLATE_INVALID = "StatusTemplateInvalid",
    /// The status SQL fails; write-backs retry and are not lost (error).
    STATUS_WRITE_BACK_FAILED = "StatusWriteBackFailed",
    /// A Database's spec (names, privileges, engine-only fields) is not valid (error).
    INVALID_SPEC = "InvalidSpec",
    /// A privilege or extension the DatabaseServer does not allow (error).
    NOT_ALLOWED = "NotAllowed",
    /// The DatabaseServer's passwordPolicy is not valid (error).
    SERVER_POLICY_INVALID = "ServerPolicyInvalid",
    /// The Database's DatabaseServer does not exist (yet) (error).
    SERVER_NOT_FOUND = "ServerNotFound",
    /// The server's admin lacks CREATEDB/CREATEROLE (or GRANT OPTION) (error).
    INSUFFICIENT_PRIVILEGES = "InsufficientPrivileges",
    /// A provisioning statement failed on the server (error).
    STATEMENT_FAILED = "StatementFailed",
    /// A database, user or Secret of that name exists and is not this Database's (error).
    ALREADY_EXISTS = "AlreadyExists",
    /// The user exists but its password is in no Secret the operator owns (error).
    CREDENTIALS_LOST = "CredentialsLost",
    /// databaseName or username changed after the database was provisioned (error).
    IMMUTABLE_FIELD = "ImmutableField",
    /// The first provisioning of a Database is running (condition).
    CREATING = "Creating",
    /// A Database's database and user were created (event).
    CREATED = "Created",
    /// A new password is set and in the credentials Secret (event).
    PASSWORD_RESET = "PasswordReset",
    /// A Database's privileges were changed to the spec's (event).
    PRIVILEGES_CHANGED = "PrivilegesChanged",
    /// Privileges changed by hand on the server were set back to the spec's (event).
    PRIVILEGES_RESTORED = "PrivilegesRestored",
    /// A Database's database or user, dropped outside the operator, was created again (event).
    RECREATED = "Recreated",
    /// A Database's extensions were created (event).
    EXTENSIONS_CREATED = "ExtensionsCreated",
    /// A deleted Database's database and user were dropped (deletionPolicy Delete) (event).
    DROPPED = "Dropped",
    /// A deleted Database's database and user were kept on the server (event).
    RETAINED = "Retained",
    /// The Database's DatabaseServer has no backupStorage (error).
    BACKUP_NOT_CONFIGURED = "BackupNotConfigured",
    /// The backup storage or its Secret cannot be used (error).
    BACKUP_STORAGE_INVALID = "BackupStorageInvalid",
    /// A request to the backup storage failed (error).
    BACKUP_STORAGE_FAILED = "BackupStorageFailed",
    /// The dump Job failed (error).
    BACKUP_FAILED = "BackupFailed",
    /// The restore Job failed, or its backup cannot be restored (error).
    RESTORE_FAILED = "RestoreFailed",
    /// A DatabaseBackup's Database does not exist (error).
    DATABASE_NOT_FOUND = "DatabaseNotFound",
    /// The Database is not provisioned yet (condition).
    WAITING_FOR_DATABASE = "WaitingForDatabase",
    /// Another backup of the same Database runs first (condition).
    WAITING_FOR_BACKUP = "WaitingForBackup",
    /// The dump Job runs (condition).
    BACKING_UP = "BackingUp",
    /// The restore Job fills the new database (condition).
    RESTORING = "Restoring",
    /// A dump is complete in the bucket (event).
    BACKUP_COMPLETED = "BackupCompleted",
    /// A new database holds its backup (event).
    RESTORED = "Restored",
    /// Scheduled backups beyond the retention were deleted with their dumps (event).
    BACKUPS_PRUNED = "BackupsPruned",
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The reasons in the first column of the README's reason table.
    fn documented() -> BTreeSet<String> {
        let readme = include_str!("../README.md");
        let table = readme
            .split("\n| reason | what it means | what to do |")
            .nth(1)
            .expect("the README's reason table");
        table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .flat_map(|line| {
                let first = line.split('|').nth(1).unwrap_or_default();
                first.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_readme_table_lists_every_reason_and_no_other() {
        let listed: BTreeSet<String> = super::ALL.iter().map(|r| r.to_string()).collect();
        assert_eq!(listed.len(), super::ALL.len(), "a reason listed twice");
        let documented = documented();
        let undocumented: Vec<_> = listed.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&listed).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "not in the README table: {undocumented:?}; in the table but not in reason.rs: {unknown:?}"
        );
    }
}
