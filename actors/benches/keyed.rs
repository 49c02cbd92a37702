//! Key-scoped passes against full ones, on the real components (a program,
//! not a test):
//!
//!   cargo bench -p db-query-operator --bench keyed [-- --sizes 1000,10000 --samples 100
//!       --unkeyed-samples 20 --rate 100 --seconds 10]
//!
//! For each size, on a fresh operator (release build, log level `info`): a
//! table of that many rows with the keyed trigger, one DBQR of it with
//! `keyColumn` (pollInterval 1h). It measures, from the commit of a one-row
//! UPDATE to the watch event carrying the new content: one change at a time
//! (keyed), `--rate` changes a second for `--seconds` (keyed, sustained),
//! then the same DBQR without `keyColumn` (every notification a full pass),
//! and the floor: the same commit, then one plain server-side apply and its
//! watch event. RSS at idle after the keyed runs, and after an UPDATE of
//! every row (one full pass). One table at the end.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::operator::{trigger_sql_with, DbqrBuilder, Operator};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::{ms, new_namespace, percentile, Seen};

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.id}}\"\ndata:\n  value: \"{{Row.value}}\"\n";

struct KeyedArgs {
    sizes: Vec<usize>,
    samples: usize,
    unkeyed_samples: usize,
    rate: u64,
    seconds: u64,
}

fn args() -> KeyedArgs {
    let mut args = KeyedArgs {
        sizes: vec![1000, 10_000],
        samples: 100,
        unkeyed_samples: 20,
        rate: 100,
        seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--sizes" => {
                args.sizes = value().split(',').map(|s| s.parse().expect("a size")).collect()
            }
            "--samples" => args.samples = value().parse().expect("a number"),
            "--unkeyed-samples" => args.unkeyed_samples = value().parse().expect("a number"),
            "--rate" => args.rate = value().parse().expect("a number"),
            "--seconds" => args.seconds = value().parse().expect("a number"),
            // `cargo bench` passes `--bench`.
            _ => {}
        }
    }
    args
}

/// The operator's heap, live / resident (jemalloc's counts).
async fn heap(operator: &Operator) -> String {
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    let live = operator.metric("dbqo_heap_allocated_bytes").await;
    let resident = operator.metric("dbqo_heap_resident_bytes").await;
    format!("heap {:.1} / {:.1}", mib(live), mib(resident))
}

/// p50 / p99 of `latencies`.
fn spread(mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    format!("{} / {}", ms(percentile(&latencies, 0.5)), ms(percentile(&latencies, 0.99)))
}

/// One change at a time: UPDATE of row `id`, committed -> its watch event.
async fn one_at_a_time(
    db: &tokio_postgres::Client,
    table: &str,
    seen: &Seen,
    n: usize,
    samples: usize,
    tag: &str,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for i in 0..samples {
        let id = 1 + (i * 7919) % n;
        let value = format!("{tag}-{i}");
        let update = format!("UPDATE {table} SET value = $1 WHERE id = $2");
        db.execute(&update, &[&value, &(id as i32)]).await.unwrap();
        let committed = Instant::now();
        let at = seen.arrival(&format!("item-{id}"), &value, Duration::from_secs(60)).await;
        latencies.push(at.saturating_duration_since(committed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies
}

/// `rate` one-row UPDATEs a second for `seconds`, each of another row,
/// each committed -> its watch event.
async fn sustained(
    db: &tokio_postgres::Client,
    table: &str,
    seen: &Seen,
    n: usize,
    (rate, seconds): (u64, u64),
) -> Vec<Duration> {
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut sent = Vec::new();
    let update = format!("UPDATE {table} SET value = $1 WHERE id = $2");
    for i in 0..(rate * seconds) as usize {
        ticks.tick().await;
        let id = 1 + (i * 7919 + 13) % n;
        let value = format!("rate-{i}");
        db.execute(&update, &[&value, &(id as i32)]).await.unwrap();
        sent.push((format!("item-{id}"), value, Instant::now()));
    }
    let mut latencies = Vec::new();
    for (name, value, committed) in sent {
        let at = seen.arrival(&name, &value, Duration::from_secs(60)).await;
        latencies.push(at.saturating_duration_since(committed));
    }
    latencies
}

/// The floor: a commit, then one plain server-side apply and its watch event.
async fn floor(
    client: &kube::Client,
    db: &tokio_postgres::Client,
    ns: &str,
    samples: usize,
) -> Vec<Duration> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let seen = Seen::watch(client, ns);
    let pp = PatchParams::apply("bench-baseline").force();
    db.batch_execute("CREATE TABLE IF NOT EXISTS stamp (id int PRIMARY KEY, value text); INSERT INTO stamp VALUES (1, '') ON CONFLICT DO NOTHING")
        .await
        .unwrap();
    // One untimed round first: the watch is established.
    let warm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "floor"}, "data": {"value": "warm"}});
    api.patch("floor", &pp, &Patch::Apply(&warm)).await.unwrap();
    seen.arrival("floor", "warm", Duration::from_secs(30)).await;
    let mut latencies = Vec::new();
    for i in 0..samples {
        let value = format!("raw-{i}");
        db.execute("UPDATE stamp SET value = $1 WHERE id = 1", &[&value]).await.unwrap();
        let committed = Instant::now();
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "floor"}, "data": {"value": value}});
        api.patch("floor", &pp, &Patch::Apply(&object)).await.unwrap();
        let at = seen.arrival("floor", &value, Duration::from_secs(30)).await;
        latencies.push(at.saturating_duration_since(committed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    common::operator::set_rust_log("info");
    let server = common::private_postgres("keyed", None).await;
    let url = server.info.url("postgres");
    let db = common::connect(&url).await;
    let client = common::kube_client().await;
    common::install_crd(&client).await;
    let mut lines = Vec::new();
    for &n in &args.sizes {
        let table = format!("items_{n}");
        db.batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (id int PRIMARY KEY, value text NOT NULL);
             INSERT INTO {table} SELECT i, 'v' || i FROM generate_series(1, {n}) i;"
        ))
        .await
        .unwrap();
        let trigger =
            trigger_sql_with(&["--table", &table, "--channel", &table, "--key-column", "id"]);
        db.batch_execute(&trigger).await.unwrap();
        let operator = Operator::start(&[]);
        let ns = new_namespace(&client, "keyed", &server.info).await;
        // Up, and leading (its watches started): the operator at rest.
        common::eventually(Duration::from_secs(60), "the operator leading", || async {
            operator.leads().await.then_some(())
        })
        .await;
        let rss_empty = common::rss_mib(operator.pid());
        let seen = Seen::watch(&client, &ns);
        let started = Instant::now();
        DbqrBuilder::new("items", &operator)
            .query(&format!("SELECT id, value FROM {table}"))
            .template(CM)
            .set("/pollInterval", json!("1h"))
            .set("/maxRows", json!(n + 1))
            .set("/changeDetection", json!({"mode": "notify", "channel": table, "keyColumn": "id"}))
            .create(&client, &ns)
            .await;
        seen.until(Duration::from_secs(1800), |m| m.len() == n).await;
        let created = started.elapsed();
        common::operator::wait_for_condition(&client, &ns, "items", "Ready=True/Ready").await;
        common::operator::wait_for_listen(&db).await;
        // The first pass and the one listening starts (both full) are over.
        common::eventually(Duration::from_secs(600), "the first two passes", || async {
            (operator.totals().await.passes >= 2).then_some(())
        })
        .await;

        let before = operator.totals().await;
        let duration = || async {
            let sum = "dbqo_pass_duration_seconds_sum{result=\"success\"}";
            let count = "dbqo_pass_duration_seconds_count{result=\"success\"}";
            (operator.metric(sum).await, operator.metric(count).await)
        };
        let (sum0, count0) = duration().await;
        let keyed = one_at_a_time(&db, &table, &seen, n, args.samples, "k").await;
        let (sum1, count1) = duration().await;
        let rate = sustained(&db, &table, &seen, n, (args.rate, args.seconds)).await;
        let done = operator.totals().await.since(&before);
        let pass_ms = (sum1 - sum0) * 1000.0 / (count1 - count0).max(1.0);
        tokio::time::sleep(Duration::from_secs(15)).await;
        let rss = common::rss_mib(operator.pid());
        let heap_keyed = heap(&operator).await;

        // In a namespace of its own: a new watch of the DBQR's would first
        // list every object (half a second at 10,000).
        let floor_ns = new_namespace(&client, "floor", &server.info).await;
        let floor = floor(&client, &db, &floor_ns, args.samples).await;
        // The same DBQR without keyColumn: every notification a full pass.
        let dbqrs: Api<dbqo::api::DatabaseQueryResource> = Api::namespaced(client.clone(), &ns);
        let unkey = json!({"spec": {"changeDetection": {"keyColumn": null}}});
        dbqrs.patch("items", &PatchParams::default(), &Patch::Merge(&unkey)).await.unwrap();
        common::operator::wait_for_listen(&db).await;
        let passes = operator.totals().await.passes;
        // The new generation's first pass and its listening pass.
        common::eventually(Duration::from_secs(600), "the unkeyed first passes", || async {
            (operator.totals().await.passes >= passes + 2).then_some(())
        })
        .await;
        let unkeyed = one_at_a_time(&db, &table, &seen, n, args.unkeyed_samples, "u").await;
        // Every row changed at once (one full pass), then idle again.
        db.batch_execute(&format!("UPDATE {table} SET value = 'all-' || id")).await.unwrap();
        seen.until(Duration::from_secs(1800), |m| {
            m.values().filter(|v| v.starts_with("all-")).count() == n
        })
        .await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        let rss_updated = common::rss_mib(operator.pid());
        let heap_updated = heap(&operator).await;
        eprintln!(
            "{n} objects: created in {:.1} s; {} passes, {} keyed, during the keyed samples; a keyed pass took {pass_ms:.1} ms on average (one change at a time)",
            created.as_secs_f64(),
            done.passes,
            done.keyed
        );
        lines.push(format!(
            "| {n} | {} | {} ({} /s for {} s) | {} | {} | {rss_empty:.1} MiB | {rss:.1} MiB ({heap_keyed}) | {rss_updated:.1} MiB ({heap_updated}) |",
            spread(keyed),
            spread(rate),
            args.rate,
            args.seconds,
            spread(unkeyed),
            spread(floor),
        ));
        drop(operator);
    }
    println!("| objects | keyed, one change: p50 / p99 | keyed, sustained: p50 / p99 | unkeyed (full pass): p50 / p99 | floor: p50 / p99 | RSS before the DBQR | RSS after the keyed runs | RSS after an UPDATE of every row |");
    println!("|---|---|---|---|---|---|---|---|");
    for line in lines {
        println!("{line}");
    }
    drop(server);
}
