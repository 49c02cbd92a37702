//! Status write-back of a `QueryActor`: notices are coalesced per object
//! (a set of pending objects, flushed after a short debounce), one batch
//! runs at a time beside passes, failed objects are retried with backoff,
//! and after the actor's first successful pass every object it manages is
//! written once (an operator restart may have missed status changes).
//! What is due, running it and the verdict are `reconcile::writeback`'s.

use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};

use super::QueryActor;
use dbqo::backoff::backoff;
use dbqo::kube_api::ObjectKey;
use dbqo::reconcile::{
    status::{Outcome, WriteBackResult},
    writeback::{self, Fingerprints},
};

/// Status changes of one object within this window cost one write-back.
const WRITEBACK_DEBOUNCE: Duration = Duration::from_millis(100);
/// Failed write-backs are retried at least this often.
const WRITEBACK_RETRY_CAP: Duration = Duration::from_secs(60);

/// Where the write-back of one actor stands.
#[derive(Debug, Default)]
pub(super) struct WritebackQueue {
    /// Objects whose status SQL waits; a set, so a burst of notices for
    /// one object costs one statement.
    pending: std::collections::HashSet<ObjectKey>,
    /// A flush is armed.
    scheduled: bool,
    /// A batch runs; its end arms the next flush.
    running: bool,
    /// Failed batches in a row.
    failures: u32,
    /// Every managed object was queued once after the first good pass.
    synced: bool,
    /// Status fingerprint of each object at its last successful write-back.
    seen: Fingerprints,
    /// Outcome of the last batch, for the StatusWriteBack condition.
    result: Option<WriteBackResult>,
}

impl WritebackQueue {
    pub(super) fn result(&self) -> Option<&WriteBackResult> {
        self.result.as_ref()
    }

    /// A batch of status SQL runs now.
    pub(super) fn running(&self) -> bool {
        self.running
    }

    /// Forgets objects this DBQR no longer manages.
    pub(super) fn retain(&mut self, keep: impl Fn(&ObjectKey) -> bool) {
        self.pending.retain(|key| keep(key));
        self.seen.retain(|key, _| keep(key));
    }
}

impl QueryActor {
    pub(super) fn writes_back(&self) -> bool {
        matches!(&self.config, Ok(c) if c.status_template.is_some())
    }

    pub(super) fn queue_writeback(&mut self, key: ObjectKey, ctx: &mut Context<Self>) {
        self.writeback_queue.pending.insert(key);
        self.schedule_writeback(WRITEBACK_DEBOUNCE, ctx);
    }

    /// After a pass: the first good one queues every managed object once;
    /// objects that waited for the pass are flushed now.
    pub(super) fn writeback_after_pass(&mut self, succeeded: bool, ctx: &mut Context<Self>) {
        if !self.writes_back() {
            return;
        }
        // A row whose waves stopped waiting is Ready now or soon without a
        // status change of the objects already there: look at them again.
        let row_ready = matches!(&self.config, Ok(c) if c.status_template.as_ref().is_some_and(|t| t.uses_row_ready()));
        if let (true, Some(state)) = (row_ready, &self.state) {
            self.writeback_queue.pending.extend(state.done_waiting());
        }
        if succeeded && !self.writeback_queue.synced {
            if let Some(state) = &self.state {
                self.writeback_queue.synced = true;
                let keys: Vec<ObjectKey> = state.produced().collect();
                self.writeback_queue.pending.extend(keys);
            }
        }
        if !self.writeback_queue.pending.is_empty() {
            self.schedule_writeback(WRITEBACK_DEBOUNCE, ctx);
        }
    }

    fn schedule_writeback(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        let queue = &mut self.writeback_queue;
        // Stopping: what waits is written after the restart (the first good
        // pass queues every object once).
        if queue.scheduled || queue.running || self.stopping.pending() {
            return;
        }
        queue.scheduled = true;
        ctx.run_later(delay, |actor, ctx| {
            actor.writeback_queue.scheduled = false;
            actor.flush_writebacks(ctx);
        });
    }

    /// Runs the status SQL of every pending object whose status changed
    /// since its last write-back. Runs beside passes and never blocks them;
    /// while a pass holds the state (or before one made a pool) the
    /// objects wait for the end of the pass.
    fn flush_writebacks(&mut self, ctx: &mut Context<Self>) {
        let (Ok(config), Some(state), Some(connection)) =
            (self.config.clone(), self.state.as_ref(), self.connection.clone())
        else {
            return;
        };
        let keys = std::mem::take(&mut self.writeback_queue.pending);
        let row_ready = config.status_template.as_ref().is_some_and(|t| t.uses_row_ready());
        let due = writeback::due(&self.writer, state, &self.writeback_queue.seen, keys, row_ready);
        if due.is_empty() {
            return;
        }
        self.writeback_queue.running = true;
        let work = async move { writeback::run(&config, &connection.pool, due).await };
        ctx.spawn(work.into_actor(self).map(|written, actor, ctx| {
            actor.writeback_queue.running = false;
            let count = written.len();
            let (verdict, failed) = writeback::record(&mut actor.writeback_queue.seen, written);
            let metrics = crate::metrics::global();
            metrics.writeback(true, count - failed.len());
            metrics.writeback(false, failed.len());
            let queue = &mut actor.writeback_queue;
            let delay = if failed.is_empty() {
                queue.failures = 0;
                WRITEBACK_DEBOUNCE
            } else {
                queue.failures = queue.failures.saturating_add(1);
                queue.pending.extend(failed);
                backoff(queue.failures, WRITEBACK_RETRY_CAP)
            };
            if !queue.pending.is_empty() {
                actor.schedule_writeback(delay, ctx);
            }
            if let Some(verdict) = verdict {
                actor.writeback_queue.result = Some(verdict);
                let report = actor.last_report.clone();
                actor.publish(Outcome::Pass(&report), ctx);
            }
            // After the publish above: a stop waits for its status write.
            actor.stop_if_idle(ctx);
        }));
    }
}
