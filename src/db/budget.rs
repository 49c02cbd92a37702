//! The operator-wide connection budget: at most N connections to any one
//! database server (host, port, database, user), whichever DBQR, pass, change
//! probe, status write-back or LISTEN connection holds them.
//!
//! Each DBQR keeps its own pool, but a pooled connection holds a [`Slot`] of
//! its server's budget for as long as it is open. Connections open lazily.
//! When the budget is exhausted, a new connection first asks every pool of
//! that server to close its idle connections, then waits (bounded) for a
//! slot; idle connections are also closed after [`IDLE_TIMEOUT`], so an idle
//! install holds few connections.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A pool drawing from a server's budget, as the budget sees it (the
/// budget knows no pool type: `pool` depends on `budget`, not back).
pub trait IdleConnections: Send + Sync {
    /// Closes the connections idle at least `idle`; `false` once the pool
    /// is gone or closed.
    fn close_idle(&self, idle: Duration) -> bool;
}

/// Connections idle this long are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle connections are looked for.
const SWEEP: Duration = Duration::from_secs(5);

/// Who a connection is to: what a server counts as one client identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
}

impl ServerKey {
    /// What metrics call this server: the first 12 hex digits of the
    /// SHA-256 of `host:port/database`. The parts come from Secrets, which
    /// may map any value onto them, so they never become a label; the same
    /// server gets the same fingerprint in every operator
    /// (`printf %s host:port/db | sha256sum | cut -c1-12` tells which).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{}:{}/{}", self.host, self.port, self.dbname));
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }

    pub fn of(config: &tokio_postgres::Config) -> Self {
        let host = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        Self {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            dbname: config.get_dbname().unwrap_or_default().to_owned(),
            user: config.get_user().unwrap_or_default().to_owned(),
        }
    }
}

/// A connection's place in its server's budget; given back when dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

/// The budget of every server the operator talks to.
#[derive(Clone)]
pub struct ConnectionBudget {
    per_server: usize,
    servers: Arc<Mutex<HashMap<ServerKey, Arc<Server>>>>,
}

impl std::fmt::Debug for ConnectionBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionBudget")
            .field("per_server", &self.per_server)
            .finish_non_exhaustive()
    }
}

/// One server's budget and the pools drawing from it.
pub struct Server {
    slots: Arc<Semaphore>,
    per_server: usize,
    pools: Mutex<Vec<Box<dyn IdleConnections>>>,
    sweeping: std::sync::atomic::AtomicBool,
    /// Connections being made that wait for a slot.
    waiting: std::sync::atomic::AtomicUsize,
}

impl ConnectionBudget {
    pub fn new(per_server: usize) -> Self {
        Self { per_server: per_server.max(1), servers: Arc::default() }
    }

    pub fn per_server(&self) -> usize {
        self.per_server
    }

    /// The budget of one server.
    pub fn server(&self, key: &ServerKey) -> Arc<Server> {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        servers
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Server {
                    slots: Arc::new(Semaphore::new(self.per_server)),
                    per_server: self.per_server,
                    pools: Mutex::default(),
                    sweeping: Default::default(),
                    waiting: Default::default(),
                })
            })
            .clone()
    }

    /// Connections open now, per server the operator has talked to.
    pub fn snapshot(&self) -> Vec<(ServerKey, usize)> {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        servers.iter().map(|(key, server)| (key.clone(), server.in_use())).collect()
    }

    /// Connections open to `key`'s server now.
    pub fn in_use(&self, key: &ServerKey) -> usize {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        servers.get(key).map_or(0, |s| s.in_use())
    }
}

impl Server {
    pub fn in_use(&self) -> usize {
        self.per_server - self.slots.available_permits()
    }

    /// Lets `pool` draw from this budget (and give back idle connections).
    pub(super) fn register(self: &Arc<Self>, pool: Box<dyn IdleConnections>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.close_idle(Duration::MAX));
        pools.push(pool);
        drop(pools);
        self.start_sweeping();
    }

    /// A slot for a new connection (pooled, or held outside any pool like
    /// the LISTEN connection): at once if one is free; otherwise after asking
    /// every pool to close its idle connections, waiting up to `wait`.
    pub async fn acquire(&self, wait: Duration) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(Slot(permit));
        }
        // From now on, connections in use close instead of going back to
        // their pools (see `pool::Checkout`), and the semaphore hands the
        // freed slots out in arrival order.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.close_idle(Duration::ZERO);
        let slot = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        slot.ok()?.ok().map(Slot)
    }

    /// Whether a new connection to this server waits for a slot.
    pub(super) fn contended(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Closes the idle connections of every pool that were idle at least
    /// `idle`, and forgets the pools that are gone.
    fn close_idle(&self, idle: Duration) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|pool| pool.close_idle(idle));
    }

    /// Closes connections idle longer than [`IDLE_TIMEOUT`], every few
    /// seconds, while any pool of this server lives.
    fn start_sweeping(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.sweeping.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::SeqCst);
            return;
        };
        let server: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(SWEEP).await;
                let Some(server) = server.upgrade() else {
                    return;
                };
                {
                    // Decided under the lock `register` pushes under, so a
                    // pool registered meanwhile starts a new sweeper.
                    let mut pools = server.pools.lock().unwrap_or_else(|e| e.into_inner());
                    pools.retain(|p| p.close_idle(Duration::MAX));
                    if pools.is_empty() {
                        server.sweeping.store(false, Ordering::SeqCst);
                        return;
                    }
                }
                server.close_idle(IDLE_TIMEOUT);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_the_sha256_of_the_server_not_its_parts() {
        let key = ServerKey {
            host: "db.example".into(),
            port: 5432,
            dbname: "app".into(),
            user: "u".into(),
        };
        // printf %s db.example:5432/app | sha256sum | cut -c1-12
        assert_eq!(key.fingerprint(), "cc3b4e2b523b");
    }

    fn key(user: &str) -> ServerKey {
        ServerKey { host: "db".into(), port: 5432, dbname: "app".into(), user: user.into() }
    }

    #[tokio::test]
    async fn a_server_hands_out_at_most_its_budget_and_waits_bounded() {
        let budget = ConnectionBudget::new(2);
        let server = budget.server(&key("app"));
        let a = server.acquire(Duration::ZERO).await.expect("first slot");
        let _b = server.acquire(Duration::ZERO).await.expect("second slot");
        assert_eq!(budget.in_use(&key("app")), 2);
        assert!(
            server.acquire(Duration::from_millis(50)).await.is_none(),
            "a third waits, then gives up"
        );
        // Another identity has its own budget.
        assert!(budget.server(&key("other")).acquire(Duration::ZERO).await.is_some());
        // A slot given back goes to the next waiter.
        let waiter = tokio::spawn({
            let server = server.clone();
            async move { server.acquire(Duration::from_secs(5)).await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(a);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn the_identity_is_host_port_database_and_user() {
        let config: tokio_postgres::Config =
            "host=db port=6432 dbname=app user=u password=secret".parse().unwrap();
        assert_eq!(
            ServerKey::of(&config),
            ServerKey { host: "db".into(), port: 6432, dbname: "app".into(), user: "u".into() }
        );
    }
}
