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
    let message =
        wait_for_condition(&s.client, &s.namespace, "old", "Synced=False/VersionNotServed").await;
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
    eventually(Duration::from_secs(10), "the apps/v1 Deployment", || async {
        deployments.get_opt("web-2").await.ok()?.map(|_| ())
    })
    .await;
    wait_for_condition(&s.client, &s.namespace, "new", "Ready=True/Ready").await;
    assert!(created.elapsed() < Duration::from_secs(10), "{:?}", created.elapsed());
    assert!(deployments.get_opt("web-1").await.unwrap().is_none());
    // The bad DBQR keeps failing on its own.
    let (status, reason, _) =
        common::operator::condition(&s.client, &s.namespace, "old", "Synced").await.unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "VersionNotServed"));
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
    eventually(Duration::from_secs(20), "the broken group to be listed", || async {
        let groups = client.list_api_groups().await.ok()?;
        groups.groups.iter().any(|g| g.name == "broken.dbqo.dev").then_some(())
    })
    .await;
    // Wait until the API server proxies the group and answers 503 (it
    // answers 404 before): the answer a retrying client repeats with a
    // growing backoff (kube's default retry), which stalled discovery.
    let no_retry = {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        config.default_retry = false;
        kube::Client::try_from(config).unwrap()
    };
    eventually(Duration::from_secs(30), "the broken group to answer 503", || async {
        match no_retry.list_api_group_resources("broken.dbqo.dev/v1").await {
            Err(kube::Error::Api(e)) if e.code == 503 => Some(()),
            _ => None,
        }
    })
    .await;

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
    let started = std::time::Instant::now();
    wait_for_condition(&client, ns, "items", "Ready=True/Ready").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the broken group held the DBQR up for {:?}",
        started.elapsed()
    );
    common::operator::wait_for_configmaps(&client, ns, &["item-1"]).await;
}

/// A DBQR wrote objects of a custom kind whose CRD is then deleted: once
/// discovery confirms the kind is gone, it drops out of `managedKinds`
/// instead of failing every prune.
#[tokio::test]
async fn a_kind_whose_crd_is_deleted_drops_out_of_the_inventory() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let s =
        common::operator::setup("crdgone", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
            .await;
    let group = format!("{}.dbqo.dev", common::unique("g"));
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("gadgets.{group}")},
        "spec": {
            "group": group,
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        }
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(s.client.clone());
    crds.create(&Default::default(), &crd).await.unwrap();
    eventually(Duration::from_secs(20), "the CRD to be served", || async {
        s.client.list_api_group_resources(&format!("{group}/v1")).await.ok().map(|_| ())
    })
    .await;

    let allowed = format!("ConfigMap,{group}/Gadget");
    let operator = Operator::start(&["--allowed-kinds", &allowed]);
    let both = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{{{Row.id}}}}\"\n---\napiVersion: {group}/v1\nkind: Gadget\nmetadata:\n  name: \"g-{{{{Row.id}}}}\"\n"
    );
    DbqrBuilder::new("gadgets", &operator)
        .query("SELECT id FROM t")
        .template(&both)
        .create(&s.client, &s.namespace)
        .await;
    wait_for_condition(&s.client, &s.namespace, "gadgets", "Ready=True/Ready").await;
    let dbqrs: Api<dbqo::api::DatabaseQueryResource> =
        Api::namespaced(s.client.clone(), &s.namespace);
    let kinds = || async {
        let dbqr = dbqrs.get("gadgets").await.unwrap();
        dbqr.status.unwrap_or_default().managed_kinds
    };
    assert_eq!(kinds().await, ["v1/ConfigMap".to_owned(), format!("{group}/v1/Gadget")]);

    crds.delete(&format!("gadgets.{group}"), &Default::default()).await.unwrap();
    // The rows still render Gadgets: they fail, and the operator rediscovers.
    wait_for_condition(&s.client, &s.namespace, "gadgets", "Synced=False/UnknownKind").await;
    dbqrs
        .patch(
            "gadgets",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"template":
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.id}}\"\n"}})),
        )
        .await
        .unwrap();
    wait_for_condition(&s.client, &s.namespace, "gadgets", "Ready=True/Ready").await;
    eventually(Duration::from_secs(10), "the Gadget kind to drop out", || async {
        (kinds().await == ["v1/ConfigMap"]).then_some(())
    })
    .await;
}
