//! PostgreSQL access: connection strings, connecting, running the query and
//! decoding its rows.

mod budget;
mod connect;
mod conninfo;
pub mod decode;
mod listen;
mod pool;
mod query;
mod secret;
pub mod sqlstate;

pub use budget::{ConnectionBudget, ServerKey, Slot, IDLE_TIMEOUT};
pub use connect::{connect, connect_error, connect_in_slot, tls_connector, ConnectError};
pub use conninfo::{ConnInfo, ConnInfoError, RootCert, SslMode};
pub use listen::{Listeners, Notice, Subscription, PING};
pub use pool::{build_pool, checkout, Checkout, Pool, PoolConnectError, PoolError, PoolGetError};
pub use query::{run_query, QueryError, QueryOptions, QueryResult, OVERSIZED_ROW};
pub use secret::{conninfo_from_secret, SecretError};

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
