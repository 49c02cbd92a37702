//! Sharding (SPEC §7, issue 22): operators started with different
//! `--label-selector`s split the DBQRs between them, each with a leader
//! Lease of its own, and a DBQR relabelled from one shard to the other moves
//! without losing its objects.
//!
//! The shard label here is the test label every test operator selects on
//! (`dbqo.dev/test=<id>`): two ids, two shards.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::eventually;
use common::operator::{DbqrBuilder, Operator, TEST_LABEL};
use dbqo::api::DatabaseQueryResource;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{{Metadata.Name}}-{{Row.name}}\"\ndata:\n  color: \"{{Row.color}}\"\n";

/// A shard: the operator for DBQRs labelled `dbqo.dev/test=<id>`, electing
/// a leader on the Lease its selector names (no `--leader-election-id`).
fn shard(id: &str, ns: &str) -> Operator {
    Operator::start_with_id(
        id,
        &[
            "--leader-elect",
            "--leader-election-namespace",
            ns,
            "--leader-election-lease-duration",
            "4",
            "--leader-election-renew-deadline",
            "3",
            "--leader-election-retry-period",
            "1",
        ],
    )
}

async fn metric(operator: &Operator, name: &str) -> Option<f64> {
    let address = operator.http_address("metrics").await;
    let text = common::http_get(&address, "/metrics").await?.1;
    common::metric_sample(&text, name)
}

async fn wait_for_actors(operator: &Operator, count: f64) {
    eventually(
        Duration::from_secs(30),
        &format!("{count} query actors on {}", operator.id),
        || async move { (metric(operator, "dbqo_query_actors").await? == count).then_some(()) },
    )
    .await;
}

/// ConfigMap uid and color by name.
async fn objects(client: &kube::Client, ns: &str) -> BTreeMap<String, (String, String)> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|cm| cm.metadata.name.as_deref() != Some("kube-root-ca.crt"))
        .map(|cm| {
            let color = cm.data.unwrap_or_default().get("color").cloned().unwrap_or_default();
            (cm.metadata.name.unwrap_or_default(), (cm.metadata.uid.unwrap_or_default(), color))
        })
        .collect()
}

#[tokio::test]
async fn two_shards_split_the_dbqrs_each_with_its_own_lease_and_a_relabelled_dbqr_moves_intact() {
    let s = common::operator::setup(
        "shards",
        "CREATE TABLE items (name text PRIMARY KEY, color text);
         INSERT INTO items VALUES ('x', 'red'), ('y', 'green');",
    )
    .await;
    let (client, ns, db) = (&s.client, s.namespace.as_str(), &s.db);
    let (id_a, id_b) = (common::unique("shard-a"), common::unique("shard-b"));
    let a = shard(&id_a, ns);
    let b = shard(&id_b, ns);
    for (name, operator) in [("alpha", &a), ("beta", &b)] {
        DbqrBuilder::new(name, operator)
            .query("SELECT name, color FROM items ORDER BY name")
            .template(CM)
            .create(client, ns)
            .await;
    }
    eventually(Duration::from_secs(30), "both DBQRs' objects", || async {
        (objects(client, ns).await.len() == 4).then_some(())
    })
    .await;

    // Each shard leads on a Lease of its own, and runs its DBQR only.
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    for (id, operator) in [(&id_a, &a), (&id_b, &b)] {
        let name = dbqo::cli::default_lease_name(Some(&format!("{TEST_LABEL}={id}")));
        let lease = eventually(Duration::from_secs(30), &format!("Lease {name}"), || async {
            leases.get_opt(&name).await.ok()?
        })
        .await;
        let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        assert!(!holder.is_empty(), "{name} is held");
        assert_eq!(metric(operator, "dbqo_leader").await, Some(1.0), "{id} leads");
        wait_for_actors(operator, 1.0).await;
    }
    let before = objects(client, ns).await;

    // alpha moves from shard a to shard b: a lets go of it (its objects
    // stay), b takes it up; nothing is deleted or created again.
    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(client.clone(), ns);
    let relabel = json!({"metadata": {"labels": {TEST_LABEL: id_b}}});
    dbqrs.patch("alpha", &PatchParams::default(), &Patch::Merge(&relabel)).await.unwrap();
    wait_for_actors(&a, 0.0).await;
    wait_for_actors(&b, 2.0).await;
    let a_passes = a.totals().await;
    db.batch_execute("UPDATE items SET color = 'blue' WHERE name = 'x'").await.unwrap();
    eventually(Duration::from_secs(30), "both DBQRs' x blue, by shard b", || async {
        let now = objects(client, ns).await;
        let blue = |name: &str| now.get(name).is_some_and(|(_, color)| color == "blue");
        (blue("alpha-x") && blue("beta-x")).then_some(())
    })
    .await;
    let after = objects(client, ns).await;
    let uids = |m: &BTreeMap<String, (String, String)>| -> Vec<(String, String)> {
        m.iter().map(|(name, (uid, _))| (name.clone(), uid.clone())).collect()
    };
    assert_eq!(uids(&after), uids(&before), "the same objects: none deleted or made again");
    assert_eq!(a.totals().await.passes, a_passes.passes, "shard a runs nothing of alpha any more");
    let alpha = dbqrs.get("alpha").await.unwrap();
    assert!(alpha
        .metadata
        .finalizers
        .unwrap_or_default()
        .iter()
        .any(|f| f == dbqo::api::FINALIZER));

    // Shard b restarted: it takes its Lease again and keeps both DBQRs;
    // shard a still runs none.
    drop(b);
    let b = shard(&id_b, ns);
    wait_for_actors(&b, 2.0).await;
    assert_eq!(metric(&b, "dbqo_leader").await, Some(1.0));
    db.batch_execute("UPDATE items SET color = 'white' WHERE name = 'y'").await.unwrap();
    eventually(Duration::from_secs(30), "both DBQRs' y white, after the restart", || async {
        let now = objects(client, ns).await;
        let white = |name: &str| now.get(name).is_some_and(|(_, color)| color == "white");
        (white("alpha-y") && white("beta-y")).then_some(())
    })
    .await;
    assert_eq!(uids(&objects(client, ns).await), uids(&before));
    assert_eq!(metric(&a, "dbqo_query_actors").await, Some(0.0));
    drop(a);
    drop(b);
}
