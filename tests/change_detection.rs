//! Change detection (SPEC §5): timestamp probes and LISTEN/NOTIFY, with the
//! full poll set to an hour so only change detection can explain a reaction.

mod common;

use std::time::Duration;

use common::eventually;
use common::operator::{
    trigger_sql, wait_for_condition, wait_for_configmaps, wait_for_listen, DbqrBuilder, Operator,
    PassTotals,
};
use serde_json::json;

const FLAG_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"flag-{{Row.key}}\"\ndata:\n  value: \"{{Row.value}}\"\n";

async fn setup(prefix: &str, schema: &str) -> (kube::Client, String, tokio_postgres::Client) {
    let s = common::operator::setup(prefix, schema).await;
    (s.client, s.namespace, s.db)
}

async fn value_of(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    common::operator::configmaps(client, ns).await.get(name)?.get("value").cloned()
}

#[tokio::test]
async fn timestamp_mode_reacts_within_the_change_poll_interval() {
    let schema = "CREATE TABLE flags (key text PRIMARY KEY, value text, updated_at timestamptz NOT NULL DEFAULT now());
        CREATE INDEX ON flags (updated_at);
        INSERT INTO flags (key, value) VALUES ('a', '1');";
    let (client, ns, db) = setup("tsmode", schema).await;
    let operator = Operator::start(&[]);
    DbqrBuilder::new("flags", &operator)
        .query("SELECT key, value FROM flags ORDER BY key")
        .template(FLAG_CM)
        .set("/pollInterval", json!("1h"))
        .set("/changeDetection", json!({ "tableName": "public.flags", "timestampColumn": "updated_at", "changePollInterval": "1s" }))
        .create(&client, &ns)
        .await;
    wait_for_configmaps(&client, &ns, &["flag-a"]).await;

    db.batch_execute("UPDATE flags SET value = '2', updated_at = now() WHERE key = 'a'")
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the update to arrive", || async {
        (value_of(&client, &ns, "flag-a").await? == "2").then_some(())
    })
    .await;
    db.batch_execute("INSERT INTO flags (key, value) VALUES ('b', 'x')").await.unwrap();
    wait_for_configmaps(&client, &ns, &["flag-a", "flag-b"]).await;
    // With a one-hour poll, only the probe can have brought both: it ran, and
    // succeeded.
    let metrics = operator.http_address("metrics").await;
    let text = common::http_get(&metrics, "/metrics").await.unwrap().1;
    let probes = common::metric_sample(&text, "dbqo_change_probes_total{result=\"success\"}");
    assert!(probes.is_some_and(|n| n >= 2.0), "{probes:?}");
}

#[tokio::test]
async fn timestamp_probe_failures_are_reported() {
    let s =
        common::operator::setup("tsfail", "CREATE TABLE flags (key text PRIMARY KEY, value text);")
            .await;
    let (client, ns, url) = (s.client, s.namespace, s.url);
    let operator = Operator::start(&[]);
    DbqrBuilder::new("flags", &operator)
        .query("SELECT key, value FROM flags")
        .template(FLAG_CM)
        .set("/pollInterval", json!("1h"))
        .set("/changeDetection", json!({ "tableName": "missing_table", "timestampColumn": "updated_at", "changePollInterval": "500ms" }))
        .create(&client, &ns)
        .await;
    let message = wait_for_condition(&client, &ns, "flags", "Synced=False/QueryFailed").await;
    assert!(
        message.contains("change probe failed") && message.contains("missing_table"),
        "{message}"
    );
    // A good probe clears it (the full poll is an hour away).
    common::connect(&url)
        .await
        .batch_execute("CREATE TABLE missing_table (updated_at timestamptz)")
        .await
        .unwrap();
    wait_for_condition(&client, &ns, "flags", "Synced=True/Synced").await;
    wait_for_condition(&client, &ns, "flags", "Ready=True/Ready").await;
}

#[tokio::test]
async fn notify_mode_sees_inserts_updates_deletes_and_truncates_at_once() {
    let (client, ns, db) = setup("notify", "CREATE TABLE flags (key text PRIMARY KEY, value text); INSERT INTO flags VALUES ('a', '1');").await;
    db.batch_execute(&trigger_sql("public.flags", "flags changed")).await.unwrap();
    let operator = Operator::start(&[]);
    DbqrBuilder::new("flags", &operator)
        .query("SELECT key, value FROM flags ORDER BY key")
        .template(FLAG_CM)
        .set("/pollInterval", json!("1h"))
        .set("/changeDetection", json!({ "mode": "notify", "channel": "flags changed" }))
        // The TRUNCATE below is meant to empty the namespace at once; the
        // prune guard that would hold it has tests of its own.
        .set("/pruneGuard", json!({ "confirmationInterval": "0s" }))
        .create(&client, &ns)
        .await;
    wait_for_configmaps(&client, &ns, &["flag-a"]).await;
    wait_for_listen(&db).await;

    let quick = Duration::from_secs(3);
    db.batch_execute("INSERT INTO flags VALUES ('b', '1')").await.unwrap();
    eventually(quick, "insert", || async { value_of(&client, &ns, "flag-b").await }).await;
    db.batch_execute("UPDATE flags SET value = '2' WHERE key = 'b'").await.unwrap();
    eventually(quick, "update", || async {
        (value_of(&client, &ns, "flag-b").await? == "2").then_some(())
    })
    .await;
    db.batch_execute("DELETE FROM flags WHERE key = 'a'").await.unwrap();
    eventually(quick, "delete", || async {
        (common::operator::configmaps(&client, &ns).await.keys().collect::<Vec<_>>() == ["flag-b"])
            .then_some(())
    })
    .await;
    db.batch_execute("TRUNCATE flags").await.unwrap();
    eventually(quick, "truncate", || async {
        common::operator::configmaps(&client, &ns).await.is_empty().then_some(())
    })
    .await;

    // A burst of a thousand statements costs a handful of passes.
    let passes_before = operator.totals().await;
    let burst: String =
        (0..1000).map(|i| format!("INSERT INTO flags VALUES ('k{i}', '{i}');")).collect();
    db.simple_query(&burst).await.unwrap();
    eventually(Duration::from_secs(30), "the burst's objects", || async {
        (common::operator::configmaps(&client, &ns).await.len() == 1000).then_some(())
    })
    .await;
    let passes = operator.totals().await.since(&passes_before).passes;
    assert!(passes <= 10, "{passes} passes for one burst");

    // The LISTEN connection dies: the operator reconnects and runs a pass, since a notification may be lost.
    let listener = || async {
        db.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE '%(listen)'",
            &[],
        )
        .await
        .ok()?
        .map(|row| row.get::<_, i32>(0))
    };
    let lost = eventually(Duration::from_secs(10), "the LISTEN connection", listener).await;
    let before_reconnect = operator.totals().await;
    db.batch_execute(&format!("SELECT pg_terminate_backend({lost})")).await.unwrap();
    eventually(Duration::from_secs(10), "the reconnect", || async {
        listener().await.filter(|pid| *pid != lost)
    })
    .await;
    operator.wait_for_passes(before_reconnect, 1, Duration::from_secs(10)).await;
    // 111 of 1,000 rows (k1, k10..k19, k100..k199): a prune the guard lets through.
    db.batch_execute("DELETE FROM flags WHERE key LIKE 'k1%'").await.unwrap();
    eventually(Duration::from_secs(10), "the delete after reconnecting", || async {
        (common::operator::configmaps(&client, &ns).await.len() == 889).then_some(())
    })
    .await;
}

/// A LISTEN connection that stops answering without closing (a half-open
/// connection) is noticed by its ping and replaced; the DBQR runs a pass
/// once it listens again, so a change made meanwhile arrives.
#[tokio::test]
async fn a_steady_stream_of_changes_does_not_postpone_passes() {
    let s = common::operator::setup("stream", "CREATE TABLE ticks (id int PRIMARY KEY);").await;
    let (client, ns, db, url) = (s.client, s.namespace, s.db, s.url);
    db.batch_execute(&trigger_sql("public.ticks", "ticks")).await.unwrap();
    let operator = Operator::start(&[]);
    DbqrBuilder::new("ticks", &operator)
        .query("SELECT id FROM ticks ORDER BY id")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"tick-{{Row.id}}\"\n")
        .set("/pollInterval", json!("1h"))
        .set("/changeDetection", json!({ "mode": "notify", "channel": "ticks" }))
        .create(&client, &ns)
        .await;
    wait_for_condition(&client, &ns, "ticks", "Ready=True/Ready").await;
    wait_for_listen(&db).await;

    // A row every 20 ms for 6 s, each its own transaction: notifications
    // arrive faster than the debounce window, for longer than the test waits.
    let streaming = tokio::spawn(async move {
        let writer = common::connect(&url).await;
        for id in 0..300 {
            writer.execute("INSERT INTO ticks VALUES ($1)", &[&id]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(3), "tick-0 while rows keep coming", || async {
        kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
            .get_opt("tick-0")
            .await
            .ok()?
    })
    .await;
    assert!(
        !streaming.is_finished(),
        "tick-0 appeared only after the stream ended ({:?})",
        started.elapsed()
    );
    streaming.await.unwrap();
}

#[tokio::test]
async fn a_half_open_listen_connection_is_replaced_within_a_minute() {
    let (client, ns, db) = setup("halfopen", "CREATE TABLE flags (key text PRIMARY KEY, value text); INSERT INTO flags VALUES ('a', '1');").await;
    let operator = Operator::start(&[]);
    DbqrBuilder::new("flags", &operator)
        .query("SELECT key, value FROM flags ORDER BY key")
        .template(FLAG_CM)
        .set("/pollInterval", json!("1h"))
        .set("/changeDetection", json!({ "mode": "notify", "channel": "flags" }))
        .create(&client, &ns)
        .await;
    wait_for_configmaps(&client, &ns, &["flag-a"]).await;
    let listener = || async {
        db.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE '%(listen)' ORDER BY backend_start DESC LIMIT 1",
            &[],
        )
        .await
        .ok()?
        .map(|row| row.get::<_, i32>(0))
    };
    let stuck = eventually(Duration::from_secs(10), "the LISTEN connection", listener).await;
    // The pass that follows the first LISTEN is done: from now on only the
    // LISTEN connection (or its replacement) can start one.
    operator.wait_for_passes(PassTotals::default(), 2, Duration::from_secs(10)).await;

    // The backend stops answering; its socket stays open.
    let stopped = Stopped(stuck);
    assert!(signal("-STOP", stuck));
    db.batch_execute("INSERT INTO flags VALUES ('b', '2'); NOTIFY flags;").await.unwrap();
    let arrived =
        eventually(Duration::from_secs(60), "the change, over a new LISTEN connection", || async {
            value_of(&client, &ns, "flag-b").await
        })
        .await;
    assert_eq!(arrived, "2");
    let replaced = listener().await;
    assert!(replaced.is_some() && replaced != Some(stuck), "a new LISTEN connection");
    drop(stopped);
    db.batch_execute(&format!("SELECT pg_terminate_backend({stuck})")).await.unwrap();
    dbqo_testenv::reliability::record(
        "listen-half-open",
        &dbqo_testenv::reliability::Outcome::passed(1, 1, None),
    );
}

fn signal(sig: &str, pid: i32) -> bool {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// A stopped process, continued when the test ends however it ends (a
/// stopped backend would hold up the server's shutdown).
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

/// A session that LISTENs on `channel`; the payloads of its notifications.
async fn listener(
    url: &str,
    channel: &str,
) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute(&format!("LISTEN \"{channel}\"")).await.unwrap();
    (client, rx)
}

/// The next payload: the keys it names, or `None` for the empty payload.
async fn next(payloads: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<Vec<String>> {
    let payload = tokio::time::timeout(Duration::from_secs(5), payloads.recv()).await;
    let payload = payload.expect("a notification within 5 s").expect("the session is open");
    (!payload.is_empty()).then(|| serde_json::from_str(&payload).expect("a JSON array of keys"))
}

fn keys(expected: &str) -> Option<Vec<String>> {
    (!expected.is_empty()).then(|| serde_json::from_str(expected).unwrap())
}

/// The keyed trigger (`trigger-sql --key-column`) on a real PostgreSQL:
/// one notification per statement with the changed keys, old and new on
/// UPDATE; empty for TRUNCATE, a NULL key or more keys than fit; none for a
/// statement that changed nothing; and it replaces the unkeyed trigger.
#[tokio::test]
async fn the_keyed_trigger_sends_each_statements_changed_keys() {
    let url = common::database("keyed").await;
    let db = common::connect(&url).await;
    db.batch_execute("CREATE TABLE flags (key text, value text)").await.unwrap();
    db.batch_execute(&trigger_sql("public.flags", "flags")).await.unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_db-query-operator"))
        .args([
            "trigger-sql",
            "--table",
            "public.flags",
            "--channel",
            "flags",
            "--key-column",
            "key",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    db.batch_execute(&String::from_utf8(out.stdout).unwrap()).await.unwrap();
    let (_session, mut payloads) = listener(&url, "flags").await;

    let statements = [
        ("INSERT INTO flags VALUES ('b', '1'), ('a', '1'), ('a', '2')", r#"["a","b"]"#),
        ("UPDATE flags SET key = 'c' WHERE key = 'b'", r#"["b","c"]"#),
        ("UPDATE flags SET value = '3' WHERE key = 'nothing'", ""),
        ("DELETE FROM flags WHERE key = 'a'", r#"["a"]"#),
        ("INSERT INTO flags VALUES (NULL, 'x')", ""),
        ("INSERT INTO flags SELECT 'key-' || i, 'v' FROM generate_series(1, 2000) i", ""),
        ("TRUNCATE flags", ""),
    ];
    for (statement, expected) in statements {
        db.batch_execute(statement).await.unwrap();
        if statement.contains("'nothing'") {
            // No row changed: no notification; the next statement's comes first.
            continue;
        }
        assert_eq!(next(&mut payloads).await, keys(expected), "{statement}");
    }
    // One trigger per event, and the unkeyed one is gone (no second notification).
    db.batch_execute("INSERT INTO flags VALUES ('z', '1')").await.unwrap();
    assert_eq!(next(&mut payloads).await, keys(r#"["z"]"#));
    let extra = tokio::time::timeout(Duration::from_millis(300), payloads.recv()).await;
    assert!(extra.is_err(), "one notification per statement: {extra:?}");
}
