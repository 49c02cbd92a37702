//! A bounded connection pool per DBQR.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use super::connect::{tls_connector, wire_config, ConnectError};
use super::conninfo::ConnInfo;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Tls(#[from] ConnectError),
    #[error("cannot build the connection pool: {0}")]
    Build(String),
}

impl PoolError {
    /// Stable reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Tls(e) => e.reason(),
            Self::Build(_) => "PoolBuildFailed",
        }
    }
}

/// Builds a pool of at most `max_size` connections. Connections are made
/// lazily; each is reset on return (`RESET ALL` and friends), so session
/// settings a query's setup statements make never leak into the next pass.
pub fn build_pool(
    info: &ConnInfo,
    max_size: usize,
    connect_timeout: Duration,
) -> Result<Pool, PoolError> {
    let mut config = wire_config(info);
    config.connect_timeout(connect_timeout);
    let manager = Manager::from_config(
        config,
        tls_connector(info)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Clean,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(connect_timeout))
        .wait_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout))
        .build()
        .map_err(|e| PoolError::Build(e.to_string()))
}
