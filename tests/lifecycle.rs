//! The operator process: SIGTERM lets the work under way finish, reports not
//! ready meanwhile and exits 0 within the drain deadline; a second signal
//! exits at once.

mod common;

use std::time::{Duration, Instant};

use common::eventually;
use common::operator::{setup, wait_for_configmaps, DbqrBuilder, Operator};
use serde_json::json;

const ITEM_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.id}}\"\n";

/// Connections the operator holds to `database`: its pool and its LISTEN connection.
async fn backends(db: &tokio_postgres::Client, listening: bool) -> i64 {
    let sql = if listening {
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE '%(listen)'"
    } else {
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    };
    db.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_every_actor_and_exits_zero_within_the_deadline() {
    let s = setup("term", "CREATE TABLE items (id int); INSERT INTO items VALUES (1), (2);").await;
    let mut operator = Operator::start(&["--shutdown-timeout-seconds", "5"]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT id FROM items")
        .template(ITEM_CM)
        .set("/changeDetection", json!({ "mode": "notify", "channel": "items_changed" }))
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["item-1", "item-2"]).await;
    eventually(Duration::from_secs(10), "the LISTEN connection", || async {
        (backends(&s.db, true).await == 1).then_some(())
    })
    .await;

    let signalled = Instant::now();
    operator.signal("TERM");
    let status = tokio::task::block_in_place(|| operator.wait_for_exit(Duration::from_secs(8)));
    let took = signalled.elapsed();
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "exit status after SIGTERM");
    assert!(took < Duration::from_secs(5), "exited within the drain deadline: {took:?}");
    // The pool and the LISTEN connection were closed, not dropped with the
    // process: the server has no backend of the operator left.
    eventually(Duration::from_secs(10), "no connection left", || async {
        (backends(&s.db, false).await == 0).then_some(())
    })
    .await;
}

/// A pass of `items` that waits for the test's lock on the table: the
/// operator running, the table locked, a pass blocked on the lock.
async fn a_pass_waiting_for_a_lock(
    prefix: &str,
) -> (common::operator::Setup, Operator, tokio_postgres::Client) {
    let s = setup(prefix, "CREATE TABLE items (id int); INSERT INTO items VALUES (1);").await;
    let operator = Operator::start(&["--shutdown-timeout-seconds", "60"]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT id FROM items")
        .template(ITEM_CM)
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["item-1"]).await;
    let locker = common::connect(&s.url).await;
    locker
        .batch_execute(
            "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE; INSERT INTO items VALUES (2)",
        )
        .await
        .unwrap();
    // The next poll (every second) waits for the lock.
    common::wait_for_a_lock_waiter(&s.db, "a pass waiting for the lock").await;
    (s, operator, locker)
}

/// SIGTERM during a pass: the replica reports not ready at once, the pass
/// finishes (its objects are applied) and the process exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_pass_under_way_finish_and_is_not_ready_meanwhile() {
    let (s, mut operator, locker) = a_pass_waiting_for_a_lock("drainpass").await;
    let probes = operator.start_draining().await;
    assert_eq!(
        common::http_get(&probes, "/healthz").await.map(|r| r.0),
        Some(200),
        "alive while draining"
    );
    // The pass reads the row committed with the lock's release.
    locker.batch_execute("COMMIT").await.unwrap();
    let status = tokio::task::block_in_place(|| operator.wait_for_exit(Duration::from_secs(30)));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "exit status");
    let cms = common::operator::configmaps(&s.client, &s.namespace).await;
    assert!(
        cms.contains_key("item-2"),
        "the pass under way applied its object before the exit: {cms:?}"
    );
}

/// A second signal ends the drain at once, with a non-zero exit: the pass
/// under way is given up.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_during_the_drain_exits_at_once() {
    let (s, mut operator, locker) = a_pass_waiting_for_a_lock("drainabort").await;
    operator.start_draining().await;
    operator.signal("INT");
    let status = tokio::task::block_in_place(|| operator.wait_for_exit(Duration::from_secs(10)));
    assert_eq!(status.map(|s| s.code()), Some(Some(1)), "exit status");
    locker.batch_execute("COMMIT").await.unwrap();
    let cms = common::operator::configmaps(&s.client, &s.namespace).await;
    assert!(!cms.contains_key("item-2"), "the pass under way was given up: {cms:?}");
}

#[test]
fn a_bad_flag_is_a_clear_error_with_exit_code_two() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_db-query-operator"))
        .args(["run", "--allowed-kinds", "ConfigMap,not a kind"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--allowed-kinds: \"not a kind\" is not a valid kind"), "{stderr}");
}

#[test]
fn bad_operations_flags_are_clear_errors_with_exit_code_two() {
    for (args, expected) in [
        (
            vec!["--metrics-bind-address", "localhost"],
            "--metrics-bind-address: \"localhost\" is not an address",
        ),
        (
            vec!["--health-probe-bind-address", "8081"],
            "--health-probe-bind-address: \"8081\" is not an address",
        ),
        (
            vec![
                "--leader-elect",
                "--leader-election-lease-duration",
                "10",
                "--leader-election-renew-deadline",
                "10",
            ],
            "--leader-election-renew-deadline",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_db-query-operator"))
            .arg("run")
            .args(&args)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
