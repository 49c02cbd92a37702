//! Day-2 controls (SPEC §12, issue 22): `spec.suspend` and the
//! `dbqo.dev/requested-at` annotation, each across an operator restart.
//!
//! A suspension is shown by what does not happen, so every test has a
//! witness: a DBQR on the same rows that is not suspended. Once the witness
//! has reacted to a change (or repaired a deleted object), the suspended one
//! would have too, had it been running.

mod common;

use std::time::Duration;

use common::eventually;
use common::operator::{configmaps, wait_for_condition, wait_for_listen, DbqrBuilder, Operator};
use dbqo::api::DatabaseQueryResource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

const SCHEMA: &str = "CREATE TABLE items (name text PRIMARY KEY, color text);
    INSERT INTO items VALUES ('a', 'red'), ('b', 'green');";

fn template(prefix: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{prefix}-{{{{Row.name}}}}\"\ndata:\n  color: \"{{{{Row.color}}}}\"\n"
    )
}

/// The `color` of each ConfigMap whose name starts with `prefix-`.
async fn colors(client: &kube::Client, ns: &str, prefix: &str) -> Vec<(String, String)> {
    configmaps(client, ns)
        .await
        .into_iter()
        .filter(|(name, _)| name.starts_with(&format!("{prefix}-")))
        .map(|(name, data)| (name, data.get("color").cloned().unwrap_or_default()))
        .collect()
}

async fn wait_for_colors(client: &kube::Client, ns: &str, prefix: &str, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> =
        want.iter().map(|(n, c)| (format!("{prefix}-{n}"), c.to_string())).collect();
    eventually(Duration::from_secs(30), &format!("{prefix}: {want:?}"), || async {
        (colors(client, ns, prefix).await == want).then_some(())
    })
    .await;
}

async fn merge_patch(client: &kube::Client, ns: &str, name: &str, patch: serde_json::Value) {
    Api::<DatabaseQueryResource>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch the DBQR");
}

async fn listen_connections(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE '%(listen)'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn a_suspended_dbqr_does_nothing_stays_suspended_after_a_restart_and_resumes_at_once() {
    let s = common::operator::setup("suspend", SCHEMA).await;
    let (client, ns, db) = (&s.client, s.namespace.as_str(), &s.db);
    db.batch_execute(&common::operator::trigger_sql("items", "items_changed")).await.unwrap();
    let mut operator = Operator::start(&[]);
    // The suspended one listens for changes (its LISTEN connection must go);
    // the witness polls every second and holds no LISTEN connection.
    DbqrBuilder::new("paused", &operator)
        .query("SELECT name, color FROM items ORDER BY name")
        .template(&template("paused"))
        .set("/changeDetection", json!({"mode": "notify", "channel": "items_changed"}))
        .create(client, ns)
        .await;
    DbqrBuilder::new("witness", &operator)
        .query("SELECT name, color FROM items ORDER BY name")
        .template(&template("witness"))
        .create(client, ns)
        .await;
    let both = [("a", "red"), ("b", "green")];
    wait_for_colors(client, ns, "paused", &both).await;
    wait_for_colors(client, ns, "witness", &both).await;
    wait_for_listen(db).await;

    merge_patch(client, ns, "paused", json!({"spec": {"suspend": true}})).await;
    let message = wait_for_condition(client, ns, "paused", "Synced=False/Suspended").await;
    assert!(message.contains("spec.suspend"), "{message}");
    eventually(Duration::from_secs(10), "the LISTEN connection closed", || async {
        (listen_connections(db).await == 0).then_some(())
    })
    .await;
    let dbqrs = Api::<DatabaseQueryResource>::namespaced(client.clone(), ns);
    let paused = dbqrs.get("paused").await.unwrap();
    let status = paused.status.clone().unwrap();
    assert_eq!(status.observed_generation, paused.metadata.generation);
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True", "Ready stands: the objects are in place");

    // A changed row, a new row and a deleted object: the witness takes all
    // three in; the suspended DBQR none.
    db.batch_execute(
        "UPDATE items SET color = 'blue' WHERE name = 'a'; INSERT INTO items VALUES ('c', 'black');",
    )
    .await
    .unwrap();
    let configmaps = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns);
    for name in ["paused-b", "witness-b"] {
        configmaps.delete(name, &DeleteParams::default()).await.unwrap();
    }
    let changed = [("a", "blue"), ("b", "green"), ("c", "black")];
    wait_for_colors(client, ns, "witness", &changed).await;
    assert_eq!(
        colors(client, ns, "paused").await,
        vec![("paused-a".to_owned(), "red".to_owned())],
        "no apply, no prune, no drift repair while suspended"
    );
    assert_eq!(listen_connections(db).await, 0);

    // After a restart it is still suspended, and writes nothing new.
    operator = operator.restart(&[]);
    db.batch_execute("UPDATE items SET color = 'white' WHERE name = 'c'").await.unwrap();
    wait_for_colors(client, ns, "witness", &[("a", "blue"), ("b", "green"), ("c", "white")]).await;
    assert_eq!(colors(client, ns, "paused").await.len(), 1);
    let after = dbqrs.get("paused").await.unwrap().status.unwrap();
    assert_eq!(after, status, "the same status: nothing written after the restart");

    // Resumed with an hour's poll interval: the pass runs at once.
    merge_patch(client, ns, "paused", json!({"spec": {"suspend": false, "pollInterval": "1h"}}))
        .await;
    wait_for_colors(client, ns, "paused", &[("a", "blue"), ("b", "green"), ("c", "white")]).await;
    wait_for_condition(client, ns, "paused", "Synced=True/Synced").await;
    wait_for_listen(db).await;
    drop(operator);
}

#[tokio::test]
async fn the_suspended_column_is_printed() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let client = common::kube_client().await;
    common::install_crd(&client).await;
    let crd = Api::<CustomResourceDefinition>::all(client)
        .get("databasequeryresources.dbqo.dev")
        .await
        .unwrap();
    let columns = crd.spec.versions[0].additional_printer_columns.clone().unwrap_or_default();
    assert!(
        columns.iter().any(|c| c.name == "Suspended" && c.json_path == ".spec.suspend"),
        "{columns:?}"
    );
}

#[tokio::test]
async fn requested_at_runs_a_pass_at_once_and_is_echoed_also_after_a_restart() {
    let s = common::operator::setup("requested", SCHEMA).await;
    let (client, ns, db) = (&s.client, s.namespace.as_str(), &s.db);
    let mut operator = Operator::start(&[]);
    // An hour between polls and no change detection: only a request can
    // bring a change in.
    DbqrBuilder::new("items", &operator)
        .query("SELECT name, color FROM items ORDER BY name")
        .template(&template("item"))
        .set("/pollInterval", json!("1h"))
        .create(client, ns)
        .await;
    wait_for_colors(client, ns, "item", &[("a", "red"), ("b", "green")]).await;
    let dbqrs = Api::<DatabaseQueryResource>::namespaced(client.clone(), ns);
    let handled = || async { dbqrs.get("items").await.ok()?.status?.last_handled_requested_at };

    let request =
        |value: &str| json!({"metadata": {"annotations": {"dbqo.dev/requested-at": value}}});
    db.batch_execute("UPDATE items SET color = 'blue' WHERE name = 'a'").await.unwrap();
    merge_patch(client, ns, "items", request("2026-12-03T10:00:00Z")).await;
    wait_for_colors(client, ns, "item", &[("a", "blue"), ("b", "green")]).await;
    eventually(Duration::from_secs(10), "the request echoed", || async {
        (handled().await? == "2026-12-03T10:00:00Z").then_some(())
    })
    .await;

    // After a restart (whose first pass runs at start), a new request.
    let since = common::operator::PassTotals::default();
    operator = operator.restart(&[]);
    operator.wait_for_passes(since, 1, Duration::from_secs(30)).await;
    db.batch_execute("UPDATE items SET color = 'white' WHERE name = 'b'").await.unwrap();
    merge_patch(client, ns, "items", request("2026-12-03T10:05:00Z")).await;
    wait_for_colors(client, ns, "item", &[("a", "blue"), ("b", "white")]).await;
    eventually(Duration::from_secs(10), "the second request echoed", || async {
        (handled().await? == "2026-12-03T10:05:00Z").then_some(())
    })
    .await;
    drop(operator);
}

const POLICIES: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"seed-{{Row.name}}\"\n  annotations:\n    dbqo.dev/apply: create-only\ndata:\n  color: \"{{Row.color}}\"\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"keep-{{Row.name}}\"\n  annotations:\n    dbqo.dev/prune: disabled\ndata:\n  color: \"{{Row.color}}\"\n";

async fn configmap(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Option<k8s_openapi::api::core::v1::ConfigMap> {
    Api::namespaced(client.clone(), ns).get_opt(name).await.unwrap()
}

fn managed(cm: &k8s_openapi::api::core::v1::ConfigMap) -> bool {
    cm.metadata.labels.as_ref().is_some_and(|l| l.contains_key("app.kubernetes.io/managed-by"))
}

async fn set_color_by_hand(client: &kube::Client, ns: &str, name: &str, color: &str) {
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"data": {"color": color}})))
        .await
        .unwrap();
}

#[tokio::test]
async fn create_only_objects_are_never_updated_and_prune_disabled_objects_are_detached() {
    let s = common::operator::setup("policies", SCHEMA).await;
    let (client, ns, db) = (&s.client, s.namespace.as_str(), &s.db);
    let mut operator = Operator::start(&[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name, color FROM items ORDER BY name")
        .template(POLICIES)
        .set("/pruneGuard", json!({"maxPrunePercent": 100}))
        .create(client, ns)
        .await;
    wait_for_colors(client, ns, "seed", &[("a", "red"), ("b", "green")]).await;
    wait_for_colors(client, ns, "keep", &[("a", "red"), ("b", "green")]).await;

    // A row change updates the ordinary object, not the create-only one;
    // a hand edit of each: only the ordinary one is repaired.
    db.batch_execute("UPDATE items SET color = 'blue' WHERE name = 'a'").await.unwrap();
    wait_for_colors(client, ns, "keep", &[("a", "blue"), ("b", "green")]).await;
    set_color_by_hand(client, ns, "seed-b", "by-hand").await;
    set_color_by_hand(client, ns, "keep-b", "by-hand").await;
    wait_for_colors(client, ns, "keep", &[("a", "blue"), ("b", "green")]).await;
    assert_eq!(
        colors(client, ns, "seed").await,
        [("seed-a".to_owned(), "red".to_owned()), ("seed-b".to_owned(), "by-hand".to_owned())]
    );

    // Missing, it is created again (from the row as it is now).
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .delete("seed-a", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_colors(client, ns, "seed", &[("a", "blue"), ("b", "by-hand")]).await;

    // After a restart, still never updated.
    operator = operator.restart(&[]);
    db.batch_execute("UPDATE items SET color = 'white'").await.unwrap();
    wait_for_colors(client, ns, "keep", &[("a", "white"), ("b", "white")]).await;
    assert_eq!(
        colors(client, ns, "seed").await,
        [("seed-a".to_owned(), "blue".to_owned()), ("seed-b".to_owned(), "by-hand".to_owned())]
    );

    // A row goes: its create-only object is pruned, its prune-disabled one
    // detached (no owner labels) and handed back should the row return.
    db.batch_execute("DELETE FROM items WHERE name = 'b'").await.unwrap();
    eventually(Duration::from_secs(30), "seed-b pruned and keep-b detached", || async {
        let detached = configmap(client, ns, "keep-b").await.is_some_and(|cm| !managed(&cm));
        (configmap(client, ns, "seed-b").await.is_none() && detached).then_some(())
    })
    .await;
    let keep_b = configmap(client, ns, "keep-b").await.unwrap();
    assert_eq!(
        keep_b.metadata.annotations.unwrap().get("dbqo.dev/adopt").map(String::as_str),
        Some(format!("{ns}/items").as_str())
    );
    db.batch_execute("INSERT INTO items VALUES ('b', 'green')").await.unwrap();
    eventually(Duration::from_secs(30), "keep-b taken back", || async {
        let cm = configmap(client, ns, "keep-b").await?;
        (managed(&cm) && cm.data?.get("color")? == "green").then_some(())
    })
    .await;
    wait_for_condition(client, ns, "items", "Ready=True/Ready").await;

    // The DBQR goes (deletionPolicy Delete): the create-only objects with
    // it, the prune-disabled ones stay, detached.
    Api::<DatabaseQueryResource>::namespaced(client.clone(), ns)
        .delete("items", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the DBQR gone", || async {
        let dbqrs = Api::<DatabaseQueryResource>::namespaced(client.clone(), ns);
        dbqrs.get_opt("items").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(colors(client, ns, "seed").await.is_empty());
    for name in ["keep-a", "keep-b"] {
        let cm = configmap(client, ns, name).await.expect("kept");
        assert!(!managed(&cm), "{name} detached");
        assert!(cm.metadata.owner_references.unwrap_or_default().is_empty());
    }
    drop(operator);
}

#[tokio::test]
async fn a_misspelt_policy_fails_its_row_clearly() {
    let s = common::operator::setup("badpolicy", SCHEMA).await;
    let operator = Operator::start(&[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name, color FROM items ORDER BY name")
        .template(&POLICIES.replace("create-only", "createonly"))
        .create(&s.client, &s.namespace)
        .await;
    let message =
        wait_for_condition(&s.client, &s.namespace, "items", "Synced=False/InvalidObject").await;
    assert!(message.contains("dbqo.dev/apply may only be create-only"), "{message}");
    assert!(colors(&s.client, &s.namespace, "seed").await.is_empty());
}

const WAVES: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: \"app-{{Row.name}}\"
spec:
  replicas: {{Row.replicas}}
  selector:
    matchLabels: {app: \"app-{{Row.name}}\"}
  template:
    metadata:
      labels: {app: \"app-{{Row.name}}\"}
    spec:
      containers:
        - name: app
          image: registry.invalid/app:1
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: \"after-{{Row.name}}\"
  annotations:
    dbqo.dev/wave: \"1\"
data:
  ready: \"yes\"
";

/// A row's later wave waits for its earlier wave to be Ready: a Deployment
/// of one replica never becomes available here (the test cluster runs no
/// kubelet), one of zero replicas does once the deployment controller has
/// seen it. The wave moves on by the watch, not by the hourly poll.
#[tokio::test]
async fn a_later_wave_waits_for_the_earlier_one_to_be_ready_across_a_restart() {
    let s = common::operator::setup(
        "waves",
        "CREATE TABLE apps (name text PRIMARY KEY, replicas int, ready boolean);
         ALTER TABLE apps ADD COLUMN row_ready boolean;
         INSERT INTO apps VALUES ('shop', 1, NULL, NULL);",
    )
    .await;
    let (client, ns, db) = (&s.client, s.namespace.as_str(), &s.db);
    let mut operator = Operator::start(&[]);
    DbqrBuilder::new("apps", &operator)
        .query("SELECT name, replicas FROM apps ORDER BY name")
        .template(WAVES)
        .set("/pollInterval", json!("1h"))
        .set(
            "/statusUpdateQueryTemplate",
            json!("UPDATE apps SET ready = {{Ready}}, row_ready = {{RowReady}} WHERE name = {{Row.name}}"),
        )
        .create(client, ns)
        .await;
    let message = wait_for_condition(client, ns, "apps", "Synced=False/WaitingForWave").await;
    assert!(message.contains("1 rows wait"), "{message}");
    let dbqrs = Api::<DatabaseQueryResource>::namespaced(client.clone(), ns);
    let waiting = || async { dbqrs.get("apps").await.unwrap().status.unwrap().waiting_rows };
    assert_eq!(waiting().await, Some(1));
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns);
    assert!(deployments.get_opt("app-shop").await.unwrap().is_some(), "wave 0 applied");
    // (Ready, RowReady) as written back to the row.
    let ready = || async {
        let row = db.query_one("SELECT ready, row_ready FROM apps WHERE name = 'shop'", &[]).await;
        let row = row.unwrap();
        (row.get::<_, Option<bool>>(0), row.get::<_, Option<bool>>(1))
    };
    eventually(Duration::from_secs(30), "Ready and RowReady false written back", || async {
        (ready().await == (Some(false), Some(false))).then_some(())
    })
    .await;

    // After a restart the wave is still held.
    let since = common::operator::PassTotals::default();
    operator = operator.restart(&[]);
    operator.wait_for_passes(since, 1, Duration::from_secs(30)).await;
    assert!(configmap(client, ns, "after-shop").await.is_none(), "wave 1 still waits");
    assert_eq!(waiting().await, Some(1));

    // Zero replicas: the deployment controller reports it rolled out, and
    // wave 1 follows from the watch (the poll is an hour away).
    db.batch_execute("UPDATE apps SET replicas = 0").await.unwrap();
    merge_patch(
        client,
        ns,
        "apps",
        json!({"metadata": {"annotations": {"dbqo.dev/requested-at": "1"}}}),
    )
    .await;
    eventually(Duration::from_secs(15), "wave 1 applied", || async {
        configmap(client, ns, "after-shop").await.map(|_| ())
    })
    .await;
    wait_for_condition(client, ns, "apps", "Synced=True/Synced").await;
    assert_eq!(waiting().await, None);
    eventually(Duration::from_secs(30), "Ready and RowReady true written back", || async {
        (ready().await == (Some(true), Some(true))).then_some(())
    })
    .await;
    drop(operator);
}
