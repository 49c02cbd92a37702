//! What can go wrong talking to a database server, with stable reasons.
//! Messages hold names from the spec and the server's error codes; never a
//! password, and never the text of a statement that carried one.

use crate::db::{ConnectError, SecretError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("admin connection Secret {0} not found")]
    SecretNotFound(String),
    #[error("the admin connection Secret is in namespace {0}, and the operator does not allow Secrets of other namespaces (--allow-cross-namespace-secrets)")]
    SecretNotAllowed(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("authentication failed: {0}")]
    Authentication(String),
    #[error("cannot connect: {0}")]
    Unreachable(String),
    #[error("no connection to this server is free in the operator's budget")]
    Budget,
    #[error("{what} failed: {message}")]
    Statement { what: String, message: String },
    #[error("the admin lacks {0}")]
    MissingRights(String),
    #[error(transparent)]
    Kubernetes(#[from] crate::kube_api::KubeError),
    #[error(transparent)]
    Unanswered(#[from] crate::db::Unanswered),
}

impl ServerError {
    /// Stable reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretNotFound(_) => crate::reason::SECRET_NOT_FOUND,
            Self::SecretNotAllowed(_) => crate::reason::SECRET_NOT_ALLOWED,
            Self::Secret(e) => e.reason(),
            Self::Connect(e) => e.reason(),
            Self::Authentication(_) => crate::reason::AUTHENTICATION_FAILED,
            Self::Unreachable(_) => crate::reason::CONNECTION_FAILED,
            Self::Budget => crate::reason::CONNECTION_BUDGET_EXHAUSTED,
            Self::Statement { .. } => crate::reason::STATEMENT_FAILED,
            Self::MissingRights(_) => crate::reason::INSUFFICIENT_PRIVILEGES,
            Self::Kubernetes(e) => e.reason(),
            Self::Unanswered(e) => e.reason(),
        }
    }
}

/// What a statement was, for its error message: the first two words
/// (`CREATE USER`, `GRANT SELECT`), never its literals.
pub fn statement_kind(sql: &str) -> String {
    sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}
