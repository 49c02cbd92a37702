//! When a `Database`'s scheduled backups are due (cron, UTC) and which
//! completed ones its retention lets go.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;

/// A `spec.backup.schedule` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.backup.schedule {text:?} is not a cron expression: {problem}")]
pub struct ScheduleError {
    pub text: String,
    pub problem: String,
}

impl ScheduleError {
    pub fn reason(&self) -> &'static str {
        crate::reason::INVALID_SPEC
    }
}

/// A parsed schedule.
pub struct Schedule(Cron);

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        Cron::from_str(text.trim())
            .map(Self)
            .map_err(|e| ScheduleError { text: text.to_owned(), problem: e.to_string() })
    }

    /// The latest time the schedule fired at or before `now`, if it is
    /// after `since` (the last one acted on, or the `Database`'s creation)
    /// by at least `min_interval`: times missed while the operator was
    /// down collapse into one backup.
    pub fn due(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        min_interval: chrono::Duration,
    ) -> Option<DateTime<Utc>> {
        let last = self.0.find_previous_occurrence(&now, true).ok()?;
        (last > since && last - since >= min_interval).then_some(last)
    }

    /// The next time after `now`.
    pub fn next(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.0.find_next_occurrence(&now, false).ok()
    }
}

/// A scheduled backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub name: String,
    pub created: i64,
    pub completed: bool,
}

/// The completed backups beyond the newest `retention` ones. Backups still
/// running or failed are never counted nor chosen: a list that misses some
/// (a watch behind) can only make fewer go, never a newer one.
pub fn expired(backups: &[Kept], retention: u32) -> Vec<String> {
    let mut completed: Vec<&Kept> = backups.iter().filter(|b| b.completed).collect();
    completed.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
    completed.into_iter().skip(retention as usize).map(|b| b.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_due_time_fires_once_and_missed_ones_collapse() {
        let daily = Schedule::parse("0 3 * * *").unwrap();
        let minute = chrono::Duration::minutes(1);
        let created = at("2026-12-01T12:00:00Z");
        assert_eq!(daily.due(created, at("2026-12-02T02:59:00Z"), minute), None);
        let due = daily.due(created, at("2026-12-02T03:00:30Z"), minute).unwrap();
        assert_eq!(due, at("2026-12-02T03:00:00Z"));
        assert_eq!(daily.due(due, at("2026-12-02T09:00:00Z"), minute), None, "acted on");
        let late = daily.due(due, at("2026-12-05T04:00:00Z"), minute).unwrap();
        assert_eq!(late, at("2026-12-05T03:00:00Z"), "three missed, one backup");
        assert_eq!(daily.next(late).unwrap(), at("2026-12-06T03:00:00Z"));
        assert!(Schedule::parse("every day").is_err());
    }

    #[test]
    fn a_schedule_faster_than_the_minimum_interval_waits() {
        let every_second = Schedule::parse("* * * * * *").unwrap();
        let since = at("2026-12-02T03:00:00Z");
        let five = chrono::Duration::minutes(5);
        assert_eq!(every_second.due(since, at("2026-12-02T03:04:59Z"), five), None);
        assert!(every_second.due(since, at("2026-12-02T03:05:00Z"), five).is_some());
    }

    #[test]
    fn retention_keeps_the_newest_completed() {
        let b = |name: &str, created, completed| Kept { name: name.into(), created, completed };
        let backups =
            [b("a", 1, true), b("b", 2, true), b("c", 3, false), b("d", 4, true), b("e", 5, true)];
        assert_eq!(expired(&backups, 2), vec!["b".to_owned(), "a".to_owned()]);
        assert!(expired(&backups, 10).is_empty());
    }
}
