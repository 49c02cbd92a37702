//! The operator at scale, on the real components (a program, not a test):
//!
//!   cargo bench -p db-query-operator --bench scale [-- --dbqrs 1000 --rows 10 --big 10000 --idle 60]
//!
//! Starts its own control plane and a PostgreSQL with `max_connections = 100`
//! (or uses `DBQO_TESTENV`), runs the release operator, and prints one table:
//! - N DBQRs x R rows (timestamp mode, changePollInterval 10s) from one Secret:
//!   time from the first create to every object existing, the most connections
//!   the operator held, whether another client was ever refused, connections
//!   and API requests per minute at idle, RSS at idle;
//! - one DBQR x `--big` rows: time to converge, RSS at idle;
//! - RSS with no DBQR.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::operator::{create_secret, DbqrBuilder, Operator};
use dbqo::api::DatabaseQueryResource;
use futures_util::StreamExt;
use kube::api::Api;
use serde_json::json;

struct ScaleArgs {
    dbqrs: usize,
    rows: usize,
    big: usize,
    idle: u64,
}

fn args() -> ScaleArgs {
    let mut args = ScaleArgs { dbqrs: 1000, rows: 10, big: 10_000, idle: 60 };
    let list: Vec<String> = std::env::args().collect();
    for pair in list.windows(2) {
        let value = || pair[1].parse().expect("a number");
        match pair[0].as_str() {
            "--dbqrs" => args.dbqrs = value(),
            "--rows" => args.rows = value(),
            "--big" => args.big = value(),
            "--idle" => args.idle = value() as u64,
            _ => {}
        }
    }
    args
}

fn sum(before: &common::RequestCounts, after: &common::RequestCounts, verbs: &[&str]) -> f64 {
    common::requests_between(before, after, |verb, _| verbs.contains(&verb))
}

/// Counts the operator's connections every 100 ms, each time as a new client.
struct Sampler {
    peak: Arc<AtomicI64>,
    last: Arc<AtomicI64>,
    refused: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(url: String) -> Self {
        let sampler = Self {
            peak: Arc::default(),
            last: Arc::default(),
            refused: Arc::default(),
            stop: Arc::default(),
        };
        let (peak, last, refused, stop) = (
            sampler.peak.clone(),
            sampler.last.clone(),
            sampler.refused.clone(),
            sampler.stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((other, connection)) => {
                        tokio::spawn(connection);
                        if let Ok(row) = other
                            .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'db-query-operator%'", &[])
                            .await
                        {
                            let held: i64 = row.get(0);
                            peak.fetch_max(held, Ordering::SeqCst);
                            last.store(held, Ordering::SeqCst);
                        }
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        sampler
    }
}

/// Waits until the DBQRs in `ns` report `objects` objects in all, all Ready.
async fn converged(client: &kube::Client, ns: &str, dbqrs: usize, objects: usize) {
    let api: Api<DatabaseQueryResource> = Api::namespaced(client.clone(), ns);
    loop {
        if let Ok(list) = api.list(&Default::default()).await {
            let ready = list.items.iter().filter(|d| {
                d.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                })
            });
            let (count, total) = ready.fold((0, 0), |(n, t), d| {
                (n + 1, t + d.status.as_ref().and_then(|s| s.object_count).unwrap_or(0) as usize)
            });
            if count == dbqrs && total == objects {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const ITEM_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"g{{Row.grp}}-{{Row.id}}\"\ndata:\n  value: \"{{Row.value}}\"\n";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let started = Instant::now();
    let server = common::private_postgres("bench", Some(100)).await;
    let url = server.info.url("postgres");
    let db = common::connect(&url).await;
    db.batch_execute(&format!(
        "CREATE TABLE items AS SELECT g AS grp, i AS id, 'v' || i AS value, now() AS touched
           FROM generate_series(1, {}) g, generate_series(1, {}) i;
         CREATE INDEX ON items (grp);
         CREATE TABLE big AS SELECT 1 AS grp, i AS id, 'v' || i AS value FROM generate_series(1, {}) i;",
        args.dbqrs, args.rows, args.big
    ))
    .await
    .unwrap();
    let client = common::kube_client().await;
    common::install_crd(&client).await;
    eprintln!("environment ready in {:.1?}", started.elapsed());

    let operator = Operator::start(&[]);
    // Let it settle before reading its resting size.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_empty = common::rss_mib(operator.pid());

    let ns = common::namespace(&client, "bench").await;
    create_secret(&client, &ns, "db", common::server_secret_keys(&server.info, "postgres")).await;
    let sampler = Sampler::start(url.clone());

    // N DBQRs x R rows.
    let t0 = Instant::now();
    let creates = (1..=args.dbqrs).map(|g| {
        DbqrBuilder::new(&format!("g{g}"), &operator)
            .query(&format!("SELECT grp, id, value FROM items WHERE grp = {g} ORDER BY id"))
            .template(ITEM_CM)
            .set("/pollInterval", json!("60s"))
            .set("/changeDetection", json!({"tableName": "items", "timestampColumn": "touched", "changePollInterval": "10s"}))
            .create(&client, &ns)
    });
    futures_util::stream::iter(creates).buffer_unordered(16).collect::<Vec<_>>().await;
    let created = t0.elapsed();
    converged(&client, &ns, args.dbqrs, args.dbqrs * args.rows).await;
    let converge = t0.elapsed();
    eprintln!("{} DBQRs created in {created:.1?}, converged in {converge:.1?}", args.dbqrs);

    // Idle: nothing changes for `idle` seconds.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = common::request_counts(&client).await;
    let peak_converge = sampler.peak.swap(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(args.idle)).await;
    let after = common::request_counts(&client).await;
    let minutes = args.idle as f64 / 60.0;
    let idle_writes = sum(&before, &after, &["POST", "PUT", "PATCH", "DELETE", "APPLY"]) / minutes;
    let idle_reads = sum(&before, &after, &["GET", "LIST"]) / minutes;
    let idle_peak = sampler.peak.load(Ordering::SeqCst);
    let idle_last = sampler.last.load(Ordering::SeqCst);
    let rss_many = common::rss_mib(operator.pid());

    // One DBQR x `big` rows, alone.
    let big_ns = common::namespace(&client, "bench-big").await;
    create_secret(&client, &big_ns, "db", common::server_secret_keys(&server.info, "postgres"))
        .await;
    let t1 = Instant::now();
    DbqrBuilder::new("big", &operator)
        .query("SELECT grp, id, value FROM big ORDER BY id")
        .template(ITEM_CM)
        .set("/pollInterval", json!("60s"))
        .set("/maxRows", json!(args.big + 1))
        .create(&client, &big_ns)
        .await;
    converged(&client, &big_ns, 1, args.big).await;
    let big_converge = t1.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss_big = common::rss_mib(operator.pid()) - rss_many;
    sampler.stop.store(true, Ordering::SeqCst);

    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!("| RSS, no DBQR | {rss_empty:.1} MiB | <= 30 MiB |");
    println!(
        "| {} DBQRs x {} rows: created -> all {} objects exist, all Ready | {:.1} s (creating the DBQRs took {:.1} s) | all converge |",
        args.dbqrs, args.rows, args.dbqrs * args.rows, converge.as_secs_f64(), created.as_secs_f64()
    );
    println!(
        "| connections held, most at any sample (budget 10; PostgreSQL max_connections 100) | {peak_converge} while converging, {idle_peak} at idle ({idle_last} at its end) | <= 10 |"
    );
    println!(
        "| another client refused a connection | {} times | 0 |",
        sampler.refused.load(Ordering::SeqCst)
    );
    println!("| API writes per minute at idle | {idle_writes:.1} | 0 |");
    println!("| API reads (GET/LIST) per minute at idle | {idle_reads:.1} | 0 |");
    println!("| RSS with {} DBQRs, idle | {rss_many:.1} MiB | <= 150 MiB |", args.dbqrs);
    println!(
        "| 1 DBQR x {} rows: created -> converged | {:.1} s | |",
        args.big,
        big_converge.as_secs_f64()
    );
    println!(
        "| RSS added by 1 DBQR x {} rows, idle | {rss_big:.1} MiB | <= 80 MiB in all |",
        args.big
    );
    drop(operator);
    drop(server);
}
