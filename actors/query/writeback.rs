//! Status write-back of a `QueryActor`: debounced per object, run beside
//! passes, reported in the `StatusWriteBack` condition.

use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use kube::ResourceExt;

use super::QueryActor;
use crate::reconcile::status::Outcome;
use crate::reconcile::{Problem, Writer as _};
use crate::render::ObjectKey;
use crate::writeback;

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

    /// Runs the status SQL for every queued object whose status changed since
    /// its last write-back. Runs beside passes and never blocks them.
    fn flush_writebacks(&mut self, ctx: &mut Context<Self>) {
        let (Ok(config), Some(state)) = (self.config.clone(), self.state.as_ref()) else {
            // A pass holds the state; try again when it is likely done.
            ctx.run_later(WRITEBACK_DEBOUNCE, |actor, ctx| actor.flush_writebacks(ctx));
            return;
        };
        let Some((pool, _)) = state.connection() else {
            return;
        };
        let work: Vec<_> = std::mem::take(&mut self.writeback_pending)
            .into_iter()
            .filter_map(|key| {
                let wanted = state.applied(&key)?;
                let row = state.row(&key)?.clone();
                let seen = self.status_seen.get(&key).copied();
                Some((key, wanted, row, seen))
            })
            .collect();
        let writer = self.writer.clone();
        ctx.spawn(
            async move {
                let Some(template) = config.status_template.as_ref() else { return Vec::new() };
                let mut results = Vec::new();
                for (key, wanted, row, seen) in work {
                    let live = match writer.cached(wanted.resource.clone(), wanted.namespace.clone(), wanted.name.clone()).await {
                        Ok(Some(cached)) => cached.manifest,
                        _ => continue,
                    };
                    let Some(fingerprint) = writeback::status_fingerprint(&live) else { continue };
                    if seen == Some(fingerprint) {
                        continue;
                    }
                    let outcome = match template.render(&live, &row, &config.metadata) {
                        Ok(bound) => writeback::execute(&pool, &bound).await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    results.push((key, fingerprint, outcome));
                }
                results
            }
            .into_actor(self)
            .map(|results, actor, ctx| {
                if results.is_empty() {
                    return;
                }
                let mut verdict = Ok(());
                for (key, fingerprint, outcome) in results {
                    match outcome {
                        Ok(()) => {
                            actor.status_seen.insert(key, fingerprint);
                        }
                        Err(e) => {
                            tracing::warn!(dbqr = %actor.dbqr.name_any(), object = %key.name, reason = e.reason(), "status write-back failed");
                            verdict = Err(Problem::new(e.reason(), format!("{} {}: {e}", key.group_kind, key.name)));
                        }
                    }
                }
                actor.writeback = Some(verdict);
                let report = actor.last_report.clone();
                actor.publish(Outcome::Pass(&report), ctx);
            }),
        );
    }
}
