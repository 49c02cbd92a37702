//! What a `Database`'s pass does for its backups: restore a new database
//! from `spec.restoreFrom`, create the scheduled `DatabaseBackup`s of
//! `spec.backup` and let go of those beyond its retention, and, for
//! `deletionPolicy: BackupThenDelete`, the backup that must complete before
//! anything is dropped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::ApiResource, ResourceExt};
use serde_json::json;

use super::job::{self, JobSpec, JobState, Operation};
use super::pass::storage_of;
use super::schedule::{self, Schedule};
use crate::api::backup::{BackupPhase, DatabaseBackup, DatabaseBackupStatus};
use crate::api::database::{Database, RestoreStatus};
use crate::api::server::DatabaseServer;
use crate::kube_api::{Cluster, Target};
use crate::provision::status::BackupProgress;
use crate::reconcile::labels::{MANAGED_BY, MANAGED_BY_VALUE};

/// The label of a scheduled backup: the uid of its `Database`.
pub const SCHEDULED_FOR: &str = "dbqo.dev/scheduled-for";
/// The label of the backup taken before a `Database` is dropped.
pub const BEFORE_DELETE: &str = "dbqo.dev/before-delete";
/// Scheduled backups read per pass (retention is at most 1000).
const LIST_LIMIT: u32 = 2000;

/// How backups are run, from the operator's flags.
#[derive(Debug, Clone)]
pub struct BackupSettings {
    /// The image with the client tools and this binary.
    pub image: String,
    /// Scheduled backups of one `Database` at most this often.
    pub min_interval: Duration,
}

/// A step that did not go through, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub reason: &'static str,
    pub message: String,
}

impl StepError {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

impl From<crate::kube_api::KubeError> for StepError {
    fn from(e: crate::kube_api::KubeError) -> Self {
        Self::new(e.reason(), e.to_string())
    }
}

impl From<super::storage::StorageError> for StepError {
    fn from(e: super::storage::StorageError) -> Self {
        Self::new(e.reason(), e.to_string())
    }
}

fn backups() -> ApiResource {
    ApiResource::erase::<DatabaseBackup>(&())
}

fn jobs() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::batch::v1::Job>(&())
}

/// Where a restore (or the backup before a delete) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done,
    Running(String),
    Failed(String),
}

const RESTORING: &str = "Restoring";
const RESTORED: &str = "Restored";
const FAILED: &str = "Failed";

/// Whether the status says a restore is under way.
pub fn restoring(progress: &BackupProgress) -> bool {
    progress.restore.as_ref().is_some_and(|r| r.phase == RESTORING)
}

/// What a restore works with.
pub struct Restore<'a, W> {
    pub writer: &'a W,
    pub database: &'a Database,
    pub server: &'a DatabaseServer,
    /// The database and its user.
    pub names: (&'a str, &'a str),
    /// This pass created the database (a restore starts only then).
    pub created_now: bool,
    pub image: &'a str,
}

impl<W: Cluster> Restore<'_, W> {
    /// Whether this pass is to start a restore (the admin must then be
    /// able to act as the user on PostgreSQL).
    pub fn starts(&self, progress: &BackupProgress) -> bool {
        self.database.spec.restore_from.is_some() && progress.restore.is_none() && self.created_now
    }

    /// Starts the restore of `spec.restoreFrom` into a database this pass
    /// created, or follows the one under way.
    pub async fn step(&self, progress: &mut BackupProgress) -> Result<Step, StepError> {
        let Some(from) = &self.database.spec.restore_from else { return Ok(Step::Done) };
        let namespace = self.database.namespace().unwrap_or_default();
        let Some(state) = progress.restore.clone() else {
            if !self.created_now {
                // The database was there before: never restored into.
                return Ok(Step::Done);
            }
            return self.start(&from.backup, &namespace, progress).await;
        };
        match state.phase.as_str() {
            RESTORED => Ok(Step::Done),
            FAILED => Ok(Step::Failed(format!(
                "the restore of backup {:?} failed; delete this Database and create it again to retry",
                state.backup
            ))),
            _ => self.follow(state, progress).await,
        }
    }

    async fn start(
        &self,
        backup: &str,
        namespace: &str,
        progress: &mut BackupProgress,
    ) -> Result<Step, StepError> {
        let mut failed = |message: String| {
            progress.restore =
                Some(RestoreStatus { backup: backup.to_owned(), phase: FAILED.into(), job: None });
            Ok(Step::Failed(message))
        };
        let Some(found) = self.writer.read_object(&backups(), namespace, backup).await? else {
            return failed(format!("DatabaseBackup {backup:?} not found"));
        };
        let status: DatabaseBackupStatus =
            serde_json::from_value(found["status"].clone()).unwrap_or_default();
        if status.phase != Some(BackupPhase::Completed) {
            return failed(format!("DatabaseBackup {backup:?} is not Completed"));
        }
        let Some(storage) = storage_of(self.server, self.writer).await? else {
            return failed("the server has no spec.backupStorage".into());
        };
        let destination = status.destination.unwrap_or_default();
        let key = match storage.own_key(&destination, namespace) {
            Ok(key) => key,
            Err(e) => return failed(e.to_string()),
        };
        let uid = self.database.uid().unwrap_or_default();
        let server_namespace = self.server.namespace().unwrap_or_default();
        let engine = self.server.spec.engine;
        let manifest = job::manifest(&JobSpec {
            operation: Operation::Restore,
            for_uid: &uid,
            for_name: &format!("{namespace}/{}", self.database.name_any()),
            namespace: &server_namespace,
            image: self.image,
            engine,
            admin: &self.server.spec.connection_secret_ref,
            storage: self.server.spec.backup_storage.as_ref().expect("storage_of found it"),
            database: self.names.0,
            key: &key,
            // The restored objects belong to the user, as if it made them.
            role: (engine == crate::api::server::Engine::Postgres).then_some(self.names.1),
        });
        let name = job::job_name(Operation::Restore, &uid);
        let target =
            Target { resource: jobs(), namespace: Some(server_namespace), name: name.clone() };
        match self.writer.create(&target, &manifest).await {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
        progress.restore = Some(RestoreStatus {
            backup: backup.to_owned(),
            phase: RESTORING.into(),
            job: Some(name),
        });
        Ok(Step::Running(format!("restoring backup {backup:?} into database {:?}", self.names.0)))
    }

    async fn follow(
        &self,
        mut state: RestoreStatus,
        progress: &mut BackupProgress,
    ) -> Result<Step, StepError> {
        let server_namespace = self.server.namespace().unwrap_or_default();
        let name = state.job.clone().unwrap_or_default();
        let found = self.writer.read_object(&jobs(), &server_namespace, &name).await?;
        let step = match found.as_ref().map(job::state) {
            None => Step::Failed("the restore Job is gone before it finished".into()),
            Some(JobState::Running) => {
                return Ok(Step::Running(format!(
                    "restoring backup {:?} into database {:?}",
                    state.backup, self.names.0
                )))
            }
            Some(JobState::Succeeded { .. }) => Step::Done,
            Some(JobState::Failed { why }) => Step::Failed(why),
        };
        state.phase = if step == Step::Done { RESTORED } else { FAILED }.into();
        progress.restore = Some(state);
        Ok(step)
    }
}

/// Creates the scheduled backup that is due, lets go of completed ones
/// beyond the retention; how long until the next is due.
pub async fn schedule<W: Cluster>(
    writer: &W,
    database: &Database,
    server: &DatabaseServer,
    progress: &mut BackupProgress,
    (now, min_interval): (DateTime<Utc>, Duration),
) -> Result<(Option<Duration>, usize), StepError> {
    let Some(spec) = &database.spec.backup else { return Ok((None, 0)) };
    if server.spec.backup_storage.is_none() {
        return Err(StepError::new(
            crate::reason::BACKUP_NOT_CONFIGURED,
            format!("DatabaseServer {} has no spec.backupStorage", server.name_any()),
        ));
    }
    let schedule =
        Schedule::parse(&spec.schedule).map_err(|e| StepError::new(e.reason(), e.to_string()))?;
    let namespace = database.namespace().unwrap_or_default();
    let uid = database.uid().unwrap_or_default();
    let created = database.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second());
    let since = progress
        .last_scheduled_backup
        .as_ref()
        .map(|t| t.0.as_second())
        .or(created)
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .unwrap_or(now);
    let min = chrono::Duration::from_std(min_interval).unwrap_or(chrono::Duration::MAX);
    if let Some(due) = schedule.due(since, now, min) {
        let name = backup_name(&database.name_any(), &due.timestamp().to_string());
        let manifest = backup_manifest(database, &name, (SCHEDULED_FOR, &uid));
        let target = Target { resource: backups(), namespace: Some(namespace.clone()), name };
        match writer.create(&target, &manifest).await {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
        progress.last_scheduled_backup = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(due.timestamp()).unwrap_or_default(),
        ));
    }
    let pruned = prune(writer, &namespace, &uid, spec.retention).await?;
    let next = schedule.next(now).and_then(|t| (t - now).to_std().ok());
    Ok((next, pruned))
}

/// Deletes the completed scheduled backups beyond `retention` (their
/// finalizers delete the dumps); how many.
async fn prune<W: Cluster>(
    writer: &W,
    namespace: &str,
    uid: &str,
    retention: u32,
) -> Result<usize, StepError> {
    let selector = format!("{SCHEDULED_FOR}={uid}");
    let listed = writer.list_objects(&backups(), namespace, &selector, LIST_LIMIT).await?;
    let kept: Vec<schedule::Kept> = listed
        .iter()
        .filter_map(|b| serde_json::from_value::<DatabaseBackup>(b.clone()).ok())
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .map(|b| schedule::Kept {
            name: b.name_any(),
            created: b.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
            completed: b.status.and_then(|s| s.phase) == Some(BackupPhase::Completed),
        })
        .collect();
    let expired = schedule::expired(&kept, retention);
    for name in &expired {
        let target = Target {
            resource: backups(),
            namespace: Some(namespace.to_owned()),
            name: name.clone(),
        };
        writer.delete(&target, None).await?;
    }
    Ok(expired.len())
}

/// A `DatabaseBackup` of `database` the operator makes: the `Database`'s
/// labels (an operator sharded by a label selector sees its own backups),
/// `label` saying why it exists. Not owned by the `Database`: a dump
/// outlives what it was taken of.
fn backup_manifest(database: &Database, name: &str, label: (&str, &str)) -> serde_json::Value {
    let mut labels: serde_json::Map<String, serde_json::Value> =
        database.labels().iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    labels.insert(MANAGED_BY.into(), json!(MANAGED_BY_VALUE));
    labels.insert(label.0.into(), json!(label.1));
    json!({
        "apiVersion": "dbqo.dev/v1alpha1",
        "kind": "DatabaseBackup",
        "metadata": {"name": name, "namespace": database.namespace(), "labels": labels},
        "spec": {"databaseRef": {"name": database.name_any()}},
    })
}

/// `<name>-<suffix>`, the name cut so that the whole is a valid object name.
fn backup_name(name: &str, suffix: &str) -> String {
    let keep = 253 - suffix.len() - 1;
    let cut: String = name.chars().take(keep).collect();
    format!("{}-{suffix}", cut.trim_end_matches(['-', '.']))
}

/// `deletionPolicy: BackupThenDelete`: the backup taken before anything
/// is dropped; `Done` once it is complete.
pub async fn before_delete<W: Cluster>(writer: &W, database: &Database) -> Result<Step, StepError> {
    let namespace = database.namespace().unwrap_or_default();
    let uid = database.uid().unwrap_or_default();
    let name = backup_name(&database.name_any(), &format!("final-{}", &uid[..uid.len().min(8)]));
    let Some(found) = writer.read_object(&backups(), &namespace, &name).await? else {
        let manifest = backup_manifest(database, &name, (BEFORE_DELETE, &uid));
        let target = Target { resource: backups(), namespace: Some(namespace), name: name.clone() };
        match writer.create(&target, &manifest).await {
            Ok(()) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Step::Running(format!("backing up to DatabaseBackup {name:?} before dropping")));
    };
    let status: DatabaseBackupStatus =
        serde_json::from_value(found["status"].clone()).unwrap_or_default();
    Ok(match status.phase {
        Some(BackupPhase::Completed) => Step::Done,
        Some(BackupPhase::Failed) => Step::Failed(format!(
            "DatabaseBackup {name:?} failed: nothing is dropped (delete that backup to try again, \
             or change deletionPolicy)"
        )),
        _ => Step::Running(format!("backing up to DatabaseBackup {name:?} before dropping")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_stay_valid() {
        assert_eq!(backup_name("orders", "1700000000"), "orders-1700000000");
        let long = "a".repeat(300);
        let name = backup_name(&long, "1700000000");
        assert_eq!(name.len(), 253);
        assert!(name.ends_with("-1700000000"));
    }
}
