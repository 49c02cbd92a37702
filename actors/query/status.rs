//! The DBQR status of a `QueryActor`: the next one is computed by
//! `reconcile::status::next_status` from the outcome; it is written when it
//! changed, with its Events once the API server has it, and a failed write
//! is retried with backoff unless a newer status replaced it.

use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};

use super::QueryActor;
use dbqo::api::DatabaseQueryResourceStatus;
use dbqo::backoff::backoff;
use dbqo::kube_api::NewEvent;
use dbqo::reconcile::{
    status::{next_status, Outcome},
    Cluster as _,
};

/// Failed status patches are retried at least this often.
const STATUS_RETRY_CAP: Duration = Duration::from_secs(30);

/// Where the DBQR status stands.
pub(super) struct StatusWrites {
    /// As the API server has it (what the next status is compared with).
    current: Option<DatabaseQueryResourceStatus>,
    /// Counts writes, so a retry knows whether a newer one replaced it.
    version: u64,
    /// The status being written (by version), until the API server answers.
    writing: Option<(u64, DatabaseQueryResourceStatus)>,
    /// Failed writes in a row.
    failures: u32,
}

impl StatusWrites {
    pub(super) fn new(current: Option<DatabaseQueryResourceStatus>) -> Self {
        Self { current, version: 0, writing: None, failures: 0 }
    }

    /// A write is waiting for the API server's answer.
    pub(super) fn writing(&self) -> bool {
        self.writing.is_some()
    }

    /// What a new status is compared with: the one being written, if any
    /// (the same change is not written, nor announced, twice).
    fn latest(&self) -> Option<&DatabaseQueryResourceStatus> {
        match &self.writing {
            Some((_, writing)) => Some(writing),
            None => self.current.as_ref(),
        }
    }

    /// `status` is being written; its version.
    fn writing_now(&mut self, status: DatabaseQueryResourceStatus) -> u64 {
        self.version += 1;
        self.writing = Some((self.version, status));
        self.version
    }

    /// The API server answered the write of `version`.
    fn answered(&mut self, version: u64) {
        if self.writing.as_ref().is_some_and(|(v, _)| *v == version) {
            self.writing = None;
        }
    }

    fn is_latest(&self, version: u64) -> bool {
        self.version == version
    }

    /// A write failed; how long until it is retried.
    fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        backoff(self.failures, STATUS_RETRY_CAP)
    }

    fn written(&mut self, status: DatabaseQueryResourceStatus) {
        self.failures = 0;
        self.current = Some(status);
    }
}

impl QueryActor {
    /// Writes the status if it changed, with Events for changed reasons.
    pub(super) fn publish(&mut self, outcome: Outcome<'_>, ctx: &mut Context<Self>) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        // Compared with what is being written, if anything: the same change
        // is not written (nor announced) twice.
        let current = self.status.latest();
        let Some((status, events)) = next_status(
            current,
            &outcome,
            self.writeback_queue.result(),
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
        events: Vec<NewEvent>,
        ctx: &mut Context<Self>,
    ) {
        let version = self.status.writing_now(status.clone());
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
                actor.status.answered(version);
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
        events: Vec<NewEvent>,
        ctx: &mut Context<Self>,
    ) {
        crate::metrics::global().status_write(result.is_ok());
        if let Err(error) = result {
            if self.stopping.pending() {
                tracing::warn!(dbqr = %self.dbqr.name_any(), reason = error.reason(), "cannot write DBQR status; stopping without a retry");
                self.stop_if_idle(ctx);
                return;
            }
            let delay = self.status.failed();
            tracing::warn!(dbqr = %self.dbqr.name_any(), reason = error.reason(), retry_in = ?delay, "cannot write DBQR status");
            ctx.run_later(delay, move |actor, ctx| {
                // A newer status was written (or is being written) meanwhile.
                if actor.status.is_latest(version) {
                    actor.write_status(status, events, ctx);
                }
            });
            return;
        }
        self.status.written(status);
        self.stop_if_idle(ctx);
    }
}
