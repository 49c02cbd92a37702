//! `QueryActor`: one per DBQR. Holds the pass state, the connection pool,
//! the writer and a `reconcile::schedule::Scheduler`, and does what the
//! scheduler answers with one timer: a pass runs `reconcile::run_pass`.
//! Change detection, the DBQR status and status write-back live in the child
//! modules; every decision they take is a plain function in `dbqo`.

mod detection;
mod status;
mod writeback_queue;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseFuture,
    SpawnHandle, WrapFuture,
};
use kube::{api::ApiResource, ResourceExt};

use crate::stopping::{Stop, StopRequests};
use crate::writer::{DriftSubscription, Drifted, SecretChanged, SecretSubscription, WriterHandle};
use dbqo::api::DatabaseQueryResource;
use dbqo::db::Connections;
use dbqo::kube_api::ObjectKey;
use dbqo::kube_api::Target;
use dbqo::reconcile::{
    guard::RELEASE_ANNOTATION,
    needs_no_repair, repair, run_pass,
    schedule::{Next, PassEnd, PassScope, Scheduler},
    status::Outcome,
    Cluster as _, Connection, PassConfig, PassError, PassReport, PassState, Repair,
};
use dbqo::settings::Settings;
use detection::Detection;

pub struct QueryActor {
    dbqr: DatabaseQueryResource,
    config: Result<Arc<PassConfig>, Arc<PassError>>,
    settings: Arc<Settings>,
    /// `None` while a pass holds it.
    state: Option<PassState>,
    /// The pool (and its connection settings) the last pass used; probes,
    /// the LISTEN connection and write-back use it too.
    connection: Option<Connection>,
    /// The DBQR status: as the API server has it, and as being written.
    status: status::StatusWrites,
    writer: WriterHandle,
    /// When passes run (pure: `reconcile::schedule`).
    schedule: Scheduler,
    /// The armed timer of the next pass.
    timer: Option<SpawnHandle>,
    /// Change detection runs once a pass has made a pool.
    detection: Detection,
    /// Objects whose status SQL waits, and how write-back stands.
    writeback_queue: writeback_queue::WritebackQueue,
    /// The last pass report, so write-back results can be published alone.
    last_report: PassReport,
    /// Objects reported changed while a pass ran.
    drifted: HashSet<ObjectKey>,
    /// Connections and subscriptions have been let go (the actor is stopping).
    released: bool,
    /// Asked to stop once idle (shutdown), and who waits for it.
    stopping: StopRequests,
}

/// The DBQR's labels or annotations changed (same generation): templates
/// see them as `Metadata`, and the release annotation acts on the next pass.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MetadataChanged(pub Box<DatabaseQueryResource>);

impl QueryActor {
    pub fn new(
        dbqr: DatabaseQueryResource,
        (settings, connections): (Arc<Settings>, Connections),
        writer: WriterHandle,
    ) -> Self {
        let config =
            PassConfig::new(&dbqr, &settings, &connections).map(Arc::new).map_err(Arc::new);
        let status = status::StatusWrites::new(dbqr.status.clone());
        // What earlier lives of the operator wrote: the prune inventory.
        let managed = dbqo::reconcile::managed_kinds(dbqr.status.as_ref());
        let detection = Detection::for_spec(&dbqr.spec);
        // Every object request of this DBQR is made as its ServiceAccount.
        let writer = writer.acting_as(dbqo::reconcile::pass::acting_user(&dbqr, &settings));
        let schedule = Scheduler::with_suspend(dbqr.spec.poll_interval.get(), dbqr.spec.suspend);
        Self {
            dbqr,
            config,
            settings,
            state: Some(PassState::new(managed)),
            connection: None,
            status,
            writer,
            schedule,
            timer: None,
            detection,
            writeback_queue: Default::default(),
            last_report: PassReport::default(),
            drifted: HashSet::new(),
            released: false,
            stopping: StopRequests::default(),
        }
    }

    /// Something changed in the database (committed: a notification or a
    /// probe only sees committed data), or the Secret or metadata did.
    fn trigger(&mut self, ctx: &mut Context<Self>) {
        if self.config.is_ok() {
            let next = self.schedule.changed(Instant::now());
            self.follow(next, ctx);
        }
    }

    /// The rows of `keys` changed in the database, and nothing else.
    fn trigger_keys(&mut self, keys: std::collections::BTreeSet<String>, ctx: &mut Context<Self>) {
        if self.config.is_ok() {
            let next = self.schedule.changed_keys(keys, Instant::now());
            self.follow(next, ctx);
        }
    }

    /// Does what the scheduler answered.
    fn follow(&mut self, next: Next, ctx: &mut Context<Self>) {
        match next {
            Next::RunPass(pass, scope) => {
                self.cancel_timer(ctx);
                self.start_pass(pass, scope, ctx);
            }
            Next::WakeAt(at) => {
                self.cancel_timer(ctx);
                let delay = at.saturating_duration_since(Instant::now());
                self.timer = Some(ctx.run_later(delay, |actor, ctx| {
                    actor.timer = None;
                    let next = actor.schedule.woke(Instant::now());
                    actor.follow(next, ctx);
                }));
            }
            Next::Nothing => {}
        }
    }

    fn cancel_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
    }

    /// Runs pass number `pass` over `scope` (the scheduler said so: none is running).
    fn start_pass(&mut self, pass: u64, scope: PassScope, ctx: &mut Context<Self>) {
        let (Ok(config), Some(mut state)) = (self.config.clone(), self.state.take()) else {
            return;
        };
        let writer = self.writer.clone();
        let mut connection = self.connection.clone();
        let work = async move {
            let started = Instant::now();
            let now = dbqo::reconcile::pass::template_now();
            let report =
                run_pass(&config, &mut state, &mut connection, &writer, &now, &scope).await;
            (report, state, connection, started.elapsed())
        };
        ctx.spawn(work.into_actor(self).map(
            move |(report, state, connection, took), actor, ctx| {
                // Per-object memory follows the objects this DBQR manages now.
                actor.writeback_queue.retain(|key| state.produced_key(key));
                actor.state = Some(state);
                let version =
                    |c: &Option<Connection>| c.as_ref().map(|c| c.secret_version().to_owned());
                let rebuilt = version(&actor.connection) != version(&connection);
                actor.connection = connection;
                if rebuilt {
                    actor.reconnect_listener(ctx);
                }
                actor.finish_pass(pass, report, took, ctx);
                for key in std::mem::take(&mut actor.drifted) {
                    ctx.notify(Drifted { key });
                }
                actor.stop_if_idle(ctx);
            },
        ));
    }

    /// Stops, if asked to once idle and nothing is under way: no pass, no
    /// status write, no repair, no write-back batch.
    pub(crate) fn stop_if_idle(&mut self, ctx: &mut Context<Self>) {
        let idle = !self.schedule.running()
            && !self.status.writing()
            && !self.schedule.repairing()
            && !self.writeback_queue.running();
        if self.stopping.pending() && idle {
            self.release(ctx);
            ctx.stop();
        }
    }

    fn finish_pass(
        &mut self,
        pass: u64,
        report: PassReport,
        took: Duration,
        ctx: &mut Context<Self>,
    ) {
        tracing::info!(
            dbqr = %self.dbqr.name_any(), namespace = %self.dbqr.namespace().unwrap_or_default(), pass,
            rows = report.rows, objects = report.objects, applied = report.applied, skipped = report.skipped,
            pruned = report.pruned, detached = report.detached, held = report.guard.map_or(0, |g| g.held), ok = report.succeeded(), reason = report.failure().map_or("", |e| e.reason()),
            keys = report.keyed.map_or(0, |k| k.keys),
            "pass finished"
        );
        crate::metrics::global().pass(&report, took);
        self.publish(Outcome::Pass(&report), ctx);
        let end = PassEnd {
            full: report.keyed.is_none(),
            succeeded: report.succeeded(),
            confirm_in: report.guard.and_then(|g| g.confirm_in),
        };
        if report.guard.is_some_and(|g| g.released) {
            self.clear_release_annotation(ctx);
        }
        self.writeback_after_pass(report.succeeded(), ctx);
        if matches!(report.database, Some(Ok(()))) {
            self.start_detection(ctx);
        }
        self.last_report = report;
        let next = self.schedule.pass_ended(end, Instant::now());
        self.follow(next, ctx);
    }

    /// The release annotation did its work in the pass that saw it; left in
    /// place it would switch the prune guard off for good.
    fn clear_release_annotation(&self, ctx: &mut Context<Self>) {
        let writer = self.writer.clone();
        let name = self.dbqr.name_any();
        let target = Target {
            resource: ApiResource::erase::<DatabaseQueryResource>(&()),
            namespace: self.dbqr.namespace(),
            name: name.clone(),
        };
        ctx.spawn(
            async move {
                let patch = serde_json::json!({"metadata": {"annotations": {RELEASE_ANNOTATION: null}}});
                if let Err(error) = writer.merge_patch(&target, &patch).await {
                    tracing::warn!(dbqr = %name, reason = error.reason(), "cannot remove the release annotation");
                }
            }
            .into_actor(self),
        );
    }

    /// Lets go of everything outside the actor: drift notices, the LISTEN
    /// connection (dropped with `detection`) and the pool. Timers and
    /// in-flight work go with the context when it stops.
    fn release(&mut self, ctx: &mut Context<Self>) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        self.subscription(ctx, false);
        if let Detection::Listening { subscribed: Some(handle) } =
            std::mem::replace(&mut self.detection, Detection::Off)
        {
            // Drops the subscription: the shared LISTEN connection closes
            // when its last subscriber is gone.
            ctx.cancel_future(handle);
        }
        if let Some(connection) = self.connection.take() {
            connection.close();
        }
        tracing::debug!(dbqr = %self.dbqr.name_any(), "query actor released its connections");
    }

    /// (Un)registers for drift notices of this DBQR's objects and change
    /// notices of its connection Secret.
    fn subscription(&self, ctx: &mut Context<Self>, subscribe: bool) {
        let Ok(config) = &self.config else {
            return;
        };
        let (owner, me) = (config.owner.label_key(), ctx.address().recipient());
        self.writer.subscription(if subscribe {
            DriftSubscription::Subscribe(owner, me)
        } else {
            DriftSubscription::Unsubscribe(owner, me)
        });
        if let Ok(secret) = config.secret() {
            let me = ctx.address().recipient();
            self.writer.secret_subscription(if subscribe {
                SecretSubscription::Subscribe(secret, me)
            } else {
                SecretSubscription::Unsubscribe(secret, me)
            });
        }
    }
}

impl Actor for QueryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        crate::metrics::global().actor_started();
        if self.schedule.suspended() {
            // No drift notices, no Secret notices, no pass: nothing runs
            // until a new generation resumes the DBQR.
            tracing::info!(dbqr = %self.dbqr.name_any(), "suspended");
            self.publish(Outcome::Suspended, ctx);
            return;
        }
        self.subscription(ctx, true);
        match &self.config {
            Ok(_) => {
                let next = self.schedule.start(Instant::now());
                self.follow(next, ctx);
            }
            Err(error) => {
                tracing::warn!(dbqr = %self.dbqr.name_any(), reason = error.reason(), "invalid spec");
                let error = error.clone();
                self.publish(Outcome::InvalidSpec(&error), ctx);
            }
        }
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        crate::metrics::global().actor_stopped();
        self.release(ctx);
        self.stopping.stopped();
    }
}

impl Handler<Drifted> for QueryActor {
    type Result = ();

    /// A managed object changed or vanished: put it back if it no longer
    /// matches. During a pass the pass itself compares against the cache;
    /// repairs and passes never overlap, so a pass that prunes an object
    /// never races a repair that would bring it back.
    fn handle(&mut self, Drifted { key }: Drifted, ctx: &mut Context<Self>) {
        // A row waits for an earlier wave to be Ready: any change of this
        // DBQR's objects may be that readiness, so a pass looks at once (the
        // scheduler folds a burst into one). After the notice is handled: a
        // pass started first would hold the state and the notice would wait
        // for its end, and start the next pass, and so on.
        let waiting = self.last_report.waiting_rows > 0 && self.state.is_some();
        self.on_drift(key, ctx);
        if waiting {
            self.trigger(ctx);
        }
    }
}

impl QueryActor {
    fn on_drift(&mut self, key: ObjectKey, ctx: &mut Context<Self>) {
        let (Some(state), Ok(config)) = (&self.state, &self.config) else {
            // Checked once the pass has ended (most are the pass's own writes).
            self.drifted.insert(key);
            return;
        };
        let Some(wanted) = state.applied(&key) else {
            return;
        };
        let writes_back = self.writes_back();
        // After a pass every object it wrote comes back as a notice; checked
        // here, in place, rather than as thousands of tasks each holding its
        // expanded manifest (the peak memory of a 10,000-object pass).
        if needs_no_repair(&self.writer, &config.owner, &wanted) {
            if writes_back {
                self.queue_writeback(key, ctx);
            }
            return;
        }
        let owner = config.owner.clone();
        let writer = self.writer.clone();
        let name = self.dbqr.name_any();
        self.schedule.repair_started();
        ctx.spawn(
            async move {
                let (kind, object) = (&key.group_kind, &key.name);
                match repair(&writer, &owner, &wanted).await {
                    Ok(Repair::Nothing) => {}
                    Ok(Repair::TakenElsewhere) => tracing::info!(dbqr = %name, %kind, %object, "a deleted object was created again by someone else; not taken over"),
                    Ok(done) => tracing::info!(dbqr = %name, %kind, %object, ?done, "repaired drift"),
                    Err(error) => tracing::warn!(dbqr = %name, reason = error.reason(), "drift repair failed"),
                }
                key
            }
            .into_actor(self)
            .map(move |key, actor, ctx| {
                let next = actor.schedule.repair_ended(Instant::now());
                actor.follow(next, ctx);
                actor.stop_if_idle(ctx);
                if writes_back {
                    actor.queue_writeback(key, ctx);
                }
            }),
        );
    }
}

impl Handler<SecretChanged> for QueryActor {
    type Result = ();

    /// The connection Secret changed: the next pass rebuilds the pool (and
    /// then the LISTEN connection) from it, so run it now.
    fn handle(&mut self, _: SecretChanged, ctx: &mut Context<Self>) {
        tracing::debug!(dbqr = %self.dbqr.name_any(), "connection Secret changed");
        self.trigger(ctx);
    }
}

impl Handler<MetadataChanged> for QueryActor {
    type Result = ();

    fn handle(&mut self, MetadataChanged(dbqr): MetadataChanged, ctx: &mut Context<Self>) {
        self.dbqr.metadata = dbqr.metadata;
        let Ok(config) = &self.config else {
            return;
        };
        // Same spec: only `Metadata` differs, so the rebuilt config is valid too.
        self.config = PassConfig::new(&self.dbqr, &self.settings, &config.connections)
            .map(Arc::new)
            .map_err(Arc::new);
        tracing::debug!(dbqr = %self.dbqr.name_any(), "labels or annotations changed");
        self.trigger(ctx);
    }
}

impl Handler<Stop> for QueryActor {
    type Result = ResponseFuture<()>;

    /// The answer comes once the actor has stopped, connections released:
    /// whoever awaits it knows the pool is closed.
    fn handle(&mut self, stop: Stop, ctx: &mut Self::Context) -> Self::Result {
        let stopped = self.stopping.ask(stop);
        match stop {
            Stop::Now => {
                self.release(ctx);
                ctx.stop();
            }
            Stop::WhenIdle => {
                self.schedule.stop();
                self.cancel_timer(ctx);
                self.stop_if_idle(ctx);
            }
        }
        stopped
    }
}
