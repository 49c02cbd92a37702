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

const fn trial(
    id: &'static str,
    section: Section,
    tried: &'static str,
    expected: &'static str,
    bound: &'static str,
    test: &'static str,
) -> Trial {
    Trial { id, section, tried, expected, bound, test }
}

use Section::{BadInput, Fault, Load, Security};

/// Everything the suite tries, in the report's order.
pub const CATALOG: &[Trial] = &[
    trial(
        "database-stall",
        Fault,
        "the network path to PostgreSQL stops carrying packets (a loopback proxy stops forwarding, connections stay open) for longer than statementTimeout, twice",
        "DatabaseConnected=False/DatabaseUnresponsive while it lasts; nothing pruned; the change made during the stall applied after it",
        "condition within statementTimeout + 3 s + a poll; converged 30 s after the path returns",
        "faults::a_network_stall_shows_in_conditions_and_recovers",
    ),
    trial(
        "database-paused",
        Fault,
        "the PostgreSQL server process frozen with SIGSTOP (its kernel still acknowledges packets) past statementTimeout",
        "DatabaseConnected=False/DatabaseUnresponsive; nothing pruned; Ready again after SIGCONT",
        "condition within statementTimeout + 3 s + a poll; converged 30 s after SIGCONT",
        "faults::a_frozen_database_server_shows_in_conditions_and_recovers",
    ),
    trial(
        "database-stopped",
        Fault,
        "PostgreSQL stopped (fast shutdown) for three failed passes, then started again",
        "DatabaseConnected=False/ConnectionFailed, Ready=False; nothing pruned; Ready again on its own",
        "condition within 30 s; converged 30 s after the restart",
        "operator_database::a_database_outage_flips_conditions_prunes_nothing_and_recovers",
    ),
    trial(
        "table-locked",
        Fault,
        "the query's table held by an ACCESS EXCLUSIVE lock longer than statementTimeout",
        "Synced=False/QueryTimeout (the server's timeout); nothing pruned; converges once the lock is released",
        "condition within statementTimeout + a poll; converged 30 s after the release",
        "faults::a_locked_table_times_the_query_out_prunes_nothing_and_recovers",
    ),
    trial(
        "backends-terminated",
        Fault,
        "every connection of the operator killed with pg_terminate_backend, three times in a row",
        "the next pass reconnects; nothing pruned; a change made after the kills is applied",
        "converged 30 s after the last kill",
        "faults::terminated_connections_are_replaced_and_nothing_is_pruned",
    ),
    trial(
        "operator-killed",
        Fault,
        "the operator SIGKILLed during a pass over 400 rows, then started again",
        "every row's object exists once, nothing else was deleted, Ready after the restart",
        "converged 60 s after the restart",
        "faults::an_operator_killed_mid_apply_converges_after_a_restart",
    ),
    trial(
        "leader-failover",
        Fault,
        "two replicas; the leader SIGKILLed, the standby takes over",
        "the standby leads within the lease duration and applies changes; nothing deleted",
        "lease duration + retry period",
        "operations::one_replica_leads_and_another_takes_over_after_a_crash_or_a_release",
    ),
    trial(
        "listen-reconnect",
        Fault,
        "the LISTEN connection half-open (its backend gone silently)",
        "replaced within a minute; a notification after that reaches the operator",
        "60 s",
        "change_detection::a_half_open_listen_connection_is_replaced_within_a_minute",
    ),
    trial(
        "server-unavailable",
        Fault,
        "a Database's server unreachable, then reachable",
        "the Database reports ConnectionFailed while it lasts and becomes Ready on its own",
        "converged 60 s after the server returns",
        "databases::postgres_server_faults",
    ),
    trial(
        "invalid-template",
        BadInput,
        "invalid template syntax, a template rendering invalid YAML, an object without kind or name",
        "TemplateInvalid / InvalidYaml / InvalidObject in the condition and an Event, naming the row; nothing deleted",
        "first pass",
        "redaction::a_json_object_rendered_directly_fails_its_row_naming_the_expression",
    ),
    trial(
        "bad-row-isolated",
        BadInput,
        "one bad row beside good rows, and a second DBQR beside it",
        "the bad row fails alone; no object pruned while it fails; the other DBQR converges",
        "first pass",
        "operator_loop::a_bad_row_blocks_pruning_but_not_other_dbqrs",
    ),
    trial(
        "duplicates",
        BadInput,
        "two rows rendering one object; two DBQRs rendering one object",
        "DuplicateObject / ObjectOwnedElsewhere; the first owner keeps it; nothing deleted",
        "first pass",
        "operator_loop::deletion_policies_and_contested_objects",
    ),
    trial(
        "connection-errors",
        BadInput,
        "wrong password, unknown host, TLS required by the client and not offered, a missing Secret",
        "AuthenticationFailed / ConnectionFailed / SecretNotFound, messages without the password",
        "first pass",
        "operator_database::wrong_password_unknown_host_and_tls_mismatch_have_clear_reasons",
    ),
    trial(
        "oversized-results",
        BadInput,
        "a row of 64 MiB and a template bomb (indent with a huge count)",
        "RowTooLarge / RenderLimitExceeded for that row alone; /healthz answers throughout",
        "first pass",
        "tenancy::a_huge_row_and_a_template_bomb_fail_alone_while_health_answers",
    ),
    trial(
        "status-template",
        BadInput,
        "statusUpdateQueryTemplate with two statements; a value that does not convert",
        "StatusTemplateInvalid at admission of the spec / StatusWriteBackFailed naming the type; no row changed",
        "first pass",
        "writeback::a_status_template_with_two_statements_is_refused",
    ),
    trial(
        "takeover",
        Security,
        "a row naming an object that exists and was not made by the DBQR",
        "ObjectExists; the object is not changed, relabelled or deleted unless its owner annotates it for adoption",
        "first pass",
        "tenancy::existing_objects_are_not_taken_over_unless_handed_over",
    ),
    trial(
        "secret-values",
        Security,
        "a Secret value mapped onto every connection key (sslModeKey: token, ...)",
        "the value appears in no condition, Event or info log",
        "first pass",
        "tenancy::a_secret_value_mapped_onto_any_connection_key_is_never_shown",
    ),
    trial(
        "borrowed-admin-secret",
        Security,
        "a DatabaseServer naming another namespace's admin Secret",
        "refused with SecretNotAllowed; no connection made",
        "first pass",
        "tenancy::a_database_server_cannot_borrow_another_namespaces_admin_secret",
    ),
    trial(
        "service-account",
        Security,
        "a DBQR acting as a ServiceAccount that may not write a kind or read the Secret",
        "Forbidden for those writes; the operator's own rights are never used",
        "first pass",
        "tenancy::a_dbqr_acts_with_its_service_accounts_rights_only",
    ),
    trial(
        "connection-budget",
        Load,
        "200 DBQRs of one Secret against a server with a small max_connections",
        "every DBQR converges; the operator never holds more than its budget of connections",
        "all Ready within 120 s",
        "scale::two_hundred_dbqrs_stay_within_the_connection_budget",
    ),
];

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
    let text = serde_json::to_string(outcome).expect("an outcome serialises");
    std::fs::write(dir.join(format!("{id}.json")), text).expect("write the reliability record");
}

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
         catalog in `testenv/src/reliability.rs` and what each test recorded; `tests/reliability.rs` fails \
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
        text.push_str("| trial | what was tried | what must happen | bound | last run |\n|---|---|---|---|---|\n");
        for trial in CATALOG.iter().filter(|t| t.section == section) {
            let row = catalog_row(trial);
            let last = match outcomes.get(trial.id) {
                Some(o) => {
                    let took = o.recovered_secs.map(|s| format!(", {s:.1} s")).unwrap_or_default();
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
