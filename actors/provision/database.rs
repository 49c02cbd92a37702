//! `DatabaseActor`: one per `Database`, for as long as it exists. It runs
//! provisioning passes one at a time (a change during a pass runs another
//! after it), on a change of the `Database`, of its server, of either
//! Secret, after a failure (with backoff) and every `RESYNC` to notice drift;
//! and the finalizer's clean-up when the `Database` is deleted.

use std::{sync::Arc, time::Duration};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseFuture,
    SpawnHandle, WrapFuture,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    api::ApiResource,
    runtime::reflector::{ObjectRef, Store},
    Resource, ResourceExt,
};
use serde_json::json;

use super::server;
use crate::stopping::{Stop, StopRequests};
use crate::writer::{SecretChanged, SecretSubscription, WriterHandle};
use dbqo::api::database::{Database, DatabaseDeletionPolicy, DatabaseStatus, Phase};
use dbqo::api::server::DatabaseServer;
use dbqo::api::FINALIZER;
use dbqo::kube_api::{DbqrEvent, KubeError, Target};
use dbqo::provision::{
    adopt::SecretFound,
    connect::admin_host,
    credentials::{self, Credentials},
    error::ServerError,
    reconcile::{carry_out, drop_owned, plan, ProvisionError, Provisioned},
    request::{resolve, Request},
    session::Claimant,
    status::{next_database_status, Verdict},
};
use dbqo::reconcile::{backoff::backoff, Writer};
use dbqo::settings::Settings;

/// The label that asks for a new password; removed when it is set.
pub const ACTION_LABEL: &str = "dbqo.dev/action";
pub const RESET_PASSWORD: &str = "reset-password";
/// A converged `Database` is checked again this often (reads only).
const RESYNC: Duration = Duration::from_secs(600);
/// Failed passes are retried at least this often.
const RETRY_CAP: Duration = Duration::from_secs(300);

/// The `Database` as the watch now has it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Changed(pub Box<Database>);

/// Its `DatabaseServer` changed (or appeared, or went away).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServerChanged;

pub struct DatabaseActor {
    database: Database,
    writer: WriterHandle,
    settings: Arc<Settings>,
    servers: Store<DatabaseServer>,
    running: bool,
    again: bool,
    failures: u32,
    timer: Option<SpawnHandle>,
    /// The status as last written (the watch copy may lag behind it).
    status: Option<DatabaseStatus>,
    /// Secrets whose changes this actor hears about.
    subscribed: Vec<(String, String)>,
    /// The resourceVersion of the copy whose reset label a pass acted on:
    /// the next pass may start before the watch brings the copy without
    /// the label, and must not reset the password a second time.
    reset_done_for: Option<String>,
    /// Asked to stop once its pass has finished (shutdown).
    stopping: StopRequests,
}

impl DatabaseActor {
    pub fn new(
        database: Database,
        writer: WriterHandle,
        settings: Arc<Settings>,
        servers: Store<DatabaseServer>,
    ) -> Self {
        let status = database.status.clone();
        Self {
            database,
            writer,
            settings,
            servers,
            running: false,
            again: false,
            failures: 0,
            timer: None,
            status,
            subscribed: Vec::new(),
            reset_done_for: None,
            stopping: StopRequests::default(),
        }
    }

    fn server(&self) -> Option<Arc<DatabaseServer>> {
        let spec = &self.database.spec.server_ref;
        let namespace = spec
            .namespace
            .clone()
            .or_else(|| self.database.namespace())
            .unwrap_or_default();
        self.servers
            .get(&ObjectRef::new(&spec.name).within(&namespace))
    }

    /// Runs a pass now, or right after the one running.
    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.stopping.pending() {
            return;
        }
        if self.running {
            self.again = true;
            return;
        }
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.running = true;
        let version = self.database.resource_version();
        let inputs = Inputs {
            database: self.database.clone(),
            server: self.server(),
            writer: self.writer.clone(),
            settings: self.settings.clone(),
            status: self.status.clone(),
            reset_done: version.is_some() && version == self.reset_done_for,
        };
        ctx.spawn(inputs.run().into_actor(self).map(move |result, act, ctx| {
            act.running = false;
            if result.reset_done {
                act.reset_done_for = version;
            }
            if let Some(status) = result.status {
                act.status = Some(status);
            }
            act.subscribe(result.secrets, ctx);
            if result.finished || act.stopping.pending() {
                ctx.stop();
                return;
            }
            let delay = if result.failed {
                act.failures += 1;
                backoff(act.failures, RETRY_CAP)
            } else {
                act.failures = 0;
                RESYNC
            };
            if std::mem::take(&mut act.again) {
                act.kick(ctx);
            } else {
                act.timer = Some(ctx.run_later(delay, |act, ctx| act.kick(ctx)));
            }
        }));
    }

    /// Hears about exactly `secrets` from now on.
    fn subscribe(&mut self, secrets: Vec<(String, String)>, ctx: &mut Context<Self>) {
        let me = ctx.address().recipient::<SecretChanged>();
        for old in &self.subscribed {
            if !secrets.contains(old) {
                self.writer
                    .secret_subscription(SecretSubscription::Unsubscribe(old.clone(), me.clone()));
            }
        }
        for new in &secrets {
            if !self.subscribed.contains(new) {
                self.writer
                    .secret_subscription(SecretSubscription::Subscribe(new.clone(), me.clone()));
            }
        }
        self.subscribed = secrets;
    }
}

impl Actor for DatabaseActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.kick(ctx);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.subscribe(Vec::new(), ctx);
        self.stopping.stopped();
    }
}

impl Handler<Changed> for DatabaseActor {
    type Result = ();

    fn handle(&mut self, Changed(database): Changed, ctx: &mut Context<Self>) {
        // Only what a pass reads: spec, labels (the reset action), deletion,
        // finalizers. Our own status writes come back as changes too.
        let relevant = database.metadata.generation != self.database.metadata.generation
            || database.labels() != self.database.labels()
            || database.metadata.deletion_timestamp != self.database.metadata.deletion_timestamp
            || database.finalizers() != self.database.finalizers();
        self.database = *database;
        if relevant {
            self.kick(ctx);
        }
    }
}

impl Handler<ServerChanged> for DatabaseActor {
    type Result = ();

    fn handle(&mut self, _: ServerChanged, ctx: &mut Context<Self>) {
        self.kick(ctx);
    }
}

impl Handler<SecretChanged> for DatabaseActor {
    type Result = ();

    fn handle(&mut self, _: SecretChanged, ctx: &mut Context<Self>) {
        self.kick(ctx);
    }
}

impl Handler<Stop> for DatabaseActor {
    type Result = ResponseFuture<()>;

    /// The answer comes once the actor has stopped.
    fn handle(&mut self, stop: Stop, ctx: &mut Context<Self>) -> Self::Result {
        let stopped = self.stopping.ask(stop);
        if stop == Stop::Now || !self.running {
            ctx.stop();
        }
        stopped
    }
}

/// What one pass works from (owned: the pass runs beside the actor).
struct Inputs {
    database: Database,
    server: Option<Arc<DatabaseServer>>,
    writer: WriterHandle,
    settings: Arc<Settings>,
    status: Option<DatabaseStatus>,
    /// The reset label of this copy was acted on already.
    reset_done: bool,
}

#[derive(Default)]
struct PassResult {
    /// This pass set a new password for the reset label.
    reset_done: bool,
    /// The status now written.
    status: Option<DatabaseStatus>,
    secrets: Vec<(String, String)>,
    failed: bool,
    /// The finalizer is removed: the actor's work is done.
    finished: bool,
}

fn resource() -> ApiResource {
    ApiResource::erase::<Database>(&())
}

fn secret_resource() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&())
}

/// A failure of a pass, with the phase and reason it is reported under.
struct Failure {
    phase: Phase,
    verdict: Verdict,
}

impl Failure {
    fn error(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            phase: Phase::Error,
            verdict: Verdict::failed(reason, message),
        }
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
        Self::error("KubernetesError", e.to_string())
    }
}

impl Inputs {
    fn namespace(&self) -> String {
        self.database.namespace().unwrap_or_default()
    }

    fn owner_reference(&self) -> serde_json::Value {
        json!({
            "apiVersion": "dbqo.dev/v1alpha1",
            "kind": "Database",
            "name": self.database.name_any(),
            "uid": self.database.uid().unwrap_or_default(),
            "controller": true,
            "blockOwnerDeletion": true,
        })
    }

    async fn event(&self, warning: bool, reason: &'static str, message: String) {
        let regarding = self.database.object_ref(&());
        let event = DbqrEvent {
            warning,
            reason,
            message,
        };
        if let Err(error) = self.writer.publish_event(&regarding, &event).await {
            tracing::debug!(%error, "event not published");
        }
    }

    async fn write_status(
        &self,
        phase: Phase,
        request: Option<&Request>,
        verdict: &Verdict,
    ) -> Option<DatabaseStatus> {
        let next = next_database_status(
            self.status.as_ref(),
            self.database.metadata.generation,
            phase,
            request.map(|r| (r.database.as_str(), r.username.as_str())),
            verdict,
            Time(k8s_openapi::jiff::Timestamp::now()),
        )?;
        // A new failure reason is announced once, with the status change.
        let before = self
            .status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .map(|c| c.reason.clone());
        if !verdict.ready && before.as_deref() != Some(verdict.reason) {
            self.event(true, verdict.reason, verdict.message.clone())
                .await;
        }
        let body = serde_json::to_value(&next).unwrap_or_default();
        match self
            .writer
            .patch_status(
                &resource(),
                &self.namespace(),
                &self.database.name_any(),
                &body,
            )
            .await
        {
            Ok(()) => Some(next),
            Err(error) => {
                tracing::debug!(%error, "status not written; retried with the next pass");
                None
            }
        }
    }

    async fn run(self) -> PassResult {
        let started = std::time::Instant::now();
        let mut result = PassResult::default();
        if self.database.metadata.deletion_timestamp.is_some() {
            return self.finalize().await;
        }
        if !self.database.finalizers().iter().any(|f| f == FINALIZER) {
            let mut finalizers = self.database.finalizers().to_vec();
            finalizers.push(FINALIZER.to_owned());
            let version = self.database.resource_version();
            if let Err(error) = self
                .writer
                .set_finalizers(
                    &resource(),
                    &self.namespace(),
                    &self.database.name_any(),
                    version.as_deref(),
                    &finalizers,
                )
                .await
            {
                tracing::debug!(%error, "finalizer not added yet");
                result.failed = true;
                return result;
            }
        }
        let outcome = self.provision(&mut result.secrets).await;
        result.reset_done = matches!(&outcome, Ok((_, done)) if done.new_password);
        let (phase, request, verdict) = match &outcome {
            Ok((request, _)) => (
                Phase::Ready,
                Some(request),
                Verdict::ready("the database, its user and the credentials Secret are ready"),
            ),
            Err((request, failure)) => (failure.phase, request.as_ref(), failure.verdict.clone()),
        };
        result.failed = !verdict.ready && phase != Phase::Pending;
        result.status = self.write_status(phase, request, &verdict).await;
        tracing::debug!(
            database = %self.database.name_any(),
            namespace = %self.namespace(),
            reason = verdict.reason,
            "database pass finished"
        );
        crate::metrics::global().database_pass(
            (!verdict.ready).then_some(verdict.reason),
            started.elapsed(),
        );
        result
    }

    /// One provisioning pass: the request, the Secrets, the server, the
    /// credentials Secret, the reset label.
    async fn provision(
        &self,
        secrets: &mut Vec<(String, String)>,
    ) -> Result<(Request, Provisioned), (Option<Request>, Failure)> {
        let namespace = self.namespace();
        let Some(server) = &self.server else {
            let spec = &self.database.spec.server_ref;
            return Err((
                None,
                Failure {
                    phase: Phase::Pending,
                    verdict: Verdict::failed(
                        "ServerNotFound",
                        format!(
                            "DatabaseServer {}/{} not found",
                            spec.namespace.as_deref().unwrap_or(&namespace),
                            spec.name
                        ),
                    ),
                },
            ));
        };
        let request = resolve(&self.database, server)
            .map_err(|e| (None, Failure::error(e.reason(), e.to_string())))?;
        let fail = |failure: Failure| (Some(request.clone()), failure);

        let admin_key = server::admin_secret(server);
        let credentials_key = (namespace.clone(), request.secret_name.clone());
        *secrets = vec![admin_key, credentials_key.clone()];
        let info = server::admin_connection(server, &self.writer, &self.settings)
            .await
            .map_err(|e| fail(e.into()))?;
        let existing = self
            .writer
            .read_secret(&credentials_key.0, &credentials_key.1)
            .await
            .map_err(|e| fail(e.into()))?;
        let uid = self.database.uid().unwrap_or_default();
        let found = credentials::found(existing.as_ref(), &uid);
        let reset = !self.reset_done
            && self
                .database
                .labels()
                .get(ACTION_LABEL)
                .is_some_and(|a| a == RESET_PASSWORD);

        let host = server
            .spec
            .client_endpoint
            .as_ref()
            .map(|e| e.host.clone())
            .unwrap_or_else(|| admin_host(&info));
        let default_port = if request.engine.is_mysql_family() {
            3306
        } else {
            5432
        };
        let port = server
            .spec
            .client_endpoint
            .as_ref()
            .and_then(|e| e.port)
            .or_else(|| info.config.get_ports().first().copied())
            .unwrap_or(default_port);
        let sslmode = info.effective_ssl_mode().as_str().to_owned();

        let mut session = server::session(request.engine, info, &self.settings)
            .await
            .map_err(|e| fail(e.into()))?;
        let claimant = Claimant {
            uid: uid.clone(),
            name: format!("{namespace}/{}", self.database.name_any()),
        };
        let planned = plan(
            &mut session,
            &request,
            &claimant,
            &found,
            reset,
            &server.spec.password_policy,
        )
        .await
        .map_err(|e| fail(e.into()))?;

        // The Secret first: a pass failing after the password is set on the
        // server must find it in the Secret.
        let data = Credentials {
            engine: request.engine,
            host,
            port,
            dbname: request.database.clone(),
            username: request.username.clone(),
            password: planned.password.clone(),
            sslmode,
        }
        .data();
        let target = Target {
            resource: secret_resource(),
            namespace: Some(namespace.clone()),
            name: request.secret_name.clone(),
        };
        let manifest = credentials::manifest(
            &namespace,
            &request.secret_name,
            &self.owner_reference(),
            &data,
        );
        match (&found, &existing) {
            (SecretFound::Absent, _) => match self.writer.create(&target, &manifest).await {
                Ok(()) => {}
                Err(KubeError::Api { code: 409, .. }) => {
                    return Err(fail(Failure::error(
                        "AlreadyExists",
                        format!(
                            "Secret {:?} already exists and is not managed by this Database",
                            request.secret_name
                        ),
                    )))
                }
                Err(e) => return Err(fail(e.into())),
            },
            (_, Some(current)) if credentials::unchanged(&current.data, &data) => {}
            _ => self
                .writer
                .apply(&target, &manifest)
                .await
                .map_err(|e| fail(e.into()))?,
        }
        let done = carry_out(&mut session, &request, &planned)
            .await
            .map_err(|e| fail(e.into()))?;
        drop(session);
        self.announce(&request, &done).await;
        if reset {
            let patch = json!({"metadata": {"labels": {ACTION_LABEL: null}}});
            let me = Target {
                resource: resource(),
                namespace: Some(namespace.clone()),
                name: self.database.name_any(),
            };
            self.writer
                .merge_patch(&me, &patch)
                .await
                .map_err(|e| fail(e.into()))?;
        }
        Ok((request, done))
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
        if !created.is_empty() {
            self.event(
                false,
                "Created",
                format!("created {}", created.join(" and ")),
            )
            .await;
        } else if done.new_password {
            self.event(
                false,
                "PasswordReset",
                format!(
                    "a new password for user {:?} is set and in Secret {:?}",
                    request.username, request.secret_name
                ),
            )
            .await;
        }
        if done.privileges_changed && !done.created_user {
            self.event(
                false,
                "PrivilegesChanged",
                format!(
                    "privileges of {:?} on {:?} are now {}",
                    request.username,
                    request.database,
                    request.privileges_text()
                ),
            )
            .await;
        }
        if !done.extensions_created.is_empty() {
            self.event(
                false,
                "ExtensionsCreated",
                format!("created extensions {}", done.extensions_created.join(", ")),
            )
            .await;
        }
    }

    /// The finalizer: honours `deletionPolicy`, then lets the `Database` go.
    async fn finalize(self) -> PassResult {
        let mut result = PassResult::default();
        if !self.database.finalizers().iter().any(|f| f == FINALIZER) {
            result.finished = true;
            return result;
        }
        let namespace = self.namespace();
        let request = self
            .server
            .as_ref()
            .and_then(|server| resolve(&self.database, server).ok());
        let wants_delete = self.database.spec.deletion_policy == DatabaseDeletionPolicy::Delete;
        let allowed = self.server.as_ref().is_some_and(|s| s.spec.allow_delete);
        match (&request, wants_delete && allowed) {
            (Some(request), true) => {
                if let Err(failure) = self.drop_database(request).await {
                    result.failed = true;
                    result.status = self
                        .write_status(Phase::Deleting, Some(request), &failure.verdict)
                        .await;
                    return result;
                }
                self.event(
                    false,
                    "Dropped",
                    format!(
                        "dropped database {:?} and user {:?}",
                        request.database, request.username
                    ),
                )
                .await;
            }
            _ => {
                // Retained: the Secret outlives the Database (no owner reference).
                let name = self
                    .database
                    .spec
                    .credentials_secret
                    .clone()
                    .unwrap_or_else(|| format!("{}-credentials", self.database.name_any()));
                let secret = self.writer.read_secret(&namespace, &name).await;
                let uid = self.database.uid().unwrap_or_default();
                if let Ok(Some(secret)) = &secret {
                    if secret.owners.contains(&uid) {
                        let target = Target {
                            resource: secret_resource(),
                            namespace: Some(namespace.clone()),
                            name: name.clone(),
                        };
                        let patch = json!({"metadata": {"ownerReferences": null}});
                        if let Err(e) = self.writer.merge_patch(&target, &patch).await {
                            result.failed = true;
                            let failure = Failure::from(e);
                            result.status = self
                                .write_status(Phase::Deleting, request.as_ref(), &failure.verdict)
                                .await;
                            return result;
                        }
                    }
                }
                let what = match &request {
                    Some(r) => format!("database {:?} and user {:?}", r.database, r.username),
                    None => "the database and its user".to_owned(),
                };
                let why = if wants_delete {
                    "; the server does not allow Delete (spec.allowDelete) or is not known"
                } else {
                    ""
                };
                self.event(
                    wants_delete,
                    "Retained",
                    format!("{what} retained on the server, Secret {name:?} kept{why}"),
                )
                .await;
            }
        }
        let finalizers: Vec<String> = self
            .database
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect();
        let version = self.database.resource_version();
        match self
            .writer
            .set_finalizers(
                &resource(),
                &namespace,
                &self.database.name_any(),
                version.as_deref(),
                &finalizers,
            )
            .await
        {
            Ok(()) | Err(KubeError::Api { code: 404, .. }) => result.finished = true,
            Err(error) => {
                tracing::debug!(%error, "finalizer not removed yet");
                result.failed = true;
            }
        }
        result
    }

    async fn drop_database(&self, request: &Request) -> Result<(), Failure> {
        let server = self.server.as_ref().expect("checked by the caller");
        let mut session = server::admin_session(server, &self.writer, &self.settings).await?;
        drop_owned(
            &mut session,
            request,
            &self.database.uid().unwrap_or_default(),
        )
        .await?;
        Ok(())
    }
}
