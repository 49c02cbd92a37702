//! The actors a supervisor keeps: one per watched object, keyed by
//! (namespace, name), each with what the supervisor knows of it. Shared by
//! both supervisors, so both stop an actor, handle a re-list and shut down
//! the same way.
//!
//! A re-list (the watch could not resume and listed everything again) has no
//! Delete event for an object deleted while the watch was down: at the end
//! of the list it is simply not there, and its actor is stopped then.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use actix::{Actor, ActorContext, ActorFutureExt, Addr, Handler, ResponseActFuture};

use crate::stopping::Stop;

pub type Key = (String, String);

pub struct Child<A: Actor, M> {
    pub actor: Addr<A>,
    /// What the supervisor knows of the object (uid, generation, ...).
    pub meta: M,
}

/// An actor a supervisor keeps: stopped with [`Stop`].
pub trait ChildActor: Actor<Context = actix::Context<Self>> + Handler<Stop> {}

impl<A: Actor<Context = actix::Context<A>> + Handler<Stop>> ChildActor for A {}

pub struct Children<A: ChildActor, M> {
    running: HashMap<Key, Child<A, M>>,
    /// While the watch lists again: the keys listed so far.
    relisting: Option<HashSet<Key>>,
}

impl<A: ChildActor, M> Default for Children<A, M> {
    fn default() -> Self {
        Self { running: HashMap::new(), relisting: None }
    }
}

/// A supervisor that stops (its watch ended) stops its actors with it.
impl<A: ChildActor, M> Drop for Children<A, M> {
    fn drop(&mut self) {
        for (_, child) in self.running.drain() {
            child.actor.do_send(Stop::Now);
        }
    }
}

impl<A: ChildActor, M> Children<A, M> {
    pub fn get(&self, key: &Key) -> Option<&Child<A, M>> {
        self.running.get(key)
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Child<A, M>)> {
        self.running.iter()
    }

    /// Keeps `actor` for `key`, stopping the one it replaces (a new spec, a
    /// new object of the same name).
    pub fn insert(&mut self, key: Key, actor: Addr<A>, meta: M) {
        if let Some(old) = self.running.insert(key, Child { actor, meta }) {
            old.actor.do_send(Stop::Now);
        }
    }

    /// Changes what is known of the object of `key`.
    pub fn update(&mut self, key: &Key, change: impl FnOnce(&mut M)) {
        if let Some(child) = self.running.get_mut(key) {
            change(&mut child.meta);
        }
    }

    /// Stops the actor of `key` now: its object is gone.
    pub fn stop(&mut self, key: &Key) {
        if let Some(child) = self.running.remove(key) {
            child.actor.do_send(Stop::Now);
        }
    }

    /// The watch starts listing everything again.
    pub fn relist_started(&mut self) {
        self.relisting = Some(HashSet::new());
    }

    /// The object of `key` is in the list being made.
    pub fn listed(&mut self, key: &Key) {
        if let Some(listed) = self.relisting.as_mut() {
            listed.insert(key.clone());
        }
    }

    /// The list is complete: stops the actors of objects it lacks and
    /// returns their keys.
    pub fn relist_done(&mut self) -> Vec<Key> {
        let listed = self.relisting.take().unwrap_or_default();
        let gone: Vec<Key> =
            self.running.keys().filter(|key| !listed.contains(*key)).cloned().collect();
        for key in &gone {
            self.stop(key);
        }
        gone
    }

    /// The answer to [`crate::stopping::Shutdown`] for supervisor `S`: every
    /// actor finishes the work under way and stops, then the supervisor.
    /// `what` names the actors in the log line that follows.
    pub fn shut_down_supervisor<S>(&mut self, what: &'static str) -> ResponseActFuture<S, ()>
    where
        S: Actor<Context = actix::Context<S>>,
    {
        let stopped = actix::fut::wrap_future::<_, S>(self.shut_down());
        Box::pin(stopped.map(move |count, _, ctx| {
            tracing::info!(actors = count, "{what} stopped");
            ctx.stop();
        }))
    }

    /// Asks every actor to stop once the work under way has finished;
    /// resolves when all have stopped.
    pub fn shut_down(&mut self) -> impl Future<Output = usize> + 'static {
        let stops: Vec<_> =
            self.running.drain().map(|(_, child)| child.actor.send(Stop::WhenIdle)).collect();
        let count = stops.len();
        async move {
            futures_util::future::join_all(stops).await;
            count
        }
    }
}
