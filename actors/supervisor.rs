//! `Supervisor`: watches DBQRs, keeps one `QueryActor` per DBQR at its current
//! generation, adds the finalizer, and runs the clean-up of deleted DBQRs.
//! If the DBQR watch ever ends, the operator is blind: it reports
//! [`Fatal::WatchEnded`] so the process exits and Kubernetes restarts it.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message,
    ResponseActFuture, StreamHandler, WrapFuture,
};
use futures_util::stream::LocalBoxStream;
use kube::{runtime::watcher, ResourceExt};

use crate::query::{MetadataChanged, QueryActor, Stop};
use crate::writer::WriterHandle;
use crate::Fatal;
use dbqo::api::{DatabaseQueryResource, FINALIZER};
use dbqo::reconcile::{
    cleanup::{clean_up, Cleanup},
    Owner, Writer,
};
use dbqo::render::{Gvk, Metadata};
use dbqo::settings::Settings;

/// What the DBQR watch yields.
pub type DbqrEvents =
    LocalBoxStream<'static, Result<watcher::Event<DatabaseQueryResource>, watcher::Error>>;

type Key = (String, String);

struct Running {
    uid: String,
    generation: Option<i64>,
    /// Labels and annotations templates see as `Metadata` (they change
    /// without a new generation).
    metadata: Metadata,
    actor: Addr<QueryActor>,
}

pub struct Supervisor {
    /// Taken when the actor starts.
    events: Option<DbqrEvents>,
    writer: WriterHandle,
    settings: Arc<Settings>,
    actors: HashMap<Key, Running>,
    cleaning: HashSet<String>,
    ready: Arc<AtomicBool>,
    fatal: tokio::sync::mpsc::UnboundedSender<Fatal>,
    /// Set once shutdown began: no new actors.
    stopping: bool,
}

/// Stops every QueryActor (timers, LISTEN connections, pools) and then the
/// supervisor; resolves when they have all stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Supervisor {
    pub fn new(
        events: DbqrEvents,
        writer: WriterHandle,
        settings: Arc<Settings>,
        ready: Arc<AtomicBool>,
        fatal: tokio::sync::mpsc::UnboundedSender<Fatal>,
    ) -> Self {
        Self {
            events: Some(events),
            writer,
            settings,
            actors: HashMap::new(),
            cleaning: HashSet::new(),
            ready,
            fatal,
            stopping: false,
        }
    }

    fn key(dbqr: &DatabaseQueryResource) -> Key {
        (dbqr.namespace().unwrap_or_default(), dbqr.name_any())
    }

    fn stop(&mut self, key: &Key) {
        if let Some(running) = self.actors.remove(key) {
            running.actor.do_send(Stop);
        }
    }

    fn on_change(&mut self, dbqr: DatabaseQueryResource, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let key = Self::key(&dbqr);
        let has_finalizer = dbqr.finalizers().iter().any(|f| f == FINALIZER);
        if dbqr.metadata.deletion_timestamp.is_some() {
            self.stop(&key);
            if has_finalizer {
                self.start_cleanup(dbqr, ctx);
            }
            return;
        }
        if !has_finalizer {
            // The change event that follows starts the actor.
            let mut finalizers = dbqr.finalizers().to_vec();
            finalizers.push(FINALIZER.to_owned());
            self.set_finalizers(&dbqr, finalizers, ctx);
            return;
        }
        let uid = dbqr.uid().unwrap_or_default();
        if let Some(running) = self.actors.get_mut(&key) {
            if running.uid == uid
                && running.generation == dbqr.metadata.generation
                && running.actor.connected()
            {
                let metadata = Metadata::of(&dbqr);
                if running.metadata != metadata {
                    running.metadata = metadata;
                    running.actor.do_send(MetadataChanged(Box::new(dbqr)));
                }
                return;
            }
        }
        self.stop(&key);
        tracing::info!(dbqr = %key.1, namespace = %key.0, generation = ?dbqr.metadata.generation, "starting query actor");
        let generation = dbqr.metadata.generation;
        let metadata = Metadata::of(&dbqr);
        let actor = QueryActor::new(dbqr, self.settings.clone(), self.writer.clone()).start();
        self.actors.insert(
            key,
            Running {
                uid,
                generation,
                metadata,
                actor,
            },
        );
    }

    fn set_finalizers(
        &self,
        dbqr: &DatabaseQueryResource,
        finalizers: Vec<String>,
        ctx: &mut Context<Self>,
    ) {
        let writer = self.writer.clone();
        let (namespace, name) = Self::key(dbqr);
        let version = dbqr.resource_version();
        ctx.spawn(
            async move {
                let result = writer
                    .set_dbqr_finalizers(&namespace, &name, version.as_deref(), &finalizers)
                    .await;
                if let Err(error) = result {
                    tracing::debug!(%error, "finalizer update deferred to the next event");
                }
            }
            .into_actor(self),
        );
    }

    fn start_cleanup(&mut self, dbqr: DatabaseQueryResource, ctx: &mut Context<Self>) {
        let uid = dbqr.uid().unwrap_or_default();
        if !self.cleaning.insert(uid.clone()) {
            return;
        }
        let owner = Owner::of(&dbqr);
        let policy = dbqr.spec.deletion_policy;
        let managed = dbqr
            .status
            .iter()
            .flat_map(|s| &s.managed_kinds)
            .filter_map(|k| k.parse::<Gvk>().ok())
            .collect();
        let allowed = self.settings.policy.allowed_kinds.clone();
        let writer = self.writer.clone();
        let work = async move { clean_up(&owner, policy, &managed, &allowed, &writer).await };
        ctx.spawn(work.into_actor(self).map(move |result, supervisor, ctx| {
            supervisor.cleaning.remove(&uid);
            match result {
                Ok(Cleanup::Done) => {
                    let finalizers: Vec<String> = dbqr.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
                    tracing::info!(dbqr = %dbqr.name_any(), ?policy, "clean-up done, releasing the DBQR");
                    supervisor.set_finalizers(&dbqr, finalizers, ctx);
                }
                Ok(Cleanup::Waiting { remaining }) => {
                    tracing::debug!(dbqr = %dbqr.name_any(), remaining, "waiting for objects to go");
                    ctx.run_later(Duration::from_millis(500), move |s, ctx| s.start_cleanup(dbqr, ctx));
                }
                Err(error) => {
                    tracing::warn!(dbqr = %dbqr.name_any(), reason = error.reason(), "clean-up failed; retrying");
                    ctx.run_later(Duration::from_secs(2), move |s, ctx| s.start_cleanup(dbqr, ctx));
                }
            }
        }));
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(events) = self.events.take() {
            ctx.add_stream(events);
        }
        // Warm the discovery cache before the first pass needs it.
        let writer = self.writer.clone();
        ctx.spawn(
            async move {
                if let Err(error) = writer.kinds(true).await {
                    tracing::warn!(%error, "initial discovery failed");
                }
            }
            .into_actor(self),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for (_, running) in self.actors.drain() {
            running.actor.do_send(Stop);
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let stops: Vec<_> = self
            .actors
            .drain()
            .map(|(_, running)| running.actor.send(Stop))
            .collect();
        let count = stops.len();
        Box::pin(
            futures_util::future::join_all(stops)
                .into_actor(self)
                .map(move |_, _, ctx| {
                    tracing::info!(actors = count, "query actors stopped");
                    ctx.stop();
                }),
        )
    }
}

impl StreamHandler<Result<watcher::Event<DatabaseQueryResource>, watcher::Error>> for Supervisor {
    fn handle(
        &mut self,
        event: Result<watcher::Event<DatabaseQueryResource>, watcher::Error>,
        ctx: &mut Context<Self>,
    ) {
        match event {
            Ok(watcher::Event::Apply(dbqr) | watcher::Event::InitApply(dbqr)) => {
                self.on_change(dbqr, ctx)
            }
            Ok(watcher::Event::Delete(dbqr)) => {
                let key = Self::key(&dbqr);
                self.stop(&key);
            }
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitDone) => {
                if !self.ready.swap(true, Ordering::SeqCst) {
                    tracing::info!(dbqrs = self.actors.len(), "initial list done; ready");
                }
            }
            Err(error) => tracing::warn!(%error, "DBQR watch failed; retrying with backoff"),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        tracing::error!("DBQR watch ended");
        let _ = self.fatal.send(Fatal::WatchEnded);
        ctx.stop();
    }
}
