//! The `Database` pass and the server check against an in-memory cluster
//! ([`FakeCluster`]) and an in-memory server ([`FakeServer`]): the plan, the
//! adoption rules, the finalizer, deletion by policy and the reason each
//! failure is reported under. (The real servers are exercised by
//! `tests/databases.rs`.)

use std::{cell::RefCell, collections::BTreeMap, rc::Rc};

use futures_util::FutureExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value as Json};

use super::admin::Sessions;
use super::adopt::Found;
use super::database_pass::{DatabasePass, PassOutcome, ACTION_LABEL, RESET_PASSWORD};
use super::error::ServerError;
use super::request::Request;
use super::server_check::check_server;
use super::session::{Claimant, ServerFacts, ServerObjects, Session};
use crate::api::database::{Database, Phase};
use crate::api::server::{DatabaseServer, Engine};
use crate::db::ConnInfo;
use crate::fake_cluster::FakeCluster;

/// A database server in memory: what exists, whom the records name, and
/// every statement run.
#[derive(Default)]
struct ServerState {
    databases: Vec<String>,
    users: Vec<String>,
    /// ("database" | "user", name) -> owner uid.
    records: BTreeMap<(&'static str, String), String>,
    privileges: BTreeMap<String, String>,
    /// Per database, the privileges its catalogs show (what the last grant set).
    held: BTreeMap<String, String>,
    statements: Vec<String>,
    /// A statement starting like this fails.
    failing: Option<&'static str>,
    /// Connecting fails with this.
    unreachable: bool,
}

#[derive(Clone, Default)]
struct FakeServer(Rc<RefCell<ServerState>>);

impl FakeServer {
    fn state(&self) -> std::cell::RefMut<'_, ServerState> {
        self.0.borrow_mut()
    }

    fn writes(&self) -> Vec<String> {
        self.0.borrow().statements.clone()
    }
}

impl Sessions for FakeServer {
    type Session = FakeServer;

    async fn open(&self, _: Engine, _: ConnInfo) -> Result<FakeServer, ServerError> {
        if self.0.borrow().unreachable {
            return Err(ServerError::Unreachable("connection refused".into()));
        }
        Ok(self.clone())
    }
}

impl Session for FakeServer {
    async fn facts(&mut self) -> Result<ServerFacts, ServerError> {
        Ok(ServerFacts { version: "15.0".into(), missing_rights: Vec::new() })
    }

    async fn observe(&mut self, request: &Request) -> Result<ServerObjects, ServerError> {
        let state = self.0.borrow();
        let found = |kind: &'static str, name: &str, list: &[String]| Found {
            exists: list.iter().any(|n| n == name),
            recorded_owner: state.records.get(&(kind, name.to_owned())).cloned(),
        };
        Ok(ServerObjects {
            database: found("database", &request.database, &state.databases),
            user: found("user", &request.username, &state.users),
            privileges: state.privileges.get(&request.database).cloned(),
        })
    }

    async fn claim(
        &mut self,
        request: &Request,
        claimant: &Claimant,
    ) -> Result<ServerObjects, ServerError> {
        {
            let mut state = self.state();
            for (kind, name) in [("database", &request.database), ("user", &request.username)] {
                state.records.entry((kind, name.clone())).or_insert_with(|| claimant.uid.clone());
            }
        }
        self.observe(request).await
    }

    async fn execute(&mut self, statements: &[String]) -> Result<(), ServerError> {
        let mut state = self.state();
        for statement in statements {
            if state.failing.is_some_and(|f| statement.starts_with(f)) {
                return Err(ServerError::Statement {
                    what: super::error::statement_kind(statement),
                    message: "permission denied".into(),
                });
            }
            let quoted = statement.split('"').nth(1).unwrap_or_default().to_owned();
            if statement.starts_with("CREATE ROLE") {
                state.users.push(quoted);
            } else if statement.starts_with("CREATE DATABASE") {
                state.databases.push(quoted);
            } else if statement.starts_with("DROP DATABASE") {
                state.databases.retain(|d| *d != quoted);
            } else if statement.starts_with("DROP ROLE") {
                state.users.retain(|u| *u != quoted);
            }
            // Never the password: the statement that carries one is logged by kind.
            let logged = if statement.contains("PASSWORD") {
                super::error::statement_kind(statement)
            } else {
                statement.clone()
            };
            state.statements.push(logged);
        }
        Ok(())
    }

    async fn execute_inside(
        &mut self,
        _: &Request,
        statements: &[String],
    ) -> Result<(), ServerError> {
        self.execute(statements).await
    }

    async fn missing_extensions(&mut self, _: &Request) -> Result<Vec<String>, ServerError> {
        Ok(Vec::new())
    }

    async fn privileges_as_asked(&mut self, request: &Request) -> Result<bool, ServerError> {
        let state = self.0.borrow();
        Ok(state.held.get(&request.database) == Some(&request.privileges_text()))
    }

    async fn grant(&mut self, request: &Request, replace: bool) -> Result<(), ServerError> {
        self.execute(&super::sql::pg_database_privileges(request, replace)).await?;
        self.state().held.insert(request.database.clone(), request.privileges_text());
        Ok(())
    }

    async fn record_privileges(
        &mut self,
        request: &Request,
        text: &str,
    ) -> Result<(), ServerError> {
        self.state().privileges.insert(request.database.clone(), text.to_owned());
        Ok(())
    }

    async fn forget(&mut self, request: &Request, uid: &str) -> Result<(), ServerError> {
        let names = [("database", &request.database), ("user", &request.username)];
        let mut state = self.state();
        for (kind, name) in names {
            if state.records.get(&(kind, name.clone())).is_some_and(|o| o == uid) {
                state.records.remove(&(kind, name.clone()));
            }
        }
        Ok(())
    }
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn server(extra: Json) -> DatabaseServer {
    let mut spec = json!({
        "engine": "postgres",
        "connectionSecretRef": {"name": "admin"},
        "allowedNamespaces": ["team"],
        "allowDelete": true,
    });
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "dbqo.dev/v1alpha1",
        "kind": "DatabaseServer",
        "metadata": {"name": "main", "namespace": "platform", "uid": "uid-server", "generation": 1},
        "spec": spec,
    }))
    .unwrap()
}

fn database(extra: Json, finalizers: &[&str]) -> Database {
    let mut spec = json!({"serverRef": {"name": "main", "namespace": "platform"}});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "dbqo.dev/v1alpha1",
        "kind": "Database",
        "metadata": {
            "name": "orders", "namespace": "team", "uid": "uid-orders",
            "generation": 1, "resourceVersion": "1", "finalizers": finalizers,
        },
        "spec": spec,
    }))
    .unwrap()
}

/// A cluster holding the admin Secret and `database`.
fn cluster(database: &Database) -> FakeCluster {
    let writer = FakeCluster::default();
    let admin = json!({
        "metadata": {"name": "admin", "namespace": "platform", "resourceVersion": "1"},
        "data": {
            "host": base64("db.internal"), "port": base64("5432"), "username": base64("admin"),
            "password": base64("admin-password"), "dbname": base64("postgres"),
            "sslmode": base64("disable"),
        },
    });
    writer.put("Secret", "platform", "admin", admin);
    writer.put("Database", "team", "orders", serde_json::to_value(database).unwrap());
    writer
}

fn settings() -> crate::backup::database::BackupSettings {
    crate::backup::database::BackupSettings {
        image: "dbqo-backup:test".into(),
        min_interval: std::time::Duration::from_secs(300),
    }
}

fn time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap())
}

/// Runs one pass (the fakes never suspend).
fn pass(
    writer: &FakeCluster,
    server_state: &FakeServer,
    database: &Database,
    server: Option<&DatabaseServer>,
) -> PassOutcome {
    DatabasePass {
        database,
        server,
        writer,
        sessions: server_state,
        allow_cross_namespace_secrets: false,
        status: None,
        reset_done: false,
        backups: &settings(),
        now: time(),
    }
    .run()
    .now_or_never()
    .expect("the fakes never suspend")
}

/// Whether an Event with `reason` (a warning or not) was published.
fn announced(writer: &FakeCluster, reason: &str, warning: bool) -> bool {
    writer.events.borrow().contains(&(reason.to_owned(), warning))
}

/// `database` as the watch has it once it is being deleted.
fn deleting(database: &Database) -> Database {
    let mut deleting = database.clone();
    deleting.metadata.deletion_timestamp = Some(time());
    deleting
}

/// The stored object of `kind` in `namespace`.
fn stored(writer: &FakeCluster, kind: &str, namespace: &str, name: &str) -> Json {
    let key = (kind.to_owned(), Some(namespace.to_owned()), name.to_owned());
    writer.objects.borrow()[&key].clone()
}

fn finalizers(writer: &FakeCluster) -> Json {
    let objects = writer.objects.borrow();
    let key = ("Database".to_owned(), Some("team".to_owned()), "orders".to_owned());
    objects[&key]["metadata"]["finalizers"].clone()
}

fn ready_reason(outcome: &PassOutcome) -> (Option<Phase>, String) {
    let status = outcome.status.as_ref().expect("a status written");
    (status.phase, status.conditions[0].reason.clone())
}

#[test]
fn a_new_database_gets_its_finalizer_user_database_and_secret() {
    let db = database(json!({}), &[]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    let outcome = pass(&writer, &server_state, &db, Some(&server(json!({}))));
    assert_eq!(ready_reason(&outcome), (Some(Phase::Ready), "Ready".into()));
    assert!(!outcome.failed && !outcome.finished);
    assert_eq!(finalizers(&writer), json!(["dbqo.dev/finalizer"]));
    let state = server_state.0.borrow();
    assert_eq!(
        (state.databases.clone(), state.users.clone()),
        (vec!["orders".to_owned()], vec!["orders".to_owned()])
    );
    assert_eq!(state.records.len(), 2, "both claimed: {:?}", state.records);
    drop(state);
    let secret = futures_util::FutureExt::now_or_never(crate::kube_api::Cluster::read_secret(
        &writer,
        "team",
        "orders-credentials",
    ))
    .unwrap()
    .unwrap()
    .expect("the credentials Secret");
    assert_eq!(secret.owners, vec!["uid-orders".to_owned()]);
    assert_eq!(secret.data["host"], b"db.internal");
    assert_eq!(
        outcome.secrets,
        vec![
            ("platform".to_owned(), "admin".to_owned()),
            ("team".to_owned(), "orders-credentials".to_owned())
        ]
    );
    let events = writer.events.borrow();
    assert!(events.contains(&("Created".to_owned(), false)), "{events:?}");
}

#[test]
fn a_second_pass_of_a_converged_database_runs_no_statement_and_writes_nothing() {
    let db = database(json!({}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    let first = pass(&writer, &server_state, &db, Some(&server(json!({}))));
    let statements = server_state.writes().len();
    let writes = writer.writes().len();
    let second = DatabasePass {
        database: &db,
        server: Some(&server(json!({}))),
        writer: &writer,
        sessions: &server_state,
        allow_cross_namespace_secrets: false,
        status: first.status.as_ref(),
        reset_done: false,
        backups: &settings(),
        now: time(),
    }
    .run()
    .now_or_never()
    .unwrap();
    assert!(second.status.is_none(), "the status did not change");
    assert_eq!(server_state.writes().len(), statements, "{:?}", server_state.writes());
    assert_eq!(writer.writes().len(), writes, "{:?}", writer.writes());
}

#[test]
fn a_database_recorded_as_another_databases_is_refused() {
    let db = database(json!({}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    {
        let mut state = server_state.state();
        state.databases.push("orders".into());
        state.records.insert(("database", "orders".into()), "uid-someone-else".into());
    }
    let outcome = pass(&writer, &server_state, &db, Some(&server(json!({}))));
    let (phase, reason) = ready_reason(&outcome);
    assert_eq!(phase, Some(Phase::Error));
    assert!(outcome.failed);
    assert!(server_state.writes().is_empty(), "nothing run: {:?}", server_state.writes());
    assert!(writer.events.borrow().contains(&(reason, true)), "a warning Event");
}

#[test]
fn an_unknown_server_is_pending_without_backoff() {
    let db = database(json!({}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    let outcome = pass(&writer, &server_state, &db, None);
    assert_eq!(ready_reason(&outcome), (Some(Phase::Pending), "ServerNotFound".into()));
    assert!(!outcome.failed, "a server that appears runs the pass; no retry timer");
}

/// Sets up the failure of one case.
type Arrange = Box<dyn Fn(&FakeCluster, &FakeServer)>;

#[test]
fn every_failure_is_reported_under_its_own_reason() {
    let cases: Vec<(&str, Arrange, Json, &str)> = vec![
        (
            "unreachable",
            Box::new(|_, s| s.state().unreachable = true),
            json!({}),
            "ConnectionFailed",
        ),
        (
            "statement",
            Box::new(|_, s| s.state().failing = Some("CREATE DATABASE")),
            json!({}),
            "StatementFailed",
        ),
        (
            "admin Secret gone",
            Box::new(|w, _| {
                w.objects.borrow_mut().remove(&(
                    "Secret".to_owned(),
                    Some("platform".to_owned()),
                    "admin".to_owned(),
                ));
            }),
            json!({}),
            "SecretNotFound",
        ),
        ("privilege", Box::new(|_, _| {}), json!({"privileges": ["SUPERUSER"]}), "InvalidSpec"),
        (
            "a Secret of that name, not ours",
            Box::new(|w, _| {
                w.put(
                    "Secret",
                    "team",
                    "orders-credentials",
                    json!({"metadata": {"name": "orders-credentials"}}),
                )
            }),
            json!({}),
            "AlreadyExists",
        ),
    ];
    for (case, arrange, spec, reason) in cases {
        let db = database(spec, &["dbqo.dev/finalizer"]);
        let (writer, server_state) = (cluster(&db), FakeServer::default());
        arrange(&writer, &server_state);
        let outcome = pass(&writer, &server_state, &db, Some(&server(json!({}))));
        assert_eq!(ready_reason(&outcome).1, reason, "{case}");
        assert_eq!(outcome.reason, Some(reason), "{case}");
        assert!(outcome.failed, "{case}: retried with backoff");
    }
}

#[test]
fn the_reset_label_sets_a_new_password_once_and_is_removed() {
    let mut db = database(json!({}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    pass(&writer, &server_state, &db, Some(&server(json!({}))));
    db.metadata.labels = Some([(ACTION_LABEL.to_owned(), RESET_PASSWORD.to_owned())].into());
    let before = server_state.writes().len();
    let outcome = pass(&writer, &server_state, &db, Some(&server(json!({}))));
    assert!(outcome.reset_done);
    assert_eq!(server_state.writes()[before..], ["ALTER ROLE".to_owned()], "one new password");
    let labels = &stored(&writer, "Database", "team", "orders")["metadata"]["labels"];
    assert_eq!(labels[ACTION_LABEL], Json::Null, "the label is removed");
    assert!(announced(&writer, "PasswordReset", false));
}

/// Deleted with `deletionPolicy: Delete` on a server that allows it: the
/// database and the user go, the finalizer too (after a conflict retried).
#[test]
fn deletion_drops_what_the_records_say_is_ours_and_lets_go() {
    let db = database(json!({"deletionPolicy": "Delete"}), &["dbqo.dev/finalizer", "other/keep"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    pass(&writer, &server_state, &db, Some(&server(json!({}))));
    let deleting = deleting(&db);
    writer.conflicts.set(1);
    let outcome = pass(&writer, &server_state, &deleting, Some(&server(json!({}))));
    assert!(outcome.finished && !outcome.failed, "{outcome:?}");
    let state = server_state.0.borrow();
    assert!(state.databases.is_empty() && state.users.is_empty());
    assert!(state.records.is_empty(), "the records are forgotten");
    drop(state);
    assert_eq!(finalizers(&writer), json!(["other/keep"]), "only ours removed");
    assert!(announced(&writer, "Dropped", false));
}

/// `Delete` asked, but the server does not allow it: everything is kept
/// and the Secret loses its owner reference, so it outlives the Database.
#[test]
fn deletion_on_a_server_that_forbids_it_retains_and_says_so() {
    let db = database(json!({"deletionPolicy": "Delete"}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    let strict = server(json!({"allowDelete": false}));
    pass(&writer, &server_state, &db, Some(&strict));
    let deleting = deleting(&db);
    let outcome = pass(&writer, &server_state, &deleting, Some(&strict));
    assert!(outcome.finished);
    assert_eq!(server_state.0.borrow().databases, vec!["orders".to_owned()]);
    let secret = stored(&writer, "Secret", "team", "orders-credentials");
    assert_eq!(secret["metadata"]["ownerReferences"], Json::Null);
    assert!(announced(&writer, "Retained", true), "a warning: Delete was asked");
}

#[test]
fn a_failed_drop_keeps_the_finalizer_and_reports_deleting() {
    let db = database(json!({"deletionPolicy": "Delete"}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    pass(&writer, &server_state, &db, Some(&server(json!({}))));
    server_state.state().failing = Some("DROP DATABASE");
    let deleting = deleting(&db);
    let outcome = pass(&writer, &server_state, &deleting, Some(&server(json!({}))));
    assert!(outcome.failed && !outcome.finished);
    assert_eq!(ready_reason(&outcome), (Some(Phase::Deleting), "StatementFailed".into()));
    assert_eq!(finalizers(&writer), json!(["dbqo.dev/finalizer"]));
}

#[test]
fn the_server_check_writes_its_status_and_announces_a_new_reason_once() {
    let writer = cluster(&database(json!({}), &[]));
    let server_state = FakeServer::default();
    let main = server(json!({}));
    check_server(&main, &writer, &server_state, false, time()).now_or_never().unwrap();
    let key = ("DatabaseServer".to_owned(), "platform".to_owned(), "main".to_owned());
    let status = writer.statuses.borrow()[&key].clone();
    assert_eq!(status["reachable"], true);
    assert_eq!(status["serverVersion"], "15.0");
    assert_eq!(status["conditions"][0]["reason"], "Ready");

    server_state.state().unreachable = true;
    let mut known = main.clone();
    known.status = Some(serde_json::from_value(status).unwrap());
    check_server(&known, &writer, &server_state, false, time()).now_or_never().unwrap();
    let status = writer.statuses.borrow()[&key].clone();
    assert_eq!(status["conditions"][0]["reason"], "ConnectionFailed");
    let warnings: Vec<_> = writer.events.borrow().iter().filter(|(_, w)| *w).cloned().collect();
    assert_eq!(warnings, vec![("ConnectionFailed".to_owned(), true)]);
}

#[test]
fn an_admin_secret_of_another_namespace_is_refused() {
    let writer = cluster(&database(json!({}), &[]));
    let elsewhere =
        server(json!({"connectionSecretRef": {"name": "admin", "namespace": "kube-system"}}));
    check_server(&elsewhere, &writer, &FakeServer::default(), false, time())
        .now_or_never()
        .unwrap();
    let key = ("DatabaseServer".to_owned(), "platform".to_owned(), "main".to_owned());
    assert_eq!(writer.statuses.borrow()[&key]["conditions"][0]["reason"], "SecretNotAllowed");
}

/// A pass with `status` as last written.
fn pass_after(
    writer: &FakeCluster,
    server_state: &FakeServer,
    database: &Database,
    status: Option<&crate::api::database::DatabaseStatus>,
) -> PassOutcome {
    DatabasePass {
        database,
        server: Some(&server(json!({}))),
        writer,
        sessions: server_state,
        allow_cross_namespace_secrets: false,
        status,
        reset_done: false,
        backups: &settings(),
        now: time(),
    }
    .run()
    .now_or_never()
    .expect("the fakes never suspend")
}

#[test]
fn a_rename_after_provisioning_is_refused_and_changes_nothing() {
    let db = database(json!({}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    let first = pass_after(&writer, &server_state, &db, None);
    let status = first.status.expect("provisioned");
    let statements = server_state.writes().len();
    for (field, name) in [("databaseName", "renamed"), ("username", "someone")] {
        let renamed = database(json!({ field: name }), &["dbqo.dev/finalizer"]);
        let outcome = pass_after(&writer, &server_state, &renamed, Some(&status));
        assert_eq!(ready_reason(&outcome), (Some(Phase::Error), "ImmutableField".into()));
        let now = outcome.status.unwrap();
        assert_eq!(now.database_name.as_deref(), Some("orders"), "the provisioned names stay");
        assert!(now.conditions[0].message.contains(&format!("spec.{field}")));
        assert_eq!(server_state.writes().len(), statements, "{field}: a statement ran");
    }
    let state = server_state.0.borrow();
    assert_eq!((state.databases.len(), state.users.len()), (1, 1));
    drop(state);
    // Deleting the renamed Database drops what was provisioned, not the new name.
    let renamed = deleting(&database(
        json!({"databaseName": "renamed", "deletionPolicy": "Delete"}),
        &["dbqo.dev/finalizer"],
    ));
    pass_after(&writer, &server_state, &renamed, Some(&status));
    assert!(server_state.0.borrow().databases.is_empty(), "orders is dropped");
}

#[test]
fn names_refused_as_taken_may_still_change() {
    let db = database(json!({}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    server_state.state().databases.push("orders".into());
    let refused = pass_after(&writer, &server_state, &db, None);
    assert_eq!(ready_reason(&refused), (Some(Phase::Error), "AlreadyExists".into()));
    let status = refused.status.unwrap();
    assert_eq!(status.database_name, None, "no names before the records give them");
    let renamed = database(json!({"databaseName": "orders2"}), &["dbqo.dev/finalizer"]);
    let outcome = pass_after(&writer, &server_state, &renamed, Some(&status));
    assert_eq!(ready_reason(&outcome), (Some(Phase::Ready), "Ready".into()));
}

#[test]
fn the_first_provisioning_is_shown_as_creating() {
    let db = database(json!({}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    let outcome = pass_after(&writer, &server_state, &db, None);
    let phases: Vec<Json> =
        writer.status_writes.borrow().iter().map(|s| s["phase"].clone()).collect();
    assert_eq!(phases, vec![json!("Creating"), json!("Ready")]);
    assert_eq!(ready_reason(&outcome), (Some(Phase::Ready), "Ready".into()));
}

#[test]
fn privileges_changed_by_hand_are_restored_and_announced() {
    let db = database(json!({}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    let first = pass_after(&writer, &server_state, &db, None);
    let converged = server_state.writes().len();
    pass_after(&writer, &server_state, &db, first.status.as_ref());
    assert_eq!(server_state.writes().len(), converged, "nothing to restore");
    server_state.state().held.insert("orders".into(), "SELECT".into());
    pass_after(&writer, &server_state, &db, first.status.as_ref());
    assert!(server_state.writes()[converged..].iter().any(|s| s.starts_with("GRANT")));
    assert!(announced(&writer, "PrivilegesRestored", true));
    assert!(!announced(&writer, "PrivilegesChanged", false));
}

#[test]
fn a_database_dropped_by_hand_is_created_again_with_its_password() {
    let db = database(json!({}), &["dbqo.dev/finalizer"]);
    let (writer, server_state) = (cluster(&db), FakeServer::default());
    let first = pass_after(&writer, &server_state, &db, None);
    let password = |w: &FakeCluster| {
        futures_util::FutureExt::now_or_never(crate::kube_api::Cluster::read_secret(
            w,
            "team",
            "orders-credentials",
        ))
        .unwrap()
        .unwrap()
        .unwrap()
        .data["password"]
            .clone()
    };
    let before = password(&writer);
    {
        let mut state = server_state.state();
        state.databases.clear();
        state.users.clear();
        state.held.clear();
    }
    let outcome = pass_after(&writer, &server_state, &db, first.status.as_ref());
    assert_eq!(ready_reason(&outcome), (Some(Phase::Ready), "Ready".into()));
    let state = server_state.0.borrow();
    assert_eq!((state.databases.len(), state.users.len()), (1, 1));
    drop(state);
    assert_eq!(password(&writer), before, "the Secret's password is the user's again");
    assert!(announced(&writer, "Recreated", true));
    assert!(!announced(&writer, "PrivilegesRestored", true));
}
