//! `BackupActor`: one per `DatabaseBackup` until it is complete (or
//! deleted). It runs the backup's passes one at a time: at start, on a
//! change, while its Job runs or it waits (every few seconds), after a
//! failure (with backoff); and the finalizer's clean-up once it is deleted.

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
use crate::writer::WriterHandle;
use dbqo::api::backup::DatabaseBackup;
use dbqo::api::database::Database;
use dbqo::api::server::DatabaseServer;
use dbqo::backoff::backoff;
use dbqo::backup::pass::{BackupOutcome, BackupPass};
use dbqo::settings::Settings;

/// Failed passes are retried at least this often.
const RETRY_CAP: Duration = Duration::from_secs(300);

/// The `DatabaseBackup` as the watch now has it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BackupChanged(pub Box<DatabaseBackup>);

/// The watch stores a pass reads from.
#[derive(Clone)]
pub struct Stores {
    pub backups: Store<DatabaseBackup>,
    pub databases: Store<Database>,
    pub servers: Store<DatabaseServer>,
}

pub struct BackupActor {
    backup: DatabaseBackup,
    writer: WriterHandle,
    settings: Arc<Settings>,
    stores: Stores,
    running: bool,
    again: bool,
    failures: u32,
    timer: Option<SpawnHandle>,
    stopping: StopRequests,
}

impl BackupActor {
    pub fn new(
        backup: DatabaseBackup,
        writer: WriterHandle,
        settings: Arc<Settings>,
        stores: Stores,
    ) -> Self {
        Self {
            backup,
            writer,
            settings,
            stores,
            running: false,
            again: false,
            failures: 0,
            timer: None,
            stopping: StopRequests::default(),
        }
    }

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
        ctx.spawn(self.pass().into_actor(self).map(|outcome, act, ctx| {
            act.running = false;
            act.passed(outcome, ctx);
        }));
    }

    /// One pass over the backup as the actor has it now, with what the
    /// watches hold of its `Database`, that one's server and its siblings.
    fn pass(&self) -> impl std::future::Future<Output = BackupOutcome> + 'static {
        let backup = self.backup.clone();
        let namespace = backup.namespace().unwrap_or_default();
        let database = self
            .stores
            .databases
            .get(&ObjectRef::new(&backup.spec.database_ref.name).within(&namespace));
        let server = database.as_ref().and_then(|d| {
            let reference = &d.spec.server_ref;
            let server_ns = reference.namespace.clone().unwrap_or_else(|| namespace.clone());
            self.stores.servers.get(&ObjectRef::new(&reference.name).within(&server_ns))
        });
        let siblings: Vec<DatabaseBackup> = self
            .stores
            .backups
            .state()
            .iter()
            .filter(|b| b.namespace().as_deref() == Some(&namespace))
            .map(|b| (**b).clone())
            .collect();
        let (writer, settings) = (self.writer.clone(), self.settings.clone());
        async move {
            let outcome = BackupPass {
                backup: &backup,
                database: database.as_deref(),
                server: server.as_deref(),
                siblings: &siblings,
                writer: &writer,
                image: &settings.backups.image,
                now: Time(k8s_openapi::jiff::Timestamp::now()),
            }
            .run()
            .await;
            tracing::debug!(backup = %backup.name_any(), %namespace, again = ?outcome.again, "backup pass finished");
            outcome
        }
    }

    fn passed(&mut self, outcome: BackupOutcome, ctx: &mut Context<Self>) {
        if let Some(status) = outcome.status {
            self.backup.status = Some(status);
        }
        if outcome.finished || self.stopping.pending() {
            ctx.stop();
            return;
        }
        let delay = if outcome.failed {
            self.failures += 1;
            Some(backoff(self.failures, RETRY_CAP))
        } else {
            self.failures = 0;
            outcome.again
        };
        if std::mem::take(&mut self.again) {
            self.kick(ctx);
        } else if let Some(delay) = delay {
            self.timer = Some(ctx.run_later(delay, |act, ctx| act.kick(ctx)));
        }
    }
}

impl Actor for BackupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.kick(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stopping.stopped();
    }
}

impl Handler<BackupChanged> for BackupActor {
    type Result = ();

    fn handle(&mut self, BackupChanged(backup): BackupChanged, ctx: &mut Context<Self>) {
        // Our own status writes come back too; only spec, deletion and
        // finalizers are the pass's input.
        let relevant = backup.metadata.generation != self.backup.metadata.generation
            || backup.metadata.deletion_timestamp != self.backup.metadata.deletion_timestamp
            || backup.finalizers() != self.backup.finalizers();
        self.backup = *backup;
        if relevant {
            self.kick(ctx);
        }
    }
}

impl Handler<Stop> for BackupActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, stop: Stop, ctx: &mut Context<Self>) -> Self::Result {
        let stopped = self.stopping.ask(stop);
        if stop == Stop::Now || !self.running {
            ctx.stop();
        }
        stopped
    }
}
