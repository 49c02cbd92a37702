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
