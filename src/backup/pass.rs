//! One pass over a `DatabaseBackup`: its finalizer, the checks (its
//! `Database` provisioned, the server's storage configured, no other backup
//! of the same `Database` before it), the Job, and the status the Job's
//! state makes; once deleted, its Job and its dump go, then the finalizer.
//! Generic over the cluster: the actor runs it with the writer, the unit
//! tests in memory.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::ApiResource, Resource, ResourceExt};

use super::job::{self, JobSpec, JobState, Operation};
use super::storage::{Storage, StorageError};
use crate::api::backup::{BackupPhase, DatabaseBackup, DatabaseBackupStatus};
use crate::api::database::Database;
use crate::api::server::DatabaseServer;
use crate::controller::condition::{self, Status, Verdict};
use crate::controller::finalizer;
use crate::kube_api::{Cluster, KubeError, NewEvent, Target};

/// How often a running Job is looked at.
pub const WATCH_JOB: Duration = Duration::from_secs(3);
/// How often a backup waiting for its `Database` or another backup looks again.
const WAIT: Duration = Duration::from_secs(5);

/// What one pass works from.
pub struct BackupPass<'a, W> {
    pub backup: &'a DatabaseBackup,
    /// Its `Database`, if the watch has it.
    pub database: Option<&'a Database>,
    /// That `Database`'s server, if the watch has it.
    pub server: Option<&'a DatabaseServer>,
    /// Every `DatabaseBackup` of the namespace (one at a time per `Database`).
    pub siblings: &'a [DatabaseBackup],
    pub writer: &'a W,
    /// The image with the client tools and this binary.
    pub image: &'a str,
    pub now: Time,
}

/// What a pass came to.
#[derive(Debug, Default)]
pub struct BackupOutcome {
    pub status: Option<DatabaseBackupStatus>,
    /// Look again after this long (a Job runs, a wait); `None`: only on a change.
    pub again: Option<Duration>,
    /// Retry with backoff.
    pub failed: bool,
    /// The finalizer is removed.
    pub finished: bool,
}

fn resource() -> ApiResource {
    ApiResource::erase::<DatabaseBackup>(&())
}

fn jobs() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::batch::v1::Job>(&())
}

fn pods() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&())
}

/// Where the pass stopped, if not at a final phase.
enum Stop {
    /// Not final: look again after a while, reporting `verdict`.
    Wait(Verdict, Duration),
    /// Final: the backup failed for good.
    Fail(Verdict),
    /// Transient: retry with backoff.
    Retry(Verdict),
}

impl From<KubeError> for Stop {
    fn from(e: KubeError) -> Self {
        Stop::Retry(Verdict::failed(e.reason(), e.to_string()))
    }
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Request(_) => Stop::Retry(Verdict::failed(e.reason(), e.to_string())),
            _ => Stop::Fail(Verdict::failed(e.reason(), e.to_string())),
        }
    }
}

/// The storage of `server` with its credentials, read through the writer.
pub async fn storage_of<W: Cluster>(
    server: &DatabaseServer,
    writer: &W,
) -> Result<Option<Storage>, StorageError> {
    let Some(spec) = &server.spec.backup_storage else { return Ok(None) };
    let namespace = server.namespace().unwrap_or_default();
    let name = &spec.credentials_secret_ref.name;
    let secret = writer
        .read_secret(&namespace, name)
        .await
        .map_err(|e| StorageError::Request(e.to_string()))?
        .ok_or_else(|| StorageError::Config(format!("Secret {namespace}/{name} not found")))?;
    Storage::open(spec, &secret.data).map(Some)
}

impl<W: Cluster> BackupPass<'_, W> {
    pub async fn run(self) -> BackupOutcome {
        if self.backup.metadata.deletion_timestamp.is_some() {
            return self.finalize().await;
        }
        let mut outcome = BackupOutcome::default();
        if let Err(error) = finalizer::add(self.writer, &resource(), &self.backup.metadata).await {
            tracing::debug!(%error, "finalizer not added yet");
            outcome.failed = true;
            return outcome;
        }
        let before = self.backup.status.clone().unwrap_or_default();
        if before.phase.is_some_and(BackupPhase::is_final) {
            return outcome;
        }
        let mut next = before.clone();
        let verdict = match self.advance(&mut next).await {
            Ok(verdict) => verdict,
            Err(Stop::Wait(verdict, after)) => {
                outcome.again = Some(after);
                verdict
            }
            Err(Stop::Retry(verdict)) => {
                outcome.failed = true;
                verdict
            }
            Err(Stop::Fail(verdict)) => {
                next.phase = Some(BackupPhase::Failed);
                next.completed_at = Some(self.now.clone());
                verdict
            }
        };
        if next.phase == Some(BackupPhase::BackingUp) || next.phase == Some(BackupPhase::Starting) {
            outcome.again = outcome.again.or(Some(WATCH_JOB));
        }
        let old = condition::find(&before.conditions, "Ready");
        next.conditions = vec![condition::condition(
            old,
            "Ready",
            &verdict,
            self.backup.metadata.generation,
            &self.now,
        )];
        if next != before {
            self.announce(&before, &next, &verdict).await;
            let body = serde_json::to_value(&next).unwrap_or_default();
            let (namespace, name) =
                (self.backup.namespace().unwrap_or_default(), self.backup.name_any());
            match self.writer.patch_status(&resource(), &namespace, &name, &body).await {
                Ok(()) => outcome.status = Some(next),
                Err(error) => {
                    tracing::debug!(%error, "backup status not written");
                    outcome.failed = true;
                }
            }
        }
        outcome
    }

    /// Moves the backup on as far as it goes now; the verdict of where it is.
    async fn advance(&self, next: &mut DatabaseBackupStatus) -> Result<Verdict, Stop> {
        let namespace = self.backup.namespace().unwrap_or_default();
        let wanted = &self.backup.spec.database_ref.name;
        let database = self.database.ok_or_else(|| {
            Stop::Fail(Verdict::failed(
                crate::reason::DATABASE_NOT_FOUND,
                format!("Database {namespace}/{wanted} not found"),
            ))
        })?;
        let Some(database_name) = database.status.as_ref().and_then(|s| s.database_name.clone())
        else {
            return Err(Stop::Wait(
                Verdict::failed(
                    crate::reason::WAITING_FOR_DATABASE,
                    format!("Database {wanted} is not provisioned yet"),
                ),
                WAIT,
            ));
        };
        let server = self.server.ok_or_else(|| {
            Stop::Wait(
                Verdict::failed(
                    crate::reason::SERVER_NOT_FOUND,
                    "the Database's server is not known",
                ),
                WAIT,
            )
        })?;
        let storage = storage_of(server, self.writer).await?.ok_or_else(|| {
            Stop::Fail(Verdict::failed(
                crate::reason::BACKUP_NOT_CONFIGURED,
                format!("DatabaseServer {} has no spec.backupStorage", server.name_any()),
            ))
        })?;
        let server_namespace = server.namespace().unwrap_or_default();
        let admin = &server.spec.connection_secret_ref;
        if admin.namespace.as_ref().is_some_and(|n| *n != server_namespace) {
            return Err(Stop::Fail(Verdict::failed(
                crate::reason::BACKUP_STORAGE_INVALID,
                "backups need the admin Secret in the DatabaseServer's namespace (the Job mounts it)",
            )));
        }
        if let Some(first) = self.running_before_me() {
            return Err(Stop::Wait(
                Verdict::failed(
                    crate::reason::WAITING_FOR_BACKUP,
                    format!("backup {first} of the same Database runs first"),
                ),
                WAIT,
            ));
        }
        let uid = self.backup.uid().unwrap_or_default();
        let job_name = job::job_name(Operation::Backup, &uid);
        let created =
            self.backup.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
        let key = storage.key(&namespace, &database_name, &self.backup.name_any(), created);
        next.destination = Some(storage.destination(&key));
        next.database_name = Some(database_name.clone());
        let target = Target {
            resource: jobs(),
            namespace: Some(server_namespace.clone()),
            name: job_name.clone(),
        };
        let found = self.writer.read_object(&jobs(), &server_namespace, &job_name).await?;
        let Some(found) = found else {
            if next.job.is_some() {
                // Our Job is gone (its time to live, or deleted): the dump
                // exists only if the upload completed.
                return self.finish_without_job(&storage, &key, next).await;
            }
            let manifest = job::manifest(&JobSpec {
                operation: Operation::Backup,
                for_uid: &uid,
                for_name: &format!("{namespace}/{}", self.backup.name_any()),
                namespace: &server_namespace,
                image: self.image,
                engine: server.spec.engine,
                admin,
                storage: server.spec.backup_storage.as_ref().expect("storage_of found it"),
                database: &database_name,
                key: &key,
                role: None,
            });
            match self.writer.create(&target, &manifest).await {
                Ok(()) => {}
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
            next.job = Some(job_name);
            next.phase = Some(BackupPhase::Starting);
            next.started_at = Some(self.now.clone());
            return Ok(Verdict::new(
                Status::Unknown,
                crate::reason::BACKING_UP,
                format!("dumping database {database_name:?} to {}", storage.destination(&key)),
            ));
        };
        next.job = Some(job_name.clone());
        match job::state(&found) {
            JobState::Running => {
                next.phase = Some(BackupPhase::BackingUp);
                Ok(Verdict::new(
                    Status::Unknown,
                    crate::reason::BACKING_UP,
                    format!(
                        "Job {server_namespace}/{job_name} is dumping database {database_name:?}"
                    ),
                ))
            }
            JobState::Succeeded { seconds } => {
                let size = storage.size(&key).await?.ok_or_else(|| {
                    Stop::Fail(Verdict::failed(
                        crate::reason::BACKUP_FAILED,
                        "the Job succeeded but the dump is not in the bucket",
                    ))
                })?;
                next.phase = Some(BackupPhase::Completed);
                next.size_bytes = Some(size as i64);
                next.duration_seconds = seconds;
                next.completed_at = Some(self.now.clone());
                Ok(Verdict::ready(format!("{size} bytes in {}", storage.destination(&key))))
            }
            JobState::Failed { why } => {
                let detail = self.termination_message(&server_namespace, &job_name).await;
                let message = match detail {
                    Some(detail) => format!("{why}: {detail}"),
                    None => why,
                };
                Err(Stop::Fail(Verdict::failed(crate::reason::BACKUP_FAILED, message)))
            }
        }
    }

    async fn finish_without_job(
        &self,
        storage: &Storage,
        key: &str,
        next: &mut DatabaseBackupStatus,
    ) -> Result<Verdict, Stop> {
        match storage.size(key).await? {
            Some(size) => {
                next.phase = Some(BackupPhase::Completed);
                next.size_bytes = Some(size as i64);
                next.completed_at = Some(self.now.clone());
                Ok(Verdict::ready(format!("{size} bytes in {}", storage.destination(key))))
            }
            None => Err(Stop::Fail(Verdict::failed(
                crate::reason::BACKUP_FAILED,
                "the Job is gone and the dump is not in the bucket",
            ))),
        }
    }

    /// The first other backup of the same `Database` that goes before this
    /// one: one running, or one not finished and created earlier.
    fn running_before_me(&self) -> Option<String> {
        let me = (self.created(self.backup), self.backup.name_any());
        self.siblings
            .iter()
            .filter(|b| b.spec.database_ref == self.backup.spec.database_ref)
            .filter(|b| b.name_any() != me.1 && b.metadata.deletion_timestamp.is_none())
            .filter(|b| {
                let phase = b.status.as_ref().and_then(|s| s.phase);
                let running = matches!(phase, Some(BackupPhase::Starting | BackupPhase::BackingUp));
                let earlier = (self.created(b), b.name_any()) < me;
                running || (earlier && !phase.is_some_and(BackupPhase::is_final))
            })
            .map(|b| b.name_any())
            .min()
    }

    fn created(&self, backup: &DatabaseBackup) -> i64 {
        backup.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second())
    }

    /// What the failed Job's container said (our own category text).
    async fn termination_message(&self, namespace: &str, job_name: &str) -> Option<String> {
        let selector = format!("job-name={job_name}");
        let pods = self.writer.list_objects(&pods(), namespace, &selector, 10).await.ok()?;
        pods.iter().find_map(job::termination_message)
    }

    async fn announce(
        &self,
        before: &DatabaseBackupStatus,
        next: &DatabaseBackupStatus,
        verdict: &Verdict,
    ) {
        let event = match next.phase {
            Some(BackupPhase::Completed) if before.phase != next.phase => NewEvent {
                warning: false,
                reason: crate::reason::BACKUP_COMPLETED,
                message: verdict.message.clone(),
            },
            Some(BackupPhase::Failed) if before.phase != next.phase => {
                NewEvent { warning: true, reason: verdict.reason, message: verdict.message.clone() }
            }
            _ => return,
        };
        let regarding = self.backup.object_ref(&());
        if let Err(error) = self.writer.publish_event(&regarding, &event).await {
            tracing::debug!(%error, "event not published");
        }
    }

    /// Deleted: its Job goes, its dump goes, then the finalizer.
    async fn finalize(self) -> BackupOutcome {
        let mut outcome = BackupOutcome::default();
        if !finalizer::has(&self.backup.metadata) {
            outcome.finished = true;
            return outcome;
        }
        if let Err(error) = self.remove_dump().await {
            tracing::debug!(%error, "dump not removed yet");
            outcome.failed = true;
            return outcome;
        }
        match finalizer::remove(self.writer, &resource(), &self.backup.metadata).await {
            Ok(()) => outcome.finished = true,
            Err(error) => {
                tracing::debug!(%error, "finalizer not removed yet");
                outcome.failed = true;
            }
        }
        outcome
    }

    async fn remove_dump(&self) -> Result<(), String> {
        let status = self.backup.status.clone().unwrap_or_default();
        let Some(server) = self.server else {
            // No server: nothing to delete with; the dump, if any, stays.
            return Ok(());
        };
        let server_namespace = server.namespace().unwrap_or_default();
        if let Some(job_name) = &status.job {
            let target = Target {
                resource: jobs(),
                namespace: Some(server_namespace),
                name: job_name.clone(),
            };
            self.writer.delete(&target, None).await.map_err(|e| e.to_string())?;
        }
        let Some(destination) = &status.destination else { return Ok(()) };
        let Some(storage) = storage_of(server, self.writer).await.map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let namespace = self.backup.namespace().unwrap_or_default();
        // Only a dump of this namespace, whatever the status says.
        match storage.own_key(destination, &namespace) {
            Ok(key) => storage.delete(&key).await.map_err(|e| e.to_string()),
            // Never another namespace's dump, whatever the status says.
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;
    use serde_json::{json, Value as Json};

    use super::*;
    use crate::fake_cluster::FakeCluster;

    fn backup(name: &str, created: i64, status: Json) -> DatabaseBackup {
        serde_json::from_value(json!({
            "apiVersion": "dbqo.dev/v1alpha1", "kind": "DatabaseBackup",
            "metadata": {
                "name": name, "namespace": "team", "uid": format!("uid-{name}"),
                "creationTimestamp": k8s_openapi::jiff::Timestamp::from_second(created).unwrap().to_string(),
                "finalizers": ["dbqo.dev/finalizer"], "resourceVersion": "1",
            },
            "spec": {"databaseRef": {"name": "orders"}},
            "status": status,
        }))
        .unwrap()
    }

    fn database(provisioned: bool) -> Database {
        let status = if provisioned { json!({"databaseName": "orders"}) } else { json!({}) };
        serde_json::from_value(json!({
            "apiVersion": "dbqo.dev/v1alpha1", "kind": "Database",
            "metadata": {"name": "orders", "namespace": "team", "uid": "uid-db"},
            "spec": {"serverRef": {"name": "main", "namespace": "platform"}},
            "status": status,
        }))
        .unwrap()
    }

    fn server(storage: bool) -> DatabaseServer {
        let mut spec = json!({"engine": "postgres", "connectionSecretRef": {"name": "admin"}});
        if storage {
            spec["backupStorage"] = json!({
                "endpoint": "http://127.0.0.1:9", "bucket": "dumps", "prefix": "p/",
                "credentialsSecretRef": {"name": "s3"},
            });
        }
        serde_json::from_value(json!({
            "apiVersion": "dbqo.dev/v1alpha1", "kind": "DatabaseServer",
            "metadata": {"name": "main", "namespace": "platform"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn cluster() -> FakeCluster {
        let writer = FakeCluster::default();
        let b64 = |t: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(t)
        };
        writer.put(
            "Secret",
            "platform",
            "s3",
            json!({"metadata": {"name": "s3", "namespace": "platform", "resourceVersion": "1"},
                   "data": {"accessKeyId": b64("id"), "secretAccessKey": b64("key")}}),
        );
        writer
    }

    fn run(
        writer: &FakeCluster,
        backup: &DatabaseBackup,
        database: Option<&Database>,
        server: Option<&DatabaseServer>,
        siblings: &[DatabaseBackup],
    ) -> BackupOutcome {
        BackupPass {
            backup,
            database,
            server,
            siblings,
            writer,
            image: "dbqo-backup:test",
            now: Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap()),
        }
        .run()
        .now_or_never()
        .expect("the fakes never suspend")
    }

    fn reason(outcome: &BackupOutcome) -> (Option<BackupPhase>, String) {
        let status = outcome.status.as_ref().expect("a status written");
        (status.phase, status.conditions[0].reason.clone())
    }

    #[test]
    fn what_is_missing_says_so_and_only_a_missing_database_or_storage_is_final() {
        let writer = cluster();
        let b = backup("b", 1_000, json!({}));
        let gone = run(&writer, &b, None, Some(&server(true)), &[]);
        assert_eq!(reason(&gone), (Some(BackupPhase::Failed), "DatabaseNotFound".into()));
        let (db, unprovisioned) = (database(true), database(false));
        let waiting = run(&writer, &b, Some(&unprovisioned), Some(&server(true)), &[]);
        assert_eq!(reason(&waiting), (None, "WaitingForDatabase".into()));
        assert_eq!(waiting.again, Some(WAIT));
        let bare = run(&writer, &b, Some(&db), Some(&server(false)), &[]);
        assert_eq!(reason(&bare), (Some(BackupPhase::Failed), "BackupNotConfigured".into()));
        assert!(writer.objects.borrow().keys().all(|(kind, _, _)| kind != "Job"), "no Job");
    }

    #[test]
    fn one_backup_of_a_database_at_a_time_in_creation_order() {
        let writer = cluster();
        let (db, srv) = (database(true), server(true));
        let older = backup("older", 900, json!({}));
        let running = backup("running", 1_100, json!({"phase": "BackingUp"}));
        let done = backup("done", 800, json!({"phase": "Completed"}));
        let me = backup("me", 1_000, json!({}));
        for siblings in [vec![older.clone()], vec![running]] {
            let outcome = run(&writer, &me, Some(&db), Some(&srv), &siblings);
            assert_eq!(reason(&outcome), (None, "WaitingForBackup".into()));
        }
        let outcome = run(&writer, &me, Some(&db), Some(&srv), &[done, me.clone()]);
        assert_eq!(reason(&outcome), (Some(BackupPhase::Starting), "BackingUp".into()));
    }

    #[test]
    fn the_job_is_made_once_and_its_failure_is_reported_with_the_pods_words() {
        let writer = cluster();
        let (db, srv) = (database(true), server(true));
        let b = backup("nightly", 1_000, json!({}));
        let started = run(&writer, &b, Some(&db), Some(&srv), &[]);
        let status = started.status.clone().unwrap();
        let job = status.job.clone().unwrap();
        assert_eq!(job, job::job_name(Operation::Backup, "uid-nightly"));
        assert_eq!(
            status.destination.as_deref(),
            Some("s3://dumps/p/team/orders/nightly-1000.dump")
        );
        assert_eq!(started.again, Some(WATCH_JOB));
        let stored = writer.objects.borrow()
            [&("Job".to_owned(), Some("platform".to_owned()), job.clone())]
            .clone();
        assert_eq!(
            stored["spec"]["template"]["spec"]["containers"][0]["image"],
            "dbqo-backup:test"
        );
        // The Job fails; its Pod left our words.
        let mut failed = stored.clone();
        failed["status"] = json!({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]});
        writer.put("Job", "platform", &job, failed);
        writer.put(
            "Pod",
            "platform",
            "pod-1",
            json!({"metadata": {"name": "pod-1", "labels": {"job-name": job}},
                   "status": {"containerStatuses": [{"state": {"terminated": {"message": "pg_dump failed (authentication failed)"}}}]}}),
        );
        let b = backup("nightly", 1_000, serde_json::to_value(&status).unwrap());
        let outcome = run(&writer, &b, Some(&db), Some(&srv), &[]);
        assert_eq!(reason(&outcome), (Some(BackupPhase::Failed), "BackupFailed".into()));
        let message = &outcome.status.unwrap().conditions[0].message;
        assert!(
            message.contains("BackoffLimitExceeded") && message.contains("authentication failed"),
            "{message}"
        );
        assert_eq!(writer.events.borrow().last(), Some(&("BackupFailed".to_owned(), true)));
        let creates = writer.writes().iter().filter(|w| w.starts_with("create Job")).count();
        assert_eq!(creates, 1, "the Job is made once");
    }
}
