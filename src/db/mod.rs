//! PostgreSQL access: connection strings, connecting, running the query and
//! decoding its rows.

mod connect;
mod conninfo;
pub mod decode;
mod query;

pub use connect::{connect, ConnectError};
pub use conninfo::{ConnInfo, ConnInfoError, RootCert, SslMode};
pub use query::{run_query, QueryError, QueryOptions, QueryResult};
