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
    runtime::reflector::{ObjectRef, Store},
    ResourceExt,
};

use crate::stopping::{Stop, StopRequests};
use crate::writer::{SecretChanged, SecretSubscription, WriterHandle};
use dbqo::api::database::{Database, DatabaseStatus};
use dbqo::api::server::DatabaseServer;
use dbqo::api::REQUESTED_AT_ANNOTATION;
use dbqo::backoff::backoff;
use dbqo::db::Connections;
use dbqo::provision::{
    admin::BudgetedSessions,
    database_pass::{DatabasePass, PassOutcome},
};
use dbqo::settings::Settings;
/// A converged `Database` is checked again this often (reads only): how
/// long a privilege changed by hand, or a database dropped by hand, lasts.
const RESYNC: Duration = Duration::from_secs(300);
/// Failed passes are retried at least this often.
const RETRY_CAP: Duration = Duration::from_secs(300);

/// The `Database` as the watch now has it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Changed(pub Box<Database>);

/// Something a pass reads changed: its `DatabaseServer` (or it appeared,
/// or went away), or one of its scheduled backups finished.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Look;

pub struct DatabaseActor {
    database: Database,
    writer: WriterHandle,
    settings: Arc<Settings>,
    connections: Connections,
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
        (settings, connections): (Arc<Settings>, Connections),
        servers: Store<DatabaseServer>,
    ) -> Self {
        let status = database.status.clone();
        Self {
            database,
            writer,
            settings,
            connections,
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
        let namespace =
            spec.namespace.clone().or_else(|| self.database.namespace()).unwrap_or_default();
        self.servers.get(&ObjectRef::new(&spec.name).within(&namespace))
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
        let pass = self.pass(version.is_some() && version == self.reset_done_for);
        ctx.spawn(pass.into_actor(self).map(move |outcome, act, ctx| {
            act.running = false;
            if outcome.reset_done {
                act.reset_done_for = version;
            }
            act.passed(outcome, ctx);
        }));
    }

    /// One pass over the `Database` as the actor has it now (owned: the
    /// pass runs beside the actor).
    fn pass(&self, reset_done: bool) -> impl std::future::Future<Output = PassOutcome> + 'static {
        let (database, server) = (self.database.clone(), self.server());
        let (writer, settings) = (self.writer.clone(), self.settings.clone());
        let (budget, status) = (self.connections.budget.clone(), self.status.clone());
        async move {
            let started = std::time::Instant::now();
            let outcome = DatabasePass {
                database: &database,
                server: server.as_deref(),
                writer: &writer,
                sessions: &BudgetedSessions(&budget),
                allow_cross_namespace_secrets: settings.allow_cross_namespace_secrets,
                status: status.as_ref(),
                reset_done,
                backups: &settings.backups,
                now: Time(k8s_openapi::jiff::Timestamp::now()),
            }
            .run()
            .await;
            tracing::debug!(database = %database.name_any(), namespace = ?database.namespace(), reason = ?outcome.reason, "database pass finished");
            crate::metrics::global().database_pass(outcome.error(), started.elapsed());
            outcome
        }
    }

    /// A pass ended: keep its status, follow its Secrets, and stop or arm
    /// the next pass (at once if a change came meanwhile).
    fn passed(&mut self, outcome: PassOutcome, ctx: &mut Context<Self>) {
        if let Some(status) = outcome.status {
            self.status = Some(status);
        }
        self.subscribe(outcome.secrets, ctx);
        if outcome.finished || self.stopping.pending() {
            ctx.stop();
            return;
        }
        let delay = if outcome.failed {
            self.failures += 1;
            backoff(self.failures, RETRY_CAP)
        } else {
            self.failures = 0;
            // A restore or backup under way, or the next scheduled backup.
            outcome.again.map_or(RESYNC, |again| again.min(RESYNC))
        };
        if std::mem::take(&mut self.again) {
            self.kick(ctx);
        } else {
            self.timer = Some(ctx.run_later(delay, |act, ctx| act.kick(ctx)));
        }
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
        // Only what a pass reads: spec, labels (the reset action), the
        // requested-at annotation, deletion, finalizers. Our own status
        // writes come back as changes too.
        let requested_at = |d: &Database| d.annotations().get(REQUESTED_AT_ANNOTATION).cloned();
        let relevant = database.metadata.generation != self.database.metadata.generation
            || database.labels() != self.database.labels()
            || requested_at(&database) != requested_at(&self.database)
            || database.metadata.deletion_timestamp != self.database.metadata.deletion_timestamp
            || database.finalizers() != self.database.finalizers();
        self.database = *database;
        if relevant {
            self.kick(ctx);
        }
    }
}

impl Handler<Look> for DatabaseActor {
    type Result = ();

    fn handle(&mut self, _: Look, ctx: &mut Context<Self>) {
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
