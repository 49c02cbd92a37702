//! Why a pass, or one of its objects, failed. Each error wraps the layer
//! error it came from and has a stable [`PassError::reason`] used as the
//! condition reason and the Event reason. Messages
//! name rows by index and objects by kind and name, never row values.

use crate::api::SpecError;
use crate::db::{ConnectError, PoolConnectError, PoolError, PoolGetError, QueryError, SecretError};
use crate::kube_api::KubeError;
use crate::kube_api::{GroupKind, Gvk};
use crate::render::{RowError, TemplateError};
use crate::status_template::WritebackError;

/// A failure of a DBQR's spec, database, query or objects.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{}", join(.0))]
    InvalidSpec(Vec<SpecError>),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    StatusTemplate(WritebackError),
    #[error("secrets in other namespaces ({0}) are not allowed by the operator")]
    SecretNotAllowed(String),
    #[error("secret {0} not found")]
    SecretNotFound(String),
    #[error("cannot read secret {secret}: {source}")]
    SecretUnreadable {
        secret: String,
        #[source]
        source: KubeError,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("timed out connecting to the database")]
    ConnectTimeout,
    #[error("the connection pool is closed")]
    PoolClosed,
    #[error("no connection slot to this database server came free within {0:?} (--max-connections-per-database)")]
    BudgetSlot(std::time::Duration),
    #[error("no connection of the pool came free in time")]
    PoolBusy,
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{kind} {name}: {source}")]
    WriteBack {
        kind: GroupKind,
        name: String,
        #[source]
        source: WritebackError,
    },
    /// The server's error, as `db::describe` may quote it (never a value).
    #[error("change probe failed: {}", crate::db::describe(.0))]
    Probe(#[source] tokio_postgres::Error),
    #[error("change probe timed out")]
    ProbeTimeout,
    #[error("discovery failed: {0}")]
    Discovery(#[source] KubeError),
    #[error("{}", rows_message(.0))]
    Rows(Vec<RowFailure>),
    #[error("{} kind(s) not pruned; {}", .0.len(), .0[0])]
    Prune(Vec<PruneFailure>),
}

impl PassError {
    /// Stable reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => crate::reason::INVALID_SPEC,
            Self::Template(e) => e.reason(),
            Self::StatusTemplate(e) => e.reason(),
            Self::SecretNotAllowed(_) => crate::reason::SECRET_NOT_ALLOWED,
            Self::SecretNotFound(_) => crate::reason::SECRET_NOT_FOUND,
            Self::SecretUnreadable { source, .. } => source.reason(),
            Self::Secret(e) => e.reason(),
            Self::Pool(e) => e.reason(),
            Self::Connect(e) => e.reason(),
            Self::ConnectTimeout => crate::reason::CONNECTION_FAILED,
            Self::PoolClosed => crate::reason::POOL_CLOSED,
            Self::BudgetSlot(_) | Self::PoolBusy => crate::reason::WAITING_FOR_CONNECTION,
            Self::Query(e) => e.reason(),
            Self::WriteBack { source, .. } => source.reason(),
            Self::Probe(_) => crate::reason::QUERY_FAILED,
            Self::ProbeTimeout => crate::reason::QUERY_TIMEOUT,
            Self::Discovery(e) => e.reason(),
            Self::Rows(failures) => {
                failures.first().map_or(crate::reason::SYNC_FAILED, |f| f.error.reason())
            }
            Self::Prune(_) => crate::reason::PRUNE_FAILED,
        }
    }

    /// Whether the database (or the way to reach it) failed, as opposed to
    /// the query, the template or the objects.
    pub fn is_database(&self) -> bool {
        matches!(
            self,
            Self::SecretNotAllowed(_)
                | Self::SecretNotFound(_)
                | Self::SecretUnreadable { .. }
                | Self::Secret(_)
                | Self::Pool(_)
                | Self::Connect(_)
                | Self::ConnectTimeout
                | Self::PoolClosed
                | Self::Query(QueryError::Unanswered(_))
        )
    }

    /// A connection could not be taken from the pool.
    pub fn from_pool(e: PoolGetError) -> Self {
        use deadpool::managed::PoolError as E;
        match e {
            E::Backend(PoolConnectError::Postgres(e)) => {
                Self::Connect(crate::db::connect_error(&e))
            }
            E::Backend(PoolConnectError::Budget(waited)) => Self::BudgetSlot(waited),
            E::Backend(PoolConnectError::Unanswered(e)) => Self::Connect(e.into()),
            // Waiting for a connection of the (shared) pool: the budget is busy.
            E::Timeout(deadpool::managed::TimeoutType::Wait) => Self::PoolBusy,
            E::Timeout(_) => Self::ConnectTimeout,
            E::Closed | E::NoRuntimeSpecified | E::PostCreateHook(_) => Self::PoolClosed,
        }
    }
}

fn join(errors: &[SpecError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn rows_message(failures: &[RowFailure]) -> String {
    let mut message = format!("{} problem(s), nothing pruned", failures.len());
    for failure in failures.iter().take(2) {
        message.push_str(&format!("; {failure}"));
    }
    message
}

/// One row whose objects were not (all) applied.
#[derive(Debug, thiserror::Error)]
#[error("row {row}: {error}")]
pub struct RowFailure {
    /// Index of the row in the query result.
    pub row: usize,
    pub error: ObjectError,
}

impl From<crate::render::RenderFailure> for RowFailure {
    fn from(f: crate::render::RenderFailure) -> Self {
        Self { row: f.row.index, error: ObjectError::Render(f.error) }
    }
}

/// Why a row's object was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    Render(RowError),
    #[error("{0}")]
    UnknownKind(#[source] KubeError),
    #[error("cannot watch {kind}: {source}")]
    Watch {
        kind: GroupKind,
        #[source]
        source: KubeError,
    },
    #[error("cannot read {kind} {name}: {source}")]
    Read {
        kind: GroupKind,
        name: String,
        #[source]
        source: KubeError,
    },
    #[error("{kind} {name} exists and belongs to another owner; not taken over")]
    OwnedElsewhere { kind: GroupKind, name: String },
    #[error(
        "{kind} {name} already exists and was not made by this DBQR; not taken over \
         (its owner may annotate it dbqo.dev/adopt: {adopter} to hand it over)"
    )]
    Exists {
        kind: GroupKind,
        name: String,
        /// `<namespace>/<name>` of the DBQR, the value adoption needs.
        adopter: String,
    },
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        kind: GroupKind,
        name: String,
        #[source]
        source: KubeError,
    },
}

impl ObjectError {
    /// The API server answered 404 for a request about this object: for an
    /// apply or a watch that means its resource is not served (any more).
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Watch { source, .. } | Self::Read { source, .. } | Self::Apply { source, .. } => {
                source.is_not_found()
            }
            _ => false,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Render(e) => e.reason(),
            Self::UnknownKind(e) => e.reason(),
            Self::Watch { source, .. } | Self::Read { source, .. } | Self::Apply { source, .. } => {
                source.reason()
            }
            Self::OwnedElsewhere { .. } => crate::reason::OBJECT_OWNED_ELSEWHERE,
            Self::Exists { .. } => crate::reason::OBJECT_EXISTS,
        }
    }
}

/// A kind whose objects could not be pruned.
#[derive(Debug, thiserror::Error)]
pub enum PruneFailure {
    #[error("{0}")]
    UnknownKind(#[source] KubeError),
    #[error("cannot watch {gvk}: {source}")]
    Watch {
        gvk: Gvk,
        #[source]
        source: KubeError,
    },
    #[error("cannot delete {kind} {name}: {source}")]
    Delete {
        kind: GroupKind,
        name: String,
        #[source]
        source: KubeError,
    },
}
