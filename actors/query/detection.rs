//! Change detection of a `QueryActor`: the timestamp probe loop and the
//! LISTEN connection. The probe itself is `reconcile::change::probe`.

use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, StreamHandler, WrapFuture};
use kube::ResourceExt;

use super::QueryActor;
use dbqo::api::{ChangeDetectionMode, DatabaseQueryResourceSpec};
use dbqo::db::{listen, Listener};
use dbqo::reconcile::backoff::backoff;
use dbqo::reconcile::change::{probe, probe_sql};
use dbqo::reconcile::status::Outcome;

/// Where change detection stands for one DBQR.
pub(super) enum Detection {
    Off,
    NotStarted,
    /// Timestamp mode: the last value the probe saw (`None` before the first probe).
    Probing {
        last: Option<Option<String>>,
    },
    /// Notify mode: the LISTEN connection, while it is up.
    Listening {
        listener: Option<Listener>,
        failures: u32,
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
                self.detection = Detection::Probing { last: None };
                ctx.run_later(spec.change_poll_interval.get(), |actor, ctx| {
                    actor.probe(ctx)
                });
            }
            ChangeDetectionMode::Notify => {
                self.detection = Detection::Listening {
                    listener: None,
                    failures: 0,
                };
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
                    if let Detection::Probing { last } = &mut actor.detection {
                        if last.as_ref() != Some(&value) {
                            tracing::debug!(dbqr = %actor.dbqr.name_any(), "change probe saw a new maximum");
                            *last = Some(value);
                            actor.trigger(ctx);
                        }
                    }
                }
                Err(error) => {
                    tracing::info!(dbqr = %actor.dbqr.name_any(), reason = error.reason(), "change probe failed");
                    actor.publish(Outcome::ProbeFailed(&error), ctx);
                }
            }
            ctx.run_later(interval, |actor, ctx| actor.probe(ctx));
        }));
    }

    /// The pool was rebuilt from a changed Secret: the LISTEN connection
    /// follows at once.
    pub(super) fn reconnect_listener(&mut self, ctx: &mut Context<Self>) {
        if let Detection::Listening { listener, .. } = &mut self.detection {
            if listener.take().is_some() {
                tracing::debug!(dbqr = %self.dbqr.name_any(), "reconnecting LISTEN with the new Secret");
                self.listen(ctx);
            }
        }
    }

    /// Notify mode: (re)connects the LISTEN connection. A pass follows every
    /// reconnect, since notifications may have been missed while it was down.
    fn listen(&mut self, ctx: &mut Context<Self>) {
        let Some(channel) = self
            .dbqr
            .spec
            .change_detection
            .as_ref()
            .and_then(|cd| cd.channel.clone())
        else {
            return;
        };
        let Some(connection) = self.connection.clone() else {
            ctx.run_later(Duration::from_secs(1), |actor, ctx| actor.listen(ctx));
            return;
        };
        let work = async move { listen(&connection.info, &channel).await };
        ctx.spawn(work.into_actor(self).map(|result, actor, ctx| {
            let Detection::Listening { listener, failures } = &mut actor.detection else {
                return;
            };
            match result {
                Ok(mut connected) => {
                    let first = *failures == 0 && listener.is_none();
                    *failures = 0;
                    let notifications = std::mem::replace(
                        &mut connected.notifications,
                        tokio::sync::mpsc::channel(1).1,
                    );
                    *listener = Some(connected);
                    ctx.add_stream(futures_util::stream::unfold(
                        notifications,
                        |mut rx| async move { rx.recv().await.map(|()| (Notified, rx)) },
                    ));
                    tracing::debug!(dbqr = %actor.dbqr.name_any(), "listening for notifications");
                    if !first {
                        actor.trigger(ctx);
                    }
                }
                Err(error) => {
                    *failures = failures.saturating_add(1);
                    tracing::info!(dbqr = %actor.dbqr.name_any(), reason = error.reason(), "LISTEN connection failed");
                    let delay = backoff(*failures, Duration::from_secs(30));
                    ctx.run_later(delay, |actor, ctx| actor.listen(ctx));
                }
            }
        }));
    }
}

/// A notification arrived on the LISTEN connection.
struct Notified;

impl StreamHandler<Notified> for QueryActor {
    fn handle(&mut self, _: Notified, ctx: &mut Context<Self>) {
        self.trigger(ctx);
    }

    /// The LISTEN connection ended: reconnect.
    fn finished(&mut self, ctx: &mut Context<Self>) {
        if let Detection::Listening { listener, failures } = &mut self.detection {
            *listener = None;
            *failures = failures.saturating_add(1);
            tracing::info!(dbqr = %self.dbqr.name_any(), "LISTEN connection lost; reconnecting");
            ctx.run_later(Duration::from_millis(200), |actor, ctx| actor.listen(ctx));
        }
    }
}
