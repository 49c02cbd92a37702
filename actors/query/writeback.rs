//! Status write-back of a `QueryActor`: debounced per object, run beside
//! passes, reported in the `StatusWriteBack` condition. What is due, running
//! it and the verdict are `reconcile::writeback`'s.

use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};

use super::QueryActor;
use dbqo::reconcile::status::Outcome;
use dbqo::reconcile::writeback;
use dbqo::render::ObjectKey;

/// Status changes of one object within this window cost one write-back.
const WRITEBACK_DEBOUNCE: Duration = Duration::from_millis(100);

impl QueryActor {
    pub(super) fn queue_writeback(&mut self, key: ObjectKey, ctx: &mut Context<Self>) {
        let first = self.writeback_pending.is_empty();
        self.writeback_pending.insert(key);
        if first {
            ctx.run_later(WRITEBACK_DEBOUNCE, |actor, ctx| actor.flush_writebacks(ctx));
        }
    }

    /// Runs the status SQL of every queued object whose status changed since
    /// its last write-back. Runs beside passes and never blocks them.
    fn flush_writebacks(&mut self, ctx: &mut Context<Self>) {
        let (Ok(config), Some(state)) = (self.config.clone(), self.state.as_ref()) else {
            // A pass holds the state; try again when it is likely done.
            ctx.run_later(WRITEBACK_DEBOUNCE, |actor, ctx| actor.flush_writebacks(ctx));
            return;
        };
        let Some(connection) = self.connection.clone() else {
            return;
        };
        let keys = std::mem::take(&mut self.writeback_pending);
        let due = writeback::due(&self.writer, state, &self.status_seen, keys);
        if due.is_empty() {
            return;
        }
        let work = async move { writeback::run(&config, &connection.pool, due).await };
        ctx.spawn(work.into_actor(self).map(|written, actor, ctx| {
            if let Some(verdict) = writeback::record(&mut actor.status_seen, written) {
                actor.writeback = Some(verdict);
                let report = actor.last_report.clone();
                actor.publish(Outcome::Pass(&report), ctx);
            }
        }));
    }
}
