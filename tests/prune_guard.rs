//! The prune guard (SPEC §4.6) on the real components: a TRUNCATE then
//! INSERT reload deletes nothing, a real emptying is carried out only after
//! the confirmation interval, the release annotation lets a held prune
//! through at once, and a deleted row's object still goes at once.

mod common;

use std::time::{Duration, Instant};

use common::operator::{
    condition, create_secret, event_reasons, secret_keys, trigger_sql, wait_for_condition,
    wait_for_configmaps, wait_for_listen, DbqrBuilder, Operator,
};
use common::{eventually, request_counts};
use dbqo::api::DatabaseQueryResource;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

const ITEM_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.id}}\"\ndata:\n  value: \"{{Row.value}}\"\n";
const ROWS: usize = 40;

fn fill() -> String {
    format!("INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, {ROWS}) i")
}

/// The DBQR both tests use: a ConfigMap per row of `items`, notify mode,
/// the full poll an hour away (only notifications explain a reaction).
fn items_dbqr(operator: &Operator) -> DbqrBuilder {
    DbqrBuilder::new("items", operator)
        .query("SELECT id, value FROM items ORDER BY id")
        .template(ITEM_CM)
        .set("/pollInterval", json!("1h"))
        .set("/changeDetection", json!({ "mode": "notify", "channel": "items" }))
}

fn names() -> Vec<String> {
    (1..=ROWS).map(|i| format!("item-{i}")).collect()
}

/// The uid of every ConfigMap: an object deleted and re-created gets a new one.
async fn uids(client: &kube::Client, ns: &str) -> Vec<(String, String)> {
    let mut uids: Vec<_> = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|cm| (cm.metadata.name.unwrap(), cm.metadata.uid.unwrap()))
        .collect();
    uids.sort();
    uids
}

fn deletes(counts: &common::RequestCounts) -> f64 {
    counts.get(&("DELETE".to_owned(), "configmaps".to_owned())).copied().unwrap_or(0.0)
}

/// A nightly reload (TRUNCATE, then INSERT 1.5 s later, in separate
/// transactions) reaches the operator as an empty result: no DELETE request
/// reaches the API server. Emptying the table for real deletes the objects,
/// but only once the confirmation interval has passed.
#[tokio::test]
async fn an_etl_reload_deletes_nothing_and_a_real_emptying_waits_for_confirmation() {
    let ns = "reload";
    // A control plane of its own: the DELETE counter sees only this test.
    let (_control_plane, client, kubeconfig) = common::private_cluster(ns).await;
    let url = common::database("reload").await;
    let db = common::connect(&url).await;
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, value text)").await.unwrap();
    db.batch_execute(&fill()).await.unwrap();
    db.batch_execute(&trigger_sql("items", "items")).await.unwrap();
    create_secret(&client, ns, "db", secret_keys(&url)).await;
    let operator = Operator::start_on(&kubeconfig, &common::unique("reload"), &[]);
    let confirmation = Duration::from_secs(4);
    items_dbqr(&operator)
        .set("/pruneGuard", json!({ "confirmationInterval": "4s" }))
        .create(&client, ns)
        .await;
    let names = names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_for_configmaps(&client, ns, &names).await;
    wait_for_listen(&db).await;
    let before_uids = uids(&client, ns).await;
    let before = request_counts(&client).await;

    // The reload.
    let passes = operator.totals().await;
    db.batch_execute("TRUNCATE items").await.unwrap();
    let truncated = Instant::now();
    let held = operator
        .wait_for_pass(passes, "the pass that sees the empty table", |p| p.ok() && p.rows == 0)
        .await;
    assert_eq!((held.pruned, held.held), (0, ROWS as u64 * held.passes), "{held:?}");
    let message = wait_for_condition(&client, ns, "items", "PruneHeld=True/PruneHeld").await;
    assert!(message.contains(&format!("{ROWS} of {ROWS}")), "{message}");
    let (status, reason, _) = condition(&client, ns, "items", "Synced").await.unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "PruneHeld"));
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(truncated.elapsed())).await;
    let passes = operator.totals().await;
    db.batch_execute(&fill()).await.unwrap();
    operator
        .wait_for_pass(passes, "the pass that sees the rows again", |p| {
            p.ok() && p.rows == ROWS as u64 * p.passes && p.held == 0
        })
        .await;
    wait_for_condition(&client, ns, "items", "PruneHeld=False/NothingHeld").await;
    wait_for_condition(&client, ns, "items", "Synced=True/Synced").await;
    let after = request_counts(&client).await;
    assert_eq!(deletes(&after), deletes(&before), "no DELETE reached the API server");
    assert_eq!(uids(&client, ns).await, before_uids, "every object is the one from before");
    assert!(event_reasons(&client, ns).await.iter().any(|r| r == "PruneHeld"));

    // Emptying the table for real: held first, carried out after the interval.
    let passes = operator.totals().await;
    db.batch_execute("DELETE FROM items").await.unwrap();
    let emptied = Instant::now();
    // A pass for the refill's last notices may still follow: wait for one
    // that held all 40, whatever passes run beside it.
    operator
        .wait_for_pass(passes, "the pass that holds the deletions", |p| {
            p.ok() && p.held >= ROWS as u64
        })
        .await;
    eventually(Duration::from_secs(20), "the confirmed deletions", || async {
        common::operator::configmaps(&client, ns).await.is_empty().then_some(())
    })
    .await;
    assert!(
        emptied.elapsed() >= confirmation,
        "deleted after {:?}, before the confirmation interval",
        emptied.elapsed()
    );
    eventually(Duration::from_secs(10), "a PruneConfirmed event", || async {
        let reasons = event_reasons(&client, ns).await;
        reasons.iter().any(|r| r == "PruneConfirmed").then_some(())
    })
    .await;
    wait_for_condition(&client, ns, "items", "Ready=True/Ready").await;
    // Nothing is left of any kind: the inventory is written empty, not left as it was.
    let dbqrs = Api::<DatabaseQueryResource>::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(10), "an empty managedKinds", || async {
        let status = dbqrs.get("items").await.ok()?.status?;
        status.managed_kinds.is_empty().then_some(())
    })
    .await;
}

/// The default interval is 30 s; the annotation releases a held prune at
/// once and the operator removes it afterwards. A deleted row (a small
/// prune) still goes at once.
#[tokio::test]
async fn the_release_annotation_lets_a_held_prune_through_and_small_prunes_are_immediate() {
    let s =
        common::operator::setup("release", "CREATE TABLE items (id int PRIMARY KEY, value text)")
            .await;
    let (client, ns, db) = (&s.client, s.namespace.as_str(), &s.db);
    db.batch_execute(&fill()).await.unwrap();
    db.batch_execute(&trigger_sql("items", "items")).await.unwrap();
    let operator = Operator::start(&[]);
    items_dbqr(&operator).create(client, ns).await;
    let names = names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_for_configmaps(client, ns, &names).await;
    wait_for_listen(db).await;

    // One row of forty: deleted at once.
    let deleted = Instant::now();
    db.batch_execute("DELETE FROM items WHERE id = 40").await.unwrap();
    wait_for_configmaps(client, ns, &names[..ROWS - 1]).await;
    let took = deleted.elapsed();
    assert!(took < Duration::from_secs(3), "a deleted row's object took {took:?}");

    // Every row: held (the default interval is 30 s) until the annotation.
    // A pass may still follow the last DELETE's notice (one that arrived
    // while listening began): the totals since then count a pass that held
    // all 39, whatever passes run beside it.
    let passes = operator.totals().await;
    db.batch_execute("DELETE FROM items").await.unwrap();
    operator.wait_for_pass(passes, "the held prune", |p| p.held >= ROWS as u64 - 1).await;
    assert_eq!(common::operator::configmaps(client, ns).await.len(), ROWS - 1);
    let dbqrs = Api::<DatabaseQueryResource>::namespaced(client.clone(), ns);
    let released = Instant::now();
    dbqrs
        .patch(
            "items",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"dbqo.dev/release-prune": "true"}}})),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the released deletions", || async {
        common::operator::configmaps(client, ns).await.is_empty().then_some(())
    })
    .await;
    assert!(released.elapsed() < Duration::from_secs(30));
    // The pass after it (the annotation's removal triggers one) finds nothing held.
    eventually(Duration::from_secs(10), "a PruneReleased event", || async {
        let reasons = event_reasons(client, ns).await;
        reasons.iter().any(|r| r == "PruneReleased").then_some(())
    })
    .await;
    let (status, _, _) = condition(client, ns, "items", "PruneHeld").await.unwrap();
    assert_eq!(status, "False");
    eventually(Duration::from_secs(10), "the annotation to be removed", || async {
        let dbqr = dbqrs.get("items").await.ok()?;
        (!dbqr.metadata.annotations.unwrap_or_default().contains_key("dbqo.dev/release-prune"))
            .then_some(())
    })
    .await;
}

/// A reload that deletes in batches: 16 of 40 rows (40 %, let through at
/// once), then 12 of the 24 left (half of them, but 28 of 40 in the
/// window). The second batch is held.
#[tokio::test]
async fn deletions_in_batches_add_up_and_are_held() {
    let s =
        common::operator::setup("batches", "CREATE TABLE items (id int PRIMARY KEY, value text)")
            .await;
    let (client, ns) = (&s.client, s.namespace.as_str());
    s.db.batch_execute(&fill()).await.unwrap();
    s.db.batch_execute(&trigger_sql("items", "items")).await.unwrap();
    let operator = Operator::start(&[]);
    items_dbqr(&operator).create(client, ns).await;
    let all = names();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    wait_for_configmaps(client, ns, &all).await;
    wait_for_listen(&s.db).await;

    s.db.batch_execute("DELETE FROM items WHERE id <= 16").await.unwrap();
    wait_for_configmaps(client, ns, &all[16..]).await;
    s.db.batch_execute("DELETE FROM items WHERE id <= 28").await.unwrap();
    let message = wait_for_condition(client, ns, "items", "PruneHeld=True/PruneHeld").await;
    assert!(message.contains("12 of 24"), "{message}");
    assert_eq!(
        common::operator::configmaps(client, ns).await.len(),
        24,
        "nothing of the second batch deleted"
    );
}
