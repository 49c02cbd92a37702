//! Row decoding and query execution against a real PostgreSQL (SPEC §4 step 2).

mod common;

use std::time::Duration;

use dbqo::db::{run_query, ConnInfo, QueryError, QueryOptions};
use serde_json::{json, Value};

fn options() -> QueryOptions {
    QueryOptions {
        read_only: true,
        max_rows: 100,
        max_row_bytes: 1 << 20,
        max_result_bytes: 64 << 20,
        statement_timeout: Duration::from_secs(10),
    }
}

async fn client(url: &str) -> tokio_postgres::Client {
    let info: ConnInfo = url.parse().unwrap();
    dbqo::db::connect(&info).await.unwrap()
}

const SCHEMA: &str = r#"
CREATE EXTENSION citext;
CREATE EXTENSION hstore;
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE everything (
  id int PRIMARY KEY,
  b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
  n numeric, t text, vc varchar(10), bp char(5), nm name, ct citext, e mood,
  u uuid, j json, jb jsonb,
  tz timestamptz, ts timestamp, d date, tm time, tmz timetz, iv interval,
  by bytea, ip inet, net cidr, mac macaddr,
  ta text[], ia int[], hs hstore, pt point, rg int4range
);
"#;

const ROW: &str = r#"
SET TIME ZONE 'Europe/Berlin';
INSERT INTO everything VALUES (
  1, true, -32768, 2147483647, 9223372036854775807, 1.5, 'NaN',
  '-123456789012345678901234567890.123456789012', 'ünï "code"' || E'\n' || 'line', 'short', 'ab', 'pg_name', 'MiXeD', 'sad',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"k": [1, 2.5, null]}', '{"nested": {"deep": {"x": true}}, "list": ["a", 1]}',
  '2024-01-15 10:30:00.123456+02', '2024-01-15 10:30:00', '2024-02-29', '23:59:59.5', '10:30:00+05:30', '1 year 2 months 3 days 04:05:06.5',
  '\xdeadbeef', '192.168.1.10', '10.0.0.0/8', '08:00:2b:01:02:03',
  ARRAY['a', NULL, 'with "quote"', 'comma,here'], '{{1,2},{3,4}}', 'a=>1, b=>NULL', '(1.5,2)', '[1,10)'
);
INSERT INTO everything (id, f4, f8, n, tz) VALUES
  (2, '-Infinity', 'Infinity', 'NaN', '2024-06-01 00:00:00 America/New_York'),
  (3, NULL, 0.1, '0.000123', 'infinity');
"#;

#[tokio::test]
async fn every_type_decodes_to_its_documented_json_form() {
    let url = common::database("decode").await;
    let setup = common::connect(&url).await;
    setup.batch_execute(SCHEMA).await.unwrap();
    setup.batch_execute(ROW).await.unwrap();

    let mut client = client(&url).await;
    let result =
        run_query(&mut client, "SELECT * FROM everything ORDER BY id", &options()).await.unwrap();
    assert_eq!(result.rows.len(), 3);
    let row = Value::Object(result.rows[0].clone());
    let expected = json!({
        "id": 1, "b": true, "i2": -32768, "i4": 2147483647, "i8": 9223372036854775807_i64,
        "f4": 1.5, "f8": "NaN",
        "n": "-123456789012345678901234567890.123456789012",
        "t": "ünï \"code\"\nline", "vc": "short", "bp": "ab   ", "nm": "pg_name", "ct": "MiXeD", "e": "sad",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "j": {"k": [1, 2.5, null]},
        "jb": {"nested": {"deep": {"x": true}}, "list": ["a", 1]},
        "tz": "2024-01-15T08:30:00.123456Z",
        "ts": "2024-01-15T10:30:00",
        "d": "2024-02-29",
        "tm": "23:59:59.500",
        "tmz": "10:30:00+05:30",
        "iv": "P1Y2M3DT4H5M6.5S",
        "by": "3q2+7w==",
        "ip": "192.168.1.10", "net": "10.0.0.0/8", "mac": "08:00:2b:01:02:03",
        "ta": ["a", null, "with \"quote\"", "comma,here"],
        "ia": [[1, 2], [3, 4]],
        "hs": "\"a\"=>\"1\", \"b\"=>NULL",
        "pt": "(1.5,2)",
        "rg": "[1,10)",
    });
    assert_eq!(row, expected);
    // Column order is the query's, not alphabetical.
    assert_eq!(result.columns.first().map(String::as_str), Some("id"));
    assert_eq!(result.rows[0].keys().nth(1).map(String::as_str), Some("b"));

    let second = &result.rows[1];
    assert_eq!(second["f4"], json!("-Infinity"));
    assert_eq!(second["f8"], json!("Infinity"));
    assert_eq!(second["n"], json!("NaN"));
    assert_eq!(second["tz"], json!("2024-06-01T04:00:00Z"));
    assert_eq!(second["b"], Value::Null, "NULL becomes null");
    let third = &result.rows[2];
    assert_eq!(third["n"], json!("0.000123"));
    assert_eq!(third["f8"], json!(0.1));
    assert_eq!(third["tz"], json!("infinity"));
    assert_eq!(third["hs"], Value::Null, "NULL of an unknown type is still null");
}

#[tokio::test]
async fn multi_statement_queries_keep_session_settings_and_run_read_only() {
    let url = common::database("stmts").await;
    let setup = common::connect(&url).await;
    setup
        .batch_execute(
            "CREATE TABLE t (id int, name text); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
        )
        .await
        .unwrap();
    let mut client = client(&url).await;

    let sql = "SET search_path = pg_catalog, public; -- a comment; with a semicolon\n\
               SET statement_timeout = '5s';\n\
               SELECT id, name, current_setting('statement_timeout') AS timeout FROM t ORDER BY id;";
    let result = run_query(&mut client, sql, &options()).await.unwrap();
    assert_eq!(result.rows.len(), 2);
    assert_eq!(result.rows[0]["timeout"], json!("5s"));

    let err = run_query(&mut client, "INSERT INTO t VALUES (3, 'c') RETURNING id", &options())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");

    // Setup statements are session settings: nothing ends the READ ONLY
    // transaction or turns it writable, and the timeout cannot be lifted.
    for (sql, refused) in [
        ("COMMIT; INSERT INTO t VALUES (9, 'x'); SELECT 1 AS id", 1),
        ("SET transaction_read_only = off; INSERT INTO t VALUES (9, 'x') RETURNING id", 1),
        ("SET TRANSACTION READ WRITE; INSERT INTO t VALUES (9, 'x') RETURNING id", 1),
        ("SET work_mem = '8MB'; DELETE FROM t; SELECT 1 AS id", 2),
    ] {
        let err = run_query(&mut client, sql, &options()).await.unwrap_err();
        assert_eq!(err.reason(), "SetupStatementRefused", "{sql}: {err}");
        assert!(err.to_string().starts_with(&format!("statement {refused} is refused")), "{err}");
    }
    let mut quick = options();
    quick.statement_timeout = Duration::from_millis(500);
    for lift in [
        "SET statement_timeout = 0",
        "SET LOCAL statement_timeout = '1h'",
        "SELECT set_config('statement_timeout', '0', true)",
    ] {
        let sql = format!("{lift}; SELECT pg_sleep(3) IS NULL AS slept");
        let err = run_query(&mut client, &sql, &quick).await.unwrap_err();
        assert_eq!(err.reason(), "QueryTimeout", "{lift}: {err}");
    }

    let mut writable = options();
    writable.read_only = false;
    let result = run_query(
        &mut client,
        "INSERT INTO t VALUES (3, 'c') RETURNING id, point(1,2) AS p",
        &writable,
    )
    .await
    .unwrap();
    assert_eq!(
        result.rows[0]["p"],
        json!("(1,2)"),
        "unknown types work for INSERT ... RETURNING too"
    );
    let count: i64 = setup.query_one("SELECT count(*) FROM t", &[]).await.unwrap().get(0);
    assert_eq!(count, 3);
}

#[tokio::test]
async fn bad_results_are_errors_not_empty_results() {
    let url = common::database("badq").await;
    let mut client = client(&url).await;

    let mut small = options();
    small.max_rows = 5;
    let err =
        run_query(&mut client, "SELECT generate_series(1, 6) AS id", &small).await.unwrap_err();
    assert!(matches!(err, QueryError::TooManyRows(5)), "{err}");
    assert_eq!(err.reason(), "TooManyRows");
    assert!(run_query(&mut client, "SELECT generate_series(1, 5) AS id", &small).await.is_ok());

    // A row over maxRowBytes is kept in place but not decoded (it fails
    // alone when rendered); a result over maxResultBytes fails as a whole.
    let mut bytes = options();
    bytes.max_row_bytes = 4096;
    bytes.max_result_bytes = 10_000;
    let sql = "SELECT i AS id, CASE WHEN i = 2 THEN repeat('x', 5000) ELSE 'small' END AS v \
               FROM generate_series(1, 3) i ORDER BY i";
    let result = run_query(&mut client, sql, &bytes).await.unwrap();
    assert_eq!(result.rows.len(), 3);
    assert_eq!(result.rows[0]["v"], "small");
    assert_eq!(result.rows[1].keys().collect::<Vec<_>>(), [dbqo::db::OVERSIZED_ROW]);
    assert_eq!(result.rows[2]["id"], 3);
    let sql = "SELECT repeat('x', 4000) AS v FROM generate_series(1, 3)";
    let err = run_query(&mut client, sql, &bytes).await.unwrap_err();
    assert!(matches!(err, QueryError::ResultTooLarge(10_000)), "{err}");
    assert_eq!(err.reason(), "ResultTooLarge");

    let err = run_query(&mut client, "SELECT 1 AS a, 2 AS a", &options()).await.unwrap_err();
    assert!(matches!(err, QueryError::DuplicateColumn(ref c) if c == "a"), "{err}");

    let err = run_query(&mut client, "SET work_mem = '4MB'; SET work_mem = '8MB'", &options())
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::NoColumns), "{err}");
    // The rows come last: a SELECT before a setting is a refused setup statement.
    let err = run_query(&mut client, "SELECT 1 AS id; SET work_mem = '8MB'", &options())
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::Setup { index: 1, .. }), "{err}");

    let err = run_query(&mut client, "SELECT 'open", &options()).await.unwrap_err();
    assert!(matches!(err, QueryError::Split(_)), "{err}");

    let mut quick = options();
    quick.statement_timeout = Duration::from_millis(50);
    let err =
        run_query(&mut client, "SELECT pg_sleep(2) IS NULL AS slept", &quick).await.unwrap_err();
    assert_eq!(err.reason(), "QueryTimeout", "{err}");

    let err = run_query(&mut client, "SELECT * FROM missing_table", &options()).await.unwrap_err();
    assert_eq!(err.reason(), "QueryFailed");
    assert!(err.to_string().contains("missing_table"), "{err}");
}
