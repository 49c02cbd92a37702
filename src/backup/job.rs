//! The Job that runs a dump or a restore: in the `DatabaseServer`'s
//! namespace (where the admin and storage Secrets are; a team never sees
//! them), the backup image (the client tools and this binary), the two
//! Secrets mounted read-only, no ServiceAccount token, nothing writable but
//! a scratch directory, bounded in time and retries.

use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use crate::api::{backup::BackupStorage, server::Engine, ConnectionSecretRef};
use crate::reconcile::labels::{MANAGED_BY, MANAGED_BY_VALUE};

/// The label naming what a Job is for (`<namespace>.<name>` of the backup
/// or `Database`).
pub const FOR_LABEL: &str = "dbqo.dev/for";
/// How long a dump or restore may run.
pub const DEADLINE_SECONDS: i64 = 6 * 3600;
/// How long a finished Job stays for its log to be read.
pub const KEEP_SECONDS: i64 = 24 * 3600;
const ADMIN_DIR: &str = "/var/run/dbqo/admin";
const STORAGE_DIR: &str = "/var/run/dbqo/storage";

/// `backup` or `restore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Backup,
    Restore,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
        }
    }
}

/// Everything a Job needs.
pub struct JobSpec<'a> {
    pub operation: Operation,
    /// What the Job is for: the backup's or the `Database`'s uid (the Job's
    /// name is derived from it, so creating it twice is a conflict).
    pub for_uid: &'a str,
    /// `<namespace>/<name>` of the backup or `Database`, for people.
    pub for_name: &'a str,
    pub namespace: &'a str,
    pub image: &'a str,
    pub engine: Engine,
    pub admin: &'a ConnectionSecretRef,
    pub storage: &'a BackupStorage,
    pub database: &'a str,
    pub key: &'a str,
    /// PostgreSQL restore: the role restored objects belong to.
    pub role: Option<&'a str>,
}

/// The Job's name: `dbqo-<operation>-<12 hex digits of the uid's SHA-256>`.
pub fn job_name(operation: Operation, for_uid: &str) -> String {
    let digest = Sha256::digest(for_uid.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("dbqo-{}-{hex}", operation.as_str())
}

/// The Job manifest.
pub fn manifest(spec: &JobSpec<'_>) -> Json {
    let name = job_name(spec.operation, spec.for_uid);
    let labels = json!({
        MANAGED_BY: MANAGED_BY_VALUE,
        FOR_LABEL: spec.for_name.replace('/', "."),
    });
    let mut args = vec![
        spec.operation.as_str().to_owned(),
        format!("--engine={}", spec.engine.as_str()),
        format!("--database={}", spec.database),
        format!("--key={}", spec.key),
        format!("--admin-secret-dir={ADMIN_DIR}"),
        format!("--storage-secret-dir={STORAGE_DIR}"),
        format!("--connection={}", serde_json::to_string(spec.admin).unwrap_or_default()),
        format!("--storage={}", serde_json::to_string(spec.storage).unwrap_or_default()),
    ];
    if let Some(role) = spec.role {
        args.push(format!("--role={role}"));
    }
    let secret_volume = |name: &str, secret: &str| json!({"name": name, "secret": {"secretName": secret, "defaultMode": 0o440}});
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {FOR_LABEL: spec.for_name},
        },
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": KEEP_SECONDS,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": spec.operation.as_str(),
                        "image": spec.image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": args,
                        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "TMPDIR", "value": "/tmp"}],
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "admin", "mountPath": ADMIN_DIR, "readOnly": true},
                            {"name": "storage", "mountPath": STORAGE_DIR, "readOnly": true},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }],
                    "volumes": [
                        secret_volume("admin", &spec.admin.name),
                        secret_volume("storage", &spec.storage.credentials_secret_ref.name),
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    })
}

/// Where a Job stands, from its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded { seconds: Option<i64> },
    Failed { why: String },
}

/// Reads a Job's status: its `Complete` or `Failed` condition.
pub fn state(job: &Json) -> JobState {
    let conditions = job["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let holds = |kind: &str| {
        conditions.iter().find(|c| c["type"] == kind && c["status"] == "True").cloned()
    };
    if holds("Complete").is_some() {
        let time = |field: &str| {
            job["status"][field]
                .as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        };
        let seconds = match (time("startTime"), time("completionTime")) {
            (Some(start), Some(end)) => Some(end.as_second() - start.as_second()),
            _ => None,
        };
        return JobState::Succeeded { seconds };
    }
    if let Some(failed) = holds("Failed") {
        let reason = failed["reason"].as_str().unwrap_or("Failed");
        return JobState::Failed { why: format!("the Job failed ({reason})") };
    }
    JobState::Running
}

/// The message the Job's container left when it failed (our own text:
/// the step and a category, never the tool's words).
pub fn termination_message(pod: &Json) -> Option<String> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find_map(|s| s["state"]["terminated"]["message"].as_str())
        .map(|m| m.trim().chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(admin: &'a ConnectionSecretRef, storage: &'a BackupStorage) -> JobSpec<'a> {
        JobSpec {
            operation: Operation::Backup,
            for_uid: "uid-1",
            for_name: "team-a/nightly",
            namespace: "platform",
            image: "dbqo-backup:1",
            engine: Engine::Postgres,
            admin,
            storage,
            database: "orders",
            key: "teams/team-a/orders/nightly-1.dump",
            role: None,
        }
    }

    #[test]
    fn the_job_mounts_the_secrets_and_carries_no_value() {
        let admin: ConnectionSecretRef =
            serde_json::from_value(json!({"name": "pg-admin"})).unwrap();
        let storage: BackupStorage =
            serde_json::from_value(json!({"bucket": "b", "credentialsSecretRef": {"name": "s3"}}))
                .unwrap();
        let job = manifest(&spec(&admin, &storage));
        assert_eq!(job["metadata"]["name"], job_name(Operation::Backup, "uid-1"));
        assert_eq!(job["metadata"]["namespace"], "platform");
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["volumes"][0]["secret"]["secretName"], "pg-admin");
        assert_eq!(pod["volumes"][1]["secret"]["secretName"], "s3");
        let args = pod["containers"][0]["args"].to_string();
        assert!(args.contains("--database=orders") && args.contains("--key=teams/team-a/"));
        assert_eq!(job["metadata"]["labels"][FOR_LABEL], "team-a.nightly");
    }

    #[test]
    fn job_states_follow_the_conditions() {
        assert_eq!(state(&json!({"status": {"active": 1}})), JobState::Running);
        let done = json!({"status": {
            "conditions": [{"type": "Complete", "status": "True"}],
            "startTime": "2026-12-03T10:00:00Z", "completionTime": "2026-12-03T10:00:42Z"}});
        assert_eq!(state(&done), JobState::Succeeded { seconds: Some(42) });
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert!(
            matches!(state(&failed), JobState::Failed { why } if why.contains("BackoffLimitExceeded"))
        );
    }
}
