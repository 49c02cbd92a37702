//! Status write-back (SPEC §4 step 7): the real deployment controller sets
//! status, the operator writes it to the row with bound parameters.

mod common;

use std::time::Duration;

use common::eventually;
use common::operator::{wait_for_condition, DbqrBuilder, Operator};
use serde_json::json;

/// Waits for the StatusWriteBack condition of `name` to report a failure;
/// returns its message.
async fn write_back_failure(client: &kube::Client, ns: &str, name: &str) -> String {
    wait_for_condition(client, ns, name, "StatusWriteBack=False/StatusWriteBackFailed").await
}

async fn setup(prefix: &str, schema: &str) -> (kube::Client, String, tokio_postgres::Client) {
    let s = common::operator::setup(prefix, schema).await;
    (s.client, s.namespace, s.db)
}

#[tokio::test]
async fn deployment_status_is_written_back_to_its_row() {
    let (client, ns, db) =
        setup("wb", include_str!("../examples/deployment-per-row/schema.sql")).await;
    let example: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../examples/deployment-per-row/dbqr.yaml")).unwrap();
    let operator = Operator::start(&[]);
    DbqrBuilder::new("apps", &operator)
        .query(example["spec"]["query"].as_str().unwrap())
        .template(example["spec"]["template"].as_str().unwrap())
        .set(
            "/statusUpdateQueryTemplate",
            json!(example["spec"]["statusUpdateQueryTemplate"].as_str().unwrap()),
        )
        .set("/pollInterval", json!("1h"))
        .create(&client, &ns)
        .await;
    // No kubelet runs here, so every replica the controller wants stays
    // unavailable. The controller fills the status in steps (replicas first,
    // unavailableReplicas later), so wait for the final values.
    let expected =
        vec![("web".to_string(), Some(0), Some(2)), ("worker".to_string(), Some(0), Some(1))];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let written = loop {
        let rows: Vec<(String, Option<i32>, Option<i32>)> = db
            .query("SELECT name, ready_replicas, unavailable_replicas FROM apps ORDER BY name", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if rows == expected || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(written, expected, "the final status, written back");
    wait_for_condition(&client, &ns, "apps", "StatusWriteBack=True/Written").await;
}

#[tokio::test]
async fn hostile_object_fields_are_written_back_as_data() {
    let schema = "CREATE TABLE notes (id int PRIMARY KEY, note text NOT NULL, echoed text, replicas int);
        INSERT INTO notes VALUES (1, $$'); DROP TABLE notes; -- \"quoted\" \\back\\slash O'Brien$$);";
    let (client, ns, db) = setup("inject", schema).await;
    let operator = Operator::start(&[]);
    let template = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: \"note-{{Row.id}}\"
  annotations:
    note: \"{{Row.note}}\"
spec:
  replicas: 1
  selector: {matchLabels: {app: \"note-{{Row.id}}\"}}
  template:
    metadata: {labels: {app: \"note-{{Row.id}}\"}}
    spec: {containers: [{name: c, image: busybox}]}
";
    DbqrBuilder::new("notes", &operator)
        .query("SELECT id, note FROM notes")
        .template(template)
        .set(
            "/statusUpdateQueryTemplate",
            json!("UPDATE notes SET echoed = {{Resource.metadata.annotations.note}}, replicas = {{Resource.status.replicas}} WHERE id = {{Row.id}}"),
        )
        .set("/pollInterval", json!("1h"))
        .create(&client, &ns)
        .await;
    let (note, echoed) =
        eventually(Duration::from_secs(30), "the annotation written back", || async {
            let row = db
                .query_opt("SELECT note, echoed FROM notes WHERE id = 1 AND replicas = 1", &[])
                .await
                .ok()??;
            Some((row.get::<_, String>(0), row.get::<_, Option<String>>(1)?))
        })
        .await;
    assert_eq!(echoed, note, "written verbatim, as data");
    assert!(
        echoed.contains("DROP TABLE")
            && echoed.contains("O'Brien")
            && echoed.contains("\\back\\slash")
    );
    let tables: i64 = db
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name = 'notes'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "the table survives");
}

#[tokio::test]
async fn a_status_template_with_two_statements_is_refused() {
    let (client, ns, _db) = setup("twostmt", "CREATE TABLE t (id int, x int);").await;
    let operator = Operator::start(&[]);
    DbqrBuilder::new("two", &operator)
        .query("SELECT 1 AS id")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"two-{{Row.id}}\"\n")
        .set("/statusUpdateQueryTemplate", json!("UPDATE t SET x = {{Row.id}}; DELETE FROM t"))
        .create(&client, &ns)
        .await;
    let message =
        wait_for_condition(&client, &ns, "two", "Synced=False/StatusTemplateInvalid").await;
    assert!(message.contains("exactly one statement"), "{message}");
    let raw = DbqrBuilder::new("raw", &operator)
        .query("SELECT 1 AS id")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"raw-{{Row.id}}\"\n")
        .set("/statusUpdateQueryTemplate", json!("UPDATE t SET x = {{{Row.id}}}"));
    raw.create(&client, &ns).await;
    let message =
        wait_for_condition(&client, &ns, "raw", "Synced=False/StatusTemplateInvalid").await;
    assert!(message.contains("bound as parameters"), "{message}");
    dbqo_testenv::reliability::record(
        "status-two-statements",
        &dbqo_testenv::reliability::Outcome::passed(1, 1, None),
    );
}

#[tokio::test]
async fn a_value_that_does_not_convert_is_a_clear_error() {
    let (client, ns, _db) = setup("convert", "CREATE TABLE t (id int, x int);").await;
    let operator = Operator::start(&[]);
    let template = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: \"conv-{{Row.id}}\"
spec:
  replicas: 1
  selector: {matchLabels: {app: conv}}
  template:
    metadata: {labels: {app: conv}}
    spec: {containers: [{name: c, image: busybox}]}
";
    DbqrBuilder::new("conv", &operator)
        .query("SELECT 1 AS id")
        .template(template)
        .set(
            "/statusUpdateQueryTemplate",
            json!("UPDATE t SET x = {{Resource.metadata.name}} WHERE id = {{Row.id}}"),
        )
        .create(&client, &ns)
        .await;
    let message = write_back_failure(&client, &ns, "conv").await;
    // Named by its condition; the value (the object's name) is not quoted.
    assert!(message.contains("invalid_text_representation (SQLSTATE 22P02"), "{message}");
    assert!(!message.contains("\"conv-1\""), "{message}");
    // Reconciliation is not blocked by it.
    wait_for_condition(&client, &ns, "conv", "Synced=True/Synced").await;
    dbqo_testenv::reliability::record(
        "status-type",
        &dbqo_testenv::reliability::Outcome::passed(1, 1, None),
    );
}

const APP_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: \"app-{{Row.id}}\"
spec:
  replicas: 1
  selector: {matchLabels: {app: \"app-{{Row.id}}\"}}
  template:
    metadata: {labels: {app: \"app-{{Row.id}}\"}}
    spec: {containers: [{name: c, image: busybox}]}
";

async fn replicas_column(db: &tokio_postgres::Client) -> Vec<Option<i32>> {
    db.query("SELECT replicas FROM apps ORDER BY id", &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

/// The status SQL fails (its column is missing) while the objects' status
/// no longer changes: the write-back is retried until it works. After an
/// operator restart every object's status is written once, so a row that
/// lost it while the operator was down gets it back.
#[tokio::test]
async fn failed_write_backs_are_retried_and_a_restart_writes_every_status_once() {
    let s = common::operator::setup(
        "wbretry",
        "CREATE TABLE apps (id int PRIMARY KEY); INSERT INTO apps VALUES (1), (2);",
    )
    .await;
    let id = common::unique("wbretry");
    let first = Operator::start_with_id(&id, &[]);
    DbqrBuilder::new("apps", &first)
        .query("SELECT id FROM apps ORDER BY id")
        .template(APP_DEPLOYMENT)
        .set(
            "/statusUpdateQueryTemplate",
            json!("UPDATE apps SET replicas = {{Resource.status.replicas}} WHERE id = {{Row.id}}"),
        )
        .set("/pollInterval", json!("1h"))
        .create(&s.client, &s.namespace)
        .await;
    let message = write_back_failure(&s.client, &s.namespace, "apps").await;
    assert!(message.contains("42703"), "{message}");
    s.db.batch_execute("ALTER TABLE apps ADD COLUMN replicas int").await.unwrap();
    eventually(Duration::from_secs(30), "the retried write-back", || async {
        (replicas_column(&s.db).await == [Some(1), Some(1)]).then_some(())
    })
    .await;
    wait_for_condition(&s.client, &s.namespace, "apps", "StatusWriteBack=True/Written").await;

    drop(first);
    s.db.batch_execute("UPDATE apps SET replicas = NULL").await.unwrap();
    let second = Operator::start_with_id(&id, &[]);
    eventually(Duration::from_secs(30), "every status written once after the restart", || async {
        (replicas_column(&s.db).await == [Some(1), Some(1)]).then_some(())
    })
    .await;
    assert_eq!(second.totals().await.passes, 1, "no pass but the first one ran");
}

/// Every write-back statement runs under the DBQR's statement timeout.
#[tokio::test]
async fn a_slow_write_back_is_cancelled_by_the_statement_timeout() {
    let (s, operator) = common::operator::setup_and_start(
        "wbslow",
        "CREATE TABLE apps (id int PRIMARY KEY, replicas int); INSERT INTO apps VALUES (1);",
    )
    .await;
    DbqrBuilder::new("apps", &operator)
        .query("SELECT id FROM apps")
        .template(APP_DEPLOYMENT)
        .set(
            "/statusUpdateQueryTemplate",
            json!("UPDATE apps SET replicas = {{Resource.status.replicas}} WHERE id = {{Row.id}} AND (SELECT true FROM pg_sleep(20))"),
        )
        .set("/database/statementTimeout", json!("500ms"))
        .create(&s.client, &s.namespace)
        .await;
    let message = write_back_failure(&s.client, &s.namespace, "apps").await;
    assert!(message.contains("57014"), "{message}");
}

/// `{{...}}` inside quotes would be text, not a parameter: refused when
/// the DBQR is read, with a message that says what to write instead.
#[tokio::test]
async fn an_expression_inside_quotes_is_refused_when_the_dbqr_is_read() {
    let (s, operator) =
        common::operator::setup_and_start("wbquoted", "CREATE TABLE apps (id int, note text);")
            .await;
    DbqrBuilder::new("apps", &operator)
        .query("SELECT 1 AS id")
        .template(APP_DEPLOYMENT)
        .set(
            "/statusUpdateQueryTemplate",
            json!("UPDATE apps SET note = 'ready: {{Resource.status.replicas}}' WHERE id = {{Row.id}}"),
        )
        .create(&s.client, &s.namespace)
        .await;
    let message =
        wait_for_condition(&s.client, &s.namespace, "apps", "Synced=False/StatusTemplateInvalid")
            .await;
    assert!(
        message.contains("inside a string literal") && message.contains("outside quotes"),
        "{message}"
    );
    assert_eq!(operator.totals().await.passes, 0, "an invalid spec runs no pass");
}
