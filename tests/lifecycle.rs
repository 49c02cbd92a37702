//! The operator process: SIGTERM stops every actor and exits 0 within the
//! drain deadline.

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
    let s = setup(
        "term",
        "CREATE TABLE items (id int); INSERT INTO items VALUES (1), (2);",
    )
    .await;
    let mut operator = Operator::start(&["--shutdown-timeout-seconds", "5"]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT id FROM items")
        .template(ITEM_CM)
        .set(
            "/changeDetection",
            json!({ "mode": "notify", "channel": "items_changed" }),
        )
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["item-1", "item-2"]).await;
    eventually(Duration::from_secs(10), "the LISTEN connection", || async {
        (backends(&s.db, true).await == 1).then_some(())
    })
    .await;

    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &operator.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::block_in_place(|| operator.wait_for_exit(Duration::from_secs(8)));
    let took = signalled.elapsed();
    let log = operator.log();
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "exit status after SIGTERM; log:\n{log}"
    );
    assert!(
        took < Duration::from_secs(5),
        "exited within the drain deadline: {took:?}"
    );
    let stopped = log
        .find("query actors stopped")
        .expect("every query actor stopped");
    let released = log
        .find("query actor released its connections")
        .expect("the query actor closed its pool and left the LISTEN connection");
    assert!(
        released < stopped,
        "connections went before the actors reported stopped"
    );
    assert!(
        log[stopped..].contains("\"message\":\"stopped\""),
        "the writer drained"
    );
    eventually(Duration::from_secs(10), "no connection left", || async {
        (backends(&s.db, false).await == 0).then_some(())
    })
    .await;
}

#[test]
fn a_bad_flag_is_a_clear_error_with_exit_code_two() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_db-query-operator"))
        .args(["run", "--allowed-kinds", "ConfigMap,not a kind"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--allowed-kinds: \"not a kind\" is not a valid kind"),
        "{stderr}"
    );
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
