//! RELIABILITY.md, the reliability catalog and the tests agree: every trial
//! the table lists is done by the test it names, which records it; every
//! trial a test records is in the table. (The figures of the last run come
//! from `bash hack/test.sh`; this checks what the table claims is tried.)

use std::{collections::BTreeSet, path::Path};

use dbqo_testenv::reliability::{catalog_row, CATALOG};

fn tests_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The body of `fn name` in `source`: from its signature to the next
/// item at the start of a line.
fn function_body<'a>(source: &'a str, name: &str) -> Option<&'a str> {
    let start = source.find(&format!("fn {name}("))?;
    let rest = &source[start..];
    let end = rest.find("\n}\n").map_or(rest.len(), |i| i + 3);
    Some(&rest[..end])
}

#[test]
fn every_trial_is_done_and_recorded_by_the_test_it_names() {
    let mut ids = BTreeSet::new();
    for trial in CATALOG {
        assert!(ids.insert(trial.id), "trial {} is listed twice", trial.id);
        let (file, function) = trial.test.split_once("::").expect("file::function");
        let source = std::fs::read_to_string(tests_dir().join(format!("{file}.rs")))
            .unwrap_or_else(|e| panic!("{}: tests/{file}.rs: {e}", trial.id));
        // A test function that records the id, or a row of a table of
        // tests (`name: "id", ...`, tests/bad_input.rs) that records it.
        let recorded = function_body(&source, function)
            .is_some_and(|body| body.contains(&format!("\"{}\"", trial.id)))
            || source.contains(&format!("{function}: \"{}\"", trial.id));
        assert!(recorded, "{}: {} does not exist or does not record it", trial.id, trial.test);
    }
}

#[test]
fn every_recorded_trial_is_in_the_catalog() {
    let ids: BTreeSet<&str> = CATALOG.iter().map(|t| t.id).collect();
    for entry in std::fs::read_dir(tests_dir()).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("reliability.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for (i, _) in source.match_indices("record(") {
            let after = source[i + "record(".len()..].trim_start();
            if let Some(quoted) = after.strip_prefix('"') {
                let id = &quoted[..quoted.find('"').unwrap()];
                assert!(
                    ids.contains(id),
                    "{} records {id:?}, which the catalog lacks",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn the_committed_report_lists_exactly_the_catalog() {
    let report =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../RELIABILITY.md"))
            .expect("RELIABILITY.md at the repository root");
    for trial in CATALOG {
        let row = catalog_row(trial);
        assert!(
            report.lines().any(|l| l.starts_with(&row)),
            "RELIABILITY.md lacks (or differs on) trial {}; regenerate it with bash hack/test.sh",
            trial.id
        );
    }
    let rows = report.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(rows, CATALOG.len(), "RELIABILITY.md has rows the catalog does not");
}
