//! The operator beside a plain client, on the real components (a program,
//! not a test):
//!
//!   cargo bench -p db-query-operator --bench perf [-- --objects 1000 --samples 50 --idle 30 --sizes 1000,10000]
//!
//! Starts its own control plane and PostgreSQL through the test harness (or
//! uses `DBQO_TESTENV`), runs the release operator (log level `info`) and
//! prints one table: each figure of the operator, the baseline's figure and
//! their ratio. The baseline is a plain kube-rs client in this program that
//! server-side-applies exactly the objects the operator produced (read back
//! from the cluster, server fields stripped, the owner reference pointed at
//! an owner in its own namespace), at the operator's concurrency (16) and at
//! 64, and once more at 16 with the operator's watches running. Latencies run from the commit of an UPDATE to the watch
//! event carrying the new content. Idle cost comes from the API server's
//! `apiserver_request_total` and `pg_stat_statements`; RSS and CPU time from
//! `/proc/<pid>`.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::operator::{trigger_sql, DbqrBuilder, Operator};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{json, Value};
use support::{ms, new_namespace, percentile, Seen};

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.id}}\"\ndata:\n  value: \"{{Row.value}}\"\n";
const OPERATOR_CONCURRENCY: usize = 16;

struct PerfArgs {
    objects: usize,
    samples: usize,
    idle: u64,
    sizes: Vec<usize>,
}

fn args() -> PerfArgs {
    let mut args = PerfArgs { objects: 1000, samples: 50, idle: 30, sizes: vec![1000, 10_000] };
    let list: Vec<String> = std::env::args().collect();
    for pair in list.windows(2) {
        let number = || pair[1].parse::<usize>().expect("a number");
        match pair[0].as_str() {
            "--objects" => args.objects = number(),
            "--samples" => args.samples = number(),
            "--idle" => args.idle = number() as u64,
            "--sizes" => {
                args.sizes = pair[1]
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().expect("sizes are numbers"))
                    .collect()
            }
            _ => {}
        }
    }
    args
}

/// CPU seconds process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start at ") ".
    let fields: Vec<&str> =
        stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the command.
    (ticks(11) + ticks(12)) / 100.0
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The objects as the operator made them, ready for another namespace:
/// server-set fields and the owner reference (a uid of another namespace)
/// removed, and the owner labels replaced by one of the same size (the
/// operator would otherwise count the copies as its own, and prune them).
async fn produced(client: &kube::Client, ns: &str) -> Vec<Value> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=db-query-operator"))
        .await
        .unwrap();
    list.items
        .into_iter()
        .map(|cm| {
            let mut v = serde_json::to_value(cm).unwrap();
            let meta = v["metadata"].as_object_mut().unwrap();
            for field in
                ["uid", "resourceVersion", "creationTimestamp", "managedFields", "namespace"]
            {
                meta.remove(field);
            }
            if let Some(labels) = v["metadata"]["labels"].as_object_mut() {
                for (key, value) in labels.iter_mut() {
                    if key.starts_with("dbqo.dev/") || key == "app.kubernetes.io/managed-by" {
                        *value = json!("baseline");
                    }
                }
                let renamed: serde_json::Map<String, Value> = labels
                    .iter()
                    .map(|(k, v)| {
                        (format!("bench.dbqo.dev/{}", k.rsplit('/').next().unwrap()), v.clone())
                    })
                    .collect();
                *labels = renamed;
            }
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("ConfigMap");
            v
        })
        .collect()
}

/// A plain client server-side-applying `objects` into `ns` at `concurrency`.
/// Their owner reference (like the operator's, a controller reference) names
/// an owner in `ns`: one in another namespace would have the garbage
/// collector delete them.
async fn raw_apply(
    client: &kube::Client,
    ns: &str,
    objects: &[Value],
    concurrency: usize,
) -> Duration {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::apply("bench-baseline").force();
    let owner = api
        .patch(
            "bench-owner",
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bench-owner"}})),
        )
        .await
        .expect("the baseline's owner");
    let objects: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                for r in refs {
                    r["apiVersion"] = json!("v1");
                    r["kind"] = json!("ConfigMap");
                    r["name"] = json!("bench-owner");
                    r["uid"] = json!(owner.metadata.uid.clone().unwrap_or_default());
                }
            }
            o
        })
        .collect();
    let t = Instant::now();
    futures_util::stream::iter(objects.iter().map(|o| {
        let (api, pp) = (api.clone(), pp.clone());
        async move {
            let name = o["metadata"]["name"].as_str().unwrap().to_owned();
            api.patch(&name, &pp, &Patch::Apply(o)).await.map(|_| ())
        }
    }))
    .buffer_unordered(concurrency)
    .try_collect::<Vec<_>>()
    .await
    .expect("baseline apply");
    t.elapsed()
}

/// The baseline measured the way the operator is: two watches on the objects
/// (this program's observer and one standing for the operator's cache, which
/// the API server also has to feed) and the time taken when the observer has
/// seen every new value, not when the last apply returned.
async fn raw_apply_watched(
    client: &kube::Client,
    ns: &str,
    objects: &[Value],
    suffix: &str,
) -> Duration {
    let seen = Seen::watch(client, ns);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cache = tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default()).boxed();
        while events.next().await.is_some() {}
    });
    let names: Vec<&str> = objects.iter().filter_map(|o| o["metadata"]["name"].as_str()).collect();
    seen.until(Duration::from_secs(120), |m| names.iter().all(|name| m.contains_key(*name))).await;
    let t = Instant::now();
    raw_apply(client, ns, &with_value(objects, suffix), OPERATOR_CONCURRENCY).await;
    let done = seen
        .until(Duration::from_secs(120), |m| {
            names.iter().all(|name| m.get(*name).is_some_and(|v| v.ends_with(suffix)))
        })
        .await;
    cache.abort();
    if let Some(first) = seen.first(suffix) {
        eprintln!("baseline update: first object seen after {:?}", first - t);
    }
    done - t
}

fn with_value(objects: &[Value], suffix: &str) -> Vec<Value> {
    objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            let v = o["data"]["value"].as_str().unwrap_or_default().to_owned();
            o["data"]["value"] = json!(format!("{v}{suffix}"));
            o
        })
        .collect()
}

struct Row {
    figure: String,
    operator: String,
    baseline: String,
    ratio: String,
    target: &'static str,
}

fn row(
    figure: String,
    operator: String,
    baseline: String,
    ratio: Option<f64>,
    target: &'static str,
) -> Row {
    Row {
        figure,
        operator,
        baseline,
        ratio: ratio.map_or_else(|| "".into(), |r| format!("{r:.2}x")),
        target,
    }
}

/// Statements the database ran (pg_stat_statements), other than the ones
/// this program runs to read the figures.
async fn statements(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
          WHERE query NOT ILIKE '%pg_stat_statements%' AND query NOT ILIKE '%pg_stat_activity%'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// API requests and database statements while nothing changes for `idle` s.
async fn idle_cost(
    client: &kube::Client,
    db: &tokio_postgres::Client,
    idle: u64,
) -> (f64, f64, f64, i64) {
    let before = common::request_counts(client).await;
    let stmts = statements(db).await;
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let after = common::request_counts(client).await;
    let stmts = statements(db).await - stmts;
    let delta = |pick: &dyn Fn(&str, &str) -> bool| common::requests_between(&before, &after, pick);
    let writes = delta(&|v, _| ["POST", "PUT", "PATCH", "DELETE", "APPLY"].contains(&v));
    let object_reads = delta(&|v, r| ["GET", "LIST"].contains(&v) && r == "configmaps");
    let secret_reads = delta(&|v, r| ["GET", "LIST"].contains(&v) && r == "secrets");
    (writes, object_reads, secret_reads, stmts)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let n = args.objects;
    // Realistic logging: `info`, not the tests' per-pass debug records.
    common::operator::set_rust_log("info");
    let server = common::private_postgres("perf", None).await;
    let url = server.info.url("postgres");
    let db = common::connect(&url).await;
    db.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
         CREATE TABLE items (id int PRIMARY KEY, value text, touched timestamptz NOT NULL DEFAULT now());
         INSERT INTO items (id, value) SELECT i, 'v' || i FROM generate_series(1, {n}) i;
         CREATE TABLE stamped (id int PRIMARY KEY, value text, touched timestamptz NOT NULL DEFAULT now());
         INSERT INTO stamped (id, value) SELECT i, 'v' || i FROM generate_series(1, 100) i;
         CREATE INDEX ON stamped (touched);"
    ))
    .await
    .unwrap();
    db.batch_execute(&trigger_sql("items", "items_changed")).await.unwrap();
    let client = common::kube_client().await;
    common::install_crd(&client).await;
    let mut rows: Vec<Row> = Vec::new();

    let operator = Operator::start(&[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_empty = common::rss_mib(operator.pid());
    rows.push(row(
        "RSS, no DBQR".into(),
        format!("{rss_empty:.1} MiB"),
        "".into(),
        None,
        "<= 30 MiB",
    ));

    // Create: a DBQR of n rows (notify mode) -> n ConfigMaps, seen by a watch.
    let ns = new_namespace(&client, "perf", &server.info).await;
    let seen = Seen::watch(&client, &ns);
    let cpu0 = cpu_seconds(operator.pid());
    let t = Instant::now();
    DbqrBuilder::new("items", &operator)
        .query("SELECT id, value FROM items ORDER BY id")
        .template(CM)
        .set("/pollInterval", json!("1h"))
        .set("/maxRows", json!(n.max(60_000) + 1))
        .set("/changeDetection", json!({"mode": "notify", "channel": "items_changed"}))
        .create(&client, &ns)
        .await;
    let done = seen.until(Duration::from_secs(600), |m| m.len() == n).await;
    let op_create = done - t;
    let cpu_create = cpu_seconds(operator.pid()) - cpu0;
    common::operator::wait_for_condition(&client, &ns, "items", "Ready=True/Ready").await;
    common::operator::wait_for_listen(&db).await;

    let objects = produced(&client, &ns).await;
    assert_eq!(objects.len(), n);
    let raw_ns16 = new_namespace(&client, "raw16", &server.info).await;
    let raw16 = raw_apply(&client, &raw_ns16, &objects, OPERATOR_CONCURRENCY).await;
    let raw_ns64 = new_namespace(&client, "raw64", &server.info).await;
    let raw64 = raw_apply(&client, &raw_ns64, &objects, 64).await;
    rows.push(row(
        format!("DBQR created -> {n} ConfigMaps exist"),
        secs(op_create),
        format!("{} at 16, {} at 64", secs(raw16), secs(raw64)),
        Some(op_create.as_secs_f64() / raw16.as_secs_f64()),
        "<= 1.25x",
    ));
    rows.push(row(
        "operator CPU per 1,000 objects created".into(),
        format!("{:.2} s", cpu_create * 1000.0 / n as f64),
        "".into(),
        None,
        "",
    ));

    // Update all: one UPDATE of every row -> every object shows it.
    let cpu0 = cpu_seconds(operator.pid());
    let t = Instant::now();
    db.batch_execute("UPDATE items SET value = value || '-u'").await.unwrap();
    let done = seen
        .until(Duration::from_secs(600), |m| m.len() == n && m.values().all(|v| v.ends_with("-u")))
        .await;
    let op_update = done - t;
    if let Some(first) = seen.first("-u") {
        eprintln!("operator update: first object seen after {:?}", first - t);
    }
    let cpu_update = cpu_seconds(operator.pid()) - cpu0;
    let raw_update =
        raw_apply(&client, &raw_ns16, &with_value(&objects, "-u"), OPERATOR_CONCURRENCY).await;
    let raw_watched = raw_apply_watched(&client, &raw_ns16, &objects, "-w").await;
    rows.push(row(
        format!("UPDATE of all {n} rows -> all objects show it"),
        secs(op_update),
        format!("{} (the same changes at 16)", secs(raw_update)),
        Some(op_update.as_secs_f64() / raw_update.as_secs_f64()),
        "<= 1.25x",
    ));
    rows.push(row(
        "  the same, baseline with the operator's watches, ended by the observer's watch".into(),
        secs(op_update),
        secs(raw_watched),
        Some(op_update.as_secs_f64() / raw_watched.as_secs_f64()),
        "",
    ));
    rows.push(row(
        "operator CPU per 1,000 objects updated".into(),
        format!("{:.2} s", cpu_update * 1000.0 / n as f64),
        "".into(),
        None,
        "",
    ));

    // Notify latency: one-row UPDATE committed -> the watch event with it.
    let mut latencies = Vec::new();
    let mut floors = Vec::new();
    let raw_api: Api<ConfigMap> = Api::namespaced(client.clone(), &raw_ns16);
    let raw_seen = Seen::watch(&client, &raw_ns16);
    let pp = PatchParams::apply("bench-baseline").force();
    for i in 0..args.samples {
        let id = 1 + (i * 7919) % n;
        let value = format!("lat-{i}");
        db.execute("UPDATE items SET value = $1 WHERE id = $2", &[&value, &(id as i32)])
            .await
            .unwrap();
        let committed = Instant::now();
        let name = format!("item-{id}");
        let at = seen.arrival(&name, &value, Duration::from_secs(30)).await;
        latencies.push(at.saturating_duration_since(committed));
        // The floor: the same commit, then a plain client's apply and the
        // watch event it causes.
        let raw_value = format!("raw-{i}");
        db.execute("UPDATE stamped SET value = $1 WHERE id = 1", &[&raw_value]).await.unwrap();
        let committed = Instant::now();
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name}, "data": {"value": raw_value}});
        raw_api.patch(&name, &pp, &Patch::Apply(&object)).await.unwrap();
        let at = raw_seen.arrival(&name, &raw_value, Duration::from_secs(30)).await;
        floors.push(at.saturating_duration_since(committed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort();
    floors.sort();
    eprintln!("notify latencies (sorted): {latencies:?}");
    rows.push(row(
        format!(
            "notify, {n} objects: one-row UPDATE committed -> watch event, p50 / p99 ({} samples)",
            args.samples
        ),
        format!("{} / {}", ms(percentile(&latencies, 0.5)), ms(percentile(&latencies, 0.99))),
        format!(
            "{} / {} (commit, then one apply)",
            ms(percentile(&floors, 0.5)),
            ms(percentile(&floors, 0.99))
        ),
        None,
        "<= 100 ms / <= 300 ms",
    ));

    // Timestamp mode, changePollInterval 1s.
    let ts_ns = new_namespace(&client, "perf-ts", &server.info).await;
    let ts_seen = Seen::watch(&client, &ts_ns);
    DbqrBuilder::new("stamped", &operator)
        .query("SELECT id, value FROM stamped ORDER BY id")
        .template(CM)
        .set("/pollInterval", json!("1h"))
        .set(
            "/changeDetection",
            json!({"tableName": "stamped", "timestampColumn": "touched", "changePollInterval": "1s"}),
        )
        .create(&client, &ts_ns)
        .await;
    ts_seen.until(Duration::from_secs(60), |m| m.len() == 100).await;
    let mut ts_latencies = Vec::new();
    let ts_samples = args.samples.min(30);
    for i in 0..ts_samples {
        let id = 2 + (i % 99) as i32;
        let value = format!("ts-{i}");
        db.execute(
            "UPDATE stamped SET value = $1, touched = clock_timestamp() WHERE id = $2",
            &[&value, &id],
        )
        .await
        .unwrap();
        let committed = Instant::now();
        let at = ts_seen.arrival(&format!("item-{id}"), &value, Duration::from_secs(30)).await;
        ts_latencies.push(at.saturating_duration_since(committed));
        // Commits spread evenly over the probe's period (a fixed pause
        // would lock onto its phase and measure one point of it).
        tokio::time::sleep(Duration::from_millis(((i * 7919) % 1000) as u64)).await;
    }
    ts_latencies.sort();
    eprintln!("timestamp-mode latencies (sorted): {ts_latencies:?}");
    rows.push(row(
        format!("timestamp mode, changePollInterval 1s: one-row change -> watch event, p50 / p99 ({ts_samples} samples)"),
        format!("{} / {}", ms(percentile(&ts_latencies, 0.5)), ms(percentile(&ts_latencies, 0.99))),
        "".into(),
        None,
        "<= 700 ms / <= 1.3 s",
    ));

    // Idle, converged; then again after a restart.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (w, r, s, q) = idle_cost(&client, &db, args.idle).await;
    rows.push(row(
        format!(
            "idle {} s, converged: API writes / object reads / Secret reads / SQL statements",
            args.idle
        ),
        format!("{w} / {r} / {s} / {q}"),
        "".into(),
        None,
        "0 / 0 / 0",
    ));
    let rss_one = common::rss_mib(operator.pid());
    let id = operator.id.clone();
    drop(operator);
    let operator = Operator::start_with_id(&id, &[]);
    common::operator::wait_for_condition(&client, &ns, "items", "Ready=True/Ready").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (w, r, s, q) = idle_cost(&client, &db, args.idle).await;
    rows.push(row(
        format!(
            "idle {} s after a restart: API writes / object reads / Secret reads / SQL statements",
            args.idle
        ),
        format!("{w} / {r} / {s} / {q}"),
        "".into(),
        None,
        "0 / 0 / 0",
    ));
    rows.push(row(
        format!("RSS with one DBQR of {n} objects and one of 100, idle"),
        format!("{rss_one:.1} MiB"),
        "".into(),
        None,
        "",
    ));
    drop(operator);

    // Scaling: one DBQR per size, each on a fresh operator process.
    let mut per_object = Vec::new();
    for &size in &args.sizes {
        db.batch_execute(&format!(
            "DROP TABLE IF EXISTS sized;
             CREATE TABLE sized AS SELECT i AS id, 'v' || i AS value FROM generate_series(1, {size}) i;"
        ))
        .await
        .unwrap();
        let operator = Operator::start(&[]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let size_ns = new_namespace(&client, "perf-size", &server.info).await;
        let size_seen = Seen::watch(&client, &size_ns);
        let cpu0 = cpu_seconds(operator.pid());
        let t = Instant::now();
        DbqrBuilder::new("sized", &operator)
            .query("SELECT id, value FROM sized ORDER BY id")
            .template(CM)
            .set("/pollInterval", json!("1h"))
            .set("/maxRows", json!(size + 1))
            .create(&client, &size_ns)
            .await;
        let done = size_seen.until(Duration::from_secs(1800), |m| m.len() == size).await;
        let took = done - t;
        let cpu = cpu_seconds(operator.pid()) - cpu0;
        common::operator::wait_for_condition(&client, &size_ns, "sized", "Ready=True/Ready").await;
        // Idle long enough for freed pages to go back (jemalloc's decay is 10 s).
        tokio::time::sleep(Duration::from_secs(15)).await;
        let rss = common::rss_mib(operator.pid());
        let us = took.as_secs_f64() * 1e6 / size as f64;
        per_object.push(us);
        rows.push(row(
            format!("1 DBQR x {size} rows: created -> all exist; RSS at idle; CPU"),
            format!("{} ({us:.0} us/object); {rss:.1} MiB; {cpu:.1} s", secs(took)),
            "".into(),
            None,
            if size >= 10_000 { "<= 80 MiB at 10,000" } else { "" },
        ));
        drop(operator);
    }
    if per_object.len() > 1 {
        let (lo, hi) =
            per_object.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        rows.push(row(
            "time per object, largest / smallest across the sizes".into(),
            format!("{:.2}x", hi / lo),
            "".into(),
            None,
            "<= 1.5x",
        ));
    }

    println!("| figure | operator | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} | {} |", r.figure, r.operator, r.baseline, r.ratio, r.target);
    }
    drop(server);
}
