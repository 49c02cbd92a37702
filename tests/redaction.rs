//! No row data or secrets in conditions, Events or logs at info (SPEC §10):
//! a marker value sits in a row that fails a cast, in a row that breaks a
//! unique constraint, in a label value the API server rejects and in a
//! password that breaks the connection string. Each failure is reported
//! with its reason; the marker appears nowhere a user or a log reader sees.

mod common;

use std::collections::BTreeMap;

use common::operator::{create_secret, wait_for_condition, DbqrBuilder, Operator};
use dbqo::api::DatabaseQueryResource;
use kube::api::{Api, ListParams};
use serde_json::{json, Value};

const MARKER: &str = "M4RKzq";

#[tokio::test]
async fn row_values_and_passwords_never_reach_conditions_events_or_info_logs() {
    let schema = format!(
        "CREATE TABLE t (value text);
         INSERT INTO t VALUES ('{MARKER}-cast');
         CREATE TABLE u (email text UNIQUE);
         CREATE TABLE src (email text);
         INSERT INTO src VALUES ('{MARKER}-dup'), ('{MARKER}-dup');
         CREATE TABLE l (v text);
         INSERT INTO l VALUES ('{MARKER} not a label!');
         CREATE FUNCTION chatty(v text) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN RAISE NOTICE 'looking at %', v; RETURN v; END $$;"
    );
    let s = common::operator::setup("redact", &schema).await;
    let (client, ns) = (&s.client, s.namespace.as_str());
    let operator = Operator::start(&[]);
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.id}}\"\n";

    // 22P02: invalid input syntax for type integer: "<marker>".
    DbqrBuilder::new("cast", &operator)
        .query("SELECT value::int AS id FROM t")
        .template(cm)
        .create(client, ns)
        .await;
    // 23505, whose DETAIL is "Key (email)=(<marker>) already exists".
    DbqrBuilder::new("unique", &operator)
        .query("INSERT INTO u SELECT email FROM src RETURNING email AS id")
        .set("/readOnly", json!(false))
        .template(cm)
        .create(client, ns)
        .await;
    // 422: metadata.labels: Invalid value: "<marker> not a label!".
    DbqrBuilder::new("label", &operator)
        .query("SELECT 1 AS id, v FROM l")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"label-{{Row.id}}\"\n  labels:\n    tier: \"{{Row.v}}\"\n")
        .create(client, ns)
        .await;
    // A user function that raises NOTICEs quoting the row (the pass works).
    DbqrBuilder::new("notice", &operator)
        .query("SELECT 1 AS id, chatty(value) AS v FROM t")
        .template(cm)
        .create(client, ns)
        .await;
    // A password with a space, unquoted: the connection string breaks right at it.
    let env = common::shared();
    let uri = format!(
        "host={} port={} user={} password=pw {MARKER}-secret dbname=postgres",
        env.postgres.host, env.postgres.port, env.postgres.user
    );
    create_secret(client, ns, "uri", BTreeMap::from([("uri", uri)])).await;
    DbqrBuilder::new("password", &operator)
        .secret("uri")
        .set("/database/connectionSecretRef/uriKey", json!("uri"))
        .template(cm)
        .create(client, ns)
        .await;

    wait_for_condition(client, ns, "notice", "Ready=True/Ready").await;
    let cast = wait_for_condition(client, ns, "cast", "Synced=False/QueryFailed").await;
    assert!(cast.contains("invalid_text_representation (SQLSTATE 22P02"), "{cast}");
    let unique = wait_for_condition(client, ns, "unique", "Synced=False/QueryFailed").await;
    assert!(unique.contains("unique_violation (SQLSTATE 23505"), "{unique}");
    let label = wait_for_condition(client, ns, "label", "Synced=False/Invalid").await;
    assert!(label.contains("label-1"), "names the object: {label}");
    let password =
        wait_for_condition(client, ns, "password", "DatabaseConnected=False/SecretInvalid").await;
    assert!(password.contains("quote values"), "{password}");

    // Every condition of every DBQR, every Event, every log line at info or above.
    let dbqrs = Api::<DatabaseQueryResource>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let conditions = serde_json::to_string(
        &dbqrs.items.iter().map(|d| &d.status.as_ref().unwrap().conditions).collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!conditions.contains(MARKER), "{conditions}");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(events.items.len() >= 4, "an Event per failure: {}", events.items.len());
    let events = serde_json::to_string(&events.items).unwrap();
    assert!(!events.contains(MARKER), "{events}");
    let log = operator.log();
    let loud: Vec<&str> = log
        .lines()
        .filter(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|entry| {
                ["INFO", "WARN", "ERROR"].contains(&entry["level"].as_str().unwrap_or(""))
            })
        })
        .collect();
    assert!(!loud.is_empty());
    for line in loud {
        assert!(!line.contains(MARKER), "{line}");
    }
    dbqo_testenv::reliability::record(
        "row-values-redacted",
        &dbqo_testenv::reliability::Outcome::passed(1, 1, None),
    );
}

/// A jsonb object rendered directly by `{{expr}}` used to land in the
/// manifest as the text `[object]`; now its row fails, naming the
/// expression and suggesting `toJson`, and the other rows are applied.
#[tokio::test]
async fn a_json_object_rendered_directly_fails_its_row_naming_the_expression() {
    let schema = format!(
        "CREATE TABLE j (id int, obj jsonb);
         INSERT INTO j VALUES (1, '\"plain\"'), (2, '{{\"k\": \"{MARKER}\"}}');"
    );
    let s = common::operator::setup("structured", &schema).await;
    let operator = Operator::start(&[]);
    DbqrBuilder::new("json", &operator)
        .query("SELECT id, obj FROM j ORDER BY id")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"j-{{Row.id}}\"\ndata:\n  obj: \"{{Row.obj}}\"\n")
        .create(&s.client, &s.namespace)
        .await;
    let message =
        wait_for_condition(&s.client, &s.namespace, "json", "Synced=False/RenderFailed").await;
    assert!(
        message.contains("{{Row.obj}} is a JSON object") && message.contains("toJson Row.obj"),
        "{message}"
    );
    assert!(!message.contains(MARKER), "{message}");
    let cms = common::operator::wait_for_configmaps(&s.client, &s.namespace, &["j-1"]).await;
    assert_eq!(cms["j-1"]["obj"], "plain");
}
