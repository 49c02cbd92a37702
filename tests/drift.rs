//! Watch-based drift repair and the cost of a steady state, measured by the
//! API server's own request counters.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::operator::{
    create_secret, secret_keys, wait_for_condition, wait_for_configmaps, DbqrBuilder, Operator,
    PassTotals,
};
use common::{eventually, kube_client, request_counts, RequestCounts};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

const ITEM_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.id}}\"\ndata:\n  value: \"{{Row.value}}\"\n";

#[tokio::test]
async fn deleted_or_edited_objects_are_repaired_within_two_seconds() {
    let client = kube_client().await;
    common::install_crd(&client).await;
    let ns = common::namespace(&client, "drift").await;
    let url = common::database("drift").await;
    common::connect(&url)
        .await
        .batch_execute("CREATE TABLE items (id int, value text); INSERT INTO items VALUES (1, 'one'), (2, 'two');")
        .await
        .unwrap();
    create_secret(&client, &ns, "db", secret_keys(&url)).await;
    let operator = Operator::start(&[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT id, value FROM items")
        .template(ITEM_CM)
        .set("/pollInterval", json!("1h"))
        .create(&client, &ns)
        .await;
    wait_for_configmaps(&client, &ns, &["item-1", "item-2"]).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    cms.delete("item-1", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(2), "item-1 to come back", || async {
        cms.get_opt("item-1").await.ok()?.filter(|cm| cm.metadata.deletion_timestamp.is_none())
    })
    .await;

    let edit = json!({ "data": { "value": "tampered", "extra": "kept" } });
    cms.patch("item-2", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    let repaired = eventually(Duration::from_secs(2), "item-2's value to be reverted", || async {
        let data = cms.get("item-2").await.ok()?.data?;
        (data.get("value")? == "two").then_some(data)
    })
    .await;
    // Fields the operator does not manage are left alone.
    assert_eq!(repaired.get("extra").map(String::as_str), Some("kept"));

    // A new spec starts a new actor; the old one, stopping, must not
    // unsubscribe its successor from drift notices.
    let dbqrs: Api<dbqo::api::DatabaseQueryResource> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"spec": {"template": ITEM_CM.replace("{{Row.value}}", "v2-{{Row.value}}")}});
    dbqrs.patch("items", &PatchParams::default(), &Patch::Merge(&spec)).await.unwrap();
    eventually(Duration::from_secs(10), "the new spec applied", || async {
        (cms.get("item-1").await.ok()?.data?.get("value")? == "v2-one").then_some(())
    })
    .await;
    cms.delete("item-1", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(2), "item-1 back under the new actor", || async {
        cms.get_opt("item-1").await.ok()?.filter(|cm| cm.metadata.deletion_timestamp.is_none())
    })
    .await;
}

/// The requests of `verbs` on `resources` made between the two readings,
/// by (verb, resource); empty when there were none.
fn delta(
    before: &RequestCounts,
    after: &RequestCounts,
    verbs: &[&str],
    resources: &[&str],
) -> BTreeMap<(String, String), f64> {
    after
        .iter()
        .filter(|((verb, resource), _)| {
            verbs.contains(&verb.as_str()) && resources.contains(&resource.as_str())
        })
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

/// 200 converged objects, a full poll every 10 s, 60 s of nothing changing:
/// not one write and not one per-object read reaches the API server.
#[tokio::test]
async fn a_steady_state_costs_no_writes_and_no_object_reads() {
    let ns = "idle";
    let (control_plane, client, kubeconfig) = common::private_cluster(ns).await;
    let url = common::database("idle").await;
    common::connect(&url)
        .await
        .batch_execute("CREATE TABLE items AS SELECT i AS id, 'v' || i AS value FROM generate_series(1, 200) i")
        .await
        .unwrap();
    create_secret(&client, ns, "db", secret_keys(&url)).await;
    let operator = Operator::start_on(&kubeconfig, &common::unique("idle"), &[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT id, value FROM items")
        .template(ITEM_CM)
        .set("/pollInterval", json!("10s"))
        .create(&client, ns)
        .await;
    wait_for_condition(&client, ns, "items", "Ready=True/Ready").await;
    eventually(Duration::from_secs(60), "200 configmaps", || async {
        (common::operator::configmaps(&client, ns).await.len() == 200).then_some(())
    })
    .await;
    // Let the status and event writes of convergence land before measuring.
    operator
        .wait_for_pass(PassTotals::default(), "a pass that skips all 200", |p| p.converged(200))
        .await;

    let passes_before = operator.totals().await;
    let before = request_counts(&client).await;
    // Six full polls, 10 s apart: a minute of nothing changing.
    operator.wait_for_passes(passes_before, 6, Duration::from_secs(90)).await;
    let after = request_counts(&client).await;
    let idle = operator.totals().await.since(&passes_before);
    assert!(idle.converged(200), "every idle pass skipped all objects: {idle:?}");

    let writes = ["POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION"];
    let ours = ["configmaps", "databasequeryresources", "events"];
    assert_eq!(
        delta(&before, &after, &writes, &ours),
        BTreeMap::new(),
        "write requests while idle"
    );
    assert_eq!(
        delta(&before, &after, &["GET", "LIST"], &["configmaps", "secrets"]),
        BTreeMap::new(),
        "object and Secret reads while idle"
    );
    drop(control_plane);
}

/// One row, five kinds, each with fields the API server stores in another
/// form or fills in itself.
const FIVE_KINDS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: "cm-{{Row.id}}"
  annotations: {}
data:
  value: "{{Row.value}}"
---
apiVersion: v1
kind: Secret
metadata:
  name: "secret-{{Row.id}}"
data:
  encoded: "dmFsdWU="
stringData:
  password: "pw-{{Row.id}}"
---
apiVersion: v1
kind: Service
metadata:
  name: "svc-{{Row.id}}"
spec:
  selector:
    app: "app-{{Row.id}}"
  ports:
  - port: 80
    targetPort: 8080
    protocol: TCP
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: "app-{{Row.id}}"
spec:
  replicas: 2
  selector:
    matchLabels:
      app: "app-{{Row.id}}"
  template:
    metadata:
      labels:
        app: "app-{{Row.id}}"
    spec:
      containers:
      - name: c
        image: busybox
        env:
        - name: VALUE
          value: "{{Row.value}}"
        ports:
        - containerPort: 8080
        resources:
          limits:
            cpu: 1000m
            memory: 1024Mi
          requests:
            cpu: "0.5"
---
apiVersion: batch/v1
kind: Job
metadata:
  name: "job-{{Row.id}}"
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: c
        image: busybox
"#;

/// The five kinds of [`FIVE_KINDS`], as `apiserver_request_total` names them.
const FIVE_RESOURCES: [&str; 5] = ["configmaps", "secrets", "services", "deployments", "jobs"];

/// Converged objects of five kinds, one of them with a list another field
/// manager appended to; the operator restarts; its passes send nothing and
/// read no object, and drift is still repaired within two seconds.
#[tokio::test]
async fn after_a_restart_a_steady_state_costs_no_writes_and_no_reads() {
    let ns = "restart";
    let (control_plane, client, kubeconfig) = common::private_cluster(ns).await;
    let url = common::database("restart").await;
    common::connect(&url)
        .await
        .batch_execute(
            "CREATE TABLE items AS SELECT i AS id, 'v' || i AS value FROM generate_series(1, 3) i",
        )
        .await
        .unwrap();
    create_secret(&client, ns, "db", secret_keys(&url)).await;
    let id = common::unique("restart");
    let first = Operator::start_on(&kubeconfig, &id, &[]);
    DbqrBuilder::new("items", &first)
        .query("SELECT id, value FROM items ORDER BY id")
        .template(FIVE_KINDS)
        .set("/pollInterval", json!("3s"))
        .create(&client, ns)
        .await;
    first
        .wait_for_pass(PassTotals::default(), "a pass that skips all 15 objects", |p| {
            p.converged(15)
        })
        .await;

    // Another manager appends to a list the operator renders (the container's env).
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), ns);
    let extra = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app-1"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "env": [{"name": "EXTRA", "value": "x"}]}]}}}});
    deployments
        .patch("app-1", &PatchParams::apply("someone-else"), &Patch::Apply(&extra))
        .await
        .unwrap();
    let since = first.totals().await;
    first.wait_for_pass(since, "a converged pass after the append", |p| p.converged(15)).await;
    drop(first);

    let second = Operator::start_on(&kubeconfig, &id, &[]);
    second.wait_for_pass(PassTotals::default(), "the first pass after the restart", |_| true).await;
    let first_passes = second.totals().await;
    let before = request_counts(&client).await;
    second.wait_for_passes(first_passes, 3, Duration::from_secs(30)).await;
    let after = request_counts(&client).await;
    let passes = second.totals().await;
    assert!(
        passes.converged(15),
        "every pass after the restart skipped all 15 objects: {passes:?}"
    );
    let writes = ["POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION"];
    let mut watched = FIVE_RESOURCES.to_vec();
    watched.extend(["databasequeryresources", "events"]);
    assert_eq!(
        delta(&before, &after, &writes, &watched),
        BTreeMap::new(),
        "writes after the restart"
    );
    assert_eq!(
        delta(&before, &after, &["GET", "LIST"], &FIVE_RESOURCES),
        BTreeMap::new(),
        "object and Secret reads after the restart"
    );
    let env =
        deployments.get("app-1").await.unwrap().spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
    assert_eq!(env.len(), 2, "the other manager's entry stays: {env:?}");

    // Drift is still repaired at once.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.patch(
        "cm-2",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"value": "edited"}})),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(2), "cm-2 reverted", || async {
        (cms.get("cm-2").await.ok()?.data?.get("value")? == "v2").then_some(())
    })
    .await;
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), ns);
    services.delete("svc-3", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(2), "svc-3 back", || async {
        services.get_opt("svc-3").await.ok()?.filter(|s| s.metadata.deletion_timestamp.is_none())
    })
    .await;
    drop(control_plane);
}
