//! PostgreSQL access: connection strings, connecting, running the query and
//! decoding its rows.

mod budget;
mod connect;
mod conninfo;
mod deadline;
pub mod decode;
mod listen;
mod pool;
mod query;
mod secret;
pub mod sqlstate;

pub use budget::{ConnectionBudget, ServerKey, Slot, IDLE_TIMEOUT};
pub use connect::{connect, connect_error, connect_in_slot, tls_connector, ConnectError};
pub use conninfo::{ConnInfo, ConnInfoError, RootCert, SslMode};
pub use deadline::{after_server, within, Unanswered, GRACE};
pub use listen::{Changed, ChannelSubscription, Listeners, Notice, MAX_PENDING_KEYS, PING};
pub use pool::{
    build_pool, checkout, Checkout, Pool, PoolConnectError, PoolError, PoolGetError, SharedPools,
};
pub use query::{
    run_query, run_query_keyed, KeySelect, QueryError, QueryOptions, QueryResult, Row,
    OVERSIZED_ROW,
};
pub use secret::{conninfo_from_secret, SecretError};

/// The operator's live connections to databases, shared by every DBQR and
/// `Database`: the budget per server, the pools DBQRs with the same
/// connection settings share, and the shared LISTEN connections. (Made once
/// per process; `Settings` holds configuration only.)
#[derive(Clone, Debug)]
pub struct Connections {
    pub budget: ConnectionBudget,
    pub pools: SharedPools,
    pub listeners: Listeners,
}

impl Connections {
    /// At most `per_server` connections to any one server.
    pub fn new(per_server: usize) -> Self {
        Self {
            budget: ConnectionBudget::new(per_server),
            pools: SharedPools::default(),
            listeners: Listeners::default(),
        }
    }
}

/// A tokio-postgres error as one line: the server's message and SQLSTATE when
/// it answered (its `Display` says only "db error"), the client's otherwise.
/// Messages of data-dependent SQLSTATEs are replaced by the condition name,
/// and DETAIL is left out: both can quote row values.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => sqlstate::server_error_line(db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}
