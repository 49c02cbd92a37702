//! Faults stay inside one kind and one DBQR: a DBQR rendering a version the
//! API server does not serve fails only its own rows, and another DBQR's
//! objects of the same kind at the served version converge beside it.

mod common;

use std::time::{Duration, Instant};

use common::eventually;
use common::operator::{wait_for_condition, DbqrBuilder, Operator};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;

fn deployment(api_version: &str) -> String {
    format!(
        "apiVersion: {api_version}
kind: Deployment
metadata:
  name: \"web-{{{{Row.id}}}}\"
spec:
  replicas: 0
  selector:
    matchLabels: {{app: \"web-{{{{Row.id}}}}\"}}
  template:
    metadata:
      labels: {{app: \"web-{{{{Row.id}}}}\"}}
    spec:
      containers:
        - name: app
          image: registry.invalid/app:1
"
    )
}

#[tokio::test]
async fn an_unserved_version_fails_only_its_dbqr_and_the_served_one_converges() {
    let s = common::operator::setup(
        "kindfault",
        "CREATE TABLE apps (id int); INSERT INTO apps VALUES (1), (2);",
    )
    .await;
    let operator = Operator::start(&["--allowed-kinds", "ConfigMap,apps/Deployment"]);
    // apps/v1beta2 has not been served since Kubernetes 1.16.
    DbqrBuilder::new("old", &operator)
        .query("SELECT id FROM apps WHERE id = 1")
        .template(&deployment("apps/v1beta2"))
        .create(&s.client, &s.namespace)
        .await;
    let message = wait_for_condition(
        &s.client,
        &s.namespace,
        "old",
        "Synced",
        "False",
        "VersionNotServed",
    )
    .await;
    assert!(
        message.contains("apps/v1beta2/Deployment") && message.contains("serves v1"),
        "{message}"
    );

    let created = Instant::now();
    DbqrBuilder::new("new", &operator)
        .query("SELECT id FROM apps WHERE id = 2")
        .template(&deployment("apps/v1"))
        .create(&s.client, &s.namespace)
        .await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    eventually(
        Duration::from_secs(10),
        "the apps/v1 Deployment",
        || async { deployments.get_opt("web-2").await.ok()?.map(|_| ()) },
    )
    .await;
    wait_for_condition(&s.client, &s.namespace, "new", "Ready", "True", "Ready").await;
    assert!(
        created.elapsed() < Duration::from_secs(10),
        "{:?}",
        created.elapsed()
    );
    assert!(deployments.get_opt("web-1").await.unwrap().is_none());
    // The bad DBQR keeps failing on its own.
    let (status, reason, _) = common::operator::condition(&s.client, &s.namespace, "old", "Synced")
        .await
        .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "VersionNotServed")
    );
}

/// An aggregated API whose backend is down (its APIService points at a
/// Service with nothing behind it) makes its group fail discovery; every
/// other kind is still served and DBQRs converge.
#[tokio::test]
async fn an_unavailable_api_group_does_not_stop_discovery() {
    let ns = "aggregated";
    let (_control_plane, client, kubeconfig) = common::private_cluster(ns).await;
    let apiservice: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": "v1.broken.dbqo.dev"},
        "spec": {
            "group": "broken.dbqo.dev",
            "version": "v1",
            "service": {"namespace": "default", "name": "nothing-here"},
            "insecureSkipTLSVerify": true,
            "groupPriorityMinimum": 1000,
            "versionPriority": 15,
        }
    }))
    .unwrap();
    let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "apiregistration.k8s.io",
        "v1",
        "APIService",
    ));
    Api::<kube::api::DynamicObject>::all_with(client.clone(), &resource)
        .create(&Default::default(), &apiservice)
        .await
        .unwrap();
    // The group is listed, and asking it fails.
    eventually(
        Duration::from_secs(20),
        "the broken group to be listed",
        || async {
            let groups = client.list_api_groups().await.ok()?;
            groups
                .groups
                .iter()
                .any(|g| g.name == "broken.dbqo.dev")
                .then_some(())
        },
    )
    .await;
    assert!(client
        .list_api_group_resources("broken.dbqo.dev/v1")
        .await
        .is_err());

    let url = common::database("aggregated").await;
    common::connect(&url)
        .await
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
        .await
        .unwrap();
    common::operator::create_secret(&client, ns, "db", common::operator::secret_keys(&url)).await;
    let operator = Operator::start_on(&kubeconfig, &common::unique("aggregated"), &[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT id FROM t")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.id}}\"\n")
        .create(&client, ns)
        .await;
    wait_for_condition(&client, ns, "items", "Ready", "True", "Ready").await;
    common::operator::wait_for_configmaps(&client, ns, &["item-1"]).await;
}
