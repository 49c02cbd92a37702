//! The architecture holds in Cargo terms (README, Architecture): the domain
//! package `dbqo` does not depend on actix at all, directly or through any
//! other crate; only the `db-query-operator` package (actors/) does.

use std::{collections::BTreeSet, process::Command};

use serde_json::Value as Json;

/// The host's target triple: the dependency graph is resolved for it alone,
/// so no crate for another platform has to be downloaded.
fn host() -> String {
    let out = Command::new("rustc").arg("-vV").output().expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

fn metadata() -> Json {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host()])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn package_id(metadata: &Json, name: &str) -> String {
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name && p["source"].is_null())
        .unwrap_or_else(|| panic!("workspace package {name}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Names of every package `root` pulls in as a normal (non-dev, non-build) dependency.
fn normal_closure(metadata: &Json, root: &str) -> BTreeSet<String> {
    let nodes = metadata["resolve"]["nodes"].as_array().unwrap();
    let node = |id: &str| nodes.iter().find(|n| n["id"] == id).unwrap();
    let name_of = |id: &str| {
        metadata["packages"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap()["name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(id) = todo.pop() {
        for dep in node(&id)["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap().to_owned();
            if normal && seen.insert(dep_id.clone()) {
                todo.push(dep_id);
            }
        }
    }
    seen.iter().map(|id| name_of(id)).collect()
}

#[test]
fn the_domain_does_not_depend_on_actix() {
    let metadata = metadata();
    let domain = normal_closure(&metadata, &package_id(&metadata, "dbqo"));
    assert!(domain.contains("kube"), "the closure was computed: {domain:?}");
    let actix: Vec<_> = domain.iter().filter(|n| n.starts_with("actix")).collect();
    assert!(actix.is_empty(), "dbqo depends on {actix:?}");

    let operator = normal_closure(&metadata, &package_id(&metadata, "db-query-operator"));
    assert!(operator.contains("actix") && operator.contains("dbqo"));
}

#[test]
fn every_acceptance_test_file_is_a_test_target() {
    let metadata = metadata();
    let package = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "db-query-operator")
        .unwrap();
    let targets: BTreeSet<String> = package["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"][0] == "test")
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests"))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".rs").map(str::to_owned)
            })
            .collect();
    assert_eq!(files, targets, "tests/*.rs and the targets Cargo found through actors/tests");
}

/// Every file of production code under `dir` (tests and benches left out),
/// without its trailing `#[cfg(test)] mod tests`.
fn production_sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !["tests", "benches", "target"].contains(&name.as_str()) {
                production_sources(&path, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" && name != "fake_cluster.rs" {
            let text = std::fs::read_to_string(&path).unwrap();
            let text = match text.find("\n#[cfg(test)]\nmod tests") {
                Some(cut) => text[..cut].to_owned(),
                None => text,
            };
            out.push((path.display().to_string(), text));
        }
    }
}

/// A reason is spelled once, in `src/reason.rs` (the list the README's
/// table is checked against); the code names it by its constant.
#[test]
fn reasons_are_spelled_only_in_the_reason_list() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut sources = Vec::new();
    production_sources(&root.join("src"), &mut sources);
    production_sources(&root.join("actors"), &mut sources);
    assert!(sources.len() > 50, "the sources were found");
    let mut spelled = Vec::new();
    for (path, text) in sources.iter().filter(|(p, _)| !p.ends_with("reason.rs")) {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("fn reason(&self)") {
            let body = &rest[at..];
            let end = body.find("\n    }\n").unwrap_or(body.len());
            // A literal starting with a capital: a reason, not an SQLSTATE.
            let capital = body[..end]
                .split('"')
                .skip(1)
                .step_by(2)
                .any(|literal| literal.starts_with(|c: char| c.is_ascii_uppercase()));
            if capital {
                spelled.push(format!("{path}: a literal in fn reason"));
            }
            rest = &body[end..];
        }
        let flat: String = text.split_whitespace().collect();
        for call in [
            "Verdict::failed(\"",
            "Failure::error(\"",
            "Status::True,\"",
            "Status::False,\"",
            "Status::Unknown,\"",
        ] {
            if flat.contains(call) {
                spelled.push(format!("{path}: {call}"));
            }
        }
    }
    assert!(spelled.is_empty(), "reasons spelled outside src/reason.rs: {spelled:#?}");
}
