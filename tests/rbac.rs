//! What the operator does when RBAC refuses it: it runs as a user of its
//! own (the admin impersonating a fresh name), granted by each test exactly
//! what it should have.
//! A refused clean-up is reported and completes once allowed; a refused
//! status write is retried until it lands.

mod common;

use std::time::Duration;

use common::eventually;
use common::operator::{wait_for_condition, wait_for_configmaps, DbqrBuilder, Operator};
use dbqo::api::DatabaseQueryResource;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::{
    api::{Api, DeleteParams, PostParams},
    Client,
};
use serde_json::{json, Value};

const CM: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.id}}\"\ndata:\n  v: \"{{Row.id}}\"\n";

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// Grants `user` `rules` through a ClusterRole named `name`.
async fn grant(client: &Client, user: &str, name: &str, rules: Vec<Value>) {
    let role: ClusterRole =
        serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone()).create(&PostParams::default(), &role).await.unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// What the operator needs for ConfigMap DBQRs, with or without deleting
/// ConfigMaps and writing DBQR status.
fn operator_rules(configmap_delete: bool, status: bool) -> Vec<Value> {
    let mut configmap_verbs = vec!["get", "list", "watch", "create", "patch", "update"];
    if configmap_delete {
        configmap_verbs.push("delete");
    }
    let mut rules = vec![
        rule(
            &["dbqo.dev"],
            &["databasequeryresources"],
            &["get", "list", "watch", "patch", "update"],
        ),
        rule(&[""], &["configmaps"], &configmap_verbs),
        rule(&[""], &["secrets"], &["get", "list", "watch"]),
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
    ];
    if status {
        rules.push(rule(&["dbqo.dev"], &["databasequeryresources/status"], &["patch", "update"]));
    }
    rules
}

/// The operator as `user` (who has no rights but what a test grants),
/// allowed to write ConfigMaps only.
fn limited_operator(user: &str) -> Operator {
    Operator::start_on(
        &common::impersonating_kubeconfig(user),
        &common::unique("limited"),
        &["--allowed-kinds", "ConfigMap"],
    )
}

/// The operator may not delete ConfigMaps: deleting the DBQR reports
/// `CleanupBlocked` (reason Forbidden) and an Event, keeps the DBQR, and
/// completes once the permission is granted.
#[tokio::test]
async fn a_clean_up_without_permission_is_reported_and_completes_once_allowed() {
    let s = common::operator::setup(
        "forbidden",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);",
    )
    .await;
    let user = common::unique("dbqo-limited");
    grant(&s.client, &user, &user, operator_rules(false, true)).await;
    let operator = limited_operator(&user);
    DbqrBuilder::new("users", &operator)
        .query("SELECT id FROM t")
        .template(CM)
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["cm-1", "cm-2"]).await;

    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(s.client.clone(), &s.namespace);
    dbqrs.delete("users", &DeleteParams::default()).await.unwrap();
    let message =
        wait_for_condition(&s.client, &s.namespace, "users", "CleanupBlocked=True/Forbidden").await;
    assert!(message.contains("ConfigMap cm-"), "{message}");
    eventually(Duration::from_secs(10), "a Forbidden event", || async {
        let reasons = common::operator::event_reasons(&s.client, &s.namespace).await;
        reasons.iter().any(|r| r == "Forbidden").then_some(())
    })
    .await;
    assert_eq!(common::operator::configmaps(&s.client, &s.namespace).await.len(), 2);

    grant(
        &s.client,
        &user,
        &format!("{user}-delete"),
        vec![rule(&[""], &["configmaps"], &["delete"])],
    )
    .await;
    eventually(Duration::from_secs(60), "the DBQR to be gone", || async {
        dbqrs.get_opt("users").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(common::operator::configmaps(&s.client, &s.namespace).await.is_empty());
}

/// The status subresource is refused at first. With the full poll an hour
/// away, only a retried patch can bring the status once it is allowed.
#[tokio::test]
async fn a_refused_status_write_is_retried_until_it_lands() {
    let s = common::operator::setup(
        "statusretry",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);",
    )
    .await;
    let user = common::unique("dbqo-limited");
    grant(&s.client, &user, &user, operator_rules(true, false)).await;
    let operator = limited_operator(&user);
    DbqrBuilder::new("users", &operator)
        .query("SELECT id FROM t")
        .template(CM)
        .set("/pollInterval", json!("1h"))
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["cm-1"]).await;
    // The operator counts the refusal (the API server's request metrics
    // do not: the refusal comes before them).
    eventually(Duration::from_secs(10), "a refused status write", || async {
        let text = common::http_get(&operator.http_address("metrics").await, "/metrics").await?.1;
        let failed = common::metric_sample(&text, "dbqo_status_writes_total{result=\"failure\"}");
        (failed? >= 1.0).then_some(())
    })
    .await;
    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(s.client.clone(), &s.namespace);
    assert!(dbqrs.get("users").await.unwrap().status.is_none());

    grant(
        &s.client,
        &user,
        &format!("{user}-status"),
        vec![rule(&["dbqo.dev"], &["databasequeryresources/status"], &["patch", "update"])],
    )
    .await;
    wait_for_condition(&s.client, &s.namespace, "users", "Ready=True/Ready").await;
    assert_eq!(operator.totals().await.passes, 1, "the status came from a retry, not a pass");
}

/// The finalizer cannot be added at first (no `patch` on DBQRs). No event
/// comes to try again, so only a retry of its own can start the DBQR once
/// the permission is granted.
#[tokio::test]
async fn a_refused_finalizer_is_retried_until_it_lands() {
    let s = common::operator::setup(
        "finalizerretry",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);",
    )
    .await;
    let user = common::unique("dbqo-limited");
    let mut rules = operator_rules(true, true);
    rules[0] = rule(&["dbqo.dev"], &["databasequeryresources"], &["get", "list", "watch"]);
    grant(&s.client, &user, &user, rules).await;
    let operator = limited_operator(&user);
    DbqrBuilder::new("users", &operator)
        .query("SELECT id FROM t")
        .template(CM)
        .create(&s.client, &s.namespace)
        .await;
    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(s.client.clone(), &s.namespace);
    assert!(dbqrs.get("users").await.unwrap().metadata.finalizers.is_none());

    grant(
        &s.client,
        &user,
        &format!("{user}-patch"),
        vec![rule(&["dbqo.dev"], &["databasequeryresources"], &["patch", "update"])],
    )
    .await;
    wait_for_configmaps(&s.client, &s.namespace, &["cm-1"]).await;
    let finalizers = dbqrs.get("users").await.unwrap().metadata.finalizers;
    assert_eq!(finalizers, Some(vec![dbqo::api::FINALIZER.to_owned()]));
}
