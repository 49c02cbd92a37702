//! Databases for teams, end to end, on each engine: a real PostgreSQL and a
//! real MariaDB started by the harness, the real control plane, the operator
//! binary. What is asserted is what an application team sees: a Secret whose
//! credentials work, rights that hold, databases other teams cannot reach,
//! and what the server's own counters say the operator ran.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::app::{App, Engine};
use common::operator::{create_secret, Operator};
use common::{eventually, kube_client, namespace, unique};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    Client,
};
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

use dbqo::api::database::{Database, Phase};
use dbqo::api::server::DatabaseServer;

const TEST_LABEL: &str = "dbqo.dev/test";
/// A password alphabet with every character SQL text could trip on.
const HOSTILE_ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789'\"\\;`$%@/:?#&*()-";
const WAIT: Duration = Duration::from_secs(60);
/// A CA that signed nothing the test servers present (shared with the DBQR TLS tests).
const UNRELATED_CA: &str = include_str!("fixtures/unrelated-ca.pem");

/// A database server of the test's own.
enum Server {
    Postgres(dbqo_testenv::Postgres),
    MariaDb(dbqo_testenv::MariaDb),
}

impl Server {
    async fn start(engine: Engine, name: &str, tls: bool) -> Self {
        match engine {
            Engine::Postgres => {
                let pg = common::private_postgres(name, None).await;
                let db = common::connect(&pg.info.url("postgres")).await;
                db.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                    .await
                    .unwrap();
                Server::Postgres(pg)
            }
            Engine::MariaDb => {
                let dir = dbqo_testenv::run_dir().with_extension(format!("{name}-maria"));
                let server = tokio::task::spawn_blocking(move || {
                    dbqo_testenv::MariaDb::start(
                        &dir,
                        dbqo_testenv::MariaDbOptions { tls, ..Default::default() },
                    )
                })
                .await
                .unwrap()
                .expect("a MariaDB");
                Server::MariaDb(server)
            }
        }
    }

    /// Stops the server (its data kept), as an outage does.
    fn stop(&mut self) {
        match self {
            Server::Postgres(pg) => pg.pause(),
            Server::MariaDb(_) => unimplemented!("the outage test runs on PostgreSQL"),
        }
    }

    /// Starts it again after [`Server::stop`].
    fn restart(&mut self) {
        match self {
            Server::Postgres(pg) => pg.resume().expect("PostgreSQL starts again"),
            Server::MariaDb(_) => unimplemented!("the outage test runs on PostgreSQL"),
        }
    }

    fn engine_name(&self) -> &'static str {
        match self {
            Server::Postgres(_) => "postgres",
            Server::MariaDb(_) => "mariadb",
        }
    }

    /// The admin connection Secret's keys.
    fn admin_keys(&self) -> BTreeMap<&'static str, String> {
        match self {
            Server::Postgres(pg) => common::server_secret_keys(&pg.info, "postgres"),
            Server::MariaDb(m) => BTreeMap::from([
                ("host", m.info.host.clone()),
                ("port", m.info.port.to_string()),
                ("username", m.info.user.clone()),
                ("password", m.info.password.clone()),
                ("sslmode", "disable".to_owned()),
            ]),
        }
    }

    fn admin_password(&self) -> String {
        match self {
            Server::Postgres(pg) => pg.info.password.clone(),
            Server::MariaDb(m) => m.info.password.clone(),
        }
    }

    async fn admin(&self) -> Admin {
        match self {
            Server::Postgres(pg) => Admin::Postgres(
                common::connect(&pg.info.url("postgres")).await,
                Box::new(pg.info.clone()),
            ),
            Server::MariaDb(m) => Admin::MariaDb(
                mysql_async::Conn::new(
                    mysql_async::OptsBuilder::default()
                        .ip_or_hostname(m.info.host.clone())
                        .tcp_port(m.info.port)
                        .user(Some(m.info.user.clone()))
                        .pass(Some(m.info.password.clone()))
                        .prefer_socket(false),
                )
                .await
                .expect("admin connection"),
            ),
        }
    }
}

/// The test's own admin connection, for setting up and for checking.
enum Admin {
    Postgres(tokio_postgres::Client, Box<dbqo_testenv::PostgresInfo>),
    MariaDb(mysql_async::Conn),
}

impl Admin {
    async fn exec(&mut self, sql: &str) {
        match self {
            Admin::Postgres(c, _) => c.batch_execute(sql).await.expect(sql),
            Admin::MariaDb(c) => c.query_drop(sql).await.expect(sql),
        }
    }

    /// Runs `sql` inside database `db` as the admin.
    async fn exec_in(&mut self, db: &str, sql: &str) {
        match self {
            Admin::Postgres(_, info) => {
                let c = common::connect(&info.url(db)).await;
                c.batch_execute(sql).await.expect(sql);
            }
            Admin::MariaDb(c) => {
                c.query_drop(format!("USE `{db}`")).await.unwrap();
                c.query_drop(sql).await.expect(sql);
            }
        }
    }

    async fn count(&mut self, pg: &str, my: &str, name: &str) -> i64 {
        match self {
            Admin::Postgres(c, _) => c.query_one(pg, &[&name]).await.unwrap().get(0),
            Admin::MariaDb(c) => {
                let n: Option<i64> = c.exec_first(my, (name,)).await.unwrap();
                n.unwrap_or(0)
            }
        }
    }

    async fn database_exists(&mut self, name: &str) -> bool {
        self.count(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
            name,
        )
        .await
            > 0
    }

    async fn user_exists(&mut self, name: &str) -> bool {
        self.count(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            "SELECT COUNT(*) FROM mysql.user WHERE User = ?",
            name,
        )
        .await
            > 0
    }

    /// Statements the server ran that can change something (`writes`) and
    /// GRANT/REVOKE among them, from the server's own statistics.
    async fn statements(&mut self) -> (i64, i64) {
        match self {
            Admin::Postgres(c, _) => {
                let row = c
                    .query_one(
                        "SELECT coalesce(sum(calls) FILTER (WHERE query !~* '^\\s*(SELECT|SHOW|SET|BEGIN|COMMIT|ROLLBACK|DISCARD|RESET)'), 0)::bigint, \
                                coalesce(sum(calls) FILTER (WHERE query ~* '^\\s*(GRANT|REVOKE|ALTER DEFAULT)'), 0)::bigint \
                         FROM pg_stat_statements",
                        &[],
                    )
                    .await
                    .unwrap();
                (row.get(0), row.get(1))
            }
            Admin::MariaDb(c) => {
                let rows: Vec<(String, String)> =
                    c.query("SHOW GLOBAL STATUS LIKE 'Com_%'").await.unwrap();
                let get = |name: &str| -> i64 {
                    rows.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0)
                };
                let writes = [
                    "Com_create_user",
                    "Com_alter_user",
                    "Com_drop_user",
                    "Com_create_db",
                    "Com_drop_db",
                    "Com_grant",
                    "Com_revoke",
                    "Com_revoke_all",
                    "Com_insert",
                    "Com_update",
                    "Com_delete",
                    "Com_create_table",
                ]
                .iter()
                .map(|n| get(n))
                .sum();
                (writes, get("Com_grant") + get("Com_revoke") + get("Com_revoke_all"))
            }
        }
    }
}

/// One test's world: a server, a platform namespace with its
/// `DatabaseServer`, two team namespaces, an operator.
struct World {
    server: Server,
    client: Client,
    platform: String,
    team_a: String,
    team_b: String,
    operator: Operator,
}

impl World {
    async fn start(engine: Engine, prefix: &str) -> Self {
        Self::start_with(engine, prefix, false).await
    }

    async fn start_with(engine: Engine, prefix: &str, tls: bool) -> Self {
        let client = kube_client().await;
        common::install_crd(&client).await;
        let server = Server::start(engine, &unique(prefix), tls).await;
        let platform = namespace(&client, &format!("{prefix}-platform")).await;
        let team_a = namespace(&client, &format!("{prefix}-a")).await;
        let team_b = namespace(&client, &format!("{prefix}-b")).await;
        create_secret(&client, &platform, "admin", server.admin_keys()).await;
        let operator = Operator::start(&[]);
        let world = Self { server, client, platform, team_a, team_b, operator };
        world
            .create_server(
                "main",
                json!({
                    "allowedNamespaces": [world.team_a, world.team_b],
                    "allowDelete": true,
                    "passwordPolicy": {"length": 40, "alphabet": HOSTILE_ALPHABET},
                    "allowedExtensions": ["pgcrypto"],
                    "privilegePresets": {"readonly": ["SELECT"]},
                }),
            )
            .await;
        world
    }

    fn labels(&self) -> Value {
        json!({ TEST_LABEL: self.operator.id })
    }

    /// Stops the operator (SIGTERM, waiting for its exit) and starts it
    /// again for the same resources, with `args`.
    fn restart_operator(&mut self, args: &[&str]) {
        let id = self.operator.id.clone();
        std::process::Command::new("kill")
            .args(["-TERM", &self.operator.pid().to_string()])
            .status()
            .unwrap();
        assert!(
            self.operator.wait_for_exit(Duration::from_secs(20)).is_some(),
            "the operator stops"
        );
        self.operator = Operator::start_with_id(&id, args);
    }

    async fn create_server(&self, name: &str, extra: Value) {
        let mut spec = json!({
            "engine": self.server.engine_name(),
            "connectionSecretRef": {"name": "admin"},
        });
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let server: DatabaseServer = serde_json::from_value(json!({
            "apiVersion": "dbqo.dev/v1alpha1",
            "kind": "DatabaseServer",
            "metadata": {"name": name, "labels": self.labels()},
            "spec": spec,
        }))
        .unwrap();
        Api::<DatabaseServer>::namespaced(self.client.clone(), &self.platform)
            .create(&PostParams::default(), &server)
            .await
            .expect("create the DatabaseServer");
    }

    /// Waits for the server's Ready condition to have `reason`; its status.
    async fn wait_for_server(
        &self,
        name: &str,
        reason: &str,
    ) -> dbqo::api::server::DatabaseServerStatus {
        let api = Api::<DatabaseServer>::namespaced(self.client.clone(), &self.platform);
        eventually(WAIT, &format!("server {name}: {reason}"), || async {
            let status = api.get_opt(name).await.ok()??.status?;
            (status.conditions.first()?.reason == reason).then_some(status)
        })
        .await
    }

    async fn create_database(
        &self,
        ns: &str,
        name: &str,
        extra: Value,
    ) -> Result<Database, kube::Error> {
        let mut spec = json!({"serverRef": {"name": "main", "namespace": self.platform}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let database: Database = serde_json::from_value(json!({
            "apiVersion": "dbqo.dev/v1alpha1",
            "kind": "Database",
            "metadata": {"name": name, "labels": self.labels()},
            "spec": spec,
        }))
        .unwrap();
        Api::<Database>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &database)
            .await
    }

    fn databases(&self, ns: &str) -> Api<Database> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Waits for the `Database`'s phase and Ready reason; returns the message.
    async fn wait_for(&self, ns: &str, name: &str, phase: Phase, reason: &str) -> String {
        let api = self.databases(ns);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let status = api.get_opt(name).await.ok().flatten().and_then(|d| d.status);
            if let Some(status) = &status {
                if let Some(ready) = status.conditions.first() {
                    if status.phase == Some(phase) && ready.reason == reason {
                        return ready.message.clone();
                    }
                }
            }
            // What it is instead says what went wrong.
            let seen = status.map(|s| (s.phase, s.conditions.first().map(|c| c.reason.clone())));
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {ns}/{name}: {phase:?} ({reason}); it is {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn secret(&self, ns: &str, name: &str) -> Option<(BTreeMap<String, String>, Secret)> {
        let secret =
            Api::<Secret>::namespaced(self.client.clone(), ns).get_opt(name).await.unwrap()?;
        let data = secret
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect();
        Some((data, secret))
    }

    /// `Database` passes the operator finished so far, all together:
    /// (succeeded, failed), from its `/metrics`.
    async fn database_passes(&self) -> (u64, u64) {
        let metrics = self.operator.http_address("metrics").await;
        let text = common::http_get(&metrics, "/metrics").await.map(|r| r.1).unwrap_or_default();
        let count = |result: &str| {
            let name = format!("dbqo_database_passes_total{{result=\"{result}\"}}");
            common::metric_sample(&text, &name).unwrap_or(0.0) as u64
        };
        (count("success"), count("failure"))
    }

    /// Waits until at least `succeeded` and `failed` more passes than `since` finished.
    async fn wait_for_passes(&self, since: (u64, u64), (succeeded, failed): (u64, u64)) {
        let what = format!("{succeeded} good and {failed} failed passes");
        eventually(WAIT, &what, || async {
            let now = self.database_passes().await;
            (now.0 >= since.0 + succeeded && now.1 >= since.1 + failed).then_some(())
        })
        .await;
    }

    async fn label(&self, ns: &str, name: &str, key: &str, value: Value) {
        self.databases(ns)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
            )
            .await
            .unwrap();
    }

    async fn events(&self, ns: &str) -> Vec<(String, String)> {
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(self.client.clone(), ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Every condition message and Event note of the test's namespaces and
    /// the operator's log: none may hold `secret`.
    async fn assert_never_shown(&self, secret: &str) {
        let log = self.operator.log();
        assert!(!log.contains(secret), "a password is in the operator's log");
        for ns in [&self.platform, &self.team_a, &self.team_b] {
            for (reason, note) in self.events(ns).await {
                assert!(!note.contains(secret), "a password is in Event {reason}");
            }
            for d in self.databases(ns).list(&Default::default()).await.unwrap() {
                let status = serde_json::to_string(&d.status).unwrap();
                assert!(!status.contains(secret), "a password is in a status");
            }
        }
    }
}

/// Create, connect, write, restart: the password and the server stay as
/// they are; a reset by label; the other team cannot reach the database.
async fn lifecycle(engine: Engine, prefix: &str) {
    let mut w = World::start(engine, prefix).await;
    let mut admin = w.server.admin().await;
    let status = w.wait_for_server("main", "Ready").await;
    assert_eq!(status.reachable, Some(true));
    assert!(status.server_version.is_some_and(|v| !v.is_empty()));
    let options = match engine {
        Engine::Postgres => json!({"extensions": ["pgcrypto"], "encoding": "UTF8", "locale": "C"}),
        Engine::MariaDb => json!({"charset": "utf8mb4", "collation": "utf8mb4_bin"}),
    };
    w.create_database(&w.team_a, "orders", options).await.unwrap();
    w.wait_for(&w.team_a, "orders", Phase::Ready, "Ready").await;
    let (data, secret) = w.secret(&w.team_a, "orders-credentials").await.expect("the Secret");
    for key in ["host", "port", "dbname", "username", "password", "sslmode", "uri"] {
        assert!(data.contains_key(key), "Secret key {key}");
    }
    assert_eq!(data["dbname"], "orders");
    assert_eq!(data["password"].chars().count(), 40);
    assert!(!data.contains_key("ca.crt"), "no CA in the admin Secret, none in this one");
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Database", "orders"));
    let mut app = App::connect(engine, &data, None).await.expect("the Secret's credentials work");
    app.exec("CREATE TABLE t (id int PRIMARY KEY)").await.unwrap();
    app.exec("INSERT INTO t VALUES (1)").await.unwrap();
    match engine {
        Engine::Postgres => {
            app.exec("SELECT digest('x', 'sha256')").await.expect("pgcrypto is created");
            assert_eq!(
                admin
                    .count(
                        "SELECT count(*) FROM pg_database WHERE datname = $1 AND datcollate = 'C' AND pg_encoding_to_char(encoding) = 'UTF8'",
                        "",
                        "orders",
                    )
                    .await,
                1
            );
        }
        Engine::MariaDb => assert_eq!(
            admin
                .count(
                    "",
                    "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ? AND DEFAULT_COLLATION_NAME = 'utf8mb4_bin'",
                    "orders",
                )
                .await,
            1
        ),
    }
    let events = w.events(&w.team_a).await;
    assert!(events.iter().any(|(r, _)| r == "Created"), "{events:?}");
    let metrics = w.operator.http_address("metrics").await;
    let (_, text) = common::http_get(&metrics, "/metrics").await.expect("/metrics");
    let passes = common::metric_sample(&text, "dbqo_database_passes_total{result=\"success\"}");
    assert!(passes.is_some_and(|n| n >= 1.0), "{text}");

    // The other team: its own database, and none of team a's.
    w.create_database(&w.team_b, "inventory", json!({})).await.unwrap();
    w.wait_for(&w.team_b, "inventory", Phase::Ready, "Ready").await;
    let (b_data, _) = w.secret(&w.team_b, "inventory-credentials").await.unwrap();
    let mut b = App::connect(engine, &b_data, None).await.unwrap();
    let visible = b.databases().await;
    assert!(visible.contains(&"inventory".to_owned()), "{visible:?}");
    assert!(!visible.contains(&"orders".to_owned()), "team b sees team a's database: {visible:?}");
    assert!(
        App::connect(engine, &b_data, Some("orders")).await.is_err(),
        "team b connects to team a's database"
    );
    // Another Database naming team a's database is refused; team a unaffected.
    w.create_database(&w.team_b, "thief", json!({"databaseName": "orders", "username": "thief"}))
        .await
        .unwrap();
    let message = w.wait_for(&w.team_b, "thief", Phase::Error, "AlreadyExists").await;
    assert!(message.contains("\"orders\""), "{message}");
    assert!(App::connect(engine, &data, None).await.is_ok());

    // Restart: no statement but reads, the same password.
    let before = admin.statements().await;
    w.restart_operator(&[]);
    // Only orders and inventory can succeed, only thief fails.
    w.wait_for_passes((0, 0), (2, 1)).await;
    let after = admin.statements().await;
    assert_eq!(after.0, before.0, "statements other than reads after a restart");
    assert_eq!(
        w.secret(&w.team_a, "orders-credentials").await.unwrap().0["password"],
        data["password"]
    );
    assert!(App::connect(engine, &data, None).await.is_ok(), "the password works after a restart");

    // Reset by label: a new password that works, the old one does not, the label gone.
    w.label(&w.team_a, "orders", "dbqo.dev/action", json!("reset-password")).await;
    let fresh = eventually(WAIT, "a new password", || async {
        let d = w.databases(&w.team_a).get("orders").await.ok()?;
        let (now, _) = w.secret(&w.team_a, "orders-credentials").await?;
        (now["password"] != data["password"]
            && !d.metadata.labels.unwrap_or_default().contains_key("dbqo.dev/action"))
        .then_some(now)
    })
    .await;
    let mut app = App::connect(engine, &fresh, None).await.expect("the new password works");
    app.exec("INSERT INTO t VALUES (2)").await.unwrap();
    assert!(App::connect(engine, &data, None).await.is_err(), "the old password still works");
    eventually(WAIT, "the PasswordReset event", || async {
        w.events(&w.team_a).await.iter().any(|(r, _)| r == "PasswordReset").then_some(())
    })
    .await;

    for password in
        [&data["password"], &fresh["password"], &b_data["password"], &w.server.admin_password()]
    {
        w.assert_never_shown(password).await;
    }
    assert!(admin.user_exists("orders").await);
}

/// Privileges: SELECT only refuses an INSERT; a change takes effect once,
/// with no GRANT or REVOKE on the passes after it.
async fn privileges(engine: Engine, prefix: &str) {
    let w = World::start(engine, prefix).await;
    let mut admin = w.server.admin().await;
    w.create_database(&w.team_a, "reports", json!({"privileges": ["readonly"]})).await.unwrap();
    w.wait_for(&w.team_a, "reports", Phase::Ready, "Ready").await;
    admin
        .exec_in("reports", "CREATE TABLE facts (id int PRIMARY KEY); INSERT INTO facts VALUES (1)")
        .await;
    let (data, _) = w.secret(&w.team_a, "reports-credentials").await.unwrap();
    let mut app = App::connect(engine, &data, None).await.unwrap();
    app.exec("SELECT * FROM facts").await.expect("SELECT is granted");
    assert!(app.exec("INSERT INTO facts VALUES (2)").await.is_err(), "INSERT is not granted");

    let world = &w;
    let set = |privileges: Value| async move {
        world
            .databases(&world.team_a)
            .patch(
                "reports",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"privileges": privileges}})),
            )
            .await
            .unwrap();
    };
    set(json!(["SELECT", "INSERT"])).await;
    eventually(WAIT, "INSERT granted", || async {
        let mut app = App::connect(engine, &data, None).await.ok()?;
        app.exec("INSERT INTO facts VALUES (2)").await.ok()
    })
    .await;
    // Three more passes (a label change each): no GRANT, no REVOKE.
    let (_, grants) = admin.statements().await;
    for i in 0..3 {
        // reports is the only Database here.
        let passes = w.database_passes().await;
        w.label(&w.team_a, "reports", "touch", json!(i.to_string())).await;
        w.wait_for_passes(passes, (1, 0)).await;
    }
    assert_eq!(admin.statements().await.1, grants, "GRANT/REVOKE on passes with nothing to change");
    let events = w.events(&w.team_a).await;
    assert!(events.iter().any(|(r, _)| r == "PrivilegesChanged"), "{events:?}");

    // A table the application made itself stays its own when the set changes.
    set(json!(["SELECT", "INSERT", "CREATE"])).await;
    eventually(WAIT, "the application creates a table", || async {
        let mut app = App::connect(engine, &data, None).await.ok()?;
        app.exec("CREATE TABLE notes (id int PRIMARY KEY)").await.ok()
    })
    .await;
    set(json!(["SELECT", "INSERT"])).await;
    eventually(WAIT, "CREATE taken back", || async {
        let mut app = App::connect(engine, &data, None).await.ok()?;
        let refused = app.exec("CREATE TABLE later (id int)").await.err()?;
        // Refused for want of a privilege (42501 on PostgreSQL), not because
        // a try before the change took effect made it already.
        (refused.contains("denied") || refused.contains("42501")).then_some(())
    })
    .await;
    let mut app = App::connect(engine, &data, None).await.unwrap();
    app.exec("INSERT INTO notes VALUES (1)").await.expect("INSERT on its own table");
    if engine == Engine::Postgres {
        // The owner's rights are not the spec's: a REVOKE from the owner
        // would have taken DELETE away (MariaDB has no table owners).
        app.exec("DELETE FROM notes").await.expect("DELETE on the table it owns");
    }
    assert!(
        app.exec("DELETE FROM facts").await.is_err(),
        "DELETE is not granted on the admin's table"
    );
}

/// Deletion: `Retain` keeps database, user and Secret; `Delete` drops them.
/// Hostile names never reach the server; a database not ours is refused.
async fn deletion_and_adoption(engine: Engine, prefix: &str) {
    let w = World::start(engine, prefix).await;
    let mut admin = w.server.admin().await;
    w.create_database(&w.team_a, "kept", json!({})).await.unwrap();
    w.create_database(&w.team_a, "scratch", json!({"deletionPolicy": "Delete"})).await.unwrap();
    w.wait_for(&w.team_a, "kept", Phase::Ready, "Ready").await;
    w.wait_for(&w.team_a, "scratch", Phase::Ready, "Ready").await;

    for name in ["kept", "scratch"] {
        w.databases(&w.team_a).delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually(WAIT, "both Databases gone", || async {
        let list = w.databases(&w.team_a).list(&Default::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    assert!(admin.database_exists("kept").await && admin.user_exists("kept").await);
    let (kept, secret) =
        w.secret(&w.team_a, "kept-credentials").await.expect("a retained Secret stays");
    assert!(secret.metadata.owner_references.unwrap_or_default().is_empty());
    assert!(App::connect(engine, &kept, None).await.is_ok());
    assert!(!admin.database_exists("scratch").await && !admin.user_exists("scratch").await);
    let events = w.events(&w.team_a).await;
    let retained = events.iter().find(|(r, _)| r == "Retained").expect("a Retained event");
    assert!(retained.1.contains("\"kept\""), "{retained:?}");

    // Hostile names: refused by the API server's validation.
    for hostile in ["x\"; DROP DATABASE kept; --", "x`y", "x';--", "a\\b"] {
        let e = w.create_database(&w.team_a, "hostile", json!({"databaseName": hostile})).await;
        assert!(matches!(e, Err(kube::Error::Api(ref s)) if s.code == 422), "{hostile}: {e:?}");
    }

    // A database made by hand is not taken over, nor its user's password changed.
    admin.exec("CREATE DATABASE legacy").await;
    match engine {
        Engine::Postgres => admin.exec("CREATE ROLE legacy LOGIN PASSWORD 'legacy-pw'").await,
        Engine::MariaDb => {
            admin.exec("CREATE USER 'legacy'@'%' IDENTIFIED BY 'legacy-pw'").await;
            admin.exec("GRANT ALL ON legacy.* TO 'legacy'@'%'").await;
        }
    }
    w.create_database(&w.team_a, "legacy", json!({})).await.unwrap();
    w.wait_for(&w.team_a, "legacy", Phase::Error, "AlreadyExists").await;
    let legacy = BTreeMap::from([
        ("host".to_owned(), kept["host"].clone()),
        ("port".to_owned(), kept["port"].clone()),
        ("username".to_owned(), "legacy".to_owned()),
        ("password".to_owned(), "legacy-pw".to_owned()),
        ("dbname".to_owned(), "legacy".to_owned()),
    ]);
    assert!(App::connect(engine, &legacy, None).await.is_ok(), "the legacy password is untouched");
    assert!(w.secret(&w.team_a, "legacy-credentials").await.is_none());

    // Delete asked for on a server that does not allow it: retained, with a Warning.
    w.create_server("guarded", json!({"allowedNamespaces": [w.team_a], "allowDelete": false}))
        .await;
    w.create_database(
        &w.team_a,
        "precious",
        json!({"serverRef": {"name": "guarded", "namespace": w.platform}, "deletionPolicy": "Delete"}),
    )
    .await
    .unwrap();
    w.wait_for(&w.team_a, "precious", Phase::Ready, "Ready").await;
    w.databases(&w.team_a).delete("precious", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "precious gone", || async {
        w.databases(&w.team_a).get_opt("precious").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(admin.database_exists("precious").await && admin.user_exists("precious").await);
    let events = w.events(&w.team_a).await;
    assert!(
        events.iter().any(|(r, n)| r == "Retained"
            && n.contains("\"precious\"")
            && n.contains("allowDelete")),
        "{events:?}"
    );

    // A lost Secret is not made up again silently; the reset label recovers.
    w.create_database(&w.team_a, "lost", json!({})).await.unwrap();
    w.wait_for(&w.team_a, "lost", Phase::Ready, "Ready").await;
    let (before, _) = w.secret(&w.team_a, "lost-credentials").await.unwrap();
    Api::<Secret>::namespaced(w.client.clone(), &w.team_a)
        .delete("lost-credentials", &DeleteParams::default())
        .await
        .unwrap();
    w.wait_for(&w.team_a, "lost", Phase::Error, "CredentialsLost").await;
    assert!(w.secret(&w.team_a, "lost-credentials").await.is_none());
    assert!(App::connect(engine, &before, None).await.is_ok(), "the password was not changed");
    w.label(&w.team_a, "lost", "dbqo.dev/action", json!("reset-password")).await;
    w.wait_for(&w.team_a, "lost", Phase::Ready, "Ready").await;
    let (after, _) =
        eventually(WAIT, "a new Secret", || w.secret(&w.team_a, "lost-credentials")).await;
    assert_ne!(after["password"], before["password"]);
    assert!(App::connect(engine, &after, None).await.is_ok());

    // A pass that fails after the user is created (a creation option the
    // server refuses) leaves the password in the Secret: fixing the spec
    // converges, with credentials that work.
    let bad = match engine {
        Engine::Postgres => json!({"encoding": "NOPE"}),
        Engine::MariaDb => json!({"charset": "nope"}),
    };
    w.create_database(&w.team_a, "halfway", bad).await.unwrap();
    w.wait_for(&w.team_a, "halfway", Phase::Error, "StatementFailed").await;
    assert!(admin.user_exists("halfway").await && !admin.database_exists("halfway").await);
    let (saved, _) = w
        .secret(&w.team_a, "halfway-credentials")
        .await
        .expect("the password is saved before it is set");
    let good = match engine {
        Engine::Postgres => json!({"spec": {"encoding": "UTF8"}}),
        Engine::MariaDb => json!({"spec": {"charset": "utf8mb4"}}),
    };
    w.databases(&w.team_a)
        .patch("halfway", &PatchParams::default(), &Patch::Merge(good))
        .await
        .unwrap();
    w.wait_for(&w.team_a, "halfway", Phase::Ready, "Ready").await;
    let (now, _) = w.secret(&w.team_a, "halfway-credentials").await.unwrap();
    assert_eq!(now["password"], saved["password"]);
    assert!(App::connect(engine, &now, None).await.is_ok());

    // A Database in a namespace the server does not allow.
    let other = namespace(&w.client, &format!("{prefix}-c")).await;
    w.create_database(&other, "stranger", json!({})).await.unwrap();
    w.wait_for(&other, "stranger", Phase::Error, "NamespaceNotAllowed").await;
    assert!(!admin.database_exists("stranger").await);
}

/// Faults of a server: wrong admin password, an admin without the rights,
/// a server that is down. Each a condition and an Event on the server and
/// on its `Database`s; the healthy server's `Database` is unaffected.
async fn server_faults(engine: Engine, prefix: &str) {
    let w = World::start(engine, prefix).await;
    let mut admin = w.server.admin().await;
    let mut wrong = w.server.admin_keys();
    wrong.insert("password", "not-the-password".into());
    create_secret(&w.client, &w.platform, "wrong", wrong).await;
    let mut down = w.server.admin_keys();
    down.insert("port", dbqo_testenv::process::free_port().unwrap().to_string());
    create_secret(&w.client, &w.platform, "down", down).await;
    let mut weak = w.server.admin_keys();
    weak.insert("username", "weak".into());
    weak.insert("password", "weak-pw".into());
    match engine {
        Engine::Postgres => admin.exec("CREATE ROLE weak LOGIN PASSWORD 'weak-pw'").await,
        Engine::MariaDb => admin.exec("CREATE USER 'weak'@'%' IDENTIFIED BY 'weak-pw'").await,
    }
    create_secret(&w.client, &w.platform, "weak", weak).await;
    let allowed = json!([w.team_a]);
    for (name, secret) in [("wrongpw", "wrong"), ("down", "down"), ("weak", "weak")] {
        w.create_server(
            name,
            json!({"connectionSecretRef": {"name": secret}, "allowedNamespaces": allowed}),
        )
        .await;
    }
    w.create_database(&w.team_a, "healthy", json!({})).await.unwrap();
    for (server, database) in [("wrongpw", "a1"), ("down", "a2")] {
        w.create_database(
            &w.team_a,
            database,
            json!({"serverRef": {"name": server, "namespace": w.platform}}),
        )
        .await
        .unwrap();
    }
    w.wait_for_server("main", "Ready").await;
    let status = w.wait_for_server("wrongpw", "AuthenticationFailed").await;
    assert_eq!(status.reachable, Some(false));
    w.wait_for_server("down", "ConnectionFailed").await;
    let weak = w.wait_for_server("weak", "InsufficientPrivileges").await;
    let expected: &[&str] = match engine {
        Engine::Postgres => &["CREATEDB", "CREATEROLE"],
        Engine::MariaDb => &["CREATE USER", "CREATE", "GRANT OPTION"],
    };
    assert_eq!(weak.missing_rights, expected);
    w.wait_for(&w.team_a, "a1", Phase::Error, "AuthenticationFailed").await;
    w.wait_for(&w.team_a, "a2", Phase::Error, "ConnectionFailed").await;
    w.wait_for(&w.team_a, "healthy", Phase::Ready, "Ready").await;
    let server_events: Vec<String> =
        w.events(&w.platform).await.into_iter().map(|(r, _)| r).collect();
    for reason in ["AuthenticationFailed", "ConnectionFailed", "InsufficientPrivileges"] {
        assert!(server_events.iter().any(|r| r == reason), "{reason}: {server_events:?}");
    }
    let team_events: Vec<String> = w.events(&w.team_a).await.into_iter().map(|(r, _)| r).collect();
    for reason in ["AuthenticationFailed", "ConnectionFailed"] {
        assert!(team_events.iter().any(|r| r == reason), "{reason}: {team_events:?}");
    }
    for password in ["not-the-password", "weak-pw"] {
        w.assert_never_shown(password).await;
    }
    let metrics = w.operator.http_address("metrics").await;
    let (_, text) = common::http_get(&metrics, "/metrics").await.expect("/metrics");
    for reason in ["AuthenticationFailed", "ConnectionFailed"] {
        let failures = common::metric_sample(
            &text,
            &format!("dbqo_database_errors_total{{reason=\"{reason}\"}}"),
        );
        assert!(failures.is_some_and(|n| n >= 1.0), "{reason}: {text}");
    }
    // A server referenced but missing: Pending, not an error.
    w.create_database(
        &w.team_a,
        "orphan",
        json!({"serverRef": {"name": "nowhere", "namespace": w.platform}}),
    )
    .await
    .unwrap();
    w.wait_for(&w.team_a, "orphan", Phase::Pending, "ServerNotFound").await;
    dbqo_testenv::reliability::record(
        "server-misconfigured",
        &dbqo_testenv::reliability::Outcome::passed(3, 3, None),
    );
}

/// The admin connection over TLS verifies the server against the Secret's CA.
#[tokio::test]
async fn mariadb_admin_connection_over_tls() {
    let w = World::start_with(Engine::MariaDb, "mytls", true).await;
    let Server::MariaDb(server) = &w.server else { unreachable!() };
    let ca = std::fs::read_to_string(server.info.ca_cert.as_ref().unwrap()).unwrap();
    let mut verified = w.server.admin_keys();
    verified.insert("sslmode", "verify-full".into());
    verified.insert("ca.crt", ca.clone());
    create_secret(&w.client, &w.platform, "verified", verified).await;
    let mut unrelated = w.server.admin_keys();
    unrelated.insert("sslmode", "verify-full".into());
    unrelated.insert("ca.crt", UNRELATED_CA.into());
    create_secret(&w.client, &w.platform, "unrelated", unrelated).await;
    let mut no_ca = w.server.admin_keys();
    no_ca.insert("sslmode", "verify-ca".into());
    create_secret(&w.client, &w.platform, "noca", no_ca).await;
    for (name, secret, ca_key) in [
        ("tls", "verified", Some("ca.crt")),
        ("badca", "unrelated", Some("ca.crt")),
        ("noca", "noca", None),
    ] {
        let mut reference = json!({"name": secret});
        if let Some(key) = ca_key {
            reference["caCertKey"] = json!(key);
        }
        w.create_server(name, json!({"connectionSecretRef": reference})).await;
    }
    w.wait_for_server("tls", "Ready").await;
    w.wait_for_server("badca", "ConnectionFailed").await;
    w.wait_for_server("noca", "TlsConfigError").await;
    w.create_database(&w.platform, "secure", json!({"serverRef": {"name": "tls"}})).await.unwrap();
    w.wait_for(&w.platform, "secure", Phase::Ready, "Ready").await;
    let (data, _) = w.secret(&w.platform, "secure-credentials").await.unwrap();
    assert_eq!(data["sslmode"], "verify-full");
    assert_eq!(data["ca.crt"], ca.trim_end(), "the CA applications verify the server with");
}

/// Databases draw on the operator's per-server connection budget, like DBQRs:
/// with a budget of 1, four Databases created at once all converge and the
/// operator never holds more than one connection to the admin's database.
#[tokio::test]
async fn postgres_databases_keep_to_the_connection_budget() {
    let mut w = World::start(Engine::Postgres, "pgbudget").await;
    w.restart_operator(&["--max-connections-per-database", "1"]);
    let Server::Postgres(pg) = &w.server else { unreachable!() };
    // Sampled every few milliseconds: a pass holds its connection for tens.
    let sampler = common::connect(&pg.info.url("postgres")).await;
    let most = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let seen = most.clone();
    let sampling = tokio::spawn(async move {
        loop {
            let held: i64 = sampler
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = 'postgres' AND application_name = 'db-query-operator'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            seen.fetch_max(held, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    for name in ["d1", "d2", "d3", "d4"] {
        w.create_database(&w.team_a, name, json!({})).await.unwrap();
    }
    eventually(WAIT, "four Databases Ready", || async {
        let list = w.databases(&w.team_a).list(&Default::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|d| d.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready))
            .count();
        (ready == 4).then_some(())
    })
    .await;
    sampling.abort();
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most >= 1, "the sampler saw the operator's connection");
    assert!(most <= 1, "{most} connections held with a budget of 1");
}

/// The admin connection to PostgreSQL over TLS (the shared server of the
/// test run serves TLS): verify-full with the CA works, an unrelated CA does
/// not; the credentials Secret carries the sslmode applications must use.
#[tokio::test]
async fn postgres_admin_connection_over_tls() {
    let w = World::start(Engine::Postgres, "pgtls").await;
    let shared = &dbqo_testenv::shared().postgres;
    let ca =
        std::fs::read_to_string(shared.ca_cert.as_ref().expect("the shared server serves TLS"))
            .unwrap();
    let keys = |sslmode: &str, ca: &str| {
        let mut keys = common::server_secret_keys(shared, "postgres");
        keys.insert("sslmode", sslmode.into());
        keys.insert("ca.crt", ca.into());
        keys
    };
    create_secret(&w.client, &w.platform, "verified", keys("verify-full", &ca)).await;
    let other_ca = UNRELATED_CA;
    create_secret(&w.client, &w.platform, "unrelated", keys("verify-full", other_ca)).await;
    for (name, secret) in [("tls", "verified"), ("badca", "unrelated")] {
        w.create_server(
            name,
            json!({"connectionSecretRef": {"name": secret, "caCertKey": "ca.crt"}}),
        )
        .await;
    }
    w.wait_for_server("tls", "Ready").await;
    w.wait_for_server("badca", "ConnectionFailed").await;
    let name = unique("tls").replace('-', "_");
    w.create_database(
        &w.platform,
        "secure",
        json!({"serverRef": {"name": "tls"}, "databaseName": name}),
    )
    .await
    .unwrap();
    w.wait_for(&w.platform, "secure", Phase::Ready, "Ready").await;
    let (data, _) = w.secret(&w.platform, "secure-credentials").await.unwrap();
    assert_eq!(data["sslmode"], "verify-full");
    assert!(data["uri"].ends_with("?sslmode=verify-full"));
    assert_eq!(data["ca.crt"], ca.trim_end(), "the CA applications verify the server with");
}

/// Every phase a `Database` passes through from now on, as its watch sees it.
fn watch_phases(w: &World, ns: &str, name: &str) -> std::sync::Arc<std::sync::Mutex<Vec<Phase>>> {
    use futures_util::StreamExt;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = seen.clone();
    let config = kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = kube::runtime::watcher(w.databases(ns), config);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(kube::runtime::watcher::Event::Apply(d)) = event {
                if let Some(phase) = d.status.and_then(|s| s.phase) {
                    let mut seen = into.lock().unwrap();
                    if seen.last() != Some(&phase) {
                        seen.push(phase);
                    }
                }
            }
        }
    });
    seen
}

impl World {
    async fn annotate_requested_at(&self, ns: &str, name: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {"dbqo.dev/requested-at": value}}});
        self.databases(ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    async fn set_spec(&self, ns: &str, name: &str, spec: Value) {
        let patch = Patch::Merge(json!({ "spec": spec }));
        self.databases(ns).patch(name, &PatchParams::default(), &patch).await.unwrap();
    }

    /// Waits for an Event with `reason` whose note holds `text`.
    async fn wait_for_event(&self, ns: &str, reason: &str, text: &str) -> String {
        eventually(WAIT, &format!("a {reason} event about {text}"), || async {
            self.events(ns)
                .await
                .into_iter()
                .find(|(r, n)| r == reason && n.contains(text))
                .map(|e| e.1)
        })
        .await
    }
}

/// Depth, as teams migrating from the seeds rely on it: the phases of a
/// first provisioning, a Secret shaped for the application under its own
/// name, names that cannot change, privileges changed by hand restored, a
/// database and user dropped by hand created again, `requested-at`, the
/// server's client endpoint, a database owned by its user, and `Delete`
/// dropping everything with the Secret.
async fn depth(engine: Engine, prefix: &str) {
    let w = World::start(engine, prefix).await;
    let mut admin = w.server.admin().await;
    let phases = watch_phases(&w, &w.team_a, "depot");
    w.create_database(
        &w.team_a,
        "depot",
        json!({
            "databaseName": "depot_main",
            "credentialsSecret": "depot-env",
            "credentialsSecretTemplate": {
                "DATABASE_URL": "{{uri}}",
                "DB_HOST": "{{hostname}}",
                "DB_PORT": "{{port}}",
                "JDBC_URL": "jdbc:{{lower \"X\"}}//{{host}}:{{port}}/{{dbname}}?user={{username}}",
            },
            "deletionPolicy": "Delete",
        }),
    )
    .await
    .unwrap();
    w.wait_for(&w.team_a, "depot", Phase::Ready, "Ready").await;
    let seen = eventually(WAIT, "Creating, then Ready", || async {
        let seen = phases.lock().unwrap().clone();
        seen.ends_with(&[Phase::Ready]).then_some(seen)
    })
    .await;
    // Pending first when the server is not in the watch yet.
    assert!(seen.ends_with(&[Phase::Creating, Phase::Ready]), "{seen:?}");
    assert!(w.secret(&w.team_a, "depot-credentials").await.is_none(), "the default name unused");
    let (data, _) = w.secret(&w.team_a, "depot-env").await.expect("the Secret by its own name");
    assert_eq!(data["DATABASE_URL"], data["uri"]);
    assert_eq!((&data["DB_HOST"], &data["hostname"]), (&data["host"], &data["host"]));
    assert_eq!(data["DB_PORT"], data["port"]);
    let jdbc = format!("jdbc:x//{}:{}/depot_main?user=depot_main", data["host"], data["port"]);
    assert_eq!(data["JDBC_URL"], jdbc);
    let mut app = App::connect(engine, &data, None).await.expect("the credentials work");
    admin
        .exec_in(
            "depot_main",
            "CREATE TABLE facts (id int PRIMARY KEY); INSERT INTO facts VALUES (1)",
        )
        .await;
    app.exec("INSERT INTO facts VALUES (2)").await.expect("INSERT on the admin's table");

    // A rename is refused: nothing created, nothing dropped; set back, Ready again.
    w.set_spec(&w.team_a, "depot", json!({"databaseName": "depot_other"})).await;
    let message = w.wait_for(&w.team_a, "depot", Phase::Error, "ImmutableField").await;
    assert!(
        message.contains("spec.databaseName") && message.contains("\"depot_main\""),
        "{message}"
    );
    assert!(!admin.database_exists("depot_other").await && !admin.user_exists("depot_other").await);
    assert!(admin.database_exists("depot_main").await);
    assert!(App::connect(engine, &data, None).await.is_ok());
    w.set_spec(&w.team_a, "depot", json!({"databaseName": "depot_main"})).await;
    w.wait_for(&w.team_a, "depot", Phase::Ready, "Ready").await;

    // Privileges revoked by hand come back with the next pass (requested-at runs it now).
    match engine {
        Engine::Postgres => {
            admin.exec_in("depot_main", "REVOKE INSERT ON facts FROM depot_main").await
        }
        Engine::MariaDb => {
            admin.exec("REVOKE INSERT ON `depot\\_main`.* FROM 'depot_main'@'%'").await
        }
    }
    let mut app = App::connect(engine, &data, None).await.unwrap();
    assert!(app.exec("INSERT INTO facts VALUES (3)").await.is_err(), "the revoke took effect");
    w.annotate_requested_at(&w.team_a, "depot", "one").await;
    w.wait_for_event(&w.team_a, "PrivilegesRestored", "depot_main").await;
    let mut app = App::connect(engine, &data, None).await.unwrap();
    app.exec("INSERT INTO facts VALUES (3)").await.expect("INSERT restored");
    let handled = w.databases(&w.team_a).get("depot").await.unwrap().status.unwrap();
    assert_eq!(handled.last_handled_requested_at.as_deref(), Some("one"));
    // Converged: a pass compares, and grants nothing.
    let (_, grants) = admin.statements().await;
    let passes = w.database_passes().await;
    w.annotate_requested_at(&w.team_a, "depot", "two").await;
    w.wait_for_passes(passes, (1, 0)).await;
    assert_eq!(admin.statements().await.1, grants, "GRANT/REVOKE with nothing changed by hand");

    // Dropped by hand: created again, with the password the Secret holds.
    drop(app);
    match engine {
        Engine::Postgres => {
            admin.exec("DROP DATABASE depot_main WITH (FORCE)").await;
            admin.exec("DROP ROLE depot_main").await;
        }
        Engine::MariaDb => {
            admin.exec("DROP DATABASE depot_main").await;
            admin.exec("DROP USER 'depot_main'@'%'").await;
        }
    }
    w.annotate_requested_at(&w.team_a, "depot", "three").await;
    w.wait_for_event(&w.team_a, "Recreated", "depot_main").await;
    w.wait_for(&w.team_a, "depot", Phase::Ready, "Ready").await;
    let mut app =
        App::connect(engine, &data, None).await.expect("the Secret's password works again");
    app.exec("CREATE TABLE again (id int)").await.expect("privileges granted on the new database");
    drop(app);

    // The server's client endpoint is what applications are told.
    w.create_server(
        "public",
        json!({"allowedNamespaces": [w.team_a], "clientEndpoint": {"host": "db.example.test", "port": 6543}}),
    )
    .await;
    // Seed 004's names for PostgreSQL's encoding and collation.
    let mut edge_spec = json!({"serverRef": {"name": "public", "namespace": w.platform}});
    if engine == Engine::Postgres {
        edge_spec["charset"] = json!("UTF8");
        edge_spec["collation"] = json!("C");
    }
    w.create_database(&w.team_a, "edge", edge_spec).await.unwrap();
    w.wait_for(&w.team_a, "edge", Phase::Ready, "Ready").await;
    if engine == Engine::Postgres {
        let collated = admin
            .count(
                "SELECT count(*) FROM pg_database WHERE datname = $1 AND datcollate = 'C' AND pg_encoding_to_char(encoding) = 'UTF8'",
                "",
                "edge",
            )
            .await;
        assert_eq!(collated, 1, "charset and collation applied");
    }
    let (edge, _) = w.secret(&w.team_a, "edge-credentials").await.unwrap();
    assert_eq!((edge["host"].as_str(), edge["port"].as_str()), ("db.example.test", "6543"));
    assert_eq!(edge["hostname"], "db.example.test");
    assert!(edge["uri"].contains("@db.example.test:6543/edge"), "the uri names it too");

    // A database owned by its user.
    w.create_database(&w.team_a, "mine", json!({"owner": true})).await.unwrap();
    w.wait_for(&w.team_a, "mine", Phase::Ready, "Ready").await;
    let (mine, _) = w.secret(&w.team_a, "mine-credentials").await.unwrap();
    let mut owner = App::connect(engine, &mine, None).await.unwrap();
    match engine {
        Engine::Postgres => {
            let owned = admin
                .count(
                    "SELECT count(*) FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = $1 AND r.rolname = d.datname",
                    "",
                    "mine",
                )
                .await;
            assert_eq!(owned, 1, "the user owns its database");
            owner.exec("ALTER DATABASE mine SET work_mem = '8MB'").await.expect("an owner's right");
        }
        Engine::MariaDb => {
            let grantable = admin
                .count(
                    "",
                    "SELECT COUNT(*) FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = CONCAT('''', ?, '''@''%''') AND IS_GRANTABLE = 'YES'",
                    "mine",
                )
                .await;
            assert!(grantable > 0, "the user may grant on its database");
            owner.exec("GRANT SELECT ON mine.* TO 'edge'@'%'").await.expect("an owner grants");
        }
    }
    let (_, grants) = admin.statements().await;
    let passes = w.database_passes().await;
    w.annotate_requested_at(&w.team_a, "mine", "again").await;
    w.wait_for_passes(passes, (1, 0)).await;
    assert_eq!(admin.statements().await.1, grants, "an owner's database converged");

    // A template that does not render: the key and the place, no value, no Secret.
    w.create_database(
        &w.team_a,
        "shaped",
        json!({"credentialsSecretTemplate": {"BROKEN": "x{{nope}}"}}),
    )
    .await
    .unwrap();
    let message = w.wait_for(&w.team_a, "shaped", Phase::Error, "InvalidSpec").await;
    assert!(message.contains("\"BROKEN\"") && message.contains("nope"), "{message}");
    assert!(w.secret(&w.team_a, "shaped-credentials").await.is_none());

    // Delete: database and user dropped, the Secret goes with the Database.
    w.databases(&w.team_a).delete("depot", &DeleteParams::default()).await.unwrap();
    w.wait_for_event(&w.team_a, "Dropped", "depot_main").await;
    eventually(WAIT, "the Secret removed with its Database", || async {
        w.secret(&w.team_a, "depot-env").await.is_none().then_some(())
    })
    .await;
    assert!(!admin.database_exists("depot_main").await && !admin.user_exists("depot_main").await);
    for password in [&data["password"], &edge["password"], &mine["password"]] {
        w.assert_never_shown(password).await;
    }
}

#[tokio::test]
async fn postgres_depth() {
    depth(Engine::Postgres, "pgdepth").await;
}

#[tokio::test]
async fn mariadb_depth() {
    depth(Engine::MariaDb, "mydepth").await;
}

/// `examples/database-for-a-team` as a team applies it (beside its admin
/// Secret): a database with pgcrypto, a Secret with the template's keys,
/// credentials that work.
#[tokio::test]
async fn postgres_the_team_example_provisions_what_it_says() {
    let w = World::start(Engine::Postgres, "pgexample").await;
    let ns = &w.team_a;
    create_secret(&w.client, ns, "pg-admin", w.server.admin_keys()).await;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/database-for-a-team/server-and-database.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object: Value = serde::Deserialize::deserialize(document).unwrap();
        let mut object: kube::api::DynamicObject = serde_json::from_value(object).unwrap();
        object.metadata.labels =
            Some(BTreeMap::from([(TEST_LABEL.to_owned(), w.operator.id.clone())]));
        let kind = object.types.as_ref().unwrap().kind.clone();
        let resource = match kind.as_str() {
            "DatabaseServer" => kube::api::ApiResource::erase::<DatabaseServer>(&()),
            "Database" => kube::api::ApiResource::erase::<Database>(&()),
            other => panic!("the example holds a {other}"),
        };
        Api::<kube::api::DynamicObject>::namespaced_with(w.client.clone(), ns, &resource)
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("the API server refused the example's {kind}: {e}"));
    }
    w.wait_for(ns, "orders", Phase::Ready, "Ready").await;
    let (data, _) = w.secret(ns, "orders-credentials").await.expect("the Secret the example names");
    assert_eq!(data["DATABASE_URL"], data["uri"]);
    assert_eq!((&data["DB_HOST"], &data["DB_PORT"]), (&data["host"], &data["port"]));
    let mut app = App::connect(Engine::Postgres, &data, None).await.expect("the credentials work");
    app.exec("SELECT digest('x', 'sha256')").await.expect("pgcrypto, as the example asks");
}

#[tokio::test]
async fn postgres_server_faults() {
    server_faults(Engine::Postgres, "pgfault").await;
}

#[tokio::test]
async fn mariadb_server_faults() {
    server_faults(Engine::MariaDb, "myfault").await;
}

#[tokio::test]
async fn postgres_lifecycle() {
    lifecycle(Engine::Postgres, "pglife").await;
}

#[tokio::test]
async fn mariadb_lifecycle() {
    lifecycle(Engine::MariaDb, "mylife").await;
}

#[tokio::test]
async fn postgres_privileges() {
    privileges(Engine::Postgres, "pgpriv").await;
}

#[tokio::test]
async fn mariadb_privileges() {
    privileges(Engine::MariaDb, "mypriv").await;
}

#[tokio::test]
async fn postgres_deletion_and_adoption() {
    deletion_and_adoption(Engine::Postgres, "pgdel").await;
}

#[tokio::test]
async fn mariadb_deletion_and_adoption() {
    deletion_and_adoption(Engine::MariaDb, "mydel").await;
}

/// The admin's session inside a team's database pins `search_path`: a
/// database default the team set (`ALTER DATABASE ... SET search_path`,
/// which a database owner may) does not decide where an extension the
/// operator creates goes.
#[tokio::test]
async fn postgres_extensions_are_created_with_a_pinned_search_path() {
    let w = World::start(Engine::Postgres, "pinned").await;
    let mut admin = w.server.admin().await;
    w.create_database(&w.team_a, "pinned", json!({"extensions": ["pgcrypto"]})).await.unwrap();
    w.wait_for(&w.team_a, "pinned", Phase::Ready, "Ready").await;
    // The extension goes (a restore without it, say), and the database's
    // default search_path now leads to a schema of the team's choosing.
    admin
        .exec_in(
            "pinned",
            "DROP EXTENSION pgcrypto; CREATE SCHEMA trap; ALTER DATABASE pinned SET search_path = trap",
        )
        .await;
    w.databases(&w.team_a)
        .patch(
            "pinned",
            &PatchParams::default(),
            // A spec change runs a pass (`Database`s do not take the
            // requested-at annotation yet).
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Delete"}})),
        )
        .await
        .unwrap();
    let schema = eventually(WAIT, "pgcrypto created again", || async {
        let Server::Postgres(server) = &w.server else {
            return None;
        };
        let c = common::connect(&server.info.url("pinned")).await;
        c.query_opt(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
             WHERE e.extname = 'pgcrypto'",
            &[],
        )
        .await
        .ok()?
        .map(|row| row.get::<_, String>(0))
    })
    .await;
    assert_eq!(schema, "public", "not the schema the database's default names");
}

/// SIGTERM while a `Database` pass waits on the server: the replica is not
/// ready, the pass finishes (the Database becomes Ready) and the process
/// exits 0, the same drain as the query side's.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_shutdown_lets_the_pass_under_way_finish() {
    let mut w = World::start(Engine::Postgres, "pgdrain").await;
    w.restart_operator(&["--shutdown-timeout-seconds", "60"]);
    let Server::Postgres(pg) = &w.server else { unreachable!() };
    // A role of the same name created in a transaction left open: the
    // operator's CREATE ROLE waits for it to end.
    let blocker = common::connect(&pg.info.url("postgres")).await;
    blocker.batch_execute("BEGIN; CREATE ROLE held_user").await.unwrap();
    w.create_database(&w.team_a, "held", json!({"username": "held_user"})).await.unwrap();
    let observer = common::connect(&pg.info.url("postgres")).await;
    common::wait_for_a_lock_waiter(&observer, "the operator's CREATE ROLE waiting").await;
    w.operator.start_draining().await;
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let status = tokio::task::block_in_place(|| w.operator.wait_for_exit(WAIT));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "exit status");
    let database = w.databases(&w.team_a).get("held").await.unwrap();
    assert_eq!(
        database.status.and_then(|s| s.phase),
        Some(Phase::Ready),
        "the pass under way finished and wrote its status before the exit"
    );
}

/// The server down while a `Database` is created, while its password is
/// reset and while it is deleted: each shows as `ConnectionFailed` on the
/// `Database` while it lasts (phase `Error`, or `Deleting` for the delete), and completes on its own once the server is
/// back (the database and user made, a new password that works and an old
/// one that does not, the database dropped and the Secret gone).
#[tokio::test]
async fn postgres_server_down_during_create_reset_and_delete() {
    let engine = Engine::Postgres;
    let mut w = World::start(engine, "pgdown").await;
    // Checked once while it runs: a server never seen Ready holds its
    // Databases back for another reason than the outage.
    w.wait_for_server("main", "Ready").await;
    let started = std::time::Instant::now();

    // Create.
    w.server.stop();
    w.create_database(&w.team_a, "during", json!({"deletionPolicy": "Delete"})).await.unwrap();
    w.wait_for(&w.team_a, "during", Phase::Error, "ConnectionFailed").await;
    w.server.restart();
    w.wait_for(&w.team_a, "during", Phase::Ready, "Ready").await;
    let (first, _) = w.secret(&w.team_a, "during-credentials").await.expect("credentials");
    assert!(App::connect(engine, &first, None).await.is_ok(), "the credentials work");

    // Password reset.
    w.server.stop();
    w.label(&w.team_a, "during", "dbqo.dev/action", json!("reset-password")).await;
    w.wait_for(&w.team_a, "during", Phase::Error, "ConnectionFailed").await;
    let (unchanged, _) = w.secret(&w.team_a, "during-credentials").await.unwrap();
    assert_eq!(
        unchanged["password"], first["password"],
        "no new password before the server has it"
    );
    w.server.restart();
    let fresh = eventually(WAIT, "a new password", || async {
        let d = w.databases(&w.team_a).get("during").await.ok()?;
        let (now, _) = w.secret(&w.team_a, "during-credentials").await?;
        (now["password"] != first["password"]
            && !d.metadata.labels.unwrap_or_default().contains_key("dbqo.dev/action"))
        .then_some(now)
    })
    .await;
    w.wait_for(&w.team_a, "during", Phase::Ready, "Ready").await;
    assert!(App::connect(engine, &fresh, None).await.is_ok(), "the new password works");
    assert!(App::connect(engine, &first, None).await.is_err(), "the old password is gone");

    // Delete.
    w.server.stop();
    w.databases(&w.team_a).delete("during", &DeleteParams::default()).await.unwrap();
    w.wait_for(&w.team_a, "during", Phase::Deleting, "ConnectionFailed").await;
    assert!(w.secret(&w.team_a, "during-credentials").await.is_some(), "kept until dropped");
    w.server.restart();
    eventually(WAIT, "the Database gone", || async {
        w.databases(&w.team_a).get_opt("during").await.ok()?.is_none().then_some(())
    })
    .await;
    let mut admin = w.server.admin().await;
    assert!(!admin.database_exists("during").await && !admin.user_exists("during").await);
    // The Secret goes with its owner (the garbage collector, a moment later).
    eventually(WAIT, "the Secret removed", || async {
        w.secret(&w.team_a, "during-credentials").await.is_none().then_some(())
    })
    .await;
    w.assert_never_shown(&fresh["password"]).await;
    dbqo_testenv::reliability::record(
        "server-down-create-reset-delete",
        &dbqo_testenv::reliability::Outcome::passed(3, 3, Some(started.elapsed())),
    );
}

/// The path to a `DatabaseServer` stalls (a proxy stops forwarding, nothing
/// is closed): a `Database` created meanwhile shows `DatabaseUnresponsive`
/// once the admin connection's client-side deadline passes, and is created
/// once the path carries packets again.
#[tokio::test]
async fn postgres_a_stalled_server_path_shows_on_the_database_and_recovers() {
    let engine = Engine::Postgres;
    let w = World::start(engine, "pgstall").await;
    let Server::Postgres(pg) = &w.server else { unreachable!() };
    let proxy = dbqo_testenv::faults::StallProxy::start(
        format!("{}:{}", pg.info.host, pg.info.port).parse().unwrap(),
    )
    .unwrap();
    let mut keys = w.server.admin_keys();
    keys.insert("port", proxy.port().to_string());
    create_secret(&w.client, &w.platform, "stalled-admin", keys).await;
    w.create_server(
        "stalled",
        json!({"connectionSecretRef": {"name": "stalled-admin"}, "allowedNamespaces": [w.team_a]}),
    )
    .await;
    w.wait_for_server("stalled", "Ready").await;

    proxy.stall();
    let started = std::time::Instant::now();
    w.create_database(
        &w.team_a,
        "behind",
        json!({"serverRef": {"name": "stalled", "namespace": w.platform}}),
    )
    .await
    .unwrap();
    let message = w.wait_for(&w.team_a, "behind", Phase::Error, "DatabaseUnresponsive").await;
    assert!(message.contains("did not answer"), "{message}");
    let shown = started.elapsed();
    proxy.resume();
    w.wait_for(&w.team_a, "behind", Phase::Ready, "Ready").await;
    let (data, _) = w.secret(&w.team_a, "behind-credentials").await.expect("credentials");
    assert!(App::connect(engine, &data, None).await.is_ok(), "the credentials work");
    dbqo_testenv::reliability::record(
        "server-stall",
        &dbqo_testenv::reliability::Outcome::passed(1, 1, Some(started.elapsed()))
            .with_note(format!("shown after {:.1} s", shown.as_secs_f64())),
    );
}
