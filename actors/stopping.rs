//! How an actor is asked to stop, the same for a `QueryActor` and a
//! `DatabaseActor`: at once (its object is gone or replaced by a new spec:
//! what it is doing no longer matters), or once the work under way has
//! finished (shutdown: a pass half done is a pass to repeat, and a SQL
//! statement cut off mid-way leaves the server to roll it back). Whoever
//! asks waits until the actor has stopped; the shutdown's deadline bounds
//! the wait.

use actix::{Message, ResponseFuture};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub enum Stop {
    /// Stop now; work under way is dropped.
    Now,
    /// Start nothing new; stop once the work under way has finished.
    WhenIdle,
}

/// Shuts a supervisor down: every actor it keeps finishes the work under way
/// and stops, then the supervisor; answered when all have stopped.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The stop requests an actor holds: who waits for it to stop, and whether
/// it stops once idle.
#[derive(Debug, Default)]
pub struct StopRequests {
    waiting: Vec<oneshot::Sender<()>>,
    when_idle: bool,
}

impl StopRequests {
    /// Records `stop`; the answer resolves once the actor has stopped (when
    /// [`StopRequests::stopped`] runs, or the actor is dropped).
    pub fn ask(&mut self, stop: Stop) -> ResponseFuture<()> {
        let (stopped, answer) = oneshot::channel();
        self.waiting.push(stopped);
        self.when_idle |= stop == Stop::WhenIdle;
        Box::pin(async move {
            let _ = answer.await;
        })
    }

    /// A stop is due once the actor is idle: it starts nothing new.
    pub fn pending(&self) -> bool {
        self.when_idle
    }

    /// The actor has stopped: everyone waiting hears it.
    pub fn stopped(&mut self) {
        for waiting in self.waiting.drain(..) {
            let _ = waiting.send(());
        }
    }
}
