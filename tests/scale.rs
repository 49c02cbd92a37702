//! Many DBQRs on one database (SPEC §4, §9): the operator keeps within its
//! connection budget against a PostgreSQL with few connections to spare, and
//! notify-mode DBQRs of one connection identity share one LISTEN connection.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::operator::{create_secret, DbqrBuilder, Operator};
use common::{eventually, kube_client, namespace};
use dbqo::api::DatabaseQueryResource;
use futures_util::StreamExt;
use kube::api::Api;
use serde_json::json;

const ITEM_CM: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"g{{Row.grp}}-{{Row.id}}\"\n";

/// DBQRs `g1` .. `gN` over `items`, each selecting its own group.
async fn create_dbqrs(
    client: &kube::Client,
    ns: &str,
    operator: &Operator,
    count: usize,
    spec: impl Fn(usize, DbqrBuilder) -> DbqrBuilder,
) {
    let creates = (1..=count).map(|i| {
        let builder = DbqrBuilder::new(&format!("g{i}"), operator)
            .query(&format!("SELECT grp, id FROM items WHERE grp = {i} ORDER BY id"))
            .template(ITEM_CM);
        spec(i, builder).create(client, ns)
    });
    futures_util::stream::iter(creates).buffer_unordered(16).collect::<Vec<_>>().await;
}

/// Waits until all `count` DBQRs in `ns` are Ready.
async fn wait_all_ready(client: &kube::Client, ns: &str, count: usize) {
    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(180), &format!("{count} DBQRs Ready"), || async {
        let ready = dbqrs
            .list(&Default::default())
            .await
            .ok()?
            .items
            .iter()
            .filter(|d| {
                d.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        (ready == count).then_some(())
    })
    .await;
}

/// 200 DBQRs x 5 rows against a PostgreSQL with `max_connections = 20`:
/// all converge, the operator never holds more than its budget of 5, and
/// another client can connect throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_dbqrs_stay_within_the_connection_budget() {
    let server = common::private_postgres("scale", Some(20)).await;
    let url = server.info.url("postgres");
    common::connect(&url)
        .await
        .batch_execute("CREATE TABLE items AS SELECT g AS grp, i AS id FROM generate_series(1, 200) g, generate_series(1, 5) i")
        .await
        .unwrap();
    let client = kube_client().await;
    common::install_crd(&client).await;
    let ns = namespace(&client, "budget").await;
    create_secret(&client, &ns, "db", common::server_secret_keys(&server.info, "postgres")).await;

    // Samples the operator's connections, each time as a new client.
    let peak = Arc::new(AtomicI64::new(0));
    let refused = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, refused, done, url) = (peak.clone(), refused.clone(), done.clone(), url.clone());
        async move {
            while !done.load(Ordering::SeqCst) {
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((other, connection)) => {
                        tokio::spawn(connection);
                        let held: i64 = other
                            .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'db-query-operator%'", &[])
                            .await
                            .unwrap()
                            .get(0);
                        peak.fetch_max(held, Ordering::SeqCst);
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    let operator = Operator::start(&["--max-connections-per-database", "5"]);
    create_dbqrs(&client, &ns, &operator, 200, |_, b| {
        b.set("/pollInterval", json!("5s")).set(
            "/changeDetection",
            json!({"tableName": "items", "timestampColumn": "id", "changePollInterval": "2s"}),
        )
    })
    .await;
    wait_all_ready(&client, &ns, 200).await;
    eventually(Duration::from_secs(60), "1,000 configmaps", || async {
        (common::operator::configmaps(&client, &ns).await.len() == 1000).then_some(())
    })
    .await;
    // A few more polls and probes of all 200 while the sampler watches.
    let since = operator.totals().await;
    operator.wait_for_passes(since, 400, Duration::from_secs(60)).await;
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();

    let peak = peak.load(Ordering::SeqCst);
    assert!(peak > 0, "the sampler saw the operator's connections");
    assert!(peak <= 5, "the operator held {peak} connections, more than its budget of 5");
    assert_eq!(refused.load(Ordering::SeqCst), 0, "another client was refused");
    drop(operator);
    drop(server);
    dbqo_testenv::reliability::record(
        "connection-budget",
        &dbqo_testenv::reliability::Outcome::passed(0, 200, None),
    );
}

/// 200 notify-mode DBQRs sharing one Secret hold one LISTEN connection, and
/// each reacts to its own channel only.
#[tokio::test]
async fn two_hundred_notify_dbqrs_share_one_listen_connection() {
    let (s, operator) = common::operator::setup_and_start(
        "listen",
        "CREATE TABLE items AS SELECT g AS grp, 1 AS id FROM generate_series(1, 200) g;",
    )
    .await;
    create_dbqrs(&s.client, &s.namespace, &operator, 200, |i, b| {
        b.set("/pollInterval", json!("1h"))
            .set("/changeDetection", json!({"mode": "notify", "channel": format!("ch{i}")}))
    })
    .await;
    wait_all_ready(&s.client, &s.namespace, 200).await;
    let listening = || async {
        s.db.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE '%(listen)'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    eventually(Duration::from_secs(20), "one LISTEN connection", || async {
        (listening().await == 1).then_some(())
    })
    .await;
    // Each DBQR runs a pass once its channel is listened to (changes before
    // that may have been missed): after it, notifications reach it. With a
    // one-hour poll and no failure, nothing else runs a pass: 400 passes are
    // the first pass and the one after LISTEN of each.
    eventually(Duration::from_secs(60), "a pass of each DBQR after LISTEN", || async {
        let done = operator.totals().await;
        (done.ok() && done.passes >= 400).then_some(())
    })
    .await;

    // Every group gets a second row; only groups 1..100 are told.
    s.db.batch_execute(
        "INSERT INTO items SELECT g, 2 FROM generate_series(1, 200) g;
         SELECT pg_notify('ch' || g, '') FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let told: Vec<String> = (1..=100).map(|g| format!("g{g}-2")).collect();
    eventually(Duration::from_secs(30), "the told groups' new objects", || async {
        let cms = common::operator::configmaps(&s.client, &s.namespace).await;
        told.iter().all(|name| cms.contains_key(name)).then_some(())
    })
    .await;
    // A DBQR that ran would have made its group's second object.
    let cms = common::operator::configmaps(&s.client, &s.namespace).await;
    let untold: Vec<_> =
        (101..=200).map(|g| format!("g{g}-2")).filter(|name| cms.contains_key(name)).collect();
    assert!(untold.is_empty(), "DBQRs that were not notified ran: {untold:?}");
    assert_eq!(listening().await, 1, "still one LISTEN connection");
}
