//! Deletion never sticks silently (SPEC §6): removing the finalizer survives
//! a DBQR that changed during its clean-up, and a clean-up the operator may
//! not carry out is reported on the DBQR and retried until it can.

mod common;

use std::time::Duration;

use common::eventually;
use common::operator::{wait_for_condition, wait_for_configmaps, DbqrBuilder, Operator};
use dbqo::api::DatabaseQueryResource;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
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

/// The operator runs as a user that may not delete ConfigMaps: deleting the
/// DBQR reports `CleanupBlocked` (reason Forbidden) and an Event, keeps the
/// DBQR, and completes once the permission is granted.
#[tokio::test]
async fn a_clean_up_without_permission_is_reported_and_completes_once_allowed() {
    let s = common::operator::setup(
        "forbidden",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);",
    )
    .await;
    let env = common::shared();
    let user = dbqo_testenv::control_plane::LIMITED_USER;
    let role_name = common::unique("dbqo-limited");
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": verbs});
    let grant = |name: &str, rules: Vec<serde_json::Value>| {
        let role: ClusterRole =
            serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
        .unwrap();
        let client = s.client.clone();
        async move {
            Api::<ClusterRole>::all(client.clone())
                .create(&PostParams::default(), &role)
                .await
                .unwrap();
            Api::<ClusterRoleBinding>::all(client)
                .create(&PostParams::default(), &binding)
                .await
                .unwrap();
        }
    };
    // Everything the operator needs, except deleting ConfigMaps.
    grant(
        &role_name,
        vec![
            rule(
                &["dbqo.dev"],
                &["databasequeryresources", "databasequeryresources/status"],
                &["get", "list", "watch", "patch", "update"],
            ),
            rule(
                &[""],
                &["configmaps"],
                &["get", "list", "watch", "create", "patch", "update"],
            ),
            rule(&[""], &["secrets"], &["get", "list", "watch"]),
            rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
        ],
    )
    .await;
    let kubeconfig = std::env::temp_dir().join(format!("{role_name}.kubeconfig"));
    let admin = std::fs::read_to_string(&env.control_plane.kubeconfig).unwrap();
    std::fs::write(
        &kubeconfig,
        admin.replace(
            &env.control_plane.token,
            dbqo_testenv::control_plane::LIMITED_TOKEN,
        ),
    )
    .unwrap();
    let operator = Operator::start_on(
        &kubeconfig,
        &common::unique("limited"),
        &["--allowed-kinds", "ConfigMap"],
    );
    DbqrBuilder::new("users", &operator)
        .query("SELECT id FROM t")
        .template(CM)
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["cm-1", "cm-2"]).await;

    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(s.client.clone(), &s.namespace);
    dbqrs
        .delete("users", &DeleteParams::default())
        .await
        .unwrap();
    let message = wait_for_condition(
        &s.client,
        &s.namespace,
        "users",
        "CleanupBlocked",
        "True",
        "Forbidden",
    )
    .await;
    assert!(message.contains("ConfigMap cm-"), "{message}");
    eventually(Duration::from_secs(10), "a Forbidden event", || async {
        let reasons = common::operator::event_reasons(&s.client, &s.namespace).await;
        reasons.iter().any(|r| r == "Forbidden").then_some(())
    })
    .await;
    assert_eq!(
        common::operator::configmaps(&s.client, &s.namespace)
            .await
            .len(),
        2
    );

    grant(
        &format!("{role_name}-delete"),
        vec![rule(&[""], &["configmaps"], &["delete"])],
    )
    .await;
    gone(&dbqrs, "users").await;
    assert!(common::operator::configmaps(&s.client, &s.namespace)
        .await
        .is_empty());
}
