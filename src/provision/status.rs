//! Statuses of `Database` and `DatabaseServer`: one `Ready` condition with
//! a stable reason, written only when something in it changed (a converged
//! resource costs no write), its transition time kept while it holds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::database::{DatabaseStatus, Phase, RestoreStatus};
use crate::api::server::DatabaseServerStatus;

use crate::controller::condition;
pub use crate::controller::condition::Verdict;

pub const READY: &str = "Ready";

/// The `Ready` condition for `verdict`, keeping `before`'s transition time
/// while the status holds.
fn ready(
    before: &[Condition],
    verdict: &Verdict,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let before = condition::find(before, READY);
    condition::condition(before, READY, verdict, generation, now)
}

/// What a `Database` pass found, for its status.
#[derive(Debug, Clone, Default)]
pub struct Observed<'a> {
    pub generation: Option<i64>,
    /// The names provisioned (kept from before when `None`).
    pub names: Option<(&'a str, &'a str)>,
    pub requested_at: Option<&'a str>,
    /// Its backups' progress (kept from before when `None`).
    pub progress: Option<&'a BackupProgress>,
}

/// What a `Database`'s status says of its backups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupProgress {
    pub restore: Option<RestoreStatus>,
    pub last_scheduled_backup: Option<Time>,
}

impl BackupProgress {
    pub fn of(status: Option<&DatabaseStatus>) -> Self {
        Self {
            restore: status.and_then(|s| s.restore.clone()),
            last_scheduled_backup: status.and_then(|s| s.last_scheduled_backup.clone()),
        }
    }
}

/// A `Database`'s next status; `None` when it would not change.
pub fn next_database_status(
    before: Option<&DatabaseStatus>,
    phase: Phase,
    observed: Observed<'_>,
    verdict: &Verdict,
    now: Time,
) -> Option<DatabaseStatus> {
    let empty = DatabaseStatus::default();
    let before = before.unwrap_or(&empty);
    let names = observed.names;
    let progress = observed.progress.cloned().unwrap_or_else(|| BackupProgress::of(Some(before)));
    let next = DatabaseStatus {
        observed_generation: observed.generation,
        phase: Some(phase),
        database_name: names.map(|(d, _)| d.to_owned()).or_else(|| before.database_name.clone()),
        username: names.map(|(_, u)| u.to_owned()).or_else(|| before.username.clone()),
        last_handled_requested_at: observed.requested_at.map(str::to_owned),
        restore: progress.restore,
        last_scheduled_backup: progress.last_scheduled_backup,
        conditions: vec![ready(&before.conditions, verdict, observed.generation, &now)],
    };
    (next != *before).then_some(next)
}

/// A `DatabaseServer`'s next status; `None` when it would not change.
pub fn next_server_status(
    before: Option<&DatabaseServerStatus>,
    generation: Option<i64>,
    facts: Option<(&str, &[String])>,
    verdict: &Verdict,
    now: Time,
) -> Option<DatabaseServerStatus> {
    let empty = DatabaseServerStatus::default();
    let before = before.unwrap_or(&empty);
    let next = DatabaseServerStatus {
        observed_generation: generation,
        reachable: Some(facts.is_some()),
        server_version: facts.map(|(v, _)| v.to_owned()).or_else(|| before.server_version.clone()),
        missing_rights: facts.map(|(_, m)| m.to_vec()).unwrap_or_default(),
        conditions: vec![ready(&before.conditions, verdict, generation, &now)],
    };
    (next != *before).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn observed(names: Option<(&'static str, &'static str)>) -> Observed<'static> {
        Observed { generation: Some(1), names, ..Default::default() }
    }

    #[test]
    fn an_unchanged_status_is_not_written() {
        let v = Verdict::ready("database and user ready");
        let first =
            next_database_status(None, Phase::Ready, observed(Some(("d", "u"))), &v, time(1))
                .unwrap();
        assert_eq!(first.conditions[0].status, "True");
        assert!(next_database_status(
            Some(&first),
            Phase::Ready,
            observed(Some(("d", "u"))),
            &v,
            time(9)
        )
        .is_none());
        let failed = Verdict::failed("ConnectionFailed", "cannot connect");
        let second =
            next_database_status(Some(&first), Phase::Error, observed(None), &failed, time(9))
                .unwrap();
        assert_eq!(second.conditions[0].last_transition_time, time(9));
        assert_eq!(second.database_name.as_deref(), Some("d"), "names kept");
    }

    #[test]
    fn server_status_reports_facts() {
        let missing = vec!["CREATEROLE".to_owned()];
        let s = next_server_status(
            None,
            Some(2),
            Some(("15.4", &missing)),
            &Verdict::failed("InsufficientPrivileges", "the admin lacks CREATEROLE"),
            time(1),
        )
        .unwrap();
        assert_eq!(s.reachable, Some(true));
        assert_eq!(s.missing_rights, missing);
        let down = next_server_status(
            Some(&s),
            Some(2),
            None,
            &Verdict::failed("ConnectionFailed", "x"),
            time(2),
        )
        .unwrap();
        assert_eq!(down.reachable, Some(false));
        assert_eq!(down.server_version.as_deref(), Some("15.4"));
    }
}
