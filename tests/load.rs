//! Load (SPEC §10, RELIABILITY.md): many DBQRs and their objects on one
//! operator under continuous row churn. Checks: the operator's RSS stays
//! under a bound, its connections under the budget, no actor stuck (a last
//! change to every row reaches every object), and no change missed (the
//! cluster equals the rows at the end, every row the churn touched
//! included).
//!
//! Its size is a parameter. The test command runs a short version; the
//! full one (500 DBQRs, 50,000 objects, 10 minutes) is
//!
//! ```text
//! DBQO_LOAD_DBQRS=500 DBQO_LOAD_ROWS=100 DBQO_LOAD_SECONDS=600 DBQO_LOAD_RATE=100 \
//! DBQO_LOAD_POLL=10s DBQO_LOAD_RSS_MIB=400 DBQO_LOAD_CREATE_SECONDS=1200 DBQO_LOAD_SETTLE_SECONDS=300 \
//! DBQO_RELIABILITY_DIR=$PWD/testenv/records \
//! target/debug/testenv run -- cargo nextest run --release -p db-query-operator --test load --no-capture
//! ```
//!
//! (`--release`: the operator as it ships; the debug build renders tens of
//! thousands of rows several times slower.)

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::operator::{create_secret, secret_keys, DbqrBuilder, Operator};
use dbqo::api::DatabaseQueryResource;
use dbqo_testenv::reliability::{record, Outcome};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use serde_json::json;

const BUDGET: i64 = 5;

fn param<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Every object of the test, by name, its value.
async fn objects(api: &Api<ConfigMap>) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    let mut params =
        ListParams::default().labels("app.kubernetes.io/managed-by=db-query-operator").limit(5000);
    loop {
        let page = api.list(&params).await.expect("list objects");
        for cm in page.items {
            let value = cm.data.and_then(|d| d.get("value").cloned()).unwrap_or_default();
            all.insert(cm.metadata.name.unwrap_or_default(), value);
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return all,
        }
    }
}

/// What the rows ask for.
async fn rows(db: &tokio_postgres::Client) -> BTreeMap<String, String> {
    db.query("SELECT grp, id, value FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (format!("g{}-{}", r.get::<_, i32>(0), r.get::<_, i32>(1)), r.get(2)))
        .collect()
}

/// Inserts, updates and deletes at `rate` a second, spread over the
/// groups, until `stop`; counts them in `changes`.
async fn churn(
    url: String,
    groups: i32,
    rows: i32,
    rate: u64,
    stop: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
) {
    let db = common::connect(&url).await;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        n += 1;
        // A spread that visits every group and row over time.
        let grp = (n.wrapping_mul(7919) % groups as u64) as i32;
        let id = (n.wrapping_mul(104_729) % (rows as u64 + 5)) as i32 + 1;
        let sql = match n % 3 {
            0 => "INSERT INTO items VALUES ($1, $2, 'c' || $3::text) ON CONFLICT (grp, id) DO UPDATE SET value = EXCLUDED.value",
            1 => "UPDATE items SET value = 'u' || $3::text WHERE grp = $1 AND id = $2",
            _ => "DELETE FROM items WHERE grp = $1 AND id = $2 AND $3::text IS NOT NULL",
        };
        db.execute(sql, &[&grp, &id, &(n as i64).to_string()]).await.unwrap();
        changes.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn many_dbqrs_under_row_churn_miss_no_change_and_stay_bounded() {
    let groups: i32 = param("DBQO_LOAD_DBQRS", 50);
    let per_group: i32 = param("DBQO_LOAD_ROWS", 20);
    let seconds: u64 = param("DBQO_LOAD_SECONDS", 30);
    let rate: u64 = param("DBQO_LOAD_RATE", 20);
    let poll: String = param("DBQO_LOAD_POLL", "2s".to_owned());
    let rss_bound: f64 = param("DBQO_LOAD_RSS_MIB", 100.0);

    let s = common::operator::setup(
        "load",
        &format!(
            "CREATE TABLE items (grp int, id int, value text NOT NULL, PRIMARY KEY (grp, id)); \
             INSERT INTO items SELECT g, i, 'v0' FROM generate_series(0, {}) g, generate_series(1, {per_group}) i;",
            groups - 1
        ),
    )
    .await;
    let ns = s.namespace.as_str();
    create_secret(&s.client, ns, "db", secret_keys(&s.url)).await;
    let operator = Operator::start(&["--max-connections-per-database", &BUDGET.to_string()]);
    let started = Instant::now();
    for g in 0..groups {
        DbqrBuilder::new(&format!("g{g}"), &operator)
            .query(&format!("SELECT id, value FROM items WHERE grp = {g}"))
            .template(&format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"g{g}-{{{{Row.id}}}}\"\ndata:\n  value: \"{{{{Row.value}}}}\"\n"
            ))
            .set("/pollInterval", json!(poll))
            // Churn deletes rows for the whole run: the guard's window would
            // (rightly) hold some of them, which this test does not measure.
            .set("/pruneGuard/maxPrunePercent", json!(100))
            .create(&s.client, ns)
            .await;
    }
    let api = Api::<ConfigMap>::namespaced(s.client.clone(), ns);
    let total = (groups * per_group) as usize;
    // Counted from the DBQRs' status (one small list), then checked once:
    // listing every object at a poll's pace would load the API server more
    // than the operator does.
    let dbqrs = Api::<DatabaseQueryResource>::namespaced(s.client.clone(), ns);
    let counted = || async {
        let list = dbqrs.list(&ListParams::default()).await.ok()?;
        let sum: i64 = list.items.iter().filter_map(|d| d.status.as_ref()?.object_count).sum();
        (sum == total as i64).then_some(())
    };
    let creating = Duration::from_secs(param("DBQO_LOAD_CREATE_SECONDS", 600));
    loop {
        if counted().await.is_some() {
            break;
        }
        assert!(started.elapsed() < creating, "{total} objects not created within {creating:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(objects(&api).await.len(), total, "every object exists");
    let created_in = started.elapsed();

    // Churn, sampling RSS and connections meanwhile.
    let (stop, changes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer =
        tokio::spawn(churn(s.url.clone(), groups, per_group, rate, stop.clone(), changes.clone()));
    let (mut peak_rss, mut peak_connections) = (0f64, 0i64);
    let churn_until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < churn_until {
        peak_rss = peak_rss.max(common::rss_mib(operator.pid()));
        let n: i64 = s
            .db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'db-query-operator%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        peak_connections = peak_connections.max(n);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    // No actor stuck: one last change to every row reaches every object.
    s.db.batch_execute("UPDATE items SET value = value || '-final'").await.unwrap();
    let want = rows(&s.db).await;
    let settle = Instant::now();
    let deadline = Duration::from_secs(param("DBQO_LOAD_SETTLE_SECONDS", 120));
    let mut last = BTreeMap::new();
    while settle.elapsed() < deadline {
        last = objects(&api).await;
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let missed: Vec<_> =
        want.iter().filter(|(k, v)| last.get(*k) != Some(v)).map(|(k, _)| k).take(5).collect();
    let extra: Vec<_> = last.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "missed {missed:?}, left over {extra:?} (first five)"
    );
    let settled_in = settle.elapsed();
    peak_rss = peak_rss.max(common::rss_mib(operator.pid()));
    let changes = changes.load(Ordering::SeqCst);
    eprintln!(
        "{groups} DBQRs, {total} objects created in {created_in:?}; {changes} row changes in {seconds} s; \
         settled in {settled_in:?}; peak RSS {peak_rss:.0} MiB (bound {rss_bound}); peak connections {peak_connections} (budget {BUDGET})"
    );
    assert!(peak_rss <= rss_bound, "RSS {peak_rss:.0} MiB over the bound of {rss_bound} MiB");
    assert!(
        peak_connections <= BUDGET,
        "{peak_connections} connections over the budget of {BUDGET}"
    );
    // The full run is recorded apart: the test command runs the short one.
    record(
        if total >= 50_000 { "load-churn-full" } else { "load-churn" },
        &Outcome::passed(changes, want.len() as u64, Some(settled_in)).with_note(format!(
            "{groups} DBQRs, {total} objects, {seconds} s churn; peak RSS {peak_rss:.0} MiB, peak connections {peak_connections}"
        )),
    );
}
