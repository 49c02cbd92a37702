//! Deletion never sticks silently (SPEC §6): removing the finalizer survives
//! a DBQR that changed during its clean-up. (A clean-up RBAC refuses is in
//! `rbac.rs`.)

mod common;

use std::time::Duration;

use common::eventually;
use common::operator::{wait_for_configmaps, DbqrBuilder, Operator};
use dbqo::api::DatabaseQueryResource;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

const CM: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.id}}\"\ndata:\n  v: \"{{Row.id}}\"\n";
const HOLD: &str = "dbqo.dev/test-hold";

async fn gone(dbqrs: &Api<DatabaseQueryResource>, name: &str) {
    eventually(Duration::from_secs(60), "the DBQR to be gone", || async {
        dbqrs.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

fn finalizers(list: Vec<&str>) -> Patch<serde_json::Value> {
    Patch::Merge(json!({"metadata": {"finalizers": list}}))
}

/// DBQR `held` (one ConfigMap, `cm-1`) in `ns`, deleted while another
/// finalizer holds its object: returns once the clean-up has deleted the
/// object and waits for it to go.
async fn held_clean_up(
    client: &kube::Client,
    ns: &str,
    operator: &Operator,
) -> (Api<ConfigMap>, Api<DatabaseQueryResource>) {
    DbqrBuilder::new("held", operator)
        .query("SELECT id FROM t")
        .template(CM)
        .create(client, ns)
        .await;
    wait_for_configmaps(client, ns, &["cm-1"]).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.patch("cm-1", &PatchParams::default(), &finalizers(vec![HOLD])).await.unwrap();
    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(client.clone(), ns);
    dbqrs.delete("held", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(10), "the object to be deleting", || async {
        cms.get("cm-1").await.ok()?.metadata.deletion_timestamp.map(|_| ())
    })
    .await;
    (cms, dbqrs)
}

/// Takes the holding finalizer off `cm-1`.
async fn let_go(cms: &Api<ConfigMap>) {
    cms.patch("cm-1", &PatchParams::default(), &finalizers(vec![])).await.unwrap();
}

/// The DBQR changes (a label) while its clean-up waits for an object held
/// by another finalizer: the finalizer removal that follows meets a stale
/// resourceVersion, reads the DBQR again and succeeds.
#[tokio::test]
async fn a_dbqr_changed_during_clean_up_is_still_released() {
    let (s, operator) = common::operator::setup_and_start(
        "conflict",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);",
    )
    .await;
    let (cms, dbqrs) = held_clean_up(&s.client, &s.namespace, &operator).await;
    // The supervisor's copy of the DBQR is now stale.
    dbqrs
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    let_go(&cms).await;
    gone(&dbqrs, "held").await;
    assert!(cms.get_opt("cm-1").await.unwrap().is_none());
}

/// While a clean-up waits for an object held by another finalizer, its
/// checks read the writer's watch cache and back off: not one round of
/// lists (the clean-up used to list every allowed kind across the cluster
/// every 500 ms), and no repeated delete.
#[tokio::test]
async fn a_waiting_clean_up_costs_no_list_requests() {
    let ns = "waiting";
    // A control plane of its own: the request counters see only this test.
    let (_control_plane, client, kubeconfig) = common::private_cluster(ns).await;
    let url = common::database("waiting").await;
    let db = common::connect(&url).await;
    db.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1);").await.unwrap();
    common::operator::create_secret(&client, ns, "db", common::operator::secret_keys(&url)).await;
    let operator = Operator::start_on(&kubeconfig, &common::unique("waiting"), &[]);
    let (cms, dbqrs) = held_clean_up(&client, ns, &operator).await;

    let before = common::request_counts(&client).await;
    // An observation window, not a synchronisation: the old loop would
    // have listed 8 kinds twice a second in it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = common::request_counts(&client).await;
    // LISTs of the kinds a clean-up looks at (the allowed kinds). The old
    // loop made 8 of them every 500 ms; the operator's other watches (the
    // DatabaseServer one on a control plane that just installed its CRDs)
    // may re-list once after an error, so the bound is one round's worth.
    let cleanup_kinds = [
        "configmaps",
        "secrets",
        "services",
        "serviceaccounts",
        "deployments",
        "statefulsets",
        "jobs",
        "cronjobs",
    ];
    let lists = common::requests_between(&before, &after, |verb, resource| {
        verb == "LIST" && cleanup_kinds.contains(&resource)
    });
    let deletes = common::requests_between(&before, &after, |verb, _| verb == "DELETE");
    assert!(lists < cleanup_kinds.len() as f64, "{lists} LISTs: {after:?}");
    assert_eq!(deletes, 0.0, "{after:?}");
    assert!(dbqrs.get_opt("held").await.unwrap().is_some(), "kept while waiting");

    let_go(&cms).await;
    gone(&dbqrs, "held").await;
}
