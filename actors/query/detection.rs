//! Change detection of a `QueryActor`: the timestamp probe loop, and the
//! subscription to the shared LISTEN connection of its connection identity.
//! The probe is `reconcile::change::probe`, the connection `db::Listeners`.

use actix::{ActorFutureExt, AsyncContext, Context, StreamHandler, WrapFuture};
use kube::ResourceExt;

use super::QueryActor;
use dbqo::api::{ChangeDetectionMode, DatabaseQueryResourceSpec};
use dbqo::db::{Changed, Notice};
use dbqo::reconcile::change::{probe, probe_sql};
use dbqo::reconcile::status::Outcome;

/// Where change detection stands for one DBQR.
pub(super) enum Detection {
    Off,
    NotStarted,
    /// Timestamp mode: the last value the probe saw (`None` before the
    /// first probe), and whether the last probe failed (the status says so).
    Probing {
        last: Option<Option<String>>,
        failed: bool,
    },
    /// Notify mode: the subscription to the shared LISTEN connection, and
    /// the stream that delivers its notices.
    Listening {
        subscribed: Option<actix::SpawnHandle>,
    },
}

impl Detection {
    pub(super) fn for_spec(spec: &DatabaseQueryResourceSpec) -> Self {
        match &spec.change_detection {
            Some(cd) if cd.enabled => Self::NotStarted,
            _ => Self::Off,
        }
    }
}

impl QueryActor {
    pub(super) fn start_detection(&mut self, ctx: &mut Context<Self>) {
        if !matches!(self.detection, Detection::NotStarted) {
            return;
        }
        let Some(spec) = self.dbqr.spec.change_detection.clone() else {
            self.detection = Detection::Off;
            return;
        };
        match spec.mode {
            ChangeDetectionMode::Timestamp => {
                self.detection = Detection::Probing { last: None, failed: false };
                ctx.run_later(spec.change_poll_interval.get(), |actor, ctx| actor.probe(ctx));
            }
            ChangeDetectionMode::Notify => {
                self.detection = Detection::Listening { subscribed: None };
                self.listen(ctx);
            }
        }
    }

    /// Timestamp mode: one probe; a new maximum triggers a pass. The next
    /// probe is armed when this one has ended.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        let Some(cd) = self.dbqr.spec.change_detection.clone() else {
            return;
        };
        let interval = cd.change_poll_interval.get();
        let (Some(sql), Some(connection)) = (probe_sql(&cd), self.connection.clone()) else {
            ctx.run_later(interval, |actor, ctx| actor.probe(ctx));
            return;
        };
        let timeout = self.dbqr.spec.database.statement_timeout.get();
        let work = async move { probe(&connection.pool, &sql, timeout).await };
        ctx.spawn(work.into_actor(self).map(move |result, actor, ctx| {
            match result {
                Ok(value) => {
                    crate::metrics::global().probe(true);
                    if let Detection::Probing { last, failed } = &mut actor.detection {
                        // The status still shows the failed probe: a pass
                        // writes what is true now.
                        let recovered = std::mem::take(failed);
                        let new_maximum = last.as_ref() != Some(&value);
                        if new_maximum {
                            tracing::debug!(dbqr = %actor.dbqr.name_any(), "change probe saw a new maximum");
                            *last = Some(value);
                        }
                        if recovered || new_maximum {
                            actor.trigger(ctx);
                        }
                    }
                }
                Err(error) => {
                    crate::metrics::global().probe(false);
                    tracing::info!(dbqr = %actor.dbqr.name_any(), reason = error.reason(), "change probe failed");
                    if let Detection::Probing { failed, .. } = &mut actor.detection {
                        *failed = true;
                    }
                    actor.publish(Outcome::ProbeFailed(&error), ctx);
                }
            }
            ctx.run_later(interval, |actor, ctx| actor.probe(ctx));
        }));
    }

    /// The pool was rebuilt from a changed Secret: the LISTEN subscription
    /// follows at once (the shared connection reconnects with the new settings).
    pub(super) fn reconnect_listener(&mut self, ctx: &mut Context<Self>) {
        if let Detection::Listening { subscribed } = &mut self.detection {
            if let Some(handle) = subscribed.take() {
                ctx.cancel_future(handle);
                tracing::debug!(dbqr = %self.dbqr.name_any(), "LISTEN subscription renewed with the new Secret");
                self.listen(ctx);
            }
        }
    }

    /// Notify mode: subscribes to this DBQR's channel on the LISTEN
    /// connection of its connection identity.
    fn listen(&mut self, ctx: &mut Context<Self>) {
        let (Some(channel), Some(connection), Ok(config)) = (
            self.dbqr.spec.change_detection.as_ref().and_then(|cd| cd.channel.clone()),
            self.connection.clone(),
            self.config.clone(),
        ) else {
            return;
        };
        let Detection::Listening { subscribed } = &mut self.detection else {
            return;
        };
        let subscription = config.connections.listeners.subscribe(
            &connection.info,
            &channel,
            &config.connections.budget,
        );
        let notices = futures_util::stream::unfold(subscription, |s| async move {
            let notice = s.next().await;
            Some((Heard(notice), s))
        });
        *subscribed = Some(ctx.add_stream(notices));
        tracing::debug!(dbqr = %self.dbqr.name_any(), "subscribed to notifications");
    }
}

/// A notice of the shared LISTEN connection for this DBQR's channel.
struct Heard(Notice);

impl StreamHandler<Heard> for QueryActor {
    fn handle(&mut self, Heard(notice): Heard, ctx: &mut Context<Self>) {
        let keyed = self.config.as_ref().is_ok_and(|c| c.key_column().is_some());
        match notice {
            // Changes before the LISTEN took effect may have been missed.
            Notice::Listening => {
                tracing::debug!(dbqr = %self.dbqr.name_any(), "listening; running a pass");
                self.trigger(ctx);
            }
            Notice::Notified(Changed::Keys(keys)) if keyed => {
                crate::metrics::global().notification();
                self.trigger_keys(keys, ctx);
            }
            Notice::Notified(_) => {
                crate::metrics::global().notification();
                self.trigger(ctx);
            }
        }
    }

    /// The subscription ends only when the actor drops it.
    fn finished(&mut self, _: &mut Context<Self>) {}
}
