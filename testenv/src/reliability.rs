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

/// The bound of a bad input: reported by the first pass that sees it.
const FIRST_PASS: &str =
    "reported by the next pass (1 s poll in the tests); recovered by the pass after the fix";

/// What every bad-input row checks besides its reason.
const BAD_INPUT_CHECKS: &str = "the DBQR's 2 objects and its rows unchanged, a neighbour DBQR of the same operator keeps converging, recovery on its own once the input is good";

/// A row of the bad-input matrix (`tests/bad_input.rs`).
const fn bad(
    id: &'static str,
    tried: &'static str,
    expected: &'static str,
    test: &'static str,
) -> Trial {
    trial(id, BadInput, tried, expected, FIRST_PASS, test)
}

/// Everything the suite tries, in the report's order.
pub const CATALOG: &[Trial] = &[
    trial(
        "database-stall",
        Fault,
        "the network path to PostgreSQL stops carrying packets (a loopback proxy stops forwarding, connections stay open) for longer than statementTimeout, twice",
        "DatabaseConnected=False/DatabaseUnresponsive and Ready=False while it lasts; nothing pruned; the change made during the stall applied after it",
        "condition within a poll + statementTimeout or connectTimeout + 3 s; converged within 30 s of the path's return",
        "faults::a_network_stall_shows_in_conditions_and_recovers",
    ),
    trial(
        "database-frozen",
        Fault,
        "every PostgreSQL process frozen with SIGSTOP (the kernel still acknowledges packets) past statementTimeout",
        "DatabaseConnected=False/DatabaseUnresponsive; nothing pruned; Ready and changes applied again after SIGCONT",
        "condition within 60 s; converged within 30 s of SIGCONT",
        "faults::a_frozen_database_server_shows_in_conditions_and_recovers",
    ),
    trial(
        "database-stopped",
        Fault,
        "PostgreSQL stopped (fast shutdown) for 30 s, then started again",
        "DatabaseConnected=False/ConnectionFailed and Ready=False for the whole outage; nothing pruned; Ready again on its own",
        "condition within 30 s; converged within 30 s of the restart",
        "operator_database::a_database_outage_flips_conditions_prunes_nothing_and_recovers",
    ),
    trial(
        "writeback-stall",
        Fault,
        "the path to the database stalls while a status write-back is pending (an object changed during the stall)",
        "StatusWriteBack=False/StatusWriteBackFailed naming the client-side deadline; retried; after the stall the row holds the status, the other row and every value unchanged",
        "written within 30 s of the path's return",
        "faults::a_write_back_under_a_network_stall_is_retried_and_lands",
    ),
    trial(
        "database-killed",
        Fault,
        "the PostgreSQL postmaster and every backend SIGKILLed at once (no shutdown; crash recovery on the next start)",
        "DatabaseConnected=False/ConnectionFailed; nothing pruned; Ready and a change applied after the restart",
        "condition within 30 s; converged within 30 s of the restart",
        "faults::a_database_server_killed_with_sigkill_recovers_and_prunes_nothing",
    ),
    trial(
        "table-locked",
        Fault,
        "the query's table held by an ACCESS EXCLUSIVE lock longer than statementTimeout",
        "Synced=False/QueryTimeout (the server's timeout) while DatabaseConnected stays True; nothing pruned; converges once the lock is released",
        "condition within a poll + statementTimeout; converged within 30 s of the release",
        "faults::a_locked_table_times_the_query_out_prunes_nothing_and_recovers",
    ),
    trial(
        "backends-terminated",
        Fault,
        "every connection of the operator killed with pg_terminate_backend, three times in a row",
        "the next pass after each kill succeeds and prunes nothing; a change made after the kills is applied",
        "a successful pass within 60 s of each kill",
        "faults::terminated_connections_are_replaced_and_nothing_is_pruned",
    ),
    trial(
        "apiserver-restart",
        Fault,
        "kube-apiserver stopped for 10 s while the first pass over 300 rows applies, the rows changed meanwhile, then started again",
        "the operator keeps running (no exit); every object converges to the changed rows; Ready",
        "converged within 90 s of the restart",
        "api_faults::the_operator_rides_out_an_api_server_restart_mid_pass",
    ),
    trial(
        "etcd-restart",
        Fault,
        "etcd stopped for 10 s under a converged DBQR of 300 rows, the rows changed meanwhile, then started again",
        "the operator keeps running; every object converges to the changed rows; Ready",
        "converged within 90 s of the restart",
        "api_faults::the_operator_rides_out_an_etcd_restart",
    ),
    trial(
        "api-throttled",
        Fault,
        "every third API request answered 429 Too Many Requests or 503 Service Unavailable by a proxy in front of the API server, over a create of 300 objects, an update of all and a prune of one",
        "the operator keeps running; all 300 created, all updated, exactly the one pruned; Ready",
        "converged within 120 s each",
        "api_faults::answers_429_and_503_are_retried_and_the_operator_converges",
    ),
    trial(
        "operator-killed",
        Fault,
        "the operator SIGKILLed part-way through its first pass over 400 rows, then started again",
        "every row's object exists once with the row's value, Ready after the restart",
        "converged within 60 s of the restart",
        "faults::an_operator_killed_mid_apply_converges_after_a_restart",
    ),
    trial(
        "operator-killed-20",
        Fault,
        "the operator SIGKILLed 20 times at random points (a random count of its changes made): 10 times during an update of all 1,000 rows, 10 times during a prune of 60",
        "after each restart every row's object holds the row's value and no other object exists (nothing orphaned, nothing wrongly deleted)",
        "converged within 120 s of each restart",
        "faults::an_operator_killed_at_random_points_of_large_applies_and_prunes_converges_every_time",
    ),
    trial(
        "leader-failover",
        Fault,
        "two replicas; the leader SIGKILLed, then the new leader releasing its Lease",
        "the standby leads and applies changes; nothing deleted",
        "the lease duration (SIGKILL); at once (release)",
        "operations::one_replica_leads_and_another_takes_over_after_a_crash_or_a_release",
    ),
    trial(
        "leader-killed-mid-pass",
        Fault,
        "two replicas; the leader SIGKILLed a third of the way through an update of all 1,000 rows",
        "the standby takes over (lease 4 s) and updates every object; nothing deleted; Ready",
        "every object updated within 30 s of the kill",
        "operations::a_leader_killed_during_a_pass_is_replaced_and_the_pass_completes",
    ),
    trial(
        "listen-half-open",
        Fault,
        "the LISTEN connection's backend frozen (half-open, socket open) and a change NOTIFYed meanwhile: the notification is lost with the connection",
        "the dead connection is detected by its ping, replaced, and the full pass after the reconnect applies the change (pollInterval 1 h, so no poll does)",
        "60 s",
        "change_detection::a_half_open_listen_connection_is_replaced_within_a_minute",
    ),
    trial(
        "server-down-create-reset-delete",
        Fault,
        "a Database's PostgreSQL server stopped during its create, during a password reset and during its Delete, started again after each",
        "Phase=Error/ConnectionFailed while down, no new password before the server has it; then Ready with database and user, a new password that works and an old one that does not, the database dropped and the Secret gone",
        "each step within 60 s of the server's return",
        "databases::postgres_server_down_during_create_reset_and_delete",
    ),
    trial(
        "server-stall",
        Fault,
        "the path to a DatabaseServer stalls (a loopback proxy stops forwarding) while a Database is created",
        "Phase=Error/DatabaseUnresponsive once the admin connection's deadline passes (connect timeout 10 s + 3 s; 30 s per admin statement); Ready with working credentials after the path returns",
        "shown within 60 s; Ready within 60 s of the path's return",
        "databases::postgres_a_stalled_server_path_shows_on_the_database_and_recovers",
    ),
    trial(
        "server-misconfigured",
        Fault,
        "DatabaseServers with a wrong admin password, a port nothing listens on, an admin without CREATEDB/CREATEROLE (PostgreSQL and MariaDB)",
        "AuthenticationFailed / ConnectionFailed / InsufficientPrivileges on the server and its Databases, passwords never shown; a healthy Database beside them Ready",
        "reported within 30 s",
        "databases::server_faults",
    ),
    bad(
        "bad-template-syntax",
        "invalid template syntax (an unclosed block)",
        "Synced=False/TemplateInvalid and an Event",
        "bad_input::invalid_template_syntax",
    ),
    bad(
        "bad-yaml",
        "a template that renders invalid YAML",
        "Synced=False/InvalidYaml and an Event",
        "bad_input::template_rendering_invalid_yaml",
    ),
    bad(
        "bad-object",
        "an object without kind and name",
        "Synced=False/InvalidObject and an Event",
        "bad_input::object_without_kind_or_name",
    ),
    bad(
        "bad-name",
        "a name invalid for its kind (`Item_one`)",
        "Synced=False/InvalidName and an Event",
        "bad_input::name_invalid_for_its_kind",
    ),
    bad(
        "kind-not-allowed",
        "a kind outside allowedKinds (Pod)",
        "Synced=False/KindNotAllowed and an Event",
        "bad_input::kind_not_allowed",
    ),
    bad(
        "namespace-not-allowed",
        "an object in a namespace the DBQR may not write (`default`)",
        "Synced=False/NamespaceNotAllowed and an Event",
        "bad_input::namespace_not_allowed",
    ),
    bad(
        "cluster-kind-not-allowed",
        "a cluster-scoped kind not allowed (ClusterRole)",
        "Synced=False/KindNotAllowed and an Event",
        "bad_input::cluster_scoped_kind_not_allowed",
    ),
    bad(
        "duplicate-rows",
        "two rows rendering one object",
        "Synced=False/DuplicateObject and an Event",
        "bad_input::two_rows_render_one_object",
    ),
    bad(
        "duplicate-dbqrs",
        "a second DBQR rendering the first one's objects",
        "the second: Synced=False/ObjectOwnedElsewhere and an Event; the first keeps its objects and values",
        "bad_input::two_dbqrs_render_one_object",
    ),
    bad(
        "null-name",
        "NULL in the column a name is made of",
        "Synced=False/InvalidName and an Event",
        "bad_input::null_in_a_name_field",
    ),
    bad(
        "hostile-strings",
        "20 values that would change a manifest's structure if spliced as text (a second YAML document with a Secret, keys, quotes, anchors, tags, line and paragraph separators, `{{...}}`)",
        "each row arrives verbatim as data or fails alone with UnsafeValue; no Secret smuggled in",
        "bad_input::hostile_strings_arrive_as_data_or_fail_alone",
    ),
    bad(
        "dbqr-edited-50-times",
        "a DBQR's template edited 50 times in 5 s",
        "objects never deleted meanwhile; the last version applied; Ready",
        "bad_input::a_dbqr_updated_fifty_times_in_five_seconds_lands_on_the_last_version",
    ),
    bad(
        "too-many-rows",
        "a result above maxRows",
        "Synced=False/TooManyRows and an Event",
        "bad_input::result_above_max_rows",
    ),
    bad(
        "row-too-large",
        "a row of 5 MB, above maxRowBytes",
        "Synced=False/RowTooLarge and an Event",
        "bad_input::row_above_max_row_bytes",
    ),
    bad(
        "result-too-large",
        "a result above maxResultBytes",
        "Synced=False/ResultTooLarge and an Event",
        "bad_input::result_above_max_result_bytes",
    ),
    bad(
        "object-too-large",
        "a row whose ConfigMap would be over the API server's 1 MiB",
        "Synced=False/RenderLimitExceeded (the operator's 1 MiB bound per rendered row meets it first) and an Event",
        "bad_input::a_row_too_large_for_the_api_server",
    ),
    bad(
        "query-writes",
        "a query that writes (UPDATE ... RETURNING)",
        "Synced=False/QueryFailed (read-only transaction) and an Event; the table unchanged",
        "bad_input::a_query_that_writes",
    ),
    bad(
        "query-timeout",
        "a query that runs past statementTimeout",
        "Synced=False/QueryTimeout and an Event",
        "bad_input::a_query_that_times_out",
    ),
    bad(
        "sql-syntax",
        "an SQL syntax error",
        "Synced=False/QueryFailed and an Event",
        "bad_input::sql_syntax_error",
    ),
    bad(
        "invalid-duration",
        "an invalid duration (`pollInterval: soon`)",
        "refused by the API server (the CRD's pattern), the error naming the field; the DBQR keeps working",
        "bad_input::invalid_duration",
    ),
    bad(
        "secret-missing",
        "a connection Secret that does not exist",
        "DatabaseConnected=False/SecretNotFound and an Event",
        "bad_input::secret_missing",
    ),
    bad(
        "secret-key-missing",
        "a connection Secret without its `host` key",
        "DatabaseConnected=False/SecretInvalid and an Event",
        "bad_input::secret_key_missing",
    ),
    bad(
        "secret-bad-uri",
        "a connection URI that does not parse",
        "DatabaseConnected=False/SecretInvalid and an Event (no value in the message)",
        "bad_input::secret_with_a_bad_uri",
    ),
    bad(
        "wrong-password",
        "the Secret changed to a wrong password, and back",
        "DatabaseConnected=False/AuthenticationFailed and an Event; Ready again after the change back",
        "bad_input::wrong_password_and_back",
    ),
    bad(
        "unreachable-host",
        "a host that does not resolve",
        "DatabaseConnected=False/ConnectionFailed and an Event",
        "bad_input::unreachable_host",
    ),
    bad(
        "tls-mismatch",
        "sslmode=verify-full with no CA given",
        "DatabaseConnected=False/TlsConfigError and an Event",
        "bad_input::tls_mismatch",
    ),
    bad(
        "tls-not-offered",
        "a client requiring TLS against a server without it; wrong password; unknown host; missing Secret, side by side",
        "ConnectionFailed / AuthenticationFailed / SecretNotFound, no password in any message",
        "operator_database::wrong_password_unknown_host_and_tls_mismatch_have_clear_reasons",
    ),
    bad(
        "status-two-statements",
        "statusUpdateQueryTemplate with two statements",
        "StatusWriteBack=False/StatusTemplateInvalid; no statement run",
        "writeback::a_status_template_with_two_statements_is_refused",
    ),
    bad(
        "status-type",
        "statusUpdateQueryTemplate writing a value its column type cannot take",
        "StatusWriteBack=False/StatusWriteBackFailed naming the problem; retried",
        "writeback::a_value_that_does_not_convert_is_a_clear_error",
    ),
    bad(
        "bad-row-isolated",
        "one bad row beside good rows, and another DBQR beside it",
        "the bad row fails alone, nothing pruned while it fails; the other DBQR converges",
        "operator_loop::a_bad_row_blocks_pruning_but_not_other_dbqrs",
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
        "stale-uid-delete",
        Security,
        "an object replaced by a same-named one between the operator's read and its delete",
        "the delete carries the old uid as a precondition; the replacement stays",
        "first pass",
        "tenancy::a_delete_with_a_stale_uid_leaves_the_replacement",
    ),
    trial(
        "secret-values",
        Security,
        "a Secret value mapped onto each connection key (sslModeKey: token, ...)",
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
        "Forbidden for those writes and reads; the operator's own rights are never used",
        "first pass",
        "tenancy::a_dbqr_acts_with_its_service_accounts_rights_only",
    ),
    trial(
        "template-bomb",
        Security,
        "a row of 64 MiB and a template bomb (indent with a huge count)",
        "RowTooLarge / RenderLimitExceeded for that row alone; /healthz answers throughout",
        "first pass",
        "tenancy::a_huge_row_and_a_template_bomb_fail_alone_while_health_answers",
    ),
    trial(
        "row-values-redacted",
        Security,
        "row values and passwords in failing rows, queries and connections",
        "never in conditions, Events or info logs",
        "first pass",
        "redaction::row_values_and_passwords_never_reach_conditions_events_or_info_logs",
    ),
    trial(
        "load-churn",
        Load,
        "50 DBQRs and 1,000 objects on one operator under steady row churn (inserts, updates, deletes) for 30 s at 20 changes/s",
        "RSS under the bound (100 MiB), connections under the budget (5), no actor stuck (a last change to every row reaches every object), no change missed (the cluster equals the rows at the end)",
        "settled within 120 s of the last change",
        "load::many_dbqrs_under_row_churn_miss_no_change_and_stay_bounded",
    ),
    trial(
        "load-churn-full",
        Load,
        "500 DBQRs and 50,000 objects on one operator under steady row churn for 10 min at 100 changes/s (outside the test command: the command is in tests/load.rs)",
        "RSS under 400 MiB, connections under the budget (5), no actor stuck, no change missed",
        "settled within 120 s of the last change",
        "load::many_dbqrs_under_row_churn_miss_no_change_and_stay_bounded",
    ),
    trial(
        "connection-budget",
        Load,
        "200 DBQRs of one Secret",
        "every DBQR converges; the operator never holds more than its budget of connections",
        "all Ready within the test's deadline",
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
        if section == BadInput {
            text.push_str(&format!(
                "Every row of `tests/bad_input.rs` also checks: {BAD_INPUT_CHECKS}.\n\n"
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
