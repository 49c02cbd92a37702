//! The operator loop end to end: the real binary, API server, controller
//! manager and PostgreSQL.

mod common;

use std::time::Duration;

use common::eventually;
use common::operator::{
    configmaps, create_secret, secret_keys, setup_and_start, wait_for_condition,
    wait_for_configmaps, DbqrBuilder, Operator, PassTotals,
};
use dbqo::api::DatabaseQueryResource;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use common::operator::setup;

const USERS: &str = "CREATE TABLE users (id int PRIMARY KEY, username text NOT NULL, email text, active bool NOT NULL DEFAULT true);
INSERT INTO users VALUES (1, 'alice', 'alice@example.com', true), (2, 'bob', NULL, true);";

const USER_CM: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: \"user-{{Row.username}}\"
data:
  email: \"{{default Row.email \"none\"}}\"
";

#[tokio::test]
async fn the_peer_walk_through_creates_updates_and_prunes() {
    let (s, operator) = setup_and_start("walk", USERS).await;
    DbqrBuilder::new("users", &operator)
        .query("SELECT id, username, email FROM users WHERE active ORDER BY id")
        .template(USER_CM)
        .create(&s.client, &s.namespace)
        .await;

    let cms = wait_for_configmaps(&s.client, &s.namespace, &["user-alice", "user-bob"]).await;
    assert_eq!(cms["user-bob"]["email"], "none");
    wait_for_condition(&s.client, &s.namespace, "users", "Ready=True/Ready").await;

    // Labels and owner reference per SPEC §4 step 5.
    let cm = Api::<ConfigMap>::namespaced(s.client.clone(), &s.namespace)
        .get("user-alice")
        .await
        .unwrap();
    let labels = cm.metadata.labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "db-query-operator");
    assert_eq!(labels["dbqo.dev/owner-name"], "users");
    assert_eq!(labels["dbqo.dev/owner-namespace"], s.namespace);
    let owner = &cm.metadata.owner_references.unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("DatabaseQueryResource", Some(true)));
    let managers: Vec<_> =
        cm.metadata.managed_fields.unwrap().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.contains(&"db-query-operator".to_string()), "{managers:?}");

    // Converged: later passes send nothing.
    operator
        .wait_for_pass(PassTotals::default(), "a pass that skips every object", |p| p.converged(2))
        .await;

    s.db.batch_execute("INSERT INTO users VALUES (3, 'carol', 'c@example.com', true)")
        .await
        .unwrap();
    wait_for_configmaps(&s.client, &s.namespace, &["user-alice", "user-bob", "user-carol"]).await;

    s.db.batch_execute("UPDATE users SET email = 'bob@example.com' WHERE id = 2").await.unwrap();
    eventually(Duration::from_secs(20), "bob's email to change", || async {
        let cms = configmaps(&s.client, &s.namespace).await;
        (cms.get("user-bob")?.get("email")? == "bob@example.com").then_some(())
    })
    .await;

    s.db.batch_execute("UPDATE users SET active = false WHERE id = 1").await.unwrap();
    wait_for_configmaps(&s.client, &s.namespace, &["user-bob", "user-carol"]).await;
    s.db.batch_execute("DELETE FROM users WHERE id = 3").await.unwrap();
    wait_for_configmaps(&s.client, &s.namespace, &["user-bob"]).await;

    // The status is written after the pass that pruned: wait for it.
    let dbqrs = Api::<DatabaseQueryResource>::namespaced(s.client.clone(), &s.namespace);
    let dbqr = eventually(Duration::from_secs(10), "objectCount 1", || async {
        let dbqr = dbqrs.get("users").await.ok()?;
        (dbqr.status.as_ref()?.object_count == Some(1)).then_some(dbqr)
    })
    .await;
    let status = dbqr.status.unwrap();
    assert_eq!(status.managed_kinds, vec!["v1/ConfigMap".to_string()]);
    assert_eq!(status.observed_generation, Some(1));
    assert!(dbqr.metadata.finalizers.unwrap().contains(&"dbqo.dev/finalizer".to_string()));
    let log = operator.log();
    let password = common::shared().postgres.password.clone();
    for leak in ["alice@example.com", "bob@example.com", password.as_str()] {
        assert!(!log.contains(leak), "the operator log leaks {leak:?}");
    }
}

#[tokio::test]
async fn deployments_from_a_cnpg_uri_secret_with_a_multi_statement_query() {
    let s = setup("deploy", include_str!("../examples/deployment-per-row/schema.sql")).await;
    let operator = Operator::start(&[]);
    // CloudNativePG's app Secret carries the whole URI under `fqdn-uri`.
    let uri = s.url.clone();
    create_secret(
        &s.client,
        &s.namespace,
        "pg-app",
        [("fqdn-uri", uri), ("username", "ignored".into())].into(),
    )
    .await;
    let example: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../examples/deployment-per-row/dbqr.yaml")).unwrap();
    DbqrBuilder::new("apps", &operator)
        .query(example["spec"]["query"].as_str().unwrap())
        .template(example["spec"]["template"].as_str().unwrap())
        .secret("pg-app")
        .set("/database/connectionSecretRef/uriKey", json!("fqdn-uri"))
        .create(&s.client, &s.namespace)
        .await;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), &s.namespace);
    let web = eventually(Duration::from_secs(30), "deployment web", || async {
        deployments.get_opt("web").await.ok()?
    })
    .await;
    assert_eq!(web.spec.as_ref().unwrap().replicas, Some(2));
    let env = web.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    let greeting = env.iter().find(|e| e.name == "GREETING").unwrap();
    assert_eq!(
        greeting.value.as_deref(),
        Some("say \"hi\"\nthen: leave"),
        "hostile env value arrives verbatim"
    );
    eventually(Duration::from_secs(30), "deployment worker", || async {
        deployments.get_opt("worker").await.ok()?
    })
    .await;
    // The real deployment controller acts on what we applied.
    eventually(Duration::from_secs(30), "the deployment controller to report status", || async {
        let web = deployments.get("web").await.ok()?;
        (web.status?.observed_generation? >= 1).then_some(())
    })
    .await;
    wait_for_condition(&s.client, &s.namespace, "apps", "Synced=True/Synced").await;
}

#[tokio::test]
async fn a_bad_row_blocks_pruning_but_not_other_dbqrs() {
    let (s, operator) = setup_and_start("badrow", USERS).await;
    let template =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{{Row.prefix}}-{{Row.username}}\"\n";
    DbqrBuilder::new("first", &operator)
        .query("SELECT 'a' AS prefix, username FROM users ORDER BY id")
        .template(template)
        .create(&s.client, &s.namespace)
        .await;
    DbqrBuilder::new("second", &operator)
        .query("SELECT 'b' AS prefix, username FROM users ORDER BY id")
        .template(template)
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["a-alice", "a-bob", "b-alice", "b-bob"]).await;

    // A row whose name is not a valid object name, and a row that is gone.
    s.db.batch_execute("UPDATE users SET username = 'Not Valid!' WHERE id = 1; INSERT INTO users VALUES (3, 'carol', NULL, true)")
        .await
        .unwrap();
    let message =
        wait_for_condition(&s.client, &s.namespace, "first", "Synced=False/InvalidName").await;
    assert!(message.contains("row 0"), "{message}");
    assert!(!message.contains("Not Valid"), "no row data in conditions: {message}");
    // `first` applied the good rows but pruned nothing (a-alice stays); `second` as well.
    let cms = wait_for_configmaps(
        &s.client,
        &s.namespace,
        &["a-alice", "a-bob", "a-carol", "b-alice", "b-bob", "b-carol"],
    )
    .await;
    assert_eq!(cms.len(), 6);
    // An Event carries the reason change.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(s.client.clone(), &s.namespace);
    eventually(Duration::from_secs(20), "an InvalidName event", || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("InvalidName")).then_some(())
    })
    .await;

    s.db.batch_execute("UPDATE users SET username = 'alice2' WHERE id = 1").await.unwrap();
    wait_for_configmaps(
        &s.client,
        &s.namespace,
        &["a-alice2", "a-bob", "a-carol", "b-alice2", "b-bob", "b-carol"],
    )
    .await;
    wait_for_condition(&s.client, &s.namespace, "first", "Ready=True/Ready").await;
    dbqo_testenv::reliability::record(
        "bad-row-isolated",
        &dbqo_testenv::reliability::Outcome::passed(1, 3, None),
    );
}

#[tokio::test]
async fn deletion_policies_and_contested_objects() {
    let s = setup("delete", USERS).await;
    let operator =
        Operator::start(&["--allowed-namespaces", "*", "--allowed-kinds", "ConfigMap,Namespace"]);
    let other = common::namespace(&s.client, "delete-other").await;
    let template = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{{{{Metadata.Name}}}}-{{{{Row.username}}}}\"\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{{{{Metadata.Name}}}}-{{{{Row.username}}}}\"\n  namespace: {other}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"{{{{Metadata.Namespace}}}}-{{{{Metadata.Name}}}}-{{{{Row.username}}}}\"\n"
    );
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(s.client.clone());
    let query = "SELECT username FROM users ORDER BY id";
    DbqrBuilder::new("del", &operator)
        .query(query)
        .template(&template)
        .create(&s.client, &s.namespace)
        .await;
    DbqrBuilder::new("orph", &operator)
        .query(query)
        .template(&template)
        .set("/deletionPolicy", json!("Orphan"))
        .create(&s.client, &s.namespace)
        .await;
    let mine = ["del-alice", "del-bob", "orph-alice", "orph-bob"];
    wait_for_configmaps(&s.client, &s.namespace, &mine).await;
    wait_for_configmaps(&s.client, &other, &mine).await;
    let cluster_scoped = format!("{}-del-alice", s.namespace);
    assert!(
        namespaces.get_opt(&cluster_scoped).await.unwrap().is_some(),
        "cluster-scoped objects are created"
    );
    let connections = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'db-query-operator'";
    // The two DBQRs have the same connection settings, so they share one pool:
    // one connection or two, depending on whether their passes overlapped.
    let open: i64 = s.db.query_one(connections, &[]).await.unwrap().get(0);
    assert!(open >= 1, "the DBQRs hold a pooled connection: {open}");

    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(s.client.clone(), &s.namespace);
    dbqrs.delete("del", &DeleteParams::default()).await.unwrap();
    dbqrs.delete("orph", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "both DBQRs to be released", || async {
        (dbqrs.get_opt("del").await.ok()?.is_none() && dbqrs.get_opt("orph").await.ok()?.is_none())
            .then_some(())
    })
    .await;
    // Delete removed its objects everywhere; Orphan's stay, detached, and the
    // real garbage collector leaves them alone.
    let remaining = ["orph-alice", "orph-bob"];
    wait_for_configmaps(&s.client, &other, &remaining).await;
    wait_for_configmaps(&s.client, &s.namespace, &remaining).await;
    let gone = namespaces.get_opt(&cluster_scoped).await.unwrap();
    assert!(
        gone.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "Delete removes cluster-scoped objects too"
    );
    let orphaned_ns = format!("{}-orph-alice", s.namespace);
    assert!(namespaces.get_opt(&orphaned_ns).await.unwrap().is_some());
    // The actors stopped and their pools closed.
    eventually(Duration::from_secs(20), "the pools to close", || async {
        let open: i64 = s.db.query_one(connections, &[]).await.ok()?.get(0);
        (open == 0).then_some(())
    })
    .await;
    let cm = Api::<ConfigMap>::namespaced(s.client.clone(), &s.namespace)
        .get("orph-alice")
        .await
        .unwrap();
    assert!(cm.metadata.owner_references.unwrap_or_default().is_empty());
    assert!(!cm.metadata.labels.unwrap_or_default().contains_key("dbqo.dev/owner-name"));

    // Two DBQRs rendering the same object: the second does not take it over.
    let same = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\ndata:\n  by: \"{{Metadata.Name}}\"\n";
    DbqrBuilder::new("owner-a", &operator)
        .query("SELECT 1 AS id")
        .template(same)
        .create(&s.client, &s.namespace)
        .await;
    wait_for_condition(&s.client, &s.namespace, "owner-a", "Ready=True/Ready").await;
    DbqrBuilder::new("owner-b", &operator)
        .query("SELECT 1 AS id")
        .template(same)
        .create(&s.client, &s.namespace)
        .await;
    let message =
        wait_for_condition(&s.client, &s.namespace, "owner-b", "Synced=False/ObjectOwnedElsewhere")
            .await;
    assert!(message.contains("another owner"), "{message}");
    let cms = configmaps(&s.client, &s.namespace).await;
    assert_eq!(cms["shared"]["by"], "owner-a");
}

#[tokio::test]
async fn twenty_dbqrs_in_twenty_namespaces() {
    let (s, operator) = setup_and_start("many", USERS).await;
    let mut namespaces = Vec::new();
    for i in 0..20 {
        let ns = common::namespace(&s.client, &format!("many{i}")).await;
        create_secret(&s.client, &ns, "db", secret_keys(&s.url)).await;
        DbqrBuilder::new("users", &operator)
            .query("SELECT id, username, email FROM users ORDER BY id")
            .template(USER_CM)
            .create(&s.client, &ns)
            .await;
        namespaces.push(ns);
    }
    for ns in &namespaces {
        wait_for_configmaps(&s.client, ns, &["user-alice", "user-bob"]).await;
        wait_for_condition(&s.client, ns, "users", "Ready=True/Ready").await;
    }
    // A spec change restarts the actor with the new spec; the old objects are pruned.
    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(s.client.clone(), &namespaces[0]);
    let patch =
        json!({ "spec": { "query": "SELECT id, username, email FROM users WHERE id = 2" } });
    dbqrs.patch("users", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for_configmaps(&s.client, &namespaces[0], &["user-bob"]).await;
    eventually(Duration::from_secs(20), "observedGeneration 2", || async {
        let status = dbqrs.get("users").await.ok()?.status?;
        (status.observed_generation == Some(2)).then_some(())
    })
    .await;
    assert_eq!(configmaps(&s.client, &namespaces[1]).await.len(), 2);
    let ready = wait_for_condition(&s.client, &namespaces[0], "users", "Ready=True/Ready").await;
    assert_eq!(ready, "1 objects from 1 rows");
}

/// A DBQR whose name is longer than a label value carries a hashed label
/// value; another DBQR named exactly like that value carries the same
/// labels. The controller reference's uid tells their objects apart, so
/// neither prunes the other's.
#[tokio::test]
async fn a_dbqr_named_like_anothers_hashed_label_value_prunes_nothing_of_it() {
    let (s, operator) =
        setup_and_start("lookalike", "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);")
            .await;
    let long = format!("long-{}", "x".repeat(70));
    let lookalike = dbqo::reconcile::labels::label_value(&long);
    assert_ne!(lookalike, long);
    DbqrBuilder::new(&long, &operator)
        .query("SELECT id FROM t")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"a-{{Row.id}}\"\n")
        .create(&s.client, &s.namespace)
        .await;
    DbqrBuilder::new(&lookalike, &operator)
        .query("SELECT 1 AS id")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"b-{{Row.id}}\"\n")
        // Prunes at once, so the guard cannot be what saves the other's objects.
        .set("/pruneGuard", json!({"confirmationInterval": "0s"}))
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["a-1", "a-2", "b-1"]).await;
    // The objects exist before the passes that made them are counted: wait
    // for passes that wrote nothing before counting from there.
    let settled = operator
        .wait_for_pass(PassTotals::default(), "passes that write nothing", |p| {
            p.ok() && p.applied == 0
        })
        .await;
    assert_eq!(settled.pruned, 0, "{settled:?}");
    // Both run passes (every second) with the other's objects in their
    // label selection; a few of each later nothing was written or deleted.
    let since = operator.totals().await;
    operator.wait_for_passes(since, 6, Duration::from_secs(30)).await;
    let done = operator.totals().await.since(&since);
    assert!(done.ok() && done.applied == 0 && done.pruned == 0, "{done:?}");
    wait_for_configmaps(&s.client, &s.namespace, &["a-1", "a-2", "b-1"]).await;
    let total = operator.totals().await;
    assert_eq!(total.pruned, 0, "no pass deleted anything: {total:?}");
}

/// Templates see the DBQR's labels and annotations as `Metadata`; editing
/// them (no new generation) re-renders the objects.
#[tokio::test]
async fn a_label_edit_of_the_dbqr_re_renders_its_objects() {
    let (s, operator) =
        setup_and_start("relabel", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);").await;
    DbqrBuilder::new("tiered", &operator)
        .query("SELECT id FROM t")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.id}}\"\ndata:\n  tier: \"{{default Metadata.Labels.tier \"none\"}}\"\n")
        .set("/pollInterval", json!("1h"))
        .create(&s.client, &s.namespace)
        .await;
    let tier = |cms: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, String>,
    >| { cms.get("cm-1").and_then(|d| d.get("tier").cloned()) };
    let cms = wait_for_configmaps(&s.client, &s.namespace, &["cm-1"]).await;
    assert_eq!(tier(cms).as_deref(), Some("none"));
    Api::<DatabaseQueryResource>::namespaced(s.client.clone(), &s.namespace)
        .patch(
            "tiered",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "gold"}}})),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the new label rendered", || async {
        let cms = common::operator::configmaps(&s.client, &s.namespace).await;
        (tier(cms).as_deref() == Some("gold")).then_some(())
    })
    .await;
}
