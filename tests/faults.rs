//! Faults of the database side (SPEC §10, RELIABILITY.md): a network path
//! that stalls, a frozen server, a locked table, killed connections and a
//! killed operator. Each test states its recovery bound, checks that nothing
//! was pruned or lost, and records what it tried for the reliability report.

mod common;

use std::time::{Duration, Instant};

use common::operator::{
    configmaps, create_secret, secret_keys, wait_for_condition, wait_for_configmaps, DbqrBuilder,
    Operator,
};
use common::{eventually, kube_client, shared};
use dbqo_testenv::faults::{pause_processes, resume_processes, StallProxy};
use dbqo_testenv::reliability::{record, Outcome};
use kube::Client;
use serde_json::json;

const ITEMS: &str = "CREATE TABLE items (name text PRIMARY KEY, value text NOT NULL); \
     INSERT INTO items VALUES ('one', 'v0'), ('two', 'v0');";
const ITEM_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.name}}\"\ndata:\n  value: \"{{Row.value}}\"\n";

async fn cluster(prefix: &str) -> (Client, String) {
    let client = kube_client().await;
    common::install_crd(&client).await;
    let namespace = common::namespace(&client, prefix).await;
    (client, namespace)
}

/// A DBQR over `items` with short timeouts, so a stall is past them fast.
async fn items_dbqr(client: &Client, ns: &str, operator: &Operator) {
    DbqrBuilder::new("items", operator)
        .query("SELECT name, value FROM items")
        .template(ITEM_CM)
        .set("/database/statementTimeout", json!("1s"))
        .set("/database/pool/connectTimeout", json!("1s"))
        .create(client, ns)
        .await;
    wait_for_configmaps(client, ns, &["item-one", "item-two"]).await;
    wait_for_condition(client, ns, "items", "Ready=True/Ready").await;
}

/// Waits until ConfigMap `item-one` holds `value`; returns how long it took.
async fn wait_for_value(client: &Client, ns: &str, value: &str, within: Duration) -> Duration {
    let started = Instant::now();
    eventually(within, &format!("item-one = {value}"), || async {
        let cms = configmaps(client, ns).await;
        (cms.get("item-one").and_then(|d| d.get("value")).map(String::as_str) == Some(value))
            .then_some(())
    })
    .await;
    started.elapsed()
}

/// A namespace and a database of `rows` items (`n1`, `n2`, ... all `v0`)
/// with its Secret `db`.
async fn numbered_items(prefix: &str, rows: usize) -> (Client, String, tokio_postgres::Client) {
    let (client, ns) = cluster(prefix).await;
    let url = common::database(prefix).await;
    let db = common::connect(&url).await;
    db.batch_execute(&format!(
        "CREATE TABLE items (name text PRIMARY KEY, value text NOT NULL); \
         INSERT INTO items SELECT 'n' || i, 'v0' FROM generate_series(1, {rows}) i;"
    ))
    .await
    .unwrap();
    create_secret(&client, &ns, "db", secret_keys(&url)).await;
    (client, ns, db)
}

/// Both objects are still there (a failing pass prunes nothing).
async fn assert_nothing_pruned(client: &Client, ns: &str) {
    let names: Vec<String> = configmaps(client, ns).await.into_keys().collect();
    assert_eq!(names, ["item-one", "item-two"], "nothing pruned during the fault");
}

#[tokio::test]
async fn a_network_stall_shows_in_conditions_and_recovers() {
    let (client, ns) = cluster("stall").await;
    let url = common::database("stall").await;
    let db = common::connect(&url).await;
    db.batch_execute(ITEMS).await.unwrap();
    let pg = &shared().postgres;
    let proxy = StallProxy::start(format!("{}:{}", pg.host, pg.port).parse().unwrap()).unwrap();
    let mut keys = secret_keys(&url);
    keys.insert("port", proxy.port().to_string());
    create_secret(&client, &ns, "db", keys).await;
    let operator = Operator::start(&[]);
    items_dbqr(&client, &ns, &operator).await;

    let mut slowest = Duration::ZERO;
    for round in 1..=2 {
        proxy.stall();
        let value = format!("during-stall-{round}");
        db.execute("UPDATE items SET value = $1 WHERE name = 'one'", &[&value]).await.unwrap();
        // Bound: a poll (1 s) + statementTimeout or connectTimeout (1 s) + 3 s grace.
        let message = wait_for_condition(
            &client,
            &ns,
            "items",
            "DatabaseConnected=False/DatabaseUnresponsive",
        )
        .await;
        assert!(message.contains("did not answer"), "{message}");
        wait_for_condition(&client, &ns, "items", "Ready=False/DatabaseUnresponsive").await;
        // Longer than the statement timeout: several passes give up meanwhile.
        let since = operator.totals().await;
        eventually(Duration::from_secs(30), "two more failed passes", || async {
            (operator.totals().await.since(&since).failed >= 2).then_some(())
        })
        .await;
        assert_nothing_pruned(&client, &ns).await;

        proxy.resume();
        slowest = slowest.max(wait_for_value(&client, &ns, &value, Duration::from_secs(30)).await);
        wait_for_condition(&client, &ns, "items", "Ready=True/Ready").await;
    }
    assert_nothing_pruned(&client, &ns).await;
    record("database-stall", &Outcome::passed(2, 2, Some(slowest)));
}

#[tokio::test]
async fn a_frozen_database_server_shows_in_conditions_and_recovers() {
    let (client, ns) = cluster("frozen").await;
    let mut server = common::private_postgres("frozen", None).await;
    let url = server.info.url("postgres");
    let db = common::connect(&url).await;
    db.batch_execute(ITEMS).await.unwrap();
    let mut keys = secret_keys(&url);
    keys.insert("port", server.info.port.to_string());
    create_secret(&client, &ns, "db", keys).await;
    let operator = Operator::start(&[]);
    items_dbqr(&client, &ns, &operator).await;
    db.execute("UPDATE items SET value = 'before-freeze' WHERE name = 'one'", &[]).await.unwrap();
    wait_for_value(&client, &ns, "before-freeze", Duration::from_secs(30)).await;
    drop(db);

    let frozen = pause_processes(server.pid().expect("the server runs")).unwrap();
    let outcome = async {
        wait_for_condition(&client, &ns, "items", "DatabaseConnected=False/DatabaseUnresponsive")
            .await;
        assert_nothing_pruned(&client, &ns).await;
    };
    // The server must run again whatever the assertions say.
    let result = tokio::time::timeout(Duration::from_secs(60), outcome).await;
    resume_processes(&frozen).unwrap();
    result.expect("the frozen server shows in conditions within 60 s");

    let started = Instant::now();
    wait_for_condition(&client, &ns, "items", "Ready=True/Ready").await;
    let db = common::connect(&url).await;
    db.execute("UPDATE items SET value = 'after-thaw' WHERE name = 'one'", &[]).await.unwrap();
    wait_for_value(&client, &ns, "after-thaw", Duration::from_secs(30)).await;
    assert_nothing_pruned(&client, &ns).await;
    record("database-frozen", &Outcome::passed(1, 2, Some(started.elapsed())));
    server.pause();
}

#[tokio::test]
async fn a_database_server_killed_with_sigkill_recovers_and_prunes_nothing() {
    let (client, ns) = cluster("pgkilled").await;
    let mut server = common::private_postgres("pgkilled", None).await;
    let url = server.info.url("postgres");
    common::connect(&url).await.batch_execute(ITEMS).await.unwrap();
    let mut keys = secret_keys(&url);
    keys.insert("port", server.info.port.to_string());
    create_secret(&client, &ns, "db", keys).await;
    let operator = Operator::start(&[]);
    items_dbqr(&client, &ns, &operator).await;

    // The postmaster and every backend at once, as the OOM killer or a
    // node failure would: no shutdown, crash recovery on the next start.
    for pid in dbqo_testenv::faults::process_tree(server.pid().expect("the server runs")) {
        let _ = dbqo_testenv::faults::signal_process(pid, "KILL");
    }
    wait_for_condition(&client, &ns, "items", "DatabaseConnected=False/ConnectionFailed").await;
    assert_nothing_pruned(&client, &ns).await;
    let server = tokio::task::spawn_blocking(move || {
        server.pause(); // reaps the killed postmaster
        server.resume().expect("PostgreSQL recovers and starts");
        server
    })
    .await
    .unwrap();
    let started = Instant::now();
    wait_for_condition(&client, &ns, "items", "Ready=True/Ready").await;
    let db = common::connect(&url).await;
    db.execute("UPDATE items SET value = 'after-crash' WHERE name = 'one'", &[]).await.unwrap();
    wait_for_value(&client, &ns, "after-crash", Duration::from_secs(30)).await;
    assert_nothing_pruned(&client, &ns).await;
    record("database-killed", &Outcome::passed(1, 2, Some(started.elapsed())));
    drop(server);
}

#[tokio::test]
async fn a_locked_table_times_the_query_out_prunes_nothing_and_recovers() {
    let (client, ns) = cluster("locked").await;
    let url = common::database("locked").await;
    let db = common::connect(&url).await;
    db.batch_execute(ITEMS).await.unwrap();
    create_secret(&client, &ns, "db", secret_keys(&url)).await;
    let operator = Operator::start(&[]);
    items_dbqr(&client, &ns, &operator).await;

    let mut locker = common::connect(&url).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE").await.unwrap();
    tx.execute("UPDATE items SET value = 'under-lock' WHERE name = 'one'", &[]).await.unwrap();
    // The server's own timeout answers here: a query, not the path, is slow.
    wait_for_condition(&client, &ns, "items", "Synced=False/QueryTimeout").await;
    wait_for_condition(&client, &ns, "items", "DatabaseConnected=True/Connected").await;
    assert_nothing_pruned(&client, &ns).await;
    tx.commit().await.unwrap();
    let took = wait_for_value(&client, &ns, "under-lock", Duration::from_secs(30)).await;
    wait_for_condition(&client, &ns, "items", "Ready=True/Ready").await;
    record("table-locked", &Outcome::passed(1, 2, Some(took)));
}

#[tokio::test]
async fn terminated_connections_are_replaced_and_nothing_is_pruned() {
    let (client, ns) = cluster("terminated").await;
    let url = common::database("terminated").await;
    let db = common::connect(&url).await;
    db.batch_execute(ITEMS).await.unwrap();
    create_secret(&client, &ns, "db", secret_keys(&url)).await;
    let operator = Operator::start(&[]);
    items_dbqr(&client, &ns, &operator).await;

    let mut killed = 0;
    for _ in 0..3 {
        let since = operator.totals().await;
        let n: i64 = db
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                 AND application_name LIKE 'db-query-operator%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        killed += n;
        operator.wait_for_pass(since, "a pass after the kill", |t| t.ok() && t.pruned == 0).await;
    }
    assert!(killed >= 1, "the operator held a connection to kill");
    db.execute("UPDATE items SET value = 'after-kills' WHERE name = 'one'", &[]).await.unwrap();
    let took = wait_for_value(&client, &ns, "after-kills", Duration::from_secs(30)).await;
    assert_nothing_pruned(&client, &ns).await;
    record("backends-terminated", &Outcome::passed(killed as u64, 2, Some(took)));
}

#[tokio::test]
async fn an_operator_killed_mid_apply_converges_after_a_restart() {
    const ROWS: usize = 400;
    let (client, ns, _db) = numbered_items("killed", ROWS).await;
    let id = common::unique("op");
    let mut operator = Operator::start_with_id(&id, &[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name, value FROM items")
        .template(ITEM_CM)
        .create(&client, &ns)
        .await;
    // Killed while the first pass is part-way through its applies.
    eventually(Duration::from_secs(60), "some objects applied", || async {
        (configmaps(&client, &ns).await.len() >= 20).then_some(())
    })
    .await;
    operator.signal("KILL");
    operator.wait_for_exit(Duration::from_secs(10)).expect("killed");
    let partial = configmaps(&client, &ns).await.len();
    let started = Instant::now();
    let _operator = Operator::start_with_id(&id, &[]);
    let all = eventually(Duration::from_secs(60), "every row's object", || async {
        let cms = configmaps(&client, &ns).await;
        (cms.len() == ROWS).then_some(cms)
    })
    .await;
    wait_for_condition(&client, &ns, "items", "Ready=True/Ready").await;
    for i in 1..=ROWS {
        assert_eq!(all[&format!("item-n{i}")]["value"], "v0", "row n{i}");
    }
    assert!(partial <= ROWS, "{partial}");
    record("operator-killed", &Outcome::passed(1, ROWS as u64, Some(started.elapsed())));
}

/// A small deterministic generator: the seed is printed, so a failing
/// sequence of kill points can be replayed (`DBQO_KILL_SEED`).
struct Points(u64);

impl Points {
    fn new() -> Self {
        let seed = std::env::var("DBQO_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("kill points seed: {seed} (DBQO_KILL_SEED={seed} replays them)");
        Self(seed)
    }

    /// A number in `1..max`.
    fn below(&mut self, max: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        1 + (self.0 >> 33) as usize % (max - 1)
    }
}

/// The ConfigMaps of `ns` as (name → value).
async fn values(client: &Client, ns: &str) -> std::collections::BTreeMap<String, String> {
    configmaps(client, ns)
        .await
        .into_iter()
        .map(|(name, data)| (name, data.get("value").cloned().unwrap_or_default()))
        .collect()
}

/// The objects the rows of `items` ask for.
async fn expected(db: &tokio_postgres::Client) -> std::collections::BTreeMap<String, String> {
    db.query("SELECT name, value FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (format!("item-{}", r.get::<_, String>(0)), r.get(1)))
        .collect()
}

#[tokio::test]
async fn an_operator_killed_at_random_points_of_large_applies_and_prunes_converges_every_time() {
    const ROWS: usize = 1000;
    const KILLS: usize = 10;
    const PRUNED_EACH: usize = 60;
    let (client, ns, db) = numbered_items("killpoints", ROWS).await;
    let id = common::unique("op");
    let mut operator = Operator::start_with_id(&id, &[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name, value FROM items")
        .template(ITEM_CM)
        // Ten prunes of 60 add up to more than the default guard allows in its window.
        .set("/pruneGuard/maxPrunePercent", json!(100))
        .create(&client, &ns)
        .await;
    let converge = |what: String| {
        let (client, ns, db) = (&client, &ns, &db);
        async move {
            let want = expected(db).await;
            eventually(Duration::from_secs(120), &what, || async {
                (values(client, ns).await == want).then_some(())
            })
            .await;
        }
    };
    converge("the first pass".into()).await;

    let mut points = Points::new();
    let (mut mid_apply, mut mid_prune, mut slowest) = (0, 0, Duration::ZERO);
    for round in 1..=2 * KILLS {
        let pruning = round > KILLS;
        // Prunes are quick: one API call at a time makes a window to kill in.
        let args: &[&str] = if pruning { &["--concurrency", "1"] } else { &[] };
        let before = values(&client, &ns).await;
        let (work, target) = if pruning {
            let names: Vec<String> =
                before.keys().take(PRUNED_EACH).map(|n| n["item-".len()..].to_owned()).collect();
            db.execute("DELETE FROM items WHERE name = ANY($1)", &[&names]).await.unwrap();
            (PRUNED_EACH, points.below(PRUNED_EACH))
        } else {
            let value = format!("v{round}");
            db.execute("UPDATE items SET value = $1", &[&value]).await.unwrap();
            (ROWS, points.below(ROWS))
        };
        // Killed once `target` of the `work` changes are made.
        let done = eventually(Duration::from_secs(120), "the kill point", || async {
            let now = values(&client, &ns).await;
            let done = if pruning {
                before.len() - now.len()
            } else {
                now.values().filter(|v| **v == format!("v{round}")).count()
            };
            (done >= target).then_some(done)
        })
        .await;
        operator.signal("KILL");
        operator.wait_for_exit(Duration::from_secs(10)).expect("killed");
        if done < work {
            if pruning {
                mid_prune += 1
            } else {
                mid_apply += 1
            }
        }
        let started = Instant::now();
        operator = Operator::start_with_id(&id, args);
        converge(format!("round {round}: every row's object, nothing else")).await;
        slowest = slowest.max(started.elapsed());
    }
    let left = values(&client, &ns).await;
    assert_eq!(left.len(), ROWS - KILLS * PRUNED_EACH, "nothing orphaned, nothing wrongly deleted");
    eprintln!("kills mid-apply: {mid_apply} of {KILLS}; mid-prune: {mid_prune} of {KILLS}; slowest convergence {slowest:?}");
    assert!(mid_apply >= 1, "some kills land part-way through an apply");
    record(
        "operator-killed-20",
        &Outcome::passed(2 * KILLS as u64, (2 * KILLS * ROWS) as u64, Some(slowest))
            .with_note(format!("{mid_apply} kills mid-apply, {mid_prune} mid-prune")),
    );
}

const ITEM_DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: \"item-{{Row.name}}\"
spec:
  replicas: 1
  selector: {matchLabels: {app: \"item-{{Row.name}}\"}}
  template:
    metadata: {labels: {app: \"item-{{Row.name}}\"}}
    spec: {containers: [{name: c, image: busybox}]}
";

/// A Deployment's status changes while the path to the database stalls
/// (its spec edited by hand, then repaired by the operator: each step a new
/// observedGeneration). The write-back fails by its deadline, shows in the
/// condition, and lands after the stall with the latest status.
#[tokio::test]
async fn a_write_back_under_a_network_stall_is_retried_and_lands() {
    let (client, ns) = cluster("wbstall").await;
    let url = common::database("wbstall").await;
    let db = common::connect(&url).await;
    db.batch_execute(&format!("{ITEMS} ALTER TABLE items ADD COLUMN note text;")).await.unwrap();
    let pg = &shared().postgres;
    let proxy = StallProxy::start(format!("{}:{}", pg.host, pg.port).parse().unwrap()).unwrap();
    let mut keys = secret_keys(&url);
    keys.insert("port", proxy.port().to_string());
    create_secret(&client, &ns, "db", keys).await;
    let operator = Operator::start(&[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name, value FROM items")
        .template(ITEM_DEPLOYMENT)
        .set(
            "/statusUpdateQueryTemplate",
            json!("UPDATE items SET note = {{Resource.status.observedGeneration}} WHERE name = {{Row.name}}"),
        )
        .set("/database/statementTimeout", json!("1s"))
        .set("/database/pool/connectTimeout", json!("1s"))
        .create(&client, &ns)
        .await;
    let deployments =
        kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns);
    let generation = |name: &'static str| {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get_opt(name).await.ok()??;
            d.status?.observed_generation.map(|g| g.to_string())
        }
    };
    let note = |name: &'static str| {
        let db = &db;
        async move {
            let sql = "SELECT note FROM items WHERE name = $1";
            let row = db.query_one(sql, &[&&name["item-".len()..]]).await.ok()?;
            row.get::<_, Option<String>>(0)
        }
    };
    // Written back: each row holds its Deployment's observedGeneration.
    let written = || async {
        for name in ["item-one", "item-two"] {
            let now = generation(name).await?;
            (note(name).await? == now).then_some(())?;
        }
        generation("item-one").await
    };
    let first = eventually(Duration::from_secs(30), "the first write-back", written).await;
    wait_for_condition(&client, &ns, "items", "StatusWriteBack=True/Written").await;

    proxy.stall();
    let edit = json!({"spec": {"replicas": 2}});
    let params = kube::api::PatchParams::default();
    deployments.patch("item-one", &params, &kube::api::Patch::Merge(edit)).await.unwrap();
    let message =
        wait_for_condition(&client, &ns, "items", "StatusWriteBack=False/StatusWriteBackFailed")
            .await;
    assert!(message.contains("did not answer"), "{message}");
    proxy.resume();
    let started = Instant::now();
    let last = eventually(Duration::from_secs(30), "the latest status written back", || async {
        let last = written().await?;
        (last != first).then_some(last)
    })
    .await;
    wait_for_condition(&client, &ns, "items", "StatusWriteBack=True/Written").await;
    let values: Vec<String> = db
        .query("SELECT value FROM items ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(values, ["v0", "v0"], "no row corrupted by the write-back");
    record(
        "writeback-stall",
        &Outcome::passed(1, 2, Some(started.elapsed()))
            .with_note(format!("observedGeneration {first} before, {last} written after")),
    );
}
