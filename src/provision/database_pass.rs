//! One pass over a `Database`: the finalizer, the request against its
//! server, the credentials Secret, the statements, the status (an Event
//! when its reason is new) and the reset label; or, once it is deleted, the
//! clean-up its `deletionPolicy` asks for and the finalizer's removal.
//! Generic over the writer and the admin sessions: the actor runs it with
//! the real ones, the unit tests with in-memory ones.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::ApiResource, Resource, ResourceExt};
use serde_json::json;

use super::admin::{admin_connection, Sessions};
use super::adopt::SecretFound;
use super::connect::admin_host;
use super::credentials::{self, Credentials};
use super::error::ServerError;
use super::reconcile::{
    carry_out, drop_owned, plan, ProvisionError, Provisioned, ProvisionedNames,
};
use super::request::{resolve, Request};
use super::session::{Claimant, Session};
use super::status::{next_database_status, BackupProgress, Observed, Verdict, READY};
use crate::api::database::{Database, DatabaseDeletionPolicy, DatabaseStatus, Phase};
use crate::api::server::DatabaseServer;
use crate::api::server::Engine;
use crate::api::REQUESTED_AT_ANNOTATION;
use crate::backup::database::{BackupSettings, Restore, Step, StepError};
use crate::controller::{
    condition::{self, Status},
    finalizer, owner,
};
use crate::db::{ConnInfo, RootCert};
use crate::kube_api::Cluster;
use crate::kube_api::{KubeError, NewEvent, SecretData, Target};

/// The label that asks for a new password; removed when it is set.
pub const ACTION_LABEL: &str = "dbqo.dev/action";
pub const RESET_PASSWORD: &str = "reset-password";

/// What one pass works from.
pub struct DatabasePass<'a, W, S> {
    pub database: &'a Database,
    /// Its `DatabaseServer`, if the watch has it.
    pub server: Option<&'a DatabaseServer>,
    pub writer: &'a W,
    pub sessions: &'a S,
    pub allow_cross_namespace_secrets: bool,
    /// The status as last written (the watch copy may lag behind it).
    pub status: Option<&'a DatabaseStatus>,
    /// The reset label of this copy was acted on already.
    pub reset_done: bool,
    /// How backups run (image, shortest schedule interval).
    pub backups: &'a BackupSettings,
    pub now: Time,
}

/// What a pass came to.
#[derive(Debug, Default)]
pub struct PassOutcome {
    /// This pass set a new password for the reset label.
    pub reset_done: bool,
    /// The status now written.
    pub status: Option<DatabaseStatus>,
    /// The Secrets (namespace, name) whose changes should run a pass.
    pub secrets: Vec<(String, String)>,
    /// Retry with backoff.
    pub failed: bool,
    /// The finalizer is removed: there is nothing left to do.
    pub finished: bool,
    /// The reason of the `Ready` condition, when it is not Ready.
    pub reason: Option<&'static str>,
    /// Not Ready because a Job (a restore, a backup before a delete) is
    /// under way: neither a failure nor done.
    pub under_way: bool,
    /// Run the next pass after this long (a restore or a backup under way,
    /// the next scheduled backup), if sooner than the resync.
    pub again: Option<std::time::Duration>,
}

impl PassOutcome {
    /// The reason this pass failed; none for a pass that succeeded or
    /// waits on a Job under way.
    pub fn error(&self) -> Option<&'static str> {
        self.reason.filter(|_| !self.under_way)
    }
}

/// A failure of a pass, with the phase it is reported under.
struct Failure {
    phase: Phase,
    verdict: Verdict,
    /// Not a failure but work under way: look again after this long.
    again: Option<std::time::Duration>,
}

impl Failure {
    fn error(reason: &'static str, message: impl Into<String>) -> Self {
        Self { phase: Phase::Error, verdict: Verdict::failed(reason, message), again: None }
    }

    /// Work under way (a restore, a backup before a delete).
    fn under_way(phase: Phase, reason: &'static str, message: String) -> Self {
        Self {
            phase,
            verdict: Verdict::new(Status::Unknown, reason, message),
            again: Some(crate::backup::pass::WATCH_JOB),
        }
    }
}

impl From<StepError> for Failure {
    fn from(e: StepError) -> Self {
        Self::error(e.reason, e.message)
    }
}

impl From<ProvisionError> for Failure {
    fn from(e: ProvisionError) -> Self {
        Self::error(e.reason(), e.to_string())
    }
}

impl From<ServerError> for Failure {
    fn from(e: ServerError) -> Self {
        Self::error(e.reason(), e.to_string())
    }
}

impl From<KubeError> for Failure {
    fn from(e: KubeError) -> Self {
        Self::error(e.reason(), e.to_string())
    }
}

/// A failed pass: what it got as far as (the request, if resolved) and why.
type Failed = (Option<Request>, Failure);

fn resource() -> ApiResource {
    ApiResource::erase::<Database>(&())
}

fn secret_resource() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&())
}

/// Where applications reach the server, and with which sslmode.
struct Endpoint {
    host: String,
    port: u16,
    sslmode: String,
}

impl Endpoint {
    fn of(server: &DatabaseServer, request: &Request, info: &ConnInfo) -> Self {
        let client = server.spec.client_endpoint.as_ref();
        let default_port = if request.engine.is_mysql_family() { 3306 } else { 5432 };
        Self {
            host: client.map(|e| e.host.clone()).unwrap_or_else(|| admin_host(info)),
            port: client
                .and_then(|e| e.port)
                .or_else(|| info.config.get_ports().first().copied())
                .unwrap_or(default_port),
            sslmode: info.effective_ssl_mode().as_str().to_owned(),
        }
    }
}

impl<W: Cluster, S: Sessions> DatabasePass<'_, W, S> {
    pub async fn run(self) -> PassOutcome {
        if self.database.metadata.deletion_timestamp.is_some() {
            return self.finalize().await;
        }
        let mut outcome = PassOutcome::default();
        if let Err(error) = finalizer::add(self.writer, &resource(), &self.database.metadata).await
        {
            tracing::debug!(%error, "finalizer not added yet");
            outcome.failed = true;
            outcome.reason = Some(error.reason());
            return outcome;
        }
        let mut creating = None;
        let mut progress = BackupProgress::of(self.status);
        let mut provisioned =
            self.provision(&mut outcome.secrets, &mut creating, &mut progress).await;
        if let Ok((request, _)) = &provisioned {
            match self.schedule(&mut progress).await {
                Ok(next) => outcome.again = next,
                Err(failure) => provisioned = Err((Some(request.clone()), failure)),
            }
        }
        outcome.reset_done = matches!(&provisioned, Ok((_, done)) if done.new_password);
        let (phase, request, verdict) = match &provisioned {
            Ok((request, _)) => (
                Phase::Ready,
                Some(request),
                Verdict::ready("the database, its user and the credentials Secret are ready"),
            ),
            Err((request, failure)) => {
                outcome.again = failure.again.or(outcome.again);
                (failure.phase, request.as_ref(), failure.verdict.clone())
            }
        };
        outcome.under_way = matches!(&provisioned, Err((_, f)) if f.again.is_some());
        outcome.failed = !verdict.holds() && phase != Phase::Pending && !outcome.under_way;
        outcome.reason = (!verdict.holds()).then_some(verdict.reason);
        let before = creating.as_ref().or(self.status);
        outcome.status =
            self.write_status(before, phase, request, &verdict, Some(&progress)).await.or(creating);
        outcome
    }

    /// Scheduled backups: the one due created, those beyond the retention
    /// deleted; how long until the next is due.
    async fn schedule(
        &self,
        progress: &mut BackupProgress,
    ) -> Result<Option<std::time::Duration>, Failure> {
        let Some(server) = self.server else { return Ok(None) };
        let now = chrono::DateTime::from_timestamp(self.now.0.as_second(), 0).unwrap_or_default();
        let (next, pruned) = crate::backup::database::schedule(
            self.writer,
            self.database,
            server,
            progress,
            (now, self.backups.min_interval),
        )
        .await?;
        if pruned > 0 {
            let message =
                format!("{pruned} scheduled backups beyond the retention deleted with their dumps");
            self.event(false, crate::reason::BACKUPS_PRUNED, message).await;
        }
        Ok(next)
    }

    fn namespace(&self) -> String {
        self.database.namespace().unwrap_or_default()
    }

    fn uid(&self) -> String {
        self.database.uid().unwrap_or_default()
    }

    async fn event(&self, warning: bool, reason: &'static str, message: String) {
        let event = NewEvent { warning, reason, message };
        self.publish(event).await;
    }

    async fn publish(&self, event: NewEvent) {
        let regarding = self.database.object_ref(&());
        if let Err(error) = self.writer.publish_event(&regarding, &event).await {
            tracing::debug!(%error, "event not published");
        }
    }

    /// Writes the status if it changed (a failure's new reason announced
    /// once, with it); the status written, `None` if nothing was.
    async fn write_status(
        &self,
        before: Option<&DatabaseStatus>,
        phase: Phase,
        request: Option<&Request>,
        verdict: &Verdict,
        progress: Option<&BackupProgress>,
    ) -> Option<DatabaseStatus> {
        let requested_at = self.database.annotations().get(REQUESTED_AT_ANNOTATION);
        let observed = Observed {
            generation: self.database.metadata.generation,
            names: request.map(|r| (r.database.as_str(), r.username.as_str())),
            requested_at: requested_at.map(String::as_str),
            progress,
        };
        let next = next_database_status(before, phase, observed, verdict, self.now.clone())?;
        let before = before.and_then(|s| condition::find(&s.conditions, READY));
        let message = verdict.message.clone();
        if let Some(event) = condition::event_on_new_reason(before, verdict, Status::False, message)
        {
            if event.warning {
                self.publish(event).await;
            }
        }
        let body = serde_json::to_value(&next).unwrap_or_default();
        let name = self.database.name_any();
        match self.writer.patch_status(&resource(), &self.namespace(), &name, &body).await {
            Ok(()) => Some(next),
            Err(error) => {
                tracing::debug!(%error, "status not written; retried with the next pass");
                None
            }
        }
    }

    /// One provisioning pass: the request, the Secrets, the server, the
    /// credentials Secret, the statements, the reset label.
    /// `creating`: the status written when the pass started creating.
    async fn provision(
        &self,
        secrets: &mut Vec<(String, String)>,
        creating: &mut Option<DatabaseStatus>,
        progress: &mut BackupProgress,
    ) -> Result<(Request, Provisioned), Failed> {
        let server = self.server.ok_or_else(|| (None, self.server_not_found()))?;
        let request = resolve(self.database, server)
            .map_err(|e| (None, Failure::error(e.reason(), e.to_string())))?;
        // The names go into the status once the records give them to this
        // Database (the plan succeeded): from then on they cannot change.
        let early = |failure: Failure| (None, failure);
        let fail = |failure: Failure| (Some(request.clone()), failure);

        let credentials_key = (self.namespace(), request.secret_name.clone());
        *secrets = vec![super::admin::admin_secret(server), credentials_key.clone()];
        let info = admin_connection(server, self.writer, self.allow_cross_namespace_secrets)
            .await
            .map_err(|e| early(e.into()))?;
        let existing = self
            .writer
            .read_secret(&credentials_key.0, &credentials_key.1)
            .await
            .map_err(|e| early(e.into()))?;
        let found = credentials::found(existing.as_ref(), &self.uid());
        let reset = !self.reset_done
            && self.database.labels().get(ACTION_LABEL).is_some_and(|a| a == RESET_PASSWORD);
        let endpoint = Endpoint::of(server, &request, &info);
        let ca = match &info.root_cert {
            Some(RootCert::Pem(pem)) => String::from_utf8(pem.clone()).ok(),
            _ => None,
        };

        let mut session =
            self.sessions.open(request.engine, info).await.map_err(|e| early(e.into()))?;
        let claimant = Claimant {
            uid: self.uid(),
            name: format!("{}/{}", self.namespace(), self.database.name_any()),
        };
        let policy = &server.spec.password_policy;
        let before = self.provisioned_names();
        let planned =
            plan(&mut session, &request, &claimant, (&found, reset), before.as_ref(), policy)
                .await
                .map_err(|e| early(e.into()))?;
        if (planned.create_database || planned.create_user) && !self.in_phase(Phase::Creating) {
            let message =
                format!("creating database {:?} and user {:?}", request.database, request.username);
            let verdict = Verdict::new(Status::Unknown, crate::reason::CREATING, message);
            *creating = self
                .write_status(self.status, Phase::Creating, Some(&request), &verdict, None)
                .await;
        }
        // The Secret first: a pass failing after the password is set on the
        // server must find it in the Secret.
        let credentials = Credentials {
            engine: request.engine,
            host: endpoint.host,
            port: endpoint.port,
            dbname: request.database.clone(),
            username: request.username.clone(),
            password: planned.password.clone(),
            sslmode: endpoint.sslmode,
            ca,
        };
        self.write_credentials(&request, &found, existing.as_ref(), &credentials)
            .await
            .map_err(fail)?;
        let done = carry_out(&mut session, &request, &planned).await.map_err(|e| fail(e.into()))?;
        let restore = Restore {
            writer: self.writer,
            database: self.database,
            server,
            names: (&request.database, &request.username),
            created_now: done.created_database && !done.recreated,
            image: &self.backups.image,
        };
        if restore.starts(progress) && request.engine == Engine::Postgres {
            // pg_restore --role: the admin acts as the user.
            let joins = super::sql::pg_admin_joins(&request.username);
            session.execute(&[joins]).await.map_err(|e| fail(e.into()))?;
        }
        drop(session);
        self.announce(&request, &done).await;
        if reset {
            self.clear_reset_label().await.map_err(|e| fail(e.into()))?;
        }
        let was_restoring = crate::backup::database::restoring(progress);
        match restore.step(progress).await.map_err(|e| fail(e.into()))? {
            Step::Done => {
                if was_restoring {
                    let message = format!("database {:?} holds its backup", request.database);
                    self.event(false, crate::reason::RESTORED, message).await;
                }
            }
            Step::Running(message) => {
                let restoring = crate::reason::RESTORING;
                return Err(fail(Failure::under_way(Phase::Creating, restoring, message)));
            }
            Step::Failed(message) => {
                return Err(fail(Failure::error(crate::reason::RESTORE_FAILED, message)))
            }
        }
        Ok((request, done))
    }

    /// The names the status says this `Database` was provisioned under.
    fn provisioned_names(&self) -> Option<ProvisionedNames> {
        let status = self.status?;
        Some(ProvisionedNames {
            database: status.database_name.clone()?,
            username: status.username.clone()?,
        })
    }

    fn in_phase(&self, phase: Phase) -> bool {
        self.status.is_some_and(|s| s.phase == Some(phase))
    }

    fn server_not_found(&self) -> Failure {
        let spec = &self.database.spec.server_ref;
        let namespace = spec.namespace.clone().unwrap_or_else(|| self.namespace());
        Failure {
            phase: Phase::Pending,
            verdict: Verdict::failed(
                crate::reason::SERVER_NOT_FOUND,
                format!("DatabaseServer {namespace}/{} not found", spec.name),
            ),
            again: None,
        }
    }

    /// Creates the credentials Secret, or updates it when its data differs.
    /// A Secret of that name the `Database` does not own is left alone.
    async fn write_credentials(
        &self,
        request: &Request,
        found: &SecretFound,
        existing: Option<&SecretData>,
        credentials: &Credentials,
    ) -> Result<(), Failure> {
        let namespace = self.namespace();
        let data = credentials
            .data(&request.secret_template)
            .map_err(|e| Failure::error(e.reason(), e.to_string()))?;
        let target = Target {
            resource: secret_resource(),
            namespace: Some(namespace.clone()),
            name: request.secret_name.clone(),
        };
        let owner = owner::controller_reference::<Database>(&self.database.name_any(), &self.uid());
        let manifest = credentials::manifest(&namespace, &request.secret_name, &owner, &data);
        match (found, existing) {
            (SecretFound::Absent, _) => match self.writer.create(&target, &manifest).await {
                Ok(()) => Ok(()),
                Err(e) if e.is_conflict() => Err(Failure::error(
                    crate::reason::ALREADY_EXISTS,
                    format!(
                        "Secret {:?} already exists and is not managed by this Database",
                        request.secret_name
                    ),
                )),
                Err(e) => Err(e.into()),
            },
            (_, Some(current)) if credentials::unchanged(&current.data, &data) => Ok(()),
            _ => Ok(self.writer.apply(&target, &manifest).await?),
        }
    }

    async fn clear_reset_label(&self) -> Result<(), KubeError> {
        let patch = json!({"metadata": {"labels": {ACTION_LABEL: null}}});
        let me = Target {
            resource: resource(),
            namespace: Some(self.namespace()),
            name: self.database.name_any(),
        };
        self.writer.merge_patch(&me, &patch).await
    }

    /// Events for what a pass changed (never the password itself).
    async fn announce(&self, request: &Request, done: &Provisioned) {
        let mut created = Vec::new();
        if done.created_database {
            created.push(format!("database {:?}", request.database));
        }
        if done.created_user {
            created.push(format!("user {:?}", request.username));
        }
        if !created.is_empty() && done.recreated {
            let message = format!(
                "created {} again: dropped outside the operator (the Secret's password kept)",
                created.join(" and ")
            );
            self.event(true, crate::reason::RECREATED, message).await;
        } else if !created.is_empty() {
            let message = format!("created {}", created.join(" and "));
            self.event(false, crate::reason::CREATED, message).await;
        } else if done.new_password {
            let message = format!(
                "a new password for user {:?} is set and in Secret {:?}",
                request.username, request.secret_name
            );
            self.event(false, crate::reason::PASSWORD_RESET, message).await;
        }
        if done.privileges_changed && !done.created_user {
            let message = format!(
                "privileges of {:?} on {:?} are now {}",
                request.username,
                request.database,
                request.privileges_text()
            );
            self.event(false, crate::reason::PRIVILEGES_CHANGED, message).await;
        }
        if done.privileges_restored {
            let message = format!(
                "privileges of {:?} on {:?} were changed outside the operator; set back to {}",
                request.username,
                request.database,
                request.privileges_text()
            );
            self.event(true, crate::reason::PRIVILEGES_RESTORED, message).await;
        }
        if !done.extensions_created.is_empty() {
            let message = format!("created extensions {}", done.extensions_created.join(", "));
            self.event(false, crate::reason::EXTENSIONS_CREATED, message).await;
        }
    }

    /// The finalizer: honours `deletionPolicy`, then lets the `Database` go.
    async fn finalize(self) -> PassOutcome {
        let mut outcome = PassOutcome::default();
        if !finalizer::has(&self.database.metadata) {
            outcome.finished = true;
            return outcome;
        }
        // What was provisioned, by the names the status holds (a refused
        // rename left the spec's names pointing elsewhere).
        let request = self.server.and_then(|s| resolve(self.database, s).ok()).map(|mut r| {
            if let Some(names) = self.provisioned_names() {
                r.database = names.database;
                r.username = names.username;
            }
            r
        });
        let policy = self.database.spec.deletion_policy;
        let wants_delete = policy != DatabaseDeletionPolicy::Retain;
        let allowed = self.server.is_some_and(|s| s.spec.allow_delete);
        let cleaned = match (&request, wants_delete && allowed) {
            (Some(request), true) => self.backup_then_drop(request, policy).await,
            _ => self.retain(request.as_ref(), wants_delete).await,
        };
        if let Err(failure) = cleaned {
            outcome.again = failure.again;
            outcome.under_way = failure.again.is_some();
            outcome.failed = !outcome.under_way;
            outcome.reason = Some(failure.verdict.reason);
            outcome.status = self
                .write_status(
                    self.status,
                    Phase::Deleting,
                    request.as_ref(),
                    &failure.verdict,
                    None,
                )
                .await;
            return outcome;
        }
        match finalizer::remove(self.writer, &resource(), &self.database.metadata).await {
            Ok(()) => outcome.finished = true,
            Err(error) => {
                tracing::debug!(%error, "finalizer not removed yet");
                outcome.failed = true;
                outcome.reason = Some(error.reason());
            }
        }
        outcome
    }

    /// `BackupThenDelete`: the dump first, complete; then as `Delete`.
    async fn backup_then_drop(
        &self,
        request: &Request,
        policy: DatabaseDeletionPolicy,
    ) -> Result<(), Failure> {
        if policy == DatabaseDeletionPolicy::BackupThenDelete {
            match crate::backup::database::before_delete(self.writer, self.database).await? {
                Step::Done => {}
                Step::Running(message) => {
                    let reason = crate::reason::BACKING_UP;
                    return Err(Failure::under_way(Phase::Deleting, reason, message));
                }
                Step::Failed(message) => {
                    return Err(Failure::error(crate::reason::BACKUP_FAILED, message))
                }
            }
        }
        self.drop_database(request).await
    }

    /// `deletionPolicy: Delete` on a server that allows it: the database and
    /// the user go, if the records say they are this `Database`'s.
    async fn drop_database(&self, request: &Request) -> Result<(), Failure> {
        let server = self.server.ok_or_else(|| self.server_not_found())?;
        let info =
            admin_connection(server, self.writer, self.allow_cross_namespace_secrets).await?;
        let mut session = self.sessions.open(server.spec.engine, info).await?;
        drop_owned(&mut session, request, &self.uid()).await?;
        let message =
            format!("dropped database {:?} and user {:?}", request.database, request.username);
        self.event(false, crate::reason::DROPPED, message).await;
        Ok(())
    }

    /// Everything stays on the server; the credentials Secret outlives the
    /// `Database` (its owner reference removed).
    async fn retain(&self, request: Option<&Request>, wants_delete: bool) -> Result<(), Failure> {
        let namespace = self.namespace();
        let name = self
            .database
            .spec
            .credentials_secret
            .clone()
            .unwrap_or_else(|| format!("{}-credentials", self.database.name_any()));
        if let Ok(Some(secret)) = self.writer.read_secret(&namespace, &name).await {
            if secret.owners.contains(&self.uid()) {
                let target = Target {
                    resource: secret_resource(),
                    namespace: Some(namespace.clone()),
                    name: name.clone(),
                };
                let patch = json!({"metadata": {"ownerReferences": null}});
                self.writer.merge_patch(&target, &patch).await?;
            }
        }
        let what = match request {
            Some(r) => format!("database {:?} and user {:?}", r.database, r.username),
            None => "the database and its user".to_owned(),
        };
        let why = if wants_delete {
            "; the server does not allow Delete (spec.allowDelete) or is not known"
        } else {
            ""
        };
        let message = format!("{what} retained on the server, Secret {name:?} kept{why}");
        self.event(wants_delete, crate::reason::RETAINED, message).await;
        Ok(())
    }
}
