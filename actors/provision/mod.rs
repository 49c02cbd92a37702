//! Databases for teams, on the same actor design as the query side:
//! [`ProvisionSupervisor`] watches `DatabaseServer`s (a reflector store the
//! `Database` actors read without a message) and `Database`s, keeps one
//! [`database::DatabaseActor`] per `Database`, tells the actors of a server
//! when it changes, and checks each server (reachable, version, the admin's
//! rights) into its status. Kubernetes writes go through the shared writer;
//! database connections through the operator's connection budget.

pub mod backup;
pub mod database;

use std::{collections::HashMap, sync::Arc, time::Duration};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, ResponseActFuture,
    StreamHandler, WrapFuture,
};
use futures_util::{stream::LocalBoxStream, StreamExt};
use kube::{
    api::Api,
    runtime::{
        reflector::{self, store::Writer as StoreWriter, Store},
        watcher, WatchStreamExt,
    },
    Client, ResourceExt,
};

use crate::children::{Children, Key};
use crate::stopping::Shutdown;
use crate::writer::WriterHandle;
use backup::{BackupActor, BackupChanged, Stores};
use database::{Changed, DatabaseActor, Look};
use dbqo::api::backup::DatabaseBackup;
use dbqo::api::database::Database;
use dbqo::api::server::DatabaseServer;
use dbqo::db::Connections;
use dbqo::provision::{admin::BudgetedSessions, server_check::check_server};
use dbqo::settings::Settings;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Servers are checked again this often (and on every change).
const SERVER_CHECK: Duration = Duration::from_secs(300);

type DatabaseEvents = LocalBoxStream<'static, Result<watcher::Event<Database>, watcher::Error>>;
type ServerEvents = LocalBoxStream<'static, Result<watcher::Event<DatabaseServer>, watcher::Error>>;
type BackupEvents = LocalBoxStream<'static, Result<watcher::Event<DatabaseBackup>, watcher::Error>>;

pub struct ProvisionSupervisor {
    streams: Option<(DatabaseEvents, ServerEvents, BackupEvents)>,
    servers: Store<DatabaseServer>,
    stores: Stores,
    /// One actor per `DatabaseBackup` not yet final (or being deleted).
    backups: Children<BackupActor, String>,
    writer: WriterHandle,
    settings: Arc<Settings>,
    connections: Connections,
    actors: Children<DatabaseActor, DatabaseChild>,
    /// Set once shutdown began: no new actors.
    stopping: bool,
    /// Servers by key, with the resourceVersion last checked and the
    /// generation their `Database`s last heard of.
    checked: HashMap<Key, (String, Option<i64>)>,
    /// Watch errors are logged once per kind until the watch works again
    /// (an install without these CRDs keeps the query side running).
    failing: [bool; 3],
}

/// What the supervisor knows of the `Database` an actor runs.
struct DatabaseChild {
    uid: String,
    /// Its `DatabaseServer`.
    server: Key,
}

impl ProvisionSupervisor {
    pub fn new(
        client: Client,
        writer: WriterHandle,
        (settings, connections): (Arc<Settings>, Connections),
    ) -> Self {
        let mut config = watcher::Config::default();
        if let Some(selector) = &settings.label_selector {
            config = config.labels(selector);
        }
        let (databases, servers, backups): (
            Api<Database>,
            Api<DatabaseServer>,
            Api<DatabaseBackup>,
        ) = match &settings.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client, ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client)),
        };
        let server_writer = StoreWriter::<DatabaseServer>::default();
        let store = server_writer.as_reader();
        let server_events =
            reflector::reflector(server_writer, watcher(servers, config.clone()).default_backoff())
                .boxed_local();
        let database_writer = StoreWriter::<Database>::default();
        let database_store = database_writer.as_reader();
        let database_events = reflector::reflector(
            database_writer,
            watcher(databases, config.clone()).default_backoff(),
        )
        .boxed_local();
        let backup_writer = StoreWriter::<DatabaseBackup>::default();
        let backup_store = backup_writer.as_reader();
        let backup_events =
            reflector::reflector(backup_writer, watcher(backups, config).default_backoff())
                .boxed_local();
        let stores =
            Stores { backups: backup_store, databases: database_store, servers: store.clone() };
        Self {
            streams: Some((database_events, server_events, backup_events)),
            servers: store,
            stores,
            backups: Children::default(),
            writer,
            settings,
            connections,
            actors: Children::default(),
            stopping: false,
            checked: HashMap::new(),
            failing: [false; 3],
        }
    }

    /// A backup gets an actor while it has work: not yet final, or deleted
    /// (its finalizer's clean-up).
    fn on_backup(&mut self, backup: DatabaseBackup) {
        let key = (backup.namespace().unwrap_or_default(), backup.name_any());
        let uid = backup.uid().unwrap_or_default();
        let done = backup.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_final())
            && backup.metadata.deletion_timestamp.is_none()
            && !backup.finalizers().is_empty();
        if self.stopping {
            return;
        }
        if done {
            // A scheduled backup finished: its Database's retention may
            // let an older one go now.
            let database = (key.0.clone(), backup.spec.database_ref.name.clone());
            if let Some(child) = self.actors.get(&database) {
                child.actor.do_send(Look);
            }
        }
        if let Some(child) = self.backups.get(&key) {
            if child.meta == uid && child.actor.connected() {
                child.actor.do_send(BackupChanged(Box::new(backup)));
                return;
            }
        }
        if done {
            return;
        }
        tracing::info!(backup = %key.1, namespace = %key.0, "starting backup actor");
        let actor = BackupActor::new(
            backup,
            self.writer.clone(),
            self.settings.clone(),
            self.stores.clone(),
        )
        .start();
        self.backups.insert(key, actor, uid);
    }

    fn on_database(&mut self, database: Database) {
        let key = key_of(&database);
        let uid = database.uid().unwrap_or_default();
        let server = (
            database.spec.server_ref.namespace.clone().unwrap_or_else(|| key.0.clone()),
            database.spec.server_ref.name.clone(),
        );
        if self.stopping {
            return;
        }
        if let Some(child) = self.actors.get(&key) {
            let same = &child.meta;
            if same.uid == uid && same.server == server && child.actor.connected() {
                child.actor.do_send(Changed(Box::new(database)));
                return;
            }
        }
        tracing::info!(database = %key.1, namespace = %key.0, "starting database actor");
        let actor = DatabaseActor::new(
            database,
            self.writer.clone(),
            (self.settings.clone(), self.connections.clone()),
            self.servers.clone(),
        )
        .start();
        self.actors.insert(key, actor, DatabaseChild { uid, server });
    }

    /// Tells the `Database`s of `server` that it changed.
    fn tell(&self, server: &Key) {
        for (_, child) in self.actors.iter().filter(|(_, c)| &c.meta.server == server) {
            child.actor.do_send(Look);
        }
    }

    fn on_server(&mut self, server: &DatabaseServer, ctx: &mut Context<Self>) {
        let key = (server.namespace().unwrap_or_default(), server.name_any());
        let version = server.resource_version().unwrap_or_default();
        let generation = server.metadata.generation;
        let before = self.checked.insert(key.clone(), (version.clone(), generation));
        // Its own status writes change only the resourceVersion.
        if before.as_ref().map(|(_, g)| *g) != Some(generation) {
            self.tell(&key);
        }
        if before.map(|(v, _)| v) != Some(version) {
            self.check(server.clone(), ctx);
        }
    }

    fn check(&self, server: DatabaseServer, ctx: &mut Context<Self>) {
        let (writer, settings) = (self.writer.clone(), self.settings.clone());
        let budget = self.connections.budget.clone();
        let check = async move {
            let sessions = BudgetedSessions(&budget);
            let allow = settings.allow_cross_namespace_secrets;
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            check_server(&server, &writer, &sessions, allow, now).await
        };
        ctx.spawn(check.into_actor(self));
    }
}

impl Actor for ProvisionSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some((databases, servers, backups)) = self.streams.take() {
            ctx.add_stream(servers.map(Item::Server));
            ctx.add_stream(databases.map(Item::Database));
            ctx.add_stream(backups.map(Item::Backup));
        }
        ctx.run_interval(SERVER_CHECK, |act, ctx| {
            for server in act.servers.state() {
                act.check((*server).clone(), ctx);
            }
        });
    }
}

enum Item {
    Database(Result<watcher::Event<Database>, watcher::Error>),
    Server(Result<watcher::Event<DatabaseServer>, watcher::Error>),
    Backup(Result<watcher::Event<DatabaseBackup>, watcher::Error>),
}

impl ProvisionSupervisor {
    fn watch_failed(&mut self, which: usize, kind: &str, error: &watcher::Error) {
        if !std::mem::replace(&mut self.failing[which], true) {
            tracing::warn!(%kind, %error, "watch failed (are the CRDs installed and the RBAC granted?); retrying quietly");
        } else {
            tracing::debug!(%kind, %error, "watch failed; retrying");
        }
    }
}

impl StreamHandler<Item> for ProvisionSupervisor {
    fn handle(&mut self, item: Item, ctx: &mut Context<Self>) {
        match item {
            Item::Database(Ok(event)) => {
                self.failing[0] = false;
                match event {
                    watcher::Event::Apply(d) => self.on_database(d),
                    watcher::Event::InitApply(d) => {
                        self.actors.listed(&key_of(&d));
                        self.on_database(d)
                    }
                    watcher::Event::Delete(d) => self.actors.stop(&key_of(&d)),
                    watcher::Event::Init => self.actors.relist_started(),
                    watcher::Event::InitDone => {
                        for (namespace, name) in self.actors.relist_done() {
                            tracing::info!(database = %name, %namespace, "gone while the watch was down; its actor stopped");
                        }
                    }
                }
            }
            Item::Server(Ok(event)) => {
                self.failing[1] = false;
                match event {
                    watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                        self.on_server(&s, ctx)
                    }
                    watcher::Event::Delete(s) => {
                        let key = (s.namespace().unwrap_or_default(), s.name_any());
                        self.checked.remove(&key);
                        self.tell(&key);
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
            Item::Backup(Ok(event)) => {
                self.failing[2] = false;
                match event {
                    watcher::Event::Apply(b) => self.on_backup(b),
                    watcher::Event::InitApply(b) => {
                        self.backups.listed(&(b.namespace().unwrap_or_default(), b.name_any()));
                        self.on_backup(b)
                    }
                    watcher::Event::Delete(b) => {
                        self.backups.stop(&(b.namespace().unwrap_or_default(), b.name_any()))
                    }
                    watcher::Event::Init => self.backups.relist_started(),
                    watcher::Event::InitDone => {
                        self.backups.relist_done();
                    }
                }
            }
            Item::Database(Err(error)) => self.watch_failed(0, "Database", &error),
            Item::Server(Err(error)) => self.watch_failed(1, "DatabaseServer", &error),
            Item::Backup(Err(error)) => self.watch_failed(2, "DatabaseBackup", &error),
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<Shutdown> for ProvisionSupervisor {
    type Result = ResponseActFuture<Self, ()>;

    /// Every DatabaseActor and BackupActor finishes its pass in flight, then stops.
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let backups = self.backups.shut_down();
        let databases = self.actors.shut_down();
        let both = async move { futures_util::future::join(databases, backups).await };
        Box::pin(actix::fut::wrap_future::<_, Self>(both).map(|(databases, backups), _, ctx| {
            tracing::info!(databases, backups, "database and backup actors stopped");
            ctx.stop();
        }))
    }
}

fn key_of(database: &Database) -> Key {
    (database.namespace().unwrap_or_default(), database.name_any())
}
