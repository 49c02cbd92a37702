//! Faults of the Kubernetes side (SPEC §10, RELIABILITY.md): the API server
//! restarted mid-pass, etcd restarted, and 429/503 answers from a proxy in
//! front of the API server. Each on a control plane of the test's own. The
//! operator keeps running through all of them (a watch error is retried
//! with backoff, never a process exit), converges afterwards, and deletes
//! nothing that a row still asks for.

mod common;

use std::time::{Duration, Instant};

use common::eventually;
use common::operator::{configmaps, create_secret, secret_keys, DbqrBuilder, Operator};
use dbqo::api::DatabaseQueryResource;
use dbqo_testenv::faults::FaultyApi;
use dbqo_testenv::reliability::{record, Outcome};
use dbqo_testenv::ControlPlane;
use kube::{api::Api, Client};

const ROWS: usize = 300;
const ITEM_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.name}}\"\ndata:\n  value: \"{{Row.value}}\"\n";

/// A database of `ROWS` items and its Secret in `ns`.
async fn items(client: &Client, ns: &str) -> tokio_postgres::Client {
    let url = common::database(ns).await;
    let db = common::connect(&url).await;
    db.batch_execute(&format!(
        "CREATE TABLE items (name text PRIMARY KEY, value text NOT NULL); \
         INSERT INTO items SELECT 'n' || i, 'v0' FROM generate_series(1, {ROWS}) i;"
    ))
    .await
    .unwrap();
    create_secret(client, ns, "db", secret_keys(&url)).await;
    db
}

/// Waits until every row's ConfigMap holds `value` and nothing else exists.
async fn converged(client: &Client, ns: &str, value: &str, within: Duration) -> Duration {
    let started = Instant::now();
    eventually(within, &format!("{ROWS} objects with value {value}"), || async {
        let cms = configmaps(client, ns).await;
        let done = cms.len() == ROWS
            && cms.values().all(|d| d.get("value").map(String::as_str) == Some(value));
        done.then_some(())
    })
    .await;
    started.elapsed()
}

async fn ready(client: &Client, ns: &str) {
    let api = Api::<DatabaseQueryResource>::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(60), "the DBQR Ready", || async {
        let status = api.get("items").await.ok()?.status?;
        status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;
}

fn assert_running(operator: &mut Operator) {
    assert_eq!(operator.wait_for_exit(Duration::ZERO), None, "the operator keeps running");
}

/// Part of the control plane stopped for 10 s (`stop`) and started again
/// (`start`), the rows changed meanwhile: during the first pass
/// (`mid_pass`) or under a converged DBQR. The operator keeps running and
/// converges to the changed rows.
async fn ride_out(
    prefix: &str,
    trial: &str,
    mid_pass: bool,
    stop: fn(&mut ControlPlane),
    start: fn(&mut ControlPlane) -> Result<(), dbqo_testenv::Error>,
) {
    let ns = common::unique(prefix);
    let (plane, client, kubeconfig) = common::private_cluster(&ns).await;
    let db = items(&client, &ns).await;
    let mut operator = Operator::start_on(&kubeconfig, &common::unique("op"), &[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name, value FROM items")
        .template(ITEM_CM)
        .create(&client, &ns)
        .await;
    if mid_pass {
        eventually(Duration::from_secs(60), "some objects applied", || async {
            (configmaps(&client, &ns).await.len() >= 10).then_some(())
        })
        .await;
    } else {
        converged(&client, &ns, "v0", Duration::from_secs(60)).await;
    }
    // Control planes stop and start with blocking waits.
    let plane = tokio::task::spawn_blocking(move || {
        let mut plane = plane;
        stop(&mut plane);
        plane
    })
    .await
    .unwrap();
    db.batch_execute("UPDATE items SET value = 'while-down'").await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_running(&mut operator);
    let plane = tokio::task::spawn_blocking(move || {
        let mut plane = plane;
        start(&mut plane).unwrap();
        plane
    })
    .await
    .unwrap();
    let took = converged(&client, &ns, "while-down", Duration::from_secs(90)).await;
    ready(&client, &ns).await;
    assert_running(&mut operator);
    record(trial, &Outcome::passed(1, ROWS as u64, Some(took)));
    tokio::task::spawn_blocking(move || drop(plane)).await.unwrap();
}

#[tokio::test]
async fn the_operator_rides_out_an_api_server_restart_mid_pass() {
    let stop = |plane: &mut ControlPlane| plane.stop_apiserver(Duration::from_secs(5));
    ride_out("apirestart", "apiserver-restart", true, stop, ControlPlane::start_apiserver).await;
}

#[tokio::test]
async fn the_operator_rides_out_an_etcd_restart() {
    let stop = |plane: &mut ControlPlane| plane.stop_etcd(Duration::from_secs(5));
    ride_out("etcdrestart", "etcd-restart", false, stop, ControlPlane::start_etcd).await;
}

#[tokio::test]
async fn answers_429_and_503_are_retried_and_the_operator_converges() {
    let ns = common::unique("throttled");
    let (plane, client, _) = common::private_cluster(&ns).await;
    let db = items(&client, &ns).await;
    let proxy = FaultyApi::start(&plane.info).unwrap();
    let kubeconfig = proxy
        .kubeconfig(&plane.info, std::env::temp_dir().join(format!("{ns}.kubeconfig")))
        .unwrap();
    // Every tenth request of the operator is answered 429 or 503: an API
    // server shedding load. (At one in three, discovery and the watches
    // fail so often that convergence takes minutes, not seconds.)
    proxy.inject_every(10);
    let mut operator = Operator::start_on(&kubeconfig, &common::unique("op"), &[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name, value FROM items")
        .template(ITEM_CM)
        .create(&client, &ns)
        .await;
    converged(&client, &ns, "v0", Duration::from_secs(120)).await;
    db.batch_execute("UPDATE items SET value = 'throttled'; DELETE FROM items WHERE name = 'n1'")
        .await
        .unwrap();
    let started = Instant::now();
    eventually(Duration::from_secs(120), "the update and the one prune", || async {
        let cms = configmaps(&client, &ns).await;
        let done = cms.len() == ROWS - 1
            && !cms.contains_key("item-n1")
            && cms.values().all(|d| d.get("value").map(String::as_str) == Some("throttled"));
        done.then_some(())
    })
    .await;
    assert!(
        proxy.injected() >= 10,
        "the proxy answered {} of {} requests",
        proxy.injected(),
        proxy.requests()
    );
    proxy.inject_every(0);
    ready(&client, &ns).await;
    assert_running(&mut operator);
    record(
        "api-throttled",
        &Outcome::passed(proxy.injected(), ROWS as u64, Some(started.elapsed())),
    );
}
