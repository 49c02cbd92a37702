//! The reliability suite's catalog (SPEC §10): every fault, bad input,
//! security boundary and load run the acceptance tests try, with what must
//! happen and how fast. `RELIABILITY.md` is made from it and from what the
//! tests recorded in a run ([`record`], [`report`]); `tests/reliability.rs`
//! fails when the committed table, this catalog and the tests disagree.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

mod catalog;
pub use catalog::CATALOG;

/// Where tests write what they tried; `hack/test.sh` sets it and makes the
/// report from it after a run that passed.
pub const RECORD_DIR_VAR: &str = "DBQO_RELIABILITY_DIR";

/// The tables of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Section {
    Fault,
    BadInput,
    Security,
    Load,
}

impl Section {
    pub const ALL: [Section; 4] = [Self::Fault, Self::BadInput, Self::Security, Self::Load];

    pub fn title(self) -> &'static str {
        match self {
            Self::Fault => "Faults",
            Self::BadInput => "Bad input",
            Self::Security => "Security boundaries",
            Self::Load => "Load",
        }
    }
}

/// One thing the suite tries.
#[derive(Debug, Clone, Copy)]
pub struct Trial {
    /// Stable name, the key of the row.
    pub id: &'static str,
    pub section: Section,
    /// What is done to the operator.
    pub tried: &'static str,
    /// What the test requires to happen (and checks).
    pub expected: &'static str,
    /// How long recovery (or the clear error) may take.
    pub bound: &'static str,
    /// The test that does it: `file::function` under `tests/`.
    pub test: &'static str,
}

/// What one test observed when it ran a trial.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Faults (or bad inputs) injected.
    pub injected: u64,
    /// Objects (and rows) checked after the fact.
    pub checked: u64,
    /// Objects or rows lost, wrongly deleted or corrupted (a test that sees
    /// one fails; a passing run records 0).
    pub lost: u64,
    /// How long the slowest recovery (or the clear error) took.
    pub recovered_secs: Option<f64>,
    /// Anything else the run measured, in a few words.
    #[serde(default)]
    pub note: Option<String>,
    /// The day it ran (UTC), filled in by [`record`].
    #[serde(default)]
    pub date: Option<String>,
}

impl Outcome {
    /// A run that passed (a test that finds a loss fails): `injected`
    /// faults or inputs, `checked` objects or rows, the slowest recovery.
    pub fn passed(injected: u64, checked: u64, recovered: Option<std::time::Duration>) -> Self {
        let recovered_secs = recovered.map(|d| d.as_secs_f64());
        Self { injected, checked, lost: 0, recovered_secs, note: None, date: None }
    }

    /// With a few words on what else the run measured.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Writes `outcome` for trial `id` where [`RECORD_DIR_VAR`] says; nothing
/// when it is unset (a test run by hand). Panics on an id not in the
/// catalog, so a test cannot record what the table does not list.
pub fn record(id: &str, outcome: &Outcome) {
    assert!(CATALOG.iter().any(|t| t.id == id), "trial {id:?} is not in the reliability catalog");
    let Some(dir) = std::env::var_os(RECORD_DIR_VAR).map(PathBuf::from) else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    let dated = Outcome { date: Some(today()), ..outcome.clone() };
    let text = serde_json::to_string(&dated).expect("an outcome serialises");
    std::fs::write(dir.join(format!("{id}.json")), text).expect("write the reliability record");
}

/// Today (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Where records of runs outside the test command are kept (the full load
/// run): the report takes a trial from here when the run did not record it.
pub const KEPT_RECORDS: &str = "testenv/records";

/// The recorded outcomes in `dir`, by trial id.
pub fn recorded(dir: &Path) -> BTreeMap<String, Outcome> {
    let mut outcomes = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if let Some(outcome) =
            std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok())
        {
            outcomes.insert(id, outcome);
        }
    }
    outcomes
}

/// The table row of `trial` with the columns that come from the catalog
/// alone: what the committed report and the catalog must agree on.
pub fn catalog_row(trial: &Trial) -> String {
    format!("| `{}` | {} | {} | {} |", trial.id, trial.tried, trial.expected, trial.bound)
}

/// `RELIABILITY.md` from the catalog and a run's outcomes.
pub fn report(outcomes: &BTreeMap<String, Outcome>, machine: &str, date: &str) -> String {
    let mut text = String::from("# Reliability\n\n");
    text.push_str(
        "What the reliability suite tries against the real control plane and PostgreSQL, what must happen, \
         and what happened in the last run. Made by `bash hack/test.sh` (the test command) from the \
         catalog in `testenv/src/reliability/catalog.rs` and what each test recorded; `tests/reliability.rs` fails \
         when this table, the catalog and the tests disagree.\n\n",
    );
    text.push_str(&format!("- Run: {date}, {machine}\n- Command: `bash hack/test.sh`\n"));
    let ran: Vec<&Outcome> = CATALOG.iter().filter_map(|t| outcomes.get(t.id)).collect();
    let sum = |f: fn(&Outcome) -> u64| ran.iter().map(|o| f(o)).sum::<u64>();
    text.push_str(&format!(
        "- Trials run: {} of {}; faults and bad inputs injected: {}; objects and rows checked: {}; losses found: {}\n",
        ran.len(),
        CATALOG.len(),
        sum(|o| o.injected),
        sum(|o| o.checked),
        sum(|o| o.lost),
    ));
    for section in Section::ALL {
        text.push_str(&format!("\n## {}\n\n", section.title()));
        if section == Section::BadInput {
            text.push_str(&format!(
                "Every row of `tests/bad_input.rs` also checks: {}.\n\n",
                catalog::BAD_INPUT_CHECKS
            ));
        }
        text.push_str("| trial | what was tried | what must happen | bound | last run |\n|---|---|---|---|---|\n");
        for trial in CATALOG.iter().filter(|t| t.section == section) {
            let row = catalog_row(trial);
            let last = match outcomes.get(trial.id) {
                Some(o) => {
                    let took = o.recovered_secs.map(|s| format!(", {s:.1} s")).unwrap_or_default();
                    let took = match &o.note {
                        Some(note) => format!("{took}; {note}"),
                        None => took,
                    };
                    let took = match &o.date {
                        Some(date) => format!("{took} ({date})"),
                        None => took,
                    };
                    format!(
                        "passed: {} injected, {} checked, {} lost{took}",
                        o.injected, o.checked, o.lost
                    )
                }
                None => "not run".to_owned(),
            };
            text.push_str(&format!("{row} {last} |\n"));
        }
    }
    text.push_str("\nEach trial is the named test: `tests/<file>.rs`, function after `::`.\n\n");
    for trial in CATALOG {
        text.push_str(&format!("- `{}`: `{}`\n", trial.id, trial.test));
    }
    text
}

/// This machine in one line: cores, memory, operating system.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_else(|| "unknown OS".to_owned());
    format!("{cores} cores, {mem_gib:.0} GiB, {os}")
}
