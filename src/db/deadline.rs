//! Client-side deadlines on every round trip to a database.
//!
//! The server enforces `statement_timeout`, and TCP keepalive notices a peer
//! that is gone; neither helps when the path stops carrying packets while
//! both ends stay up (a paused server, a proxy or NAT entry that died): the
//! client waits for an answer nobody will send. So each round trip the
//! operator makes also has a limit of its own, a little over the one the
//! server was asked to keep, and a connection that missed it is closed
//! rather than handed to the next pass.

use std::{future::Future, time::Duration};

/// What a round trip may take beyond the limit the server itself enforces
/// (`statement_timeout`, `connect_timeout`) before the operator stops
/// waiting: time for the server's own cancellation to arrive.
pub const GRACE: Duration = Duration::from_secs(3);

/// A round trip (or a connection's handshake) got no answer in time. Holds
/// the limit, never anything the server sent.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the database server did not answer within {}s (client-side deadline; the network or the server stalls)", .0.as_secs_f32())]
pub struct Unanswered(pub Duration);

impl Unanswered {
    /// Stable reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        crate::reason::DATABASE_UNRESPONSIVE
    }
}

/// Runs `work`, giving up after `limit`.
pub async fn within<F: Future>(limit: Duration, work: F) -> Result<F::Output, Unanswered> {
    tokio::time::timeout(limit, work).await.map_err(|_| Unanswered(limit))
}

/// [`within`] for a round trip the server bounds by `server_limit`.
pub async fn after_server<F: Future>(
    server_limit: Duration,
    work: F,
) -> Result<F::Output, Unanswered> {
    within(server_limit + GRACE, work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_round_trip_that_never_answers_ends_at_its_limit_plus_the_grace() {
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<()>();
        let err = after_server(Duration::from_secs(2), never).await.unwrap_err();
        assert_eq!(err.0, Duration::from_secs(2) + GRACE);
        assert_eq!(started.elapsed(), Duration::from_secs(2) + GRACE);
        assert_eq!(err.reason(), "DatabaseUnresponsive");
        assert!(err.to_string().contains("5s"), "{err}");
        assert_eq!(within(Duration::from_secs(1), async { 7 }).await.unwrap(), 7);
    }
}
