//! Connection pools. DBQRs with the same connection settings (the same
//! Secret, typically) share one pool of up to the server's budget, so a
//! thousand DBQRs of one Secret reuse a handful of connections instead of
//! opening and closing their own; each DBQR still has its own [`Pool`], which
//! caps how many connections it uses at a time (`spec.database.pool`). Every
//! connection holds a slot of the operator-wide
//! [`ConnectionBudget`](super::budget::ConnectionBudget).

use std::{collections::HashMap, ops::Deref, sync::Arc, time::Duration};

use deadpool::managed::{self, Metrics, RecycleResult};
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, RecyclingMethod};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::budget::{ConnectionBudget, IdleConnections, Server, ServerKey, Slot};
use super::connect::{tls_connector, wire_config, ConnectError, PoolConnect};
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
            Self::Build(_) => crate::reason::POOL_BUILD_FAILED,
        }
    }
}

/// Why a pooled connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PoolConnectError {
    #[error("no connection slot to this database server came free within {0:?} (--max-connections-per-database)")]
    Budget(Duration),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Unanswered(#[from] super::deadline::Unanswered),
}

/// The pool every DBQR with the same connection settings shares.
pub type SharedPool = managed::Pool<BudgetedManager>;

/// A DBQR's pool: the shared pool of its connection settings, of which it
/// uses at most `spec.database.pool.maxConnections` connections at a time.
#[derive(Clone)]
pub struct Pool {
    shared: SharedPool,
    own: Arc<Semaphore>,
    wait: Duration,
}

impl Pool {
    /// No more connections for this DBQR; the shared pool lives on while
    /// other DBQRs use it (and its idle connections close after a while).
    pub fn close(&self) {
        self.own.close();
    }
}

/// A connection taken from a [`Pool`]. Dropping it returns it to the shared
/// pool, unless a connection with other settings to the same server waits
/// for a slot: then it closes, so a tight budget moves between them.
pub struct Checkout {
    object: Option<managed::Object<BudgetedManager>>,
    server: Arc<Server>,
    _own: OwnedSemaphorePermit,
}

/// Takes a connection from `pool`, connecting (within the budget) if none is idle.
pub async fn checkout(pool: &Pool) -> Result<Checkout, PoolGetError> {
    let own = tokio::time::timeout(pool.wait, pool.own.clone().acquire_owned())
        .await
        .map_err(|_| managed::PoolError::Timeout(managed::TimeoutType::Wait))?
        .map_err(|_| managed::PoolError::Closed)?;
    let object = pool.shared.get().await?;
    Ok(Checkout { object: Some(object), server: pool.shared.manager().server.clone(), _own: own })
}

impl Checkout {
    /// Closes the connection instead of returning it to the pool: after a
    /// missed deadline its state is unknown (a reply may still be on the way,
    /// or the path to the server is dead), and the next pass must not wait
    /// on it again. Its slot in the budget frees as it closes.
    pub fn discard(mut self) {
        if let Some(object) = self.object.take() {
            drop(managed::Object::take(object));
        }
    }
}

impl Deref for Checkout {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        // Present until drop.
        &self.object.as_ref().expect("a live checkout").client
    }
}

impl std::ops::DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self.object.as_mut().expect("a live checkout").client
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            if self.server.contended() {
                drop(managed::Object::take(object));
            }
        }
    }
}
/// Taking a connection from a [`Pool`] failed.
pub type PoolGetError = managed::PoolError<PoolConnectError>;

/// A pooled connection and its slot in the server's budget.
pub struct Budgeted {
    client: ClientWrapper,
    _slot: Slot,
}

impl Deref for Budgeted {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.client
    }
}

impl std::ops::DerefMut for Budgeted {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self.client
    }
}

/// deadpool-postgres' manager, with every new connection taking a slot first.
pub struct BudgetedManager {
    inner: Manager,
    server: Arc<Server>,
    wait: Duration,
    connect_timeout: Duration,
}

impl managed::Manager for BudgetedManager {
    type Type = Budgeted;
    type Error = PoolConnectError;

    async fn create(&self) -> Result<Budgeted, PoolConnectError> {
        let slot =
            self.server.acquire(self.wait).await.ok_or(PoolConnectError::Budget(self.wait))?;
        // tokio-postgres bounds only the TCP connect by connect_timeout; TLS,
        // startup and authentication after it get a deadline here.
        let handshake = managed::Manager::create(&self.inner);
        let client = super::deadline::after_server(self.connect_timeout, handshake).await??;
        Ok(Budgeted { client, _slot: slot })
    }

    async fn recycle(
        &self,
        object: &mut Budgeted,
        metrics: &Metrics,
    ) -> RecycleResult<PoolConnectError> {
        managed::Manager::recycle(&self.inner, &mut object.client, metrics).await.map_err(|e| {
            match e {
                managed::RecycleError::Message(m) => managed::RecycleError::Message(m),
                managed::RecycleError::Backend(e) => managed::RecycleError::Backend(e.into()),
            }
        })
    }

    fn detach(&self, object: &mut Budgeted) {
        managed::Manager::detach(&self.inner, &mut object.client);
    }
}

/// A DBQR's pool of at most `max_size` connections at a time, on the shared
/// pool of `info`'s settings (made here if it is the first). Connections are
/// made lazily, hold a slot of `budget` while open, wait at most
/// `budget_wait` for one, and are reset on return (`RESET ALL` and friends),
/// so session settings a query's setup statements make never leak into
/// another pass or another DBQR.
pub fn build_pool(
    info: &ConnInfo,
    max_size: usize,
    connect_timeout: Duration,
    (budget, pools): (&ConnectionBudget, &SharedPools),
    budget_wait: Duration,
) -> Result<Pool, PoolError> {
    let shared = pools.get_or_make(&settings_key(info), || {
        shared_pool(info, connect_timeout, budget, budget_wait)
    })?;
    Ok(Pool {
        shared,
        own: Arc::new(Semaphore::new(max_size.max(1))),
        wait: budget_wait + connect_timeout,
    })
}

/// What makes two connections interchangeable: the whole connection
/// configuration, password included (hashed, so the key holds no secret).
fn settings_key(info: &ConnInfo) -> String {
    let mut hash = Sha256::new();
    hash.update(format!("{:?}|{:?}|{:?}", info.config, info.ssl_mode, info.root_cert));
    hash.update(info.config.get_password().unwrap_or_default());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn shared_pool(
    info: &ConnInfo,
    connect_timeout: Duration,
    budget: &ConnectionBudget,
    budget_wait: Duration,
) -> Result<SharedPool, PoolError> {
    let mut config = wire_config(info);
    config.connect_timeout(connect_timeout);
    let server = budget.server(&ServerKey::of(&config));
    let inner = Manager::from_connect(
        config,
        PoolConnect { tls: tls_connector(info)? },
        ManagerConfig { recycling_method: RecyclingMethod::Clean },
    );
    let manager =
        BudgetedManager { inner, server: server.clone(), wait: budget_wait, connect_timeout };
    // No create timeout: waiting for a slot has its own (budget_wait) and the
    // handshake its own (in BudgetedManager::create). Recycling runs a round
    // trip; one that goes unanswered drops the connection.
    let pool = SharedPool::builder(manager)
        .max_size(budget.per_server())
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(budget_wait + connect_timeout))
        .recycle_timeout(Some(connect_timeout))
        .build()
        .map_err(|e| PoolError::Build(e.to_string()))?;
    server.register(Box::new(pool.weak()));
    Ok(pool)
}

/// A shared pool as its server's budget sees it.
impl IdleConnections for deadpool::managed::WeakPool<BudgetedManager> {
    fn close_idle(&self, idle: Duration) -> bool {
        let Some(pool) = self.upgrade().filter(|p| !p.is_closed()) else {
            return false;
        };
        // Dropping the removed connections gives their slots back.
        drop(pool.retain(|_, metrics| metrics.last_used() < idle));
        true
    }
}

/// The shared pool of each set of connection settings, while some DBQR
/// uses it: DBQRs with the same settings share connections.
#[derive(Clone, Default)]
pub struct SharedPools(
    Arc<std::sync::Mutex<HashMap<String, deadpool::managed::WeakPool<BudgetedManager>>>>,
);

impl std::fmt::Debug for SharedPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPools").finish_non_exhaustive()
    }
}

impl SharedPools {
    /// The shared pool for the connection settings `key`, made by `make` if
    /// no DBQR uses one now.
    fn get_or_make(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<SharedPool, PoolError>,
    ) -> Result<SharedPool, PoolError> {
        let mut pools = self.0.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|_, p| p.upgrade().is_some());
        if let Some(pool) = pools.get(key).and_then(|p| p.upgrade()) {
            return Ok(pool);
        }
        let pool = make()?;
        pools.insert(key.to_owned(), pool.weak());
        Ok(pool)
    }
}
