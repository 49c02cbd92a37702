//! The CRD and the examples against the real API server, and the examples'
//! rendered output against golden files.

mod common;

use std::{path::Path, process::Command};

use dbqo::api::DatabaseQueryResource;
use kube::api::{Api, DeleteParams, PostParams};

fn examples() -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> =
        std::fs::read_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("dbqr.yaml").exists())
            .collect();
    dirs.sort();
    assert!(dirs.len() >= 4, "examples/ holds the four documented scenarios");
    dirs
}

#[test]
fn committed_crds_match_the_rust_types() {
    for (plural, _) in dbqo::cli::crds() {
        let file = format!("chart/crds/{plural}.dbqo.dev.yaml");
        let committed = std::fs::read_to_string(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(&file),
        )
        .unwrap_or_default();
        assert!(
            Some(committed) == dbqo::cli::crd_yaml_of(plural),
            "{file} is stale: run `cargo run -q -p db-query-operator -- crd {plural} > {file}`"
        );
    }
}

#[test]
fn crd_subcommand_prints_each_crd() {
    for (args, plural) in [
        (&["crd", "databasequeryresources"][..], "databasequeryresources"),
        (&["crd", "databaseservers"][..], "databaseservers"),
        (&["crd", "databases"][..], "databases"),
    ] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_db-query-operator")).args(args).output().unwrap();
        assert!(out.status.success());
        assert_eq!(Some(String::from_utf8(out.stdout).unwrap()), dbqo::cli::crd_yaml_of(plural));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_db-query-operator"))
        .args(["crd", "widgets"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown CRD name is refused");
}

/// `crd` without a name: every CRD in one stream that one `kubectl apply`
/// takes (here a server-side dry-run apply of each document it holds).
#[tokio::test]
async fn crd_without_a_name_prints_every_crd_in_one_applicable_stream() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    use serde::Deserialize;

    let out = Command::new(env!("CARGO_BIN_EXE_db-query-operator")).arg("crd").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let documents: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| CustomResourceDefinition::deserialize(doc).expect("a CRD"))
        .collect();
    let names: Vec<String> = documents.iter().filter_map(|c| c.metadata.name.clone()).collect();
    let expected: Vec<String> =
        dbqo::cli::crds().iter().map(|(plural, _)| format!("{plural}.dbqo.dev")).collect();
    assert_eq!(names, expected);

    let crds: Api<CustomResourceDefinition> = Api::all(common::kube_client().await);
    let dry_run = PatchParams { dry_run: true, ..PatchParams::apply("dbqo-tests").force() };
    for crd in &documents {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &dry_run, &Patch::Apply(crd)).await.expect("the API server takes it");
    }
}

#[test]
fn examples_render_to_their_golden_output() {
    for dir in examples() {
        let mut command = Command::new(env!("CARGO_BIN_EXE_db-query-operator"));
        command
            .arg("render")
            .arg("-f")
            .arg(dir.join("dbqr.yaml"))
            .arg("--rows")
            .arg(dir.join("rows.json"));
        if let Ok(args) = std::fs::read_to_string(dir.join("render-args")) {
            command.args(args.split_whitespace());
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", dir.display());
        let golden = dir.join("expected.yaml");
        let actual = String::from_utf8(out.stdout).unwrap();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap();
        pretty_assertions::assert_eq!(
            actual,
            expected,
            "{} differs from its golden file",
            dir.display()
        );
    }
}

#[tokio::test]
async fn the_api_server_accepts_the_crd_and_every_example() {
    let client = common::kube_client().await;
    common::install_crd(&client).await;
    let namespace = common::namespace(&client, "examples").await;
    let api: Api<DatabaseQueryResource> = Api::namespaced(client.clone(), &namespace);
    for dir in examples() {
        let text = std::fs::read_to_string(dir.join("dbqr.yaml")).unwrap();
        let (mut dbqr, _template) =
            dbqo::cli::load_dbqr(&text).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dbqr.metadata.namespace = Some(namespace.clone());
        let created = api
            .create(&PostParams::default(), &dbqr)
            .await
            .unwrap_or_else(|e| panic!("{}: the API server refused it: {e}", dir.display()));
        // What the server stored (defaults applied) reads back into the same spec.
        let stored = api.get(created.metadata.name.as_deref().unwrap()).await.unwrap();
        assert_eq!(stored.spec, dbqr.spec, "{}", dir.display());
    }

    // The schema rejects what the Rust types reject.
    let bad = serde_json::json!({
        "apiVersion": "dbqo.dev/v1alpha1", "kind": "DatabaseQueryResource",
        "metadata": {"name": "bad-interval"},
        "spec": {"pollInterval": "5 minutes", "database": {"connectionSecretRef": {"name": "x"}}, "query": "SELECT 1", "template": "x"}
    });
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &namespace,
        &kube::api::ApiResource::erase::<DatabaseQueryResource>(&()),
    );
    let err = raw
        .create(&PostParams::default(), &serde_json::from_value(bad).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pollInterval"), "{err}");
    let _ = api.delete_collection(&DeleteParams::default(), &Default::default()).await;
}
