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

/// The DBQR changes (a label) while its clean-up waits for an object held
/// by another finalizer: the finalizer removal that follows meets a stale
/// resourceVersion, reads the DBQR again and succeeds.
#[tokio::test]
async fn a_dbqr_changed_during_clean_up_is_still_released() {
    let s = common::operator::setup(
        "conflict",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1);",
    )
    .await;
    let operator = Operator::start(&[]);
    DbqrBuilder::new("held", &operator)
        .query("SELECT id FROM t")
        .template(CM)
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["cm-1"]).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.namespace);
    let finalizers = |list: Vec<&str>| Patch::Merge(json!({"metadata": {"finalizers": list}}));
    cms.patch("cm-1", &PatchParams::default(), &finalizers(vec![HOLD]))
        .await
        .unwrap();

    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(s.client.clone(), &s.namespace);
    dbqrs
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the object to be deleting",
        || async {
            cms.get("cm-1")
                .await
                .ok()?
                .metadata
                .deletion_timestamp
                .map(|_| ())
        },
    )
    .await;
    // The supervisor's copy of the DBQR is now stale.
    dbqrs
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    cms.patch("cm-1", &PatchParams::default(), &finalizers(vec![]))
        .await
        .unwrap();
    gone(&dbqrs, "held").await;
    assert!(cms.get_opt("cm-1").await.unwrap().is_none());
}
