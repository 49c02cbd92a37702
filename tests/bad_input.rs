//! The bad-input matrix (SPEC §10, RELIABILITY.md): each row breaks one
//! thing of a DBQR that has converged, and requires a clear condition and
//! Event on it, its objects kept (nothing deleted because of bad input), a
//! neighbour DBQR of the same operator still converging, and recovery once
//! the input is good again.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::eventually;
use common::operator::{
    configmaps, create_secret, event_reasons, secret_keys, wait_for_condition, DbqrBuilder,
    Operator,
};
use dbqo::api::DatabaseQueryResource;
use dbqo_testenv::reliability::{record, Outcome};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};

const SCHEMA: &str = "CREATE TABLE items (name text PRIMARY KEY, value text NOT NULL); \
     INSERT INTO items VALUES ('one', 'v0'), ('two', 'v0'); \
     CREATE TABLE others (name text PRIMARY KEY, value text NOT NULL); \
     INSERT INTO others VALUES ('one', 'v0');";
const ITEM_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.name}}\"\ndata:\n  value: \"{{Row.value}}\"\n";
const OTHER_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"other-{{Row.name}}\"\ndata:\n  value: \"{{Row.value}}\"\n";

/// What a row of the matrix does to the converged DBQR `items`.
enum Break {
    /// Sets spec fields (JSON pointers below `spec`); undone by setting the
    /// old values back.
    Spec(&'static [(&'static str, &'static str)]),
    /// A spec change the API server itself refuses (the CRD's schema):
    /// the error must name the field.
    Refused(&'static str, &'static str, &'static str),
    /// Replaces Secret keys (`None` removes one); undone by the good Secret.
    Secret(&'static [(&'static str, Option<&'static str>)]),
    /// A connection URI in the Secret (key `uri`, which the spec then names).
    Uri(&'static str),
    /// Runs SQL on the DBQR's database; `undo` after the checks.
    Sql { run: &'static str, undo: &'static str },
    /// A second DBQR `rival` that renders the same objects; the rival
    /// reports, `items` keeps them.
    Rival,
}

struct Case {
    id: &'static str,
    /// `Type=Status/Reason` on the DBQR that reports, and the Event reason.
    expect: &'static str,
    breaks: Break,
}

/// A JSON merge patch of `spec` setting each pointer to its value.
fn spec_patch(fields: &[(&str, Value)]) -> Value {
    let mut patch = json!({ "spec": {} });
    for (pointer, value) in fields {
        let mut target = &mut patch["spec"];
        let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len() - 1] {
            target = &mut target[*part];
        }
        target[parts[parts.len() - 1]] = value.clone();
    }
    patch
}

/// A field's value as the tests write it: JSON when it parses, a string otherwise.
fn field(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

async fn wait_for_value(client: &kube::Client, ns: &str, name: &str, value: &str) {
    eventually(Duration::from_secs(30), &format!("{name} = {value}"), || async {
        let cms = configmaps(client, ns).await;
        (cms.get(name)?.get("value")? == value).then_some(())
    })
    .await;
}

async fn run(case: Case) {
    let started = Instant::now();
    let s = common::operator::setup("bad", SCHEMA).await;
    let (client, ns) = (&s.client, s.namespace.as_str());
    let operator = Operator::start(&[]);
    let api = Api::<DatabaseQueryResource>::namespaced(client.clone(), ns);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name, value FROM items")
        .template(ITEM_CM)
        .set("/database/statementTimeout", json!("2s"))
        // Over the API server's 1 MiB for a ConfigMap, so that bound is met too.
        .set("/maxRowBytes", json!(4 << 20))
        .create(client, ns)
        .await;
    // A Secret of its own: breaking `db` must not reach it.
    create_secret(client, ns, "neighbour-db", secret_keys(&s.url)).await;
    DbqrBuilder::new("neighbour", &operator)
        .secret("neighbour-db")
        .query("SELECT name, value FROM others")
        .template(OTHER_CM)
        .create(client, ns)
        .await;
    wait_for_condition(client, ns, "items", "Ready=True/Ready").await;
    wait_for_condition(client, ns, "neighbour", "Ready=True/Ready").await;
    let good = configmaps(client, ns).await;
    assert_eq!(good.len(), 3, "{good:?}");
    let rows = || async {
        let row = s.db.query_one(
            "SELECT string_agg(name || '=' || value, ',' ORDER BY name) FROM items",
            &[],
        );
        row.await.unwrap().get::<_, String>(0)
    };
    let good_rows = rows().await;

    let reason = case.expect.rsplit('/').next().unwrap_or_default();
    let reporter = if matches!(case.breaks, Break::Rival) { "rival" } else { "items" };
    let patch = |fields: Vec<(&str, Value)>| {
        let (api, body) = (api.clone(), spec_patch(&fields));
        async move { api.patch("items", &PatchParams::default(), &Patch::Merge(body)).await }
    };
    let before = serde_json::to_value(api.get("items").await.unwrap().spec).unwrap();
    match &case.breaks {
        Break::Spec(fields) => {
            patch(fields.iter().map(|(p, v)| (*p, field(v))).collect()).await.unwrap();
        }
        Break::Refused(pointer, value, named) => {
            let err = patch(vec![(pointer, field(value))]).await.unwrap_err().to_string();
            assert!(err.contains(named), "the refusal names {named}: {err}");
        }
        Break::Secret(keys) => {
            let mut data = secret_keys(&s.url);
            for (key, value) in keys.iter() {
                match value {
                    Some(v) => data.insert(key, (*v).to_owned()),
                    None => data.remove(key),
                };
            }
            create_secret(client, ns, "db", data).await;
            // Applying stringData does not remove a key once written; a merge patch does.
            let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns);
            for (key, _) in keys.iter().filter(|(_, v)| v.is_none()) {
                let remove = Patch::Merge(json!({ "data": { *key: null } }));
                secrets.patch("db", &PatchParams::default(), &remove).await.unwrap();
            }
        }
        Break::Uri(uri) => {
            let mut data = secret_keys(&s.url);
            data.insert("uri", (*uri).to_owned());
            create_secret(client, ns, "db", data).await;
            patch(vec![("/database/connectionSecretRef/uriKey", json!("uri"))]).await.unwrap();
        }
        Break::Sql { run, .. } => s.db.batch_execute(run).await.unwrap(),
        Break::Rival => {
            DbqrBuilder::new("rival", &operator)
                .query("SELECT name, 'rival' AS value FROM items")
                .template(ITEM_CM)
                .create(client, ns)
                .await;
        }
    }

    if !matches!(case.breaks, Break::Refused(..)) {
        let message = wait_for_condition(client, ns, reporter, case.expect).await;
        assert!(!message.is_empty(), "{}: a message says why", case.expect);
        eventually(Duration::from_secs(30), &format!("a {reason} Event"), || async {
            event_reasons(client, ns).await.iter().any(|r| r == reason).then_some(())
        })
        .await;
    }
    // The neighbour keeps working...
    s.db.batch_execute("UPDATE others SET value = 'moved' WHERE name = 'one'").await.unwrap();
    wait_for_value(client, ns, "other-one", "moved").await;
    // ... and nothing was deleted (or taken) because of the bad input.
    let now = configmaps(client, ns).await;
    for name in ["item-one", "item-two"] {
        assert_eq!(now.get(name), good.get(name), "{name} untouched by the bad input");
    }

    if !matches!(case.breaks, Break::Sql { .. }) {
        assert_eq!(rows().await, good_rows, "no row changed by the bad input");
    }

    // Good input again: the DBQR recovers by itself.
    match &case.breaks {
        Break::Spec(fields) => {
            let old =
                fields.iter().map(|(p, _)| (*p, before.pointer(p).cloned().unwrap_or(Value::Null)));
            patch(old.collect()).await.unwrap();
        }
        Break::Secret(_) => create_secret(client, ns, "db", secret_keys(&s.url)).await,
        Break::Uri(_) => {
            patch(vec![("/database/connectionSecretRef/uriKey", Value::Null)]).await.unwrap();
        }
        Break::Sql { undo, .. } => s.db.batch_execute(undo).await.unwrap(),
        Break::Refused(..) | Break::Rival => {}
    }
    wait_for_condition(client, ns, "items", "Ready=True/Ready").await;
    s.db.batch_execute("UPDATE items SET value = 'recovered' WHERE name = 'two'").await.unwrap();
    wait_for_value(client, ns, "item-two", "recovered").await;
    if matches!(case.breaks, Break::Rival) {
        assert_eq!(configmaps(client, ns).await["item-one"]["value"], "v0", "items keeps item-one");
    }
    record(case.id, &Outcome::passed(1, 3, Some(started.elapsed())));
}

macro_rules! matrix {
    ($($name:ident: $id:literal, $expect:literal, $breaks:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            run(Case { id: $id, expect: $expect, breaks: $breaks }).await;
        }
    )*};
}

matrix! {
    invalid_template_syntax: "bad-template-syntax", "Synced=False/TemplateInvalid",
        Break::Spec(&[("/template", "{{#if Row.name}}unclosed")]);
    template_rendering_invalid_yaml: "bad-yaml", "Synced=False/InvalidYaml",
        Break::Spec(&[("/template", "kind: [unclosed\n")]);
    object_without_kind_or_name: "bad-object", "Synced=False/InvalidObject",
        Break::Spec(&[("/template", "apiVersion: v1\nmetadata:\n  labels: {}\n")]);
    name_invalid_for_its_kind: "bad-name", "Synced=False/InvalidName",
        Break::Spec(&[("/template", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"Item_{{Row.name}}\"\n")]);
    kind_not_allowed: "kind-not-allowed", "Synced=False/KindNotAllowed",
        Break::Spec(&[("/template", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: \"pod-{{Row.name}}\"\nspec:\n  containers: [{name: c, image: x}]\n")]);
    namespace_not_allowed: "namespace-not-allowed", "Synced=False/NamespaceNotAllowed",
        Break::Spec(&[("/template", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.name}}\"\n  namespace: default\n")]);
    cluster_scoped_kind_not_allowed: "cluster-kind-not-allowed", "Synced=False/KindNotAllowed",
        Break::Spec(&[("/template", "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: \"role-{{Row.name}}\"\n")]);
    two_rows_render_one_object: "duplicate-rows", "Synced=False/DuplicateObject",
        Break::Spec(&[("/template", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: item-one\ndata:\n  value: v0\n")]);
    two_dbqrs_render_one_object: "duplicate-dbqrs", "Synced=False/ObjectOwnedElsewhere",
        Break::Rival;
    null_in_a_name_field: "null-name", "Synced=False/InvalidName",
        Break::Spec(&[("/query", "SELECT NULL::text AS name, value FROM items")]);
    result_above_max_rows: "too-many-rows", "Synced=False/TooManyRows",
        Break::Spec(&[("/maxRows", "1")]);
    row_above_max_row_bytes: "row-too-large", "Synced=False/RowTooLarge",
        Break::Sql { run: "UPDATE items SET value = repeat('x', 5000000) WHERE name = 'one'",
                     undo: "UPDATE items SET value = 'v0' WHERE name = 'one'" };
    result_above_max_result_bytes: "result-too-large", "Synced=False/ResultTooLarge",
        Break::Spec(&[("/maxResultBytes", "1024"), ("/query", "SELECT name, repeat('x', 800) AS value FROM items")]);
    a_query_that_writes: "query-writes", "Synced=False/QueryFailed",
        Break::Spec(&[("/query", "UPDATE items SET value = 'written' RETURNING name, value")]);
    a_query_that_times_out: "query-timeout", "Synced=False/QueryTimeout",
        Break::Spec(&[("/query", "SELECT name, value FROM items, pg_sleep(10)")]);
    sql_syntax_error: "sql-syntax", "Synced=False/QueryFailed",
        Break::Spec(&[("/query", "SELEC name, value FROM items")]);
    invalid_duration: "invalid-duration", "",
        Break::Refused("/pollInterval", "soon", "pollInterval");
    secret_missing: "secret-missing", "DatabaseConnected=False/SecretNotFound",
        Break::Spec(&[("/database/connectionSecretRef/name", "no-such-secret")]);
    secret_key_missing: "secret-key-missing", "DatabaseConnected=False/SecretInvalid",
        Break::Secret(&[("host", None)]);
    secret_with_a_bad_uri: "secret-bad-uri", "DatabaseConnected=False/SecretInvalid",
        Break::Uri("postgresql://%zz@[::1");
    wrong_password_and_back: "wrong-password", "DatabaseConnected=False/AuthenticationFailed",
        Break::Secret(&[("password", Some("not-the-password"))]);
    unreachable_host: "unreachable-host", "DatabaseConnected=False/ConnectionFailed",
        Break::Secret(&[("host", Some("no-such-host.invalid"))]);
    tls_mismatch: "tls-mismatch", "DatabaseConnected=False/TlsConfigError",
        Break::Secret(&[("sslmode", Some("verify-full"))]);
    // The operator's bound on what one row renders (1 MiB) meets it before the API server's.
    a_row_too_large_for_the_api_server: "object-too-large", "Synced=False/RenderLimitExceeded",
        Break::Sql { run: "UPDATE items SET value = repeat('x', 1100000) WHERE name = 'one'",
                     undo: "UPDATE items SET value = 'v0' WHERE name = 'one'" };
}

/// Values that would change a manifest's structure if spliced as text
/// (YAML documents, keys, quotes, anchors, line breaks): each row either
/// arrives verbatim as data or fails alone with `UnsafeValue`; no other
/// object (a Secret smuggled in a second document) appears.
#[tokio::test]
async fn hostile_strings_arrive_as_data_or_fail_alone() {
    const CORPUS: &[&str] = &[
        "a: b",
        "key: value\nkind: Secret",
        "x\n---\nkind: Secret\nmetadata:\n  name: evil",
        "\"\nkind: Secret\n\"",
        "'",
        "\\\"",
        "{a: 1}",
        "[1, 2]",
        "# comment",
        "a\tb",
        "\r\n",
        "\u{2028}",
        "&anchor",
        "*alias",
        "!!binary AAAA",
        "{{Row.value}}",
        "null",
        "~",
        "0x10",
        "- item",
    ];
    let s =
        common::operator::setup("hostile", "CREATE TABLE items (id int PRIMARY KEY, value text);")
            .await;
    let (client, ns) = (&s.client, s.namespace.as_str());
    for (i, value) in CORPUS.iter().enumerate() {
        s.db.execute("INSERT INTO items VALUES ($1, $2)", &[&(i as i32), value]).await.unwrap();
    }
    let operator = Operator::start(&[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT id, value FROM items")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.id}}\"\ndata:\n  value: \"{{Row.value}}\"\n")
        .create(client, ns)
        .await;
    let operator_done =
        |cms: &BTreeMap<String, BTreeMap<String, String>>| cms.len() == CORPUS.len();
    let cms = eventually(Duration::from_secs(30), "every hostile row handled", || async {
        let cms = configmaps(client, ns).await;
        if operator_done(&cms) {
            return Some(cms);
        }
        // Rows that fail are named in the condition; the rest are applied.
        let (status, reason, _) =
            common::operator::condition(client, ns, "items", "Synced").await?;
        (status == "False" && reason == "UnsafeValue" && !cms.is_empty()).then_some(cms)
    })
    .await;
    for (name, data) in &cms {
        let i: usize = name["item-".len()..].parse().unwrap();
        assert_eq!(data.get("value").map(String::as_str), Some(CORPUS[i]), "{name} verbatim");
    }
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns);
    let names: Vec<String> = secrets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|x| x.metadata.name)
        .collect();
    assert!(names.iter().all(|n| n == "db"), "no Secret smuggled in: {names:?}");
    record(
        "hostile-strings",
        &Outcome::passed(CORPUS.len() as u64, cms.len() as u64, None).with_note(format!(
            "{} of {} verbatim, the rest refused",
            cms.len(),
            CORPUS.len()
        )),
    );
}

/// A DBQR edited 50 times in 5 s: the operator follows without error and
/// lands on the last version; the objects are never deleted meanwhile.
#[tokio::test]
async fn a_dbqr_updated_fifty_times_in_five_seconds_lands_on_the_last_version() {
    let s = common::operator::setup("churned", SCHEMA).await;
    let (client, ns) = (&s.client, s.namespace.as_str());
    let operator = Operator::start(&[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name, value FROM items")
        .template(ITEM_CM)
        .create(client, ns)
        .await;
    wait_for_condition(client, ns, "items", "Ready=True/Ready").await;
    let api = Api::<DatabaseQueryResource>::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut counts = Vec::new();
    for revision in 1..=50 {
        let template = ITEM_CM.replace("{{Row.value}}", &format!("rev-{revision}"));
        let patch = Patch::Merge(json!({"spec": {"template": template}}));
        api.patch("items", &PatchParams::default(), &patch).await.unwrap();
        counts.push(configmaps(client, ns).await.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(8), "50 edits took {:?}", started.elapsed());
    assert!(counts.iter().all(|n| *n == 2), "objects deleted while the DBQR changed: {counts:?}");
    wait_for_value(client, ns, "item-one", "rev-50").await;
    wait_for_value(client, ns, "item-two", "rev-50").await;
    wait_for_condition(client, ns, "items", "Ready=True/Ready").await;
    record("dbqr-edited-50-times", &Outcome::passed(50, 2, Some(started.elapsed())));
}
