//! `QueryActor`: one per DBQR. Holds the pass state, the connection pool and
//! the full-poll timer, and schedules: a pass runs `reconcile::run_pass`, the
//! next timer is armed only after it ended, failures back off with
//! `reconcile::backoff`. Change detection and status write-back live in the
//! child modules; every decision they take is a plain function in `dbqo`.

mod detection;
mod writeback;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseFuture,
    SpawnHandle, WrapFuture,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::ApiResource, Resource, ResourceExt};

use crate::stopping::{Stop, StopRequests};
use crate::writer::{Drifted, SecretChanged, SecretSubscription, Subscription, WriterHandle};
use dbqo::api::{DatabaseQueryResource, DatabaseQueryResourceStatus};
use dbqo::kube_api::{DbqrEvent, Target};
use dbqo::reconcile::{
    backoff::backoff,
    guard::RELEASE_ANNOTATION,
    needs_no_repair, repair, run_pass,
    status::{next_status, Outcome, WriteBackResult},
    writeback::Fingerprints,
    Connection, PassConfig, PassError, PassReport, PassState, Repair, Writer as _,
};
use dbqo::render::{Gvk, ObjectKey};
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
    status: Option<DatabaseQueryResourceStatus>,
    writer: WriterHandle,
    failures: u32,
    pass: u64,
    /// A change arrived while a pass ran: run again right after it.
    dirty: bool,
    /// The armed timer of the next pass, and when it fires.
    next_pass: Option<SpawnHandle>,
    next_pass_at: Option<Instant>,
    /// Change detection runs once a pass has made a pool.
    detection: Detection,
    /// Objects whose status SQL waits, and how write-back stands.
    writeback_queue: writeback::WritebackQueue,
    /// Status fingerprint of each object at its last successful write-back.
    status_seen: Fingerprints,
    /// Outcome of the last status write-back batch, for the StatusWriteBack condition.
    writeback: Option<WriteBackResult>,
    /// The last pass report, so write-back results can be published alone.
    last_report: PassReport,
    /// Objects reported changed while a pass ran.
    drifted: HashSet<ObjectKey>,
    /// Connections and subscriptions have been let go (the actor is stopping).
    released: bool,
    /// Counts status writes, so a retry knows whether a newer one replaced it.
    status_version: u64,
    /// The status being written (by version), until the API server answers.
    status_writing: Option<(u64, DatabaseQueryResourceStatus)>,
    /// Failed status patches in a row.
    status_failures: u32,
    /// The last change probe failed (and the status says so).
    probe_failed: bool,
    /// Drift repairs under way; a pass waits for them.
    repairs: usize,
    /// When the running (or last) pass started.
    pass_started: std::time::Instant,
    /// A pass is due once the repairs are done.
    pass_waits: bool,
    /// Asked to stop once idle (shutdown), and who waits for it.
    stopping: StopRequests,
}

/// Failed status patches are retried at least this often.
const STATUS_RETRY_CAP: Duration = Duration::from_secs(30);

/// Changes that arrive while a pass runs are collapsed into one pass this
/// long after it: a burst of row changes costs a few passes, not one per
/// statement. The first change of a burst starts its pass at once.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// The DBQR's labels or annotations changed (same generation): templates
/// see them as `Metadata`, and the release annotation acts on the next pass.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MetadataChanged(pub Box<DatabaseQueryResource>);

impl QueryActor {
    pub fn new(dbqr: DatabaseQueryResource, settings: Arc<Settings>, writer: WriterHandle) -> Self {
        let config = PassConfig::new(&dbqr, &settings)
            .map(Arc::new)
            .map_err(Arc::new);
        let status = dbqr.status.clone();
        // What earlier lives of the operator wrote: the prune inventory.
        let managed = status
            .iter()
            .flat_map(|s| &s.managed_kinds)
            .filter_map(|k| k.parse::<Gvk>().ok())
            .collect();
        let detection = Detection::for_spec(&dbqr.spec);
        // Every object request of this DBQR is made as its ServiceAccount.
        let writer = writer.acting_as(dbqo::reconcile::pass::acting_user(&dbqr, &settings));
        Self {
            dbqr,
            config,
            settings,
            state: Some(PassState::new(managed)),
            connection: None,
            status,
            writer,
            failures: 0,
            pass: 0,
            dirty: false,
            next_pass: None,
            next_pass_at: None,
            detection,
            writeback_queue: Default::default(),
            status_seen: Fingerprints::new(),
            writeback: None,
            last_report: PassReport::default(),
            drifted: HashSet::new(),
            released: false,
            status_version: 0,
            status_writing: None,
            status_failures: 0,
            probe_failed: false,
            repairs: 0,
            pass_waits: false,
            pass_started: Instant::now(),
            stopping: StopRequests::default(),
        }
    }

    /// Something changed in the database: run a pass now (the change is
    /// committed: a notification or a probe only sees committed data), or,
    /// while one runs, once more shortly after it, since its query may have
    /// missed the change. A pass already due within the debounce window
    /// covers the change, so a steady stream of changes never postpones it.
    fn trigger(&mut self, ctx: &mut Context<Self>) {
        if self.state.is_none() {
            self.dirty = true;
        } else if self
            .next_pass_at
            .is_none_or(|at| at > Instant::now() + DEBOUNCE)
        {
            self.schedule(Duration::ZERO, ctx);
        }
    }

    fn schedule(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(handle) = self.next_pass.take() {
            ctx.cancel_future(handle);
        }
        if self.stopping.pending() {
            return;
        }
        self.next_pass_at = Some(Instant::now() + delay);
        self.next_pass = Some(ctx.run_later(delay, |actor, ctx| {
            actor.next_pass = None;
            actor.next_pass_at = None;
            actor.start_pass(ctx);
        }));
    }

    fn start_pass(&mut self, ctx: &mut Context<Self>) {
        if self.stopping.pending() {
            return;
        }
        if self.repairs > 0 {
            // Runs when the last repair is done.
            self.pass_waits = true;
            return;
        }
        let (Ok(config), Some(mut state)) = (self.config.clone(), self.state.take()) else {
            return;
        };
        self.pass += 1;
        self.pass_started = Instant::now();
        let writer = self.writer.clone();
        let pass = self.pass;
        let mut connection = self.connection.clone();
        let work = async move {
            let now = dbqo::reconcile::pass::template_now();
            let report = run_pass(&config, &mut state, &mut connection, &writer, &now).await;
            (report, state, connection)
        };
        ctx.spawn(
            work.into_actor(self)
                .map(move |(report, state, connection), actor, ctx| {
                    // Per-object memory follows the objects this DBQR manages now.
                    actor.status_seen.retain(|key, _| state.produced_key(key));
                    actor.writeback_queue.retain(|key| state.produced_key(key));
                    actor.state = Some(state);
                    let version =
                        |c: &Option<Connection>| c.as_ref().map(|c| c.secret_version().to_owned());
                    let rebuilt = version(&actor.connection) != version(&connection);
                    actor.connection = connection;
                    if rebuilt {
                        actor.reconnect_listener(ctx);
                    }
                    actor.finish_pass(pass, report, ctx);
                    for key in std::mem::take(&mut actor.drifted) {
                        ctx.notify(Drifted { key });
                    }
                    actor.stop_if_idle(ctx);
                }),
        );
    }

    /// Stops, if asked to once idle and nothing is under way: no pass, no
    /// status write, no repair, no write-back batch.
    pub(crate) fn stop_if_idle(&mut self, ctx: &mut Context<Self>) {
        let idle = self.state.is_some()
            && self.status_writing.is_none()
            && self.repairs == 0
            && !self.writeback_queue.running();
        if self.stopping.pending() && idle {
            self.release(ctx);
            ctx.stop();
        }
    }

    fn finish_pass(&mut self, pass: u64, report: PassReport, ctx: &mut Context<Self>) {
        tracing::info!(
            dbqr = %self.dbqr.name_any(), namespace = %self.dbqr.namespace().unwrap_or_default(), pass,
            rows = report.rows, objects = report.objects, applied = report.applied, skipped = report.skipped,
            pruned = report.pruned, held = report.guard.map_or(0, |g| g.held), ok = report.succeeded(), reason = report.failure().map_or("", |e| e.reason()),
            "pass finished"
        );
        crate::metrics::global().pass(&report, self.pass_started.elapsed());
        self.publish(Outcome::Pass(&report), ctx);
        let poll = self.dbqr.spec.poll_interval.get();
        let delay = if report.succeeded() {
            self.failures = 0;
            poll
        } else {
            self.failures = self.failures.saturating_add(1);
            backoff(self.failures, poll)
        };
        // A held prune is confirmed by a pass once its interval has passed,
        // whatever the poll interval.
        let delay = match report.guard.and_then(|g| g.confirm_in) {
            Some(confirm_in) => delay.min(confirm_in),
            None => delay,
        };
        if report.guard.is_some_and(|g| g.released) {
            self.clear_release_annotation(ctx);
        }
        self.writeback_after_pass(report.succeeded(), ctx);
        if matches!(report.database, Some(Ok(()))) {
            self.start_detection(ctx);
        }
        self.last_report = report;
        if std::mem::take(&mut self.dirty) {
            self.schedule(DEBOUNCE, ctx);
        } else {
            self.schedule(delay, ctx);
        }
    }

    /// Writes the status if it changed, with Events for changed reasons.
    fn publish(&mut self, outcome: Outcome<'_>, ctx: &mut Context<Self>) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        // Compared with what is being written, if anything: the same change
        // is not written (nor announced) twice.
        let current = match &self.status_writing {
            Some((_, writing)) => Some(writing),
            None => self.status.as_ref(),
        };
        let Some((status, events)) = next_status(
            current,
            &outcome,
            self.writeback.as_ref(),
            self.dbqr.metadata.generation,
            now,
        ) else {
            return;
        };
        self.write_status(status, events, ctx);
    }

    /// Patches the status; the actor's copy (what the next status is
    /// compared with) changes only once the API server has it. A failed
    /// patch is retried with backoff unless a newer status replaced it.
    fn write_status(
        &mut self,
        status: DatabaseQueryResourceStatus,
        events: Vec<DbqrEvent>,
        ctx: &mut Context<Self>,
    ) {
        self.status_version += 1;
        let version = self.status_version;
        self.status_writing = Some((version, status.clone()));
        let writer = self.writer.clone();
        let namespace = self.dbqr.namespace().unwrap_or_default();
        let name = self.dbqr.name_any();
        let regarding = self.dbqr.object_ref(&());
        ctx.spawn(
            async move {
                let result = writer.patch_dbqr_status(&namespace, &name, &status).await;
                if result.is_ok() {
                    for event in &events {
                        if let Err(error) = writer.publish_event(&regarding, event).await {
                            tracing::warn!(dbqr = %name, reason = error.reason(), "cannot publish event");
                        }
                    }
                }
                (result, status, events)
            }
            .into_actor(self)
            .map(move |(result, status, events), actor, ctx| {
                if actor.status_writing.as_ref().is_some_and(|(v, _)| *v == version) {
                    actor.status_writing = None;
                }
                actor.status_written(version, result, status, events, ctx);
            }),
        );
    }

    /// The API server answered a status patch: keep its status as the one
    /// to compare with, or retry with backoff.
    fn status_written(
        &mut self,
        version: u64,
        result: Result<(), dbqo::kube_api::KubeError>,
        status: DatabaseQueryResourceStatus,
        events: Vec<DbqrEvent>,
        ctx: &mut Context<Self>,
    ) {
        if let Err(error) = result {
            if self.stopping.pending() {
                tracing::warn!(dbqr = %self.dbqr.name_any(), reason = error.reason(), "cannot write DBQR status; stopping without a retry");
                self.stop_if_idle(ctx);
                return;
            }
            self.status_failures = self.status_failures.saturating_add(1);
            let delay = backoff(self.status_failures, STATUS_RETRY_CAP);
            tracing::warn!(dbqr = %self.dbqr.name_any(), reason = error.reason(), retry_in = ?delay, "cannot write DBQR status");
            ctx.run_later(delay, move |actor, ctx| {
                // A newer status was written (or is being written) meanwhile.
                if actor.status_version == version {
                    actor.write_status(status, events, ctx);
                }
            });
            return;
        }
        self.status_failures = 0;
        self.status = Some(status);
        self.stop_if_idle(ctx);
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
        if let Detection::Listening {
            subscribed: Some(handle),
        } = std::mem::replace(&mut self.detection, Detection::Off)
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
            Subscription::Subscribe(owner, me)
        } else {
            Subscription::Unsubscribe(owner, me)
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
        self.subscription(ctx, true);
        match &self.config {
            Ok(_) => self.start_pass(ctx),
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
        self.repairs += 1;
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
                actor.repairs -= 1;
                actor.stop_if_idle(ctx);
                if actor.repairs == 0 && std::mem::take(&mut actor.pass_waits) {
                    actor.start_pass(ctx);
                }
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
        if self.config.is_err() {
            return;
        }
        // Same spec: only `Metadata` differs, so the rebuilt config is valid too.
        self.config = PassConfig::new(&self.dbqr, &self.settings)
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
            Stop::WhenIdle => self.stop_if_idle(ctx),
        }
        stopped
    }
}
