//! `db-query-operator diff` (SPEC §12, issue 22) on a control plane of its
//! own, so that the API server's write counters show the writes of the diff
//! alone: what a new DBQR would create, that a converged one changes nothing,
//! a row changed and a row deleted, errors with exit code 2, and never a
//! write.

mod common;

use std::{path::Path, process::Command};

use common::operator::{create_secret, secret_keys, wait_for_configmaps, Operator, TEST_LABEL};
use dbqo::api::DatabaseQueryResource;
use kube::api::{Api, PostParams};

/// Writes of JSON clients the API server counted that were not dry runs
/// (`dry_run=""`). The control plane's own components speak protobuf.
async fn real_writes(client: &kube::Client) -> f64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.expect("read /metrics");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains("dry_run=\"\""))
        .filter(|l| l.contains("contentType=\"application/json\""))
        .filter(|l| {
            ["POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"]
                .iter()
                .any(|verb| l.contains(&format!("verb=\"{verb}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn diff(kubeconfig: &Path, file: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_db-query-operator"))
        .arg("diff")
        .arg("-f")
        .arg(file)
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn diff_shows_creations_updates_and_prunes_and_writes_nothing() {
    let ns = common::unique("diff");
    let (_control_plane, client, kubeconfig) = common::private_cluster(&ns).await;
    let url = common::database("diff").await;
    let db = common::connect(&url).await;
    db.batch_execute(
        "CREATE TABLE items (name text PRIMARY KEY, color text);
         INSERT INTO items VALUES ('a', 'red'), ('b', 'green');",
    )
    .await
    .unwrap();
    create_secret(&client, &ns, "db", secret_keys(&url)).await;
    let id = common::unique("op");
    // An hour between polls: the operator leaves row changes to the diff.
    let manifest = format!(
        "apiVersion: dbqo.dev/v1alpha1
kind: DatabaseQueryResource
metadata:
  name: items
  namespace: {ns}
  labels: {{{TEST_LABEL}: {id}}}
spec:
  pollInterval: 1h
  database:
    connectionSecretRef: {{name: db}}
  query: SELECT name, color FROM items ORDER BY name
  template: |
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: \"item-{{{{Row.name}}}}\"
    data:
      color: \"{{{{Row.color}}}}\"
"
    );
    let file = std::env::temp_dir().join(format!("{ns}.dbqr.yaml"));
    std::fs::write(&file, &manifest).unwrap();

    // Nothing there yet: both ConfigMaps would be created; nothing is.
    let before = real_writes(&client).await;
    let (code, out, err) = diff(&kubeconfig, &file, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&format!("+++ merged v1/ConfigMap {ns}/item-a")), "{out}");
    assert!(out.contains("--- /dev/null") && out.contains("+  color: red"), "{out}");
    assert!(out.contains("dbqo.dev/owner-name: items"), "the owner labels are shown: {out}");
    assert_eq!(real_writes(&client).await, before, "diff writes nothing");
    assert!(common::operator::configmaps(&client, &ns).await.is_empty());

    // Applied and converged: nothing would change.
    let operator = Operator::start_on(&kubeconfig, &id, &[]);
    let dbqr: DatabaseQueryResource = serde_yaml::from_str(&manifest).unwrap();
    Api::<DatabaseQueryResource>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &dbqr)
        .await
        .unwrap();
    wait_for_configmaps(&client, &ns, &["item-a", "item-b"]).await;
    common::operator::wait_for_condition(&client, &ns, "items", "Ready=True/Ready").await;
    let (code, out, err) = diff(&kubeconfig, &file, &[]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");

    // A row changed, a row deleted and a row naming a ConfigMap someone
    // else made: one diff, one prune, one refusal; the rows come from
    // --database-url as well as from the Secret.
    db.batch_execute(
        "UPDATE items SET color = 'blue' WHERE name = 'b'; DELETE FROM items WHERE name = 'a';
         INSERT INTO items VALUES ('c', 'black');",
    )
    .await
    .unwrap();
    let theirs: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "item-c"}, "data": {"color": "theirs"}}),
    )
    .unwrap();
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let before = real_writes(&client).await;
    for extra in [&[][..], &["--database-url", &url]] {
        let (code, out, err) = diff(&kubeconfig, &file, extra);
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains(&format!("--- live v1/ConfigMap {ns}/item-b")), "{out}");
        assert!(out.contains("-  color: green") && out.contains("+  color: blue"), "{out}");
        assert!(out.contains(&format!("pruned: v1/ConfigMap {ns}/item-a")), "{out}");
        assert!(out.contains("refused: ConfigMap item-c already exists"), "{out}");
        assert!(!out.contains("item-c\n+++"), "no diff for an object it would not write: {out}");
    }
    assert_eq!(real_writes(&client).await, before, "diff writes nothing");
    let cms = common::operator::configmaps(&client, &ns).await;
    assert_eq!(cms["item-b"]["color"], "green", "the cluster is as it was");
    assert_eq!(cms["item-c"]["color"], "theirs");
    assert!(cms.contains_key("item-a"));

    // Errors: exit 2, with what went wrong.
    let wrong = std::env::temp_dir().join(format!("{ns}.wrong.yaml"));
    std::fs::write(&wrong, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap();
    let (code, _, err) = diff(&kubeconfig, &wrong, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("expected apiVersion dbqo.dev/v1alpha1"), "{err}");
    let (code, _, err) =
        diff(&kubeconfig, &file, &["--database-url", "postgresql://127.0.0.1:1/x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: dbqr"), "{err}");
    drop(operator);
}
