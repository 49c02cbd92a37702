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
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, ResponseActFuture,
    StreamHandler, WrapFuture,
};
use futures_util::stream::LocalBoxStream;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::ApiResource, runtime::watcher, Resource, ResourceExt};

use crate::children::{Children, Key};
use crate::query::{MetadataChanged, QueryActor};
use crate::stopping::Shutdown;
use crate::writer::WriterHandle;
use crate::Fatal;
use dbqo::api::{DatabaseQueryResource, DatabaseQueryResourceStatus};
use dbqo::backoff::backoff;
use dbqo::controller::finalizer;
use dbqo::db::Connections;
use dbqo::reconcile::{
    cleanup::{blocked_status, clean_up, release, Cleanup, CleanupError},
    Cluster, Owner,
};
use dbqo::render::Metadata;
use dbqo::settings::Settings;

/// What the DBQR watch yields.
pub type DbqrEvents =
    LocalBoxStream<'static, Result<watcher::Event<DatabaseQueryResource>, watcher::Error>>;

/// What the supervisor knows of the DBQR a `QueryActor` runs.
struct QueryChild {
    uid: String,
    generation: Option<i64>,
    /// Labels and annotations templates see as `Metadata` (they change
    /// without a new generation).
    metadata: Metadata,
}

pub struct Supervisor {
    /// Taken when the actor starts.
    events: Option<DbqrEvents>,
    writer: WriterHandle,
    settings: Arc<Settings>,
    connections: Connections,
    actors: Children<QueryActor, QueryChild>,
    cleaning: HashSet<String>,
    /// Clean-ups that failed, by DBQR uid.
    blocked: HashMap<String, Blocked>,
    ready: Arc<AtomicBool>,
    fatal: tokio::sync::mpsc::UnboundedSender<Fatal>,
    /// Set once shutdown began: no new actors.
    stopping: bool,
    /// Clean-up checks so far per DBQR uid while its objects are going
    /// (the check backs off: an object held by a finalizer may take long).
    waiting: HashMap<String, u32>,
    /// Failed finalizer additions per DBQR uid (retried with backoff).
    finalizer_failures: HashMap<String, u32>,
}

/// A clean-up that keeps failing.
struct Blocked {
    failures: u32,
    /// The DBQR status as last written (the watch copy of a deleting DBQR
    /// may be older).
    status: Option<DatabaseQueryResourceStatus>,
}

/// Blocked clean-ups are retried at least this often.
const CLEANUP_RETRY_CAP: Duration = Duration::from_secs(300);
/// A clean-up waiting for its objects to go checks at least this often.
const CLEANUP_WAIT_CAP: Duration = Duration::from_secs(30);
/// A finalizer that could not be added is tried again at least this often.
const FINALIZER_RETRY_CAP: Duration = Duration::from_secs(60);

impl Supervisor {
    pub fn new(
        events: DbqrEvents,
        writer: WriterHandle,
        (settings, connections): (Arc<Settings>, Connections),
        ready: Arc<AtomicBool>,
        fatal: tokio::sync::mpsc::UnboundedSender<Fatal>,
    ) -> Self {
        Self {
            events: Some(events),
            writer,
            settings,
            connections,
            actors: Children::default(),
            cleaning: HashSet::new(),
            blocked: HashMap::new(),
            ready,
            fatal,
            stopping: false,
            waiting: HashMap::new(),
            finalizer_failures: HashMap::new(),
        }
    }

    fn key(dbqr: &DatabaseQueryResource) -> Key {
        (dbqr.namespace().unwrap_or_default(), dbqr.name_any())
    }

    /// Drops what is kept about a DBQR that is gone; a clean-up loop of it
    /// ends at its next check.
    fn forget(&mut self, uid: &str) {
        self.cleaning.remove(uid);
        self.waiting.remove(uid);
        self.finalizer_failures.remove(uid);
    }

    fn stop(&mut self, key: &Key) {
        self.actors.stop(key);
    }

    fn on_change(&mut self, dbqr: DatabaseQueryResource, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let key = Self::key(&dbqr);
        let has_finalizer = finalizer::has(&dbqr.metadata);
        if dbqr.metadata.deletion_timestamp.is_some() {
            self.stop(&key);
            if has_finalizer {
                self.start_cleanup(dbqr, ctx);
            }
            return;
        }
        if !has_finalizer {
            // The change event that follows starts the actor.
            self.add_finalizer(dbqr, ctx);
            return;
        }
        self.finalizer_failures.remove(&dbqr.uid().unwrap_or_default());
        let uid = dbqr.uid().unwrap_or_default();
        let metadata = Metadata::of(&dbqr);
        if let Some(child) = self.actors.get(&key) {
            let same = &child.meta;
            if same.uid == uid
                && same.generation == dbqr.metadata.generation
                && child.actor.connected()
            {
                if same.metadata != metadata {
                    let actor = child.actor.clone();
                    actor.do_send(MetadataChanged(Box::new(dbqr)));
                    self.actors.update(&key, |running| running.metadata = metadata);
                }
                return;
            }
        }
        tracing::info!(dbqr = %key.1, namespace = %key.0, generation = ?dbqr.metadata.generation, "starting query actor");
        let generation = dbqr.metadata.generation;
        let shared = (self.settings.clone(), self.connections.clone());
        let actor = QueryActor::new(dbqr, shared, self.writer.clone()).start();
        let running = QueryChild { uid, generation, metadata };
        self.actors.insert(key, actor, running);
    }

    /// Adds the finalizer (a conflict retried with a fresh read); the watch
    /// event of the change starts the actor. A failure is retried with
    /// backoff, since no event may come to retry it otherwise.
    fn add_finalizer(&mut self, dbqr: DatabaseQueryResource, ctx: &mut Context<Self>) {
        let writer = self.writer.clone();
        let meta = dbqr.metadata.clone();
        let work = async move {
            let resource = ApiResource::erase::<DatabaseQueryResource>(&());
            finalizer::add(&writer, &resource, &meta).await
        };
        ctx.spawn(work.into_actor(self).map(move |result, supervisor, ctx| {
            let uid = dbqr.uid().unwrap_or_default();
            match result {
                Ok(()) => {
                    supervisor.finalizer_failures.remove(&uid);
                }
                Err(error) => {
                    let failures = supervisor.finalizer_failures.entry(uid).or_default();
                    *failures = failures.saturating_add(1);
                    let delay = backoff(*failures, FINALIZER_RETRY_CAP);
                    tracing::warn!(dbqr = %dbqr.name_any(), reason = error.reason(), retry_in = ?delay, "cannot add the finalizer");
                    ctx.run_later(delay, move |s, ctx| s.on_change(dbqr, ctx));
                }
            }
        }));
    }

    /// Starts the clean-up of a deleted DBQR unless it runs already. Later
    /// events of the same DBQR do not start another: one loop per DBQR runs
    /// until the finalizer is gone (removing it re-reads the DBQR when the
    /// copy the loop holds is stale).
    fn start_cleanup(&mut self, dbqr: DatabaseQueryResource, ctx: &mut Context<Self>) {
        if self.cleaning.insert(dbqr.uid().unwrap_or_default()) {
            self.run_cleanup(dbqr, ctx);
        }
    }

    fn run_cleanup(&mut self, dbqr: DatabaseQueryResource, ctx: &mut Context<Self>) {
        let uid = dbqr.uid().unwrap_or_default();
        if !self.cleaning.contains(&uid) {
            // The DBQR is gone (its finalizer removed by someone else).
            self.blocked.remove(&uid);
            return;
        }
        let owner = Owner::of(&dbqr);
        let policy = dbqr.spec.deletion_policy;
        let managed = dbqo::reconcile::managed_kinds(dbqr.status.as_ref());
        let allowed = self.settings.policy.allowed_kinds.clone();
        // The objects are deleted as the DBQR's ServiceAccount, like its passes.
        let writer =
            self.writer.acting_as(dbqo::reconcile::pass::acting_user(&dbqr, &self.settings));
        let work = async move {
            match clean_up(&owner, policy, &managed, &allowed, &writer).await {
                Ok(Cleanup::Done) => release(&writer, &dbqr)
                    .await
                    .map(|()| Cleanup::Done)
                    .map_err(CleanupError::Release),
                other => other,
            }
            .map_err(|e| (e, dbqr.clone()))
            .map(|done| (done, dbqr))
        };
        ctx.spawn(work.into_actor(self).map(move |result, supervisor, ctx| {
            match result {
                Ok((Cleanup::Done, dbqr)) => {
                    supervisor.cleaning.remove(&uid);
                    supervisor.blocked.remove(&uid);
                    supervisor.waiting.remove(&uid);
                    tracing::info!(dbqr = %dbqr.name_any(), ?policy, "clean-up done, DBQR released");
                }
                Ok((Cleanup::Waiting { remaining }, dbqr)) => {
                    // 0.5 s, 1 s, 2 s ... up to 30 s: most objects go at
                    // once, one held by a finalizer may take long. Each
                    // check reads the watch cache only.
                    let checks = supervisor.waiting.entry(uid.clone()).or_default();
                    *checks = checks.saturating_add(1);
                    let delay = (Duration::from_millis(250) * 2u32.saturating_pow((*checks).min(7)))
                        .min(CLEANUP_WAIT_CAP);
                    tracing::debug!(dbqr = %dbqr.name_any(), remaining, retry_in = ?delay, "waiting for objects to go");
                    ctx.run_later(delay, move |s, ctx| s.run_cleanup(dbqr, ctx));
                }
                Err((error, dbqr)) => supervisor.cleanup_blocked(&uid, dbqr, &error, ctx),
            }
        }));
    }

    /// Clean-up failed (no permission, an API error): the DBQR says so in
    /// condition `CleanupBlocked` and an Event, and clean-up is retried with
    /// exponential backoff.
    fn cleanup_blocked(
        &mut self,
        uid: &str,
        dbqr: DatabaseQueryResource,
        error: &CleanupError,
        ctx: &mut Context<Self>,
    ) {
        let blocked = self
            .blocked
            .entry(uid.to_owned())
            .or_insert_with(|| Blocked { failures: 0, status: dbqr.status.clone() });
        blocked.failures = blocked.failures.saturating_add(1);
        let delay = backoff(blocked.failures, CLEANUP_RETRY_CAP);
        tracing::warn!(dbqr = %dbqr.name_any(), reason = error.reason(), retry_in = ?delay, "clean-up blocked");
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        if let Some((status, event)) = blocked_status(blocked.status.as_ref(), error, now) {
            blocked.status = Some(status.clone());
            let writer = self.writer.clone();
            let (namespace, name) = Self::key(&dbqr);
            let regarding = dbqr.object_ref(&());
            ctx.spawn(
                async move {
                    if let Err(e) = writer.patch_dbqr_status(&namespace, &name, &status).await {
                        tracing::debug!(reason = e.reason(), "cannot report the blocked clean-up");
                    }
                    if let Some(event) = event {
                        if let Err(e) = writer.publish_event(&regarding, &event).await {
                            tracing::debug!(reason = e.reason(), "cannot publish event");
                        }
                    }
                }
                .into_actor(self),
            );
        }
        ctx.run_later(delay, move |s, ctx| s.run_cleanup(dbqr, ctx));
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
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    /// Every QueryActor finishes what it is doing, then stops.
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        self.actors.shut_down_supervisor("query actors")
    }
}

impl StreamHandler<Result<watcher::Event<DatabaseQueryResource>, watcher::Error>> for Supervisor {
    fn handle(
        &mut self,
        event: Result<watcher::Event<DatabaseQueryResource>, watcher::Error>,
        ctx: &mut Context<Self>,
    ) {
        match event {
            Ok(watcher::Event::Apply(dbqr)) => self.on_change(dbqr, ctx),
            Ok(watcher::Event::InitApply(dbqr)) => {
                self.actors.listed(&Self::key(&dbqr));
                self.on_change(dbqr, ctx)
            }
            Ok(watcher::Event::Delete(dbqr)) => {
                let key = Self::key(&dbqr);
                self.stop(&key);
                self.forget(&dbqr.uid().unwrap_or_default());
            }
            Ok(watcher::Event::Init) => self.actors.relist_started(),
            Ok(watcher::Event::InitDone) => {
                for (namespace, name) in self.actors.relist_done() {
                    tracing::info!(dbqr = %name, %namespace, "gone while the watch was down; its actor stopped");
                }
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
