//! `db-query-operator render`: previews from JSON rows and from a live
//! database, and one clear error line per problem.

mod common;

use std::{path::Path, process::Command};

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn render(dir: &Path, dbqr: &str, extra: &[&str]) -> Outcome {
    let file = dir.join("dbqr.yaml");
    std::fs::write(&file, dbqr).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_db-query-operator"))
        .arg("render")
        .arg("-f")
        .arg(&file)
        .args(extra)
        .output()
        .unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn with_rows(dbqr: &str, rows: serde_json::Value) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let rows_file = dir.path().join("rows.json");
    std::fs::write(&rows_file, rows.to_string()).unwrap();
    render(dir.path(), dbqr, &["--rows", rows_file.to_str().unwrap()])
}

fn dbqr(spec_extra: &str, template: &str) -> String {
    let template: String = template.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: dbqo.dev/v1alpha1\nkind: DatabaseQueryResource\nmetadata:\n  name: users\n  namespace: team-a\nspec:\n  pollInterval: 30s\n  database:\n    connectionSecretRef:\n      name: db\n  query: SELECT id, name FROM users ORDER BY id\n{spec_extra}  template: |\n{template}"
    )
}

const CONFIGMAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.name}}\"\ndata:\n  id: \"{{Row.id}}\"";

/// The lines of stderr that report errors.
fn error_lines(o: &Outcome) -> Vec<&str> {
    o.stderr.lines().filter(|l| l.starts_with("error: ")).collect()
}

#[test]
fn renders_rows_from_a_json_file() {
    let o = with_rows(
        &dbqr("", CONFIGMAP),
        serde_json::json!([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let docs: Vec<serde_json::Value> = o
        .stdout
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1]["metadata"]["name"], "cm-b");
    assert_eq!(docs[1]["metadata"]["namespace"], "team-a");
    assert_eq!(docs[1]["data"]["id"], "2");
}

#[test]
fn each_bad_row_gets_one_line_naming_dbqr_row_and_cause() {
    let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.id}}\"\ndata:\n  v: {{Row.value}}\n  e: \"{{Row.emial}}\"";
    let rows = serde_json::json!([
        {"id": 1, "value": "ok", "emial": "x"},
        {"id": 2, "value": "a: b", "emial": "x"},
        {"id": 3, "value": "ok"},
    ]);
    let o = with_rows(&dbqr("", template), rows);
    assert_eq!(o.code, 1);
    let errors = error_lines(&o);
    assert_eq!(errors.len(), 2, "{}", o.stderr);
    assert!(errors[0].starts_with("error: dbqr team-a/users: row 1 (id=2): "), "{}", errors[0]);
    assert!(errors[0].contains("inserted value breaks the YAML"), "{}", errors[0]);
    assert!(errors[1].starts_with("error: dbqr team-a/users: row 2 (id=3): "), "{}", errors[1]);
    assert!(errors[1].contains("Row.emial is missing"), "{}", errors[1]);
    // The good row is still previewed.
    assert!(o.stdout.contains("name: cm-1"), "{}", o.stdout);
}

#[test]
fn objects_without_kind_or_name_and_non_yaml_output_are_named() {
    let cases = [
        ("apiVersion: v1\nmetadata:\n  name: \"x-{{Row.id}}\"", "kind is missing"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {a: \"{{Row.id}}\"}",
            "metadata.name is missing",
        ),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: [\"{{Row.id}}\"", "output is not YAML"),
        (
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: \"s-{{Row.id}}\"\n  namespace: other",
            "namespace \"other\" is not allowed",
        ),
    ];
    for (template, cause) in cases {
        let o = with_rows(&dbqr("", template), serde_json::json!([{"id": 7}]));
        assert_eq!(o.code, 1, "{template}");
        let errors = error_lines(&o);
        assert_eq!(errors.len(), 1, "{}", o.stderr);
        assert!(errors[0].starts_with("error: dbqr team-a/users: row 0 (id=7): "), "{}", errors[0]);
        assert!(errors[0].contains(cause), "{} lacks {cause:?}", errors[0]);
    }
}

#[test]
fn bad_dbqr_files_are_refused_with_the_field_named() {
    let cases = [
        (
            dbqr("", CONFIGMAP).replace("pollInterval: 30s", "pollInterval: 30 seconds"),
            "invalid duration",
        ),
        (
            dbqr("", CONFIGMAP).replace("pollInterval: 30s", "pollInterval: 500ms"),
            "spec.pollInterval is 500ms",
        ),
        (dbqr("  tempalte: x\n", CONFIGMAP), "unknown field spec.tempalte"),
        (dbqr("  maxRows: -1\n", CONFIGMAP), "maxRows"),
        (
            dbqr("  changeDetection:\n    mode: notify\n", CONFIGMAP),
            "spec.changeDetection.channel is required",
        ),
        (dbqr("", "{{#if Row.x}}never closed"), "template does not parse"),
        (
            dbqr("", CONFIGMAP).replace("kind: DatabaseQueryResource", "kind: ConfigMap"),
            "expected apiVersion dbqo.dev/v1alpha1",
        ),
        (
            dbqr("", CONFIGMAP).replace("  query: SELECT id, name FROM users ORDER BY id\n", ""),
            "missing field `query`",
        ),
    ];
    for (manifest, cause) in cases {
        let o = with_rows(&manifest, serde_json::json!([]));
        assert_eq!(o.code, 1, "{cause}: {}", o.stderr);
        let errors = error_lines(&o);
        assert_eq!(errors.len(), 1, "{}", o.stderr);
        assert!(errors[0].contains("dbqr.yaml"), "names the DBQR file: {}", errors[0]);
        assert!(errors[0].contains(cause), "{} lacks {cause:?}", errors[0]);
    }
}

#[test]
fn help_is_there_for_every_subcommand() {
    for args in [&["--help"][..], &["render", "--help"], &["crd", "--help"]] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_db-query-operator")).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"), "{args:?}");
    }
}

/// `--help` opens with what the program is, not with the description of the
/// domain crate the parser happens to live in.
#[test]
fn help_opens_with_what_the_program_is() {
    let out = Command::new(env!("CARGO_BIN_EXE_db-query-operator")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        help.lines().next(),
        Some("Turns rows of a SQL database into Kubernetes objects and keeps them in step"),
        "{help}"
    );
}

#[tokio::test]
async fn renders_rows_from_a_live_database_read_only() {
    let url = common::database("render").await;
    let setup = common::connect(&url).await;
    setup.batch_execute(include_str!("../examples/configmap-per-row/schema.sql")).await.unwrap();
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/configmap-per-row/dbqr.yaml"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = render(dir.path(), &manifest, &["--database-url", &url]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("name: user-alice"), "{}", o.stdout);
    assert!(o.stdout.contains("name: user-bob-smith"), "{}", o.stdout);
    assert!(!o.stdout.contains("carol"), "inactive users are not rendered");

    // Even a DBQR with readOnly: false cannot write through a preview.
    let writer = manifest.replace("spec:\n", "spec:\n  readOnly: false\n").replace(
        "SELECT id, username, email, created_at\n    FROM users\n    WHERE active\n    ORDER BY id",
        "DELETE FROM users RETURNING id, username, email, created_at",
    );
    let o = render(dir.path(), &writer, &["--database-url", &url]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("read-only transaction"), "{}", o.stderr);
    let count: i64 = setup.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    assert_eq!(count, 3, "the preview deleted nothing");

    let o = render(
        dir.path(),
        &manifest,
        &["--database-url", &url.replace("dbqo-test-password", "wrong")],
    );
    assert_eq!(o.code, 1);
    let errors = error_lines(&o);
    assert_eq!(errors.len(), 1, "{}", o.stderr);
    assert!(errors[0].contains("authentication failed"), "{}", errors[0]);
    assert!(!errors[0].contains("wrong"), "no password in errors: {}", errors[0]);
}
