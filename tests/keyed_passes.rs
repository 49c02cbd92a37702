//! Key-scoped passes (`changeDetection.keyColumn` with the keyed trigger of
//! `trigger-sql --key-column`): a notification naming keys runs a pass of
//! those rows only, and keyed and full passes end in the same objects.
//! The full poll is an hour, so only notifications explain a reaction.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::eventually;
use common::operator::{
    configmaps, trigger_sql_with, wait_for_condition, wait_for_listen, DbqrBuilder, Operator,
};
use serde_json::json;

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, value text NOT NULL);";

fn template(prefix: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{prefix}-{{{{Row.id}}}}\"\ndata:\n  value: \"{{{{Row.value}}}}\"\n"
    )
}

/// A DBQR over `items` whose objects are named `<prefix>-<id>`, following
/// the notifications of channel `items`; keyed when `key_column` is given.
async fn items_dbqr(
    client: &kube::Client,
    ns: &str,
    operator: &Operator,
    prefix: &str,
    key_column: Option<&str>,
) {
    let mut detection = json!({ "mode": "notify", "channel": "items" });
    if let Some(column) = key_column {
        detection["keyColumn"] = json!(column);
    }
    DbqrBuilder::new(prefix, operator)
        .query("SELECT id, value FROM items")
        .template(&template(prefix))
        .set("/pollInterval", json!("1h"))
        .set("/changeDetection", detection)
        // TRUNCATE and large deletes below mean it: the guard has its own tests.
        .set("/pruneGuard", json!({ "confirmationInterval": "0s" }))
        .create(client, ns)
        .await;
}

fn install_keyed_trigger() -> String {
    trigger_sql_with(&["--table", "public.items", "--channel", "items", "--key-column", "id"])
}

/// The table as objects of `prefix`: name -> value.
async fn expected(db: &tokio_postgres::Client, prefix: &str) -> BTreeMap<String, String> {
    db.query("SELECT id, value FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (format!("{prefix}-{}", row.get::<_, i32>(0)), row.get::<_, String>(1)))
        .collect()
}

/// The ConfigMaps of `prefix`: name -> value.
async fn objects(client: &kube::Client, ns: &str, prefix: &str) -> BTreeMap<String, String> {
    configmaps(client, ns)
        .await
        .into_iter()
        .filter(|(name, _)| name.starts_with(&format!("{prefix}-")))
        .map(|(name, data)| (name, data.get("value").cloned().unwrap_or_default()))
        .collect()
}

/// Waits until the DBQR of `prefix` has its `count` objects, the operator
/// listens and both first passes are over (the start's and the one
/// listening runs: a notification may have been missed before it, and both
/// are full); the pass totals then.
async fn settled(
    client: &kube::Client,
    ns: &str,
    db: &tokio_postgres::Client,
    operator: &Operator,
    (prefix, count): (&str, usize),
) -> common::operator::PassTotals {
    eventually(Duration::from_secs(30), &format!("{count} objects"), || async {
        (objects(client, ns, prefix).await.len() == count).then_some(())
    })
    .await;
    wait_for_listen(db).await;
    eventually(Duration::from_secs(30), "the first two passes", || async {
        (operator.totals().await.passes >= 2).then_some(())
    })
    .await;
    operator.totals().await
}

/// Waits until both DBQRs' objects are the table's rows.
async fn converge(client: &kube::Client, ns: &str, db: &tokio_postgres::Client, what: &str) {
    let last = std::cell::RefCell::new(String::new());
    let done = eventually(Duration::from_secs(20), what, || async {
        let mut differ = Vec::new();
        for prefix in ["keyed", "full"] {
            let (want, have) = (expected(db, prefix).await, objects(client, ns, prefix).await);
            if want != have {
                let missing = want.iter().filter(|(k, v)| have.get(*k) != Some(v)).count();
                let extra = have.keys().filter(|k| !want.contains_key(*k)).count();
                differ.push(format!("{prefix}: {missing} missing or stale, {extra} extra"));
            }
        }
        *last.borrow_mut() = differ.join("; ");
        differ.is_empty().then_some(())
    });
    // The last difference seen says what went wrong.
    if tokio::time::timeout(Duration::from_secs(25), done).await.is_err() {
        panic!("{what}: {}", last.borrow());
    }
}

/// A small seeded generator: the seed is printed, so a failure replays.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One random statement (or a transaction of a few) against `items`.
async fn random_change(db: &tokio_postgres::Client, random: &mut Random, next_id: &mut i32) {
    let ids: Vec<i32> =
        db.query("SELECT id FROM items", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let any = |random: &mut Random| ids.get(random.below(ids.len() as u64) as usize).copied();
    let value = random.below(1000);
    let sql = match (random.below(100), any(random)) {
        (0..=1, _) => "TRUNCATE items".to_owned(),
        (2..=29, _) | (_, None) => {
            *next_id += 1;
            format!("INSERT INTO items VALUES ({next_id}, 'v{value}')")
        }
        (30..=54, Some(id)) => format!("UPDATE items SET value = 'v{value}' WHERE id = {id}"),
        (55..=69, Some(id)) => {
            // The key changes: the object of the old key goes, one of the new comes.
            *next_id += 1;
            format!("UPDATE items SET id = {next_id} WHERE id = {id}")
        }
        (70..=84, Some(id)) => format!("DELETE FROM items WHERE id = {id}"),
        (85..=92, _) => {
            let m = random.below(5);
            format!("UPDATE items SET value = 'm{value}' WHERE id % 5 = {m}")
        }
        (_, Some(id)) => {
            *next_id += 2;
            let (a, b) = (*next_id - 1, *next_id);
            format!(
                "BEGIN; INSERT INTO items VALUES ({a}, 'v{value}'), ({b}, 'v{value}'); \
                 DELETE FROM items WHERE id = {id}; COMMIT"
            )
        }
    };
    db.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Under a random mix of inserts, updates (key changes among them),
/// deletes, multi-row statements, transactions and truncates, a keyed DBQR
/// and a full one over the same rows both end in the table's rows, batch
/// after batch, and again after the operator restarts; most of the keyed
/// DBQR's passes are keyed.
#[tokio::test]
async fn keyed_and_full_passes_converge_to_the_same_objects_under_a_random_mix() {
    let s = common::operator::setup("keyedmix", SCHEMA).await;
    let (client, ns, db) = (s.client, s.namespace, s.db);
    db.batch_execute("INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 40) i")
        .await
        .unwrap();
    db.batch_execute(&install_keyed_trigger()).await.unwrap();
    let mut operator = Operator::start(&[]);
    items_dbqr(&client, &ns, &operator, "keyed", Some("id")).await;
    items_dbqr(&client, &ns, &operator, "full", None).await;
    converge(&client, &ns, &db, "the first passes").await;
    wait_for_listen(&db).await;

    // KEYED_MIX_SEED replays a failed run.
    let seed =
        std::env::var("KEYED_MIX_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        }) | 1;
    println!("random seed {seed} (KEYED_MIX_SEED)");
    let mut random = Random(seed);
    let mut next_id = 1000;
    for round in 0..2 {
        let before = operator.totals().await;
        for batch in 0..15 {
            for _ in 0..1 + random.below(6) {
                random_change(&db, &mut random, &mut next_id).await;
            }
            converge(&client, &ns, &db, &format!("round {round}, batch {batch} (seed {seed})"))
                .await;
        }
        let done = operator.totals().await.since(&before);
        println!("round {round}: {done:?}");
        assert!(done.ok(), "{done:?}");
        // Each batch runs at least one keyed pass (a truncate alone is full).
        assert!(done.keyed >= 8, "{} of {} passes keyed", done.keyed, done.passes);
        if round == 0 {
            operator = operator.restart(&[]);
            converge(&client, &ns, &db, "after the restart").await;
            wait_for_listen(&db).await;
        }
    }
}

/// A keyed notification reads the rows of its keys, not the DBQR's: one
/// changed row of 300 reads one row, writes one object and runs no full
/// pass, also after a restart (whose first pass is full).
#[tokio::test]
async fn a_keyed_pass_reads_and_writes_only_the_rows_of_its_keys() {
    let s = common::operator::setup("keyedscope", SCHEMA).await;
    let (client, ns, db) = (s.client, s.namespace, s.db);
    db.batch_execute("INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 300) i")
        .await
        .unwrap();
    db.batch_execute(&install_keyed_trigger()).await.unwrap();
    let mut operator = Operator::start(&[]);
    items_dbqr(&client, &ns, &operator, "keyed", Some("id")).await;
    for life in ["first", "restarted"] {
        let before = settled(&client, &ns, &db, &operator, ("keyed", 300)).await;
        assert_eq!(before.keyed, 0, "{life}: {before:?}");
        db.batch_execute(&format!("UPDATE items SET value = '{life}' WHERE id = 7")).await.unwrap();
        eventually(Duration::from_secs(5), "the changed object", || async {
            (objects(&client, &ns, "keyed").await.get("keyed-7")? == life).then_some(())
        })
        .await;
        let done = operator.totals().await.since(&before);
        assert_eq!((done.passes, done.keyed, done.rows, done.applied), (1, 1, 1, 1), "{life}");
        if life == "first" {
            operator = operator.restart(&[]);
        }
    }
    // Anyone who may NOTIFY on the channel can send any payload: keys that
    // are no integer match no row of an integer key, and the pass succeeds.
    let before = operator.totals().await;
    db.batch_execute(r#"NOTIFY items, '["abc", "99999999999999999999", "-1", "8"]'"#)
        .await
        .unwrap();
    let done = operator.wait_for_pass(before, "the forged notification's pass", |_| true).await;
    assert_eq!((done.passes, done.failed, done.keyed, done.rows), (1, 0, 1, 1), "{done:?}");
}

/// A text key column works the same way (compared as text).
#[tokio::test]
async fn a_text_key_column_runs_keyed_passes() {
    let schema = "CREATE TABLE named (name text PRIMARY KEY, value text NOT NULL);
        INSERT INTO named VALUES ('a b', '1'), ('c', '2');";
    let s = common::operator::setup("keyedtext", schema).await;
    let (client, ns, db) = (s.client, s.namespace, s.db);
    db.batch_execute(&trigger_sql_with(&[
        "--table",
        "named",
        "--channel",
        "named",
        "--key-column",
        "name",
    ]))
    .await
    .unwrap();
    let operator = Operator::start(&[]);
    DbqrBuilder::new("named", &operator)
        .query("SELECT name, md5(name) AS id, value FROM named")
        .template(&template("named"))
        .set("/pollInterval", json!("1h"))
        .set("/changeDetection", json!({"mode": "notify", "channel": "named", "keyColumn": "name"}))
        .create(&client, &ns)
        .await;
    let before = settled(&client, &ns, &db, &operator, ("named", 2)).await;
    db.batch_execute("UPDATE named SET value = 'changed' WHERE name = 'a b'").await.unwrap();
    eventually(Duration::from_secs(5), "the changed object", || async {
        objects(&client, &ns, "named").await.values().any(|v| v == "changed").then_some(())
    })
    .await;
    let done = operator.totals().await.since(&before);
    assert_eq!((done.passes, done.keyed, done.rows, done.applied), (1, 1, 1, 1), "{done:?}");
}

/// A key column the query does not return fails every pass with a message
/// that names it; one in timestamp mode is an invalid spec.
#[tokio::test]
async fn a_key_column_the_query_lacks_or_timestamp_mode_is_refused_clearly() {
    let s = common::operator::setup("keyedbad", SCHEMA).await;
    let (client, ns) = (s.client, s.namespace);
    let operator = Operator::start(&[]);
    DbqrBuilder::new("lacks", &operator)
        .query("SELECT id, value FROM items")
        .template(&template("lacks"))
        .set(
            "/changeDetection",
            json!({ "mode": "notify", "channel": "items", "keyColumn": "key" }),
        )
        .create(&client, &ns)
        .await;
    let message = wait_for_condition(&client, &ns, "lacks", "Synced=False/QueryFailed").await;
    assert!(
        message.contains("keyColumn \"key\" is not a column of the query's result"),
        "{message}"
    );
    DbqrBuilder::new("timestamp", &operator)
        .query("SELECT id, value FROM items")
        .template(&template("timestamp"))
        .set(
            "/changeDetection",
            json!({ "mode": "timestamp", "tableName": "items", "timestampColumn": "id", "keyColumn": "id" }),
        )
        .create(&client, &ns)
        .await;
    let message = wait_for_condition(&client, &ns, "timestamp", "Synced=False/InvalidSpec").await;
    assert!(message.contains("keyColumn needs notify mode"), "{message}");
}
