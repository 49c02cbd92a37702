//! `QueryActor`: one per DBQR. Owns the pass state (connection pool, last
//! applied objects) and the full-poll timer. A timer is armed only after the
//! previous pass ended; failures back off exponentially with jitter, capped by
//! the poll interval. Change detection and status write-back live in the
//! child modules.

mod detection;
mod writeback;

use std::{sync::Arc, time::Duration};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, SpawnHandle, WrapFuture,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::ApiResource, Resource, ResourceExt};
use rand::Rng;

use super::writer::{Drifted, Op, Subscribe, WriterHandle};
use crate::api::{DatabaseQueryResource, DatabaseQueryResourceStatus};
use crate::db::ConnInfo;
use crate::reconcile::labels::label_value;
use crate::reconcile::pass::repair;
use crate::reconcile::{
    run_pass,
    status::{next_status, Outcome},
    Owner, PassConfig, PassReport, PassState, Problem,
};
use crate::render::ObjectKey;
use crate::render::{Metadata, RowTemplate};
use crate::settings::Settings;
use crate::writeback::StatusTemplate;
use detection::Detection;

pub struct QueryActor {
    dbqr: DatabaseQueryResource,
    config: Result<Arc<PassConfig>, Problem>,
    /// `None` while a pass holds it.
    state: Option<PassState>,
    status: Option<DatabaseQueryResourceStatus>,
    writer: WriterHandle,
    failures: u32,
    pass: u64,
    /// A change arrived while a pass ran: run again right after it.
    dirty: bool,
    /// The armed timer of the next pass.
    next_pass: Option<SpawnHandle>,
    /// Change detection runs once a pass has made a pool.
    detection: Detection,
    /// Objects whose status SQL waits for the debounce window.
    writeback_pending: std::collections::HashSet<ObjectKey>,
    /// Fingerprint of each object's status at its last successful write-back.
    status_seen: std::collections::HashMap<ObjectKey, [u8; 32]>,
    /// Outcome of the last status write-back batch, for the StatusWriteBack condition.
    writeback: Option<Result<(), Problem>>,
    /// The last pass report, so write-back results can be published alone.
    last_report: PassReport,
    /// Objects reported changed while a pass ran.
    drifted: std::collections::HashSet<crate::render::ObjectKey>,
    /// The pool and connection the last pass used (a pass holds `state`, so
    /// probes and the LISTEN connection read them here).
    last_connection: Option<(deadpool_postgres::Pool, ConnInfo)>,
}

/// Notifications are collapsed over this window: a burst of row changes
/// costs one or two passes, not one per statement.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Ends the actor (DBQR deleted or replaced by a new spec).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

fn pass_config(dbqr: &DatabaseQueryResource, settings: &Settings) -> Result<PassConfig, Problem> {
    let problems = dbqr.spec.validate();
    if let Some(first) = problems.first() {
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(Problem::new(first.reason(), all.join("; ")));
    }
    let template = RowTemplate::compile(&dbqr.spec.template)
        .map_err(|e| Problem::new(e.reason(), e.to_string()))?;
    let status_template = dbqr
        .spec
        .status_update_query_template
        .as_deref()
        .map(StatusTemplate::compile)
        .transpose()
        .map_err(|e| Problem::new(e.reason(), e.to_string()))?;
    Ok(PassConfig {
        owner: Owner {
            name: dbqr.name_any(),
            namespace: dbqr.namespace().unwrap_or_default(),
            uid: dbqr.uid().unwrap_or_default(),
        },
        metadata: Metadata::of(dbqr),
        spec: dbqr.spec.clone(),
        template,
        policy: settings.policy.clone(),
        allow_cross_namespace_secrets: settings.allow_cross_namespace_secrets,
        status_template,
    })
}

impl QueryActor {
    pub fn new(dbqr: DatabaseQueryResource, settings: &Settings, writer: WriterHandle) -> Self {
        let config = pass_config(&dbqr, settings).map(Arc::new);
        let dbqr_detection = dbqr.spec.change_detection.clone().filter(|cd| cd.enabled);
        let status = dbqr.status.clone();
        let managed = status
            .as_ref()
            .map(|s| s.managed_kinds.clone())
            .unwrap_or_default();
        Self {
            dbqr,
            config,
            state: Some(PassState::with_managed_kinds(managed)),
            last_connection: None,
            drifted: Default::default(),
            writeback_pending: Default::default(),
            status_seen: Default::default(),
            writeback: None,
            last_report: PassReport::default(),
            status,
            writer,
            failures: 0,
            pass: 0,
            dirty: false,
            next_pass: None,
            detection: match &dbqr_detection {
                Some(_) => Detection::NotStarted,
                None => Detection::Off,
            },
        }
    }

    /// Something changed in the database: run a pass soon.
    fn trigger(&mut self, ctx: &mut Context<Self>) {
        if self.state.is_none() {
            self.dirty = true;
        } else {
            self.schedule(DEBOUNCE, ctx);
        }
    }

    fn schedule(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(handle) = self.next_pass.take() {
            ctx.cancel_future(handle);
        }
        self.next_pass = Some(ctx.run_later(delay, |actor, ctx| {
            actor.next_pass = None;
            actor.start_pass(ctx);
        }));
    }

    fn start_pass(&mut self, ctx: &mut Context<Self>) {
        let (Ok(config), Some(mut state)) = (self.config.clone(), self.state.take()) else {
            return;
        };
        self.pass += 1;
        let writer = self.writer.clone();
        let pass = self.pass;
        let work = async move {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let report = run_pass(&config, &mut state, &writer, &now).await;
            (report, state)
        };
        ctx.spawn(
            work.into_actor(self)
                .map(move |(report, state), actor, ctx| {
                    actor.last_connection = state.connection();
                    actor.state = Some(state);
                    actor.finish_pass(pass, report, ctx);
                    for key in std::mem::take(&mut actor.drifted) {
                        ctx.notify(Drifted { key });
                    }
                }),
        );
    }

    fn finish_pass(&mut self, pass: u64, report: PassReport, ctx: &mut Context<Self>) {
        tracing::info!(
            dbqr = %self.dbqr.name_any(), namespace = %self.dbqr.namespace().unwrap_or_default(), pass,
            rows = report.rows, objects = report.objects, applied = report.applied, skipped = report.skipped,
            pruned = report.pruned, ok = report.succeeded(), reason = report.failure_reason().unwrap_or(""),
            "pass finished"
        );
        self.publish(Outcome::Pass(&report), ctx);
        self.last_report = report.clone();
        let poll = self.dbqr.spec.poll_interval.get();
        let delay = if report.succeeded() {
            self.failures = 0;
            poll
        } else {
            self.failures = self.failures.saturating_add(1);
            backoff(self.failures, poll)
        };
        if report.database == Some(Ok(())) {
            self.start_detection(ctx);
        }
        if std::mem::take(&mut self.dirty) {
            self.schedule(DEBOUNCE, ctx);
        } else {
            self.schedule(delay, ctx);
        }
    }

    /// Writes the status if it changed, with Events for changed reasons.
    fn publish(&mut self, outcome: Outcome<'_>, ctx: &mut Context<Self>) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let Some((status, events)) = next_status(
            self.status.as_ref(),
            &outcome,
            self.writeback.as_ref(),
            self.dbqr.metadata.generation,
            now,
        ) else {
            return;
        };
        self.status = Some(status.clone());
        let writer = self.writer.clone();
        let namespace = self.dbqr.namespace().unwrap_or_default();
        let name = self.dbqr.name_any();
        let reference = self.dbqr.object_ref(&());
        ctx.spawn(
            async move {
                let status = serde_json::to_value(&status).unwrap_or_default();
                let resource = ApiResource::erase::<DatabaseQueryResource>(&());
                if let Err(error) = writer
                    .call(Op::PatchStatus {
                        resource,
                        namespace,
                        name,
                        status,
                    })
                    .await
                {
                    tracing::warn!(%error, "cannot write DBQR status");
                }
                for event in events {
                    if let Err(error) = writer
                        .call(Op::Event {
                            reference: reference.clone(),
                            event,
                        })
                        .await
                    {
                        tracing::warn!(%error, "cannot publish event");
                    }
                }
            }
            .into_actor(self),
        );
    }
}

/// 1s, 2s, 4s ... capped at the poll interval, with ±20% jitter so DBQRs
/// sharing a failing database do not retry in lockstep.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(10)).min(cap);
    let factor = rand::rng().random_range(0.8..1.2);
    base.mul_f64(factor)
}

impl Actor for QueryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Ok(config) = &self.config {
            self.writer.0.do_send(Subscribe {
                owner: owner_key(&config.owner),
                recipient: Some(ctx.address().recipient()),
            });
        }
        match &self.config {
            Ok(_) => self.start_pass(ctx),
            Err(problem) => {
                tracing::warn!(dbqr = %self.dbqr.name_any(), reason = %problem.reason, "invalid spec");
                let problem = problem.clone();
                self.publish(Outcome::InvalidSpec(problem), ctx);
            }
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Ok(config) = &self.config {
            self.writer.0.do_send(Subscribe {
                owner: owner_key(&config.owner),
                recipient: None,
            });
        }
        if let Some(state) = self.state.take() {
            state.close();
        }
    }
}

/// The writer's subscription key: the owner label values.
fn owner_key(owner: &Owner) -> (String, String) {
    (label_value(&owner.namespace), label_value(&owner.name))
}

impl Handler<Drifted> for QueryActor {
    type Result = ();

    /// A managed object changed or vanished: put it back if it no longer
    /// matches. During a pass the pass itself compares against the cache.
    fn handle(&mut self, Drifted { key }: Drifted, ctx: &mut Context<Self>) {
        let Some(state) = &self.state else {
            // Checked once the pass has ended (most are the pass's own writes).
            self.drifted.insert(key);
            return;
        };
        let Some(wanted) = state.applied(&key) else {
            return;
        };
        let writer = self.writer.clone();
        let name = self.dbqr.name_any();
        let writes_back = matches!(&self.config, Ok(c) if c.status_template.is_some());
        ctx.spawn(
            async move {
                match repair(&writer, &wanted).await {
                    Ok(true) => tracing::info!(dbqr = %name, kind = %key.group_kind, object = %key.name, "repaired drift"),
                    Ok(false) => {}
                    Err(problem) => tracing::warn!(dbqr = %name, reason = %problem.reason, "drift repair failed"),
                }
                key
            }
            .into_actor(self)
            .map(move |key, actor, ctx| {
                if writes_back {
                    actor.queue_writeback(key, ctx);
                }
            }),
        );
    }
}

impl Handler<Stop> for QueryActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        use actix::ActorContext;
        ctx.stop();
    }
}
