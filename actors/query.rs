//! `QueryActor`: one per DBQR. Owns the pass state (connection pool, last
//! applied objects) and the full-poll timer. A timer is armed only after the
//! previous pass ended; failures back off exponentially with jitter, capped by
//! the poll interval.

use std::{sync::Arc, time::Duration};

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::ApiResource, Resource, ResourceExt};
use rand::Rng;

use super::writer::{Op, WriterHandle};
use crate::api::{DatabaseQueryResource, DatabaseQueryResourceStatus};
use crate::reconcile::{
    run_pass,
    status::{next_status, Outcome},
    Owner, PassConfig, PassReport, PassState, Problem,
};
use crate::render::{Metadata, RowTemplate};
use crate::settings::Settings;

pub struct QueryActor {
    dbqr: DatabaseQueryResource,
    config: Result<Arc<PassConfig>, Problem>,
    /// `None` while a pass holds it.
    state: Option<PassState>,
    status: Option<DatabaseQueryResourceStatus>,
    writer: WriterHandle,
    failures: u32,
    pass: u64,
}

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
        drift_repair_interval: settings.drift_repair_interval,
    })
}

impl QueryActor {
    pub fn new(dbqr: DatabaseQueryResource, settings: &Settings, writer: WriterHandle) -> Self {
        let config = pass_config(&dbqr, settings).map(Arc::new);
        let status = dbqr.status.clone();
        let managed = status
            .as_ref()
            .map(|s| s.managed_kinds.clone())
            .unwrap_or_default();
        Self {
            dbqr,
            config,
            state: Some(PassState::with_managed_kinds(managed)),
            status,
            writer,
            failures: 0,
            pass: 0,
        }
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
                    actor.state = Some(state);
                    actor.finish_pass(pass, report, ctx);
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
        let poll = self.dbqr.spec.poll_interval.get();
        let delay = if report.succeeded() {
            self.failures = 0;
            poll
        } else {
            self.failures = self.failures.saturating_add(1);
            backoff(self.failures, poll)
        };
        ctx.run_later(delay, |actor, ctx| actor.start_pass(ctx));
    }

    /// Writes the status if it changed, with Events for changed reasons.
    fn publish(&mut self, outcome: Outcome<'_>, ctx: &mut Context<Self>) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let Some((status, events)) = next_status(
            self.status.as_ref(),
            &outcome,
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
        if let Some(state) = self.state.take() {
            state.close();
        }
    }
}

impl Handler<Stop> for QueryActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        use actix::ActorContext;
        ctx.stop();
    }
}
