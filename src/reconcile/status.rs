//! DBQR status from pass reports: conditions `Ready`, `DatabaseConnected`
//! and `Synced`, written only when they change, with an Event each time a
//! condition's reason changes.
//!
//! `lastPollTime` moves only with a status change: a steady state costs no
//! write at all, so it tells when the DBQR last changed state, not every poll.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::error::PassError;
use super::guard::{Ruling, RELEASE_ANNOTATION};
use super::pass::{GuardReport, PassReport};
use crate::api::DatabaseQueryResourceStatus;
use crate::controller::condition::{self, Status, Verdict};
use crate::kube_api::NewEvent;

pub const READY: &str = "Ready";
pub const DATABASE_CONNECTED: &str = "DatabaseConnected";
pub const SYNCED: &str = "Synced";
pub const STATUS_WRITE_BACK: &str = "StatusWriteBack";
pub const PRUNE_HELD: &str = "PruneHeld";

/// The outcome of the last status write-back batch.
pub type WriteBackResult = Result<(), Arc<PassError>>;

fn ok(reason: &'static str, message: impl Into<String>) -> Verdict {
    Verdict::new(Status::True, reason, message)
}

fn failed(e: &PassError) -> Verdict {
    Verdict::failed(e.reason(), e.to_string())
}

fn unknown(reason: &'static str, message: &str) -> Verdict {
    Verdict::new(Status::Unknown, reason, message)
}

/// Not synced because the database is not there to read.
fn database_unavailable() -> Verdict {
    Verdict::failed(crate::reason::DATABASE_UNAVAILABLE, "not synced: the database is unavailable")
}

/// What a DBQR's status should say.
pub enum Outcome<'a> {
    /// A pass ended.
    Pass(&'a PassReport),
    /// The spec cannot run.
    InvalidSpec(&'a PassError),
    /// A change probe failed between passes; the rest of the status stands.
    ProbeFailed(&'a PassError),
    /// `spec.suspend` is true: `Synced` says so, the rest stands as the last
    /// pass left it (the objects are still there).
    Suspended,
}

/// `DatabaseConnected` after a pass.
fn database_verdict(report: &PassReport) -> Verdict {
    match &report.database {
        Some(Ok(())) => ok(crate::reason::CONNECTED, "connected to the database"),
        Some(Err(e)) => failed(e),
        None => unknown(crate::reason::NOT_CHECKED, "no connection attempted"),
    }
}

/// `Synced` after a pass.
fn synced_verdict(report: &PassReport) -> Verdict {
    match &report.sync {
        // The cluster still holds objects the rows no longer produce.
        Some(Ok(())) if report.guard.is_some_and(|g| g.held > 0) => Verdict::failed(
            crate::reason::PRUNE_HELD,
            format!(
                "{} objects from {} rows; deletions held (see PruneHeld)",
                report.objects, report.rows
            ),
        ),
        Some(Ok(())) if report.waiting_rows > 0 => Verdict::failed(
            crate::reason::WAITING_FOR_WAVE,
            format!(
                "{} objects from {} rows; {} rows wait for every object of an earlier wave to be \
                 Ready",
                report.objects, report.rows, report.waiting_rows
            ),
        ),
        Some(Ok(())) => ok(
            crate::reason::SYNCED,
            format!("{} objects from {} rows", report.objects, report.rows),
        ),
        Some(Err(e)) => failed(e),
        None => database_unavailable(),
    }
}

fn verdicts(
    outcome: &Outcome<'_>,
    writeback: Option<&WriteBackResult>,
) -> Vec<(&'static str, Verdict)> {
    let (database, synced) = match outcome {
        Outcome::InvalidSpec(e) => {
            (unknown(crate::reason::NOT_CHECKED, "the spec is invalid"), failed(e))
        }
        Outcome::ProbeFailed(e) if e.is_database() => (failed(e), database_unavailable()),
        Outcome::ProbeFailed(e) => {
            (ok(crate::reason::CONNECTED, "connected to the database"), failed(e))
        }
        Outcome::Pass(report) => (database_verdict(report), synced_verdict(report)),
        Outcome::Suspended => unreachable!("next_status answers a suspension itself"),
    };
    let ready = if database.holds() && synced.holds() {
        Verdict::ready(synced.message.clone())
    } else if database.holds() {
        Verdict { status: Status::False, ..synced.clone() }
    } else {
        Verdict::failed(database.reason, database.message.clone())
    };
    let mut all = vec![(READY, ready), (DATABASE_CONNECTED, database), (SYNCED, synced)];
    if let Outcome::Pass(PassReport { guard: Some(guard), .. }) = outcome {
        all.push((PRUNE_HELD, prune_held(guard)));
    }
    // Write-back failures are reported beside, never instead of, the sync state.
    match writeback {
        Some(Ok(())) => all.push((
            STATUS_WRITE_BACK,
            ok(crate::reason::WRITTEN, "object status written back to the database"),
        )),
        Some(Err(e)) => all.push((STATUS_WRITE_BACK, failed(e))),
        None => {}
    }
    all
}

/// The `PruneHeld` condition after a pass that got as far as pruning: True
/// while deletions are held, False with what ended the hold. (`next_status`
/// leaves it out until a prune is first held.)
fn prune_held(guard: &GuardReport) -> Verdict {
    match guard.ruling {
        Ruling::Holding => Verdict::new(
            Status::True,
            crate::reason::PRUNE_HELD,
            format!(
                "holding the deletion of {} of {} objects: more than the allowed share of this \
                 DBQR's objects would go; they are deleted if a pass at least {:?} later still \
                 does not produce them, or at once with the annotation {RELEASE_ANNOTATION}",
                guard.held, guard.owned, guard.confirmation
            ),
        ),
        Ruling::Confirmed => Verdict::failed(
            crate::reason::PRUNE_CONFIRMED,
            format!("held deletions confirmed after {:?} and carried out", guard.confirmation),
        ),
        Ruling::Released => Verdict::failed(
            crate::reason::PRUNE_RELEASED,
            format!("held deletions released by the annotation {RELEASE_ANNOTATION}"),
        ),
        Ruling::Nothing | Ruling::Immediate => {
            Verdict::failed(crate::reason::NOTHING_HELD, "no deletion is held")
        }
    }
}

/// The next status and the Events it warrants, or `None` when nothing changed.
pub fn next_status(
    previous: Option<&DatabaseQueryResourceStatus>,
    outcome: &Outcome<'_>,
    writeback: Option<&WriteBackResult>,
    generation: Option<i64>,
    now: Time,
) -> Option<(DatabaseQueryResourceStatus, Vec<NewEvent>)> {
    let old = previous.cloned().unwrap_or_default();
    if let Outcome::Suspended = outcome {
        return suspended(old, generation, now);
    }
    let mut next = old.clone();
    let mut events = Vec::new();
    next.observed_generation = generation;
    let had = |type_: &str| old.conditions.iter().any(|c| c.type_ == type_);
    let mut verdicts = verdicts(outcome, writeback);
    // PruneHeld appears with the first hold; "nothing held" alone is noise.
    verdicts.retain(|(type_, v)| *type_ != PRUNE_HELD || v.holds() || had(PRUNE_HELD));
    next.conditions = verdicts
        .into_iter()
        .map(|(type_, v)| {
            let before = condition::find(&old.conditions, type_);
            // PruneHeld is the one condition whose True is bad news.
            let bad = if type_ == PRUNE_HELD { Status::True } else { Status::False };
            let message = format!("{type_}: {}", v.message);
            if type_ != READY {
                events.extend(condition::event_on_new_reason(before, &v, bad, message));
            }
            condition::condition(before, type_, &v, generation, &now)
        })
        .collect::<Vec<_>>();
    // An outcome that did not reach pruning leaves the hold as it was.
    let ruled = matches!(outcome, Outcome::Pass(r) if r.guard.is_some());
    if !ruled {
        if let Some(held) = old.conditions.iter().find(|c| c.type_ == PRUNE_HELD) {
            next.conditions.push(held.clone());
        }
    }
    if let Outcome::Pass(report) = outcome {
        if report.requested_at.is_some() {
            next.last_handled_requested_at = report.requested_at.clone();
        }
        next.managed_kinds = report.managed_kinds.iter().map(ToString::to_string).collect();
        if report.succeeded() {
            next.object_count = Some(report.objects as i64);
            next.waiting_rows = (report.waiting_rows > 0).then_some(report.waiting_rows as i64);
        }
    }
    if next == old {
        return None;
    }
    if matches!(outcome, Outcome::Pass(r) if r.succeeded()) {
        next.last_poll_time = Some(now);
    }
    Some((next, events))
}

/// The status of a suspended DBQR: `Synced` False with reason `Suspended`
/// (a Normal Event: it was asked for), every other condition as it was.
fn suspended(
    old: DatabaseQueryResourceStatus,
    generation: Option<i64>,
    now: Time,
) -> Option<(DatabaseQueryResourceStatus, Vec<NewEvent>)> {
    let verdict = Verdict::failed(
        crate::reason::SUSPENDED,
        "suspended (spec.suspend): nothing is queried, applied, pruned, repaired or written back \
         until it is set back to false",
    );
    let before = condition::find(&old.conditions, SYNCED);
    let message = format!("{SYNCED}: {}", verdict.message);
    let event = condition::event_on_new_reason(before, &verdict, Status::Unknown, message);
    let synced = condition::condition(before, SYNCED, &verdict, generation, &now);
    let mut next = old.clone();
    next.observed_generation = generation;
    match next.conditions.iter_mut().find(|c| c.type_ == SYNCED) {
        Some(c) => *c = synced,
        None => next.conditions.push(synced),
    }
    (next != old).then(|| (next, event.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn ok_report(objects: usize) -> PassReport {
        PassReport {
            database: Some(Ok(())),
            sync: Some(Ok(())),
            rows: objects,
            objects,
            managed_kinds: ["v1/ConfigMap".parse().unwrap()].into(),
            ..PassReport::default()
        }
    }

    #[test]
    fn a_steady_state_writes_nothing() {
        let (first, events) =
            next_status(None, &Outcome::Pass(&ok_report(3)), None, Some(1), time(10)).unwrap();
        assert_eq!(events.len(), 2, "DatabaseConnected and Synced appear");
        assert_eq!(first.last_poll_time, Some(time(10)));
        assert!(next_status(Some(&first), &Outcome::Pass(&ok_report(3)), None, Some(1), time(20))
            .is_none());
        let (second, events) =
            next_status(Some(&first), &Outcome::Pass(&ok_report(4)), None, Some(1), time(30))
                .unwrap();
        assert!(events.is_empty(), "same reasons, no events");
        assert_eq!(second.object_count, Some(4));
        let ready = second.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.last_transition_time, time(10), "status did not flip");
    }

    #[test]
    fn a_suspension_changes_synced_only_and_is_announced_once() {
        let (ok, _) =
            next_status(None, &Outcome::Pass(&ok_report(3)), None, Some(1), time(10)).unwrap();
        let (paused, events) =
            next_status(Some(&ok), &Outcome::Suspended, None, Some(2), time(20)).unwrap();
        let get = |s: &DatabaseQueryResourceStatus, t: &str| {
            s.conditions.iter().find(|c| c.type_ == t).map(|c| (c.status.clone(), c.reason.clone()))
        };
        assert_eq!(get(&paused, SYNCED), Some(("False".into(), "Suspended".into())));
        assert_eq!(get(&paused, READY), get(&ok, READY), "Ready stands");
        assert_eq!(get(&paused, DATABASE_CONNECTED), get(&ok, DATABASE_CONNECTED));
        assert_eq!((paused.observed_generation, paused.object_count), (Some(2), Some(3)));
        assert_eq!(paused.last_poll_time, ok.last_poll_time, "no pass ran");
        assert!(matches!(events.as_slice(), [e] if !e.warning && e.reason == "Suspended"));
        // After a restart the same suspension writes nothing.
        assert!(next_status(Some(&paused), &Outcome::Suspended, None, Some(2), time(30)).is_none());
    }

    #[test]
    fn the_requested_at_value_a_pass_started_under_is_echoed() {
        let mut report = ok_report(1);
        report.requested_at = Some("2026-12-03T10:00:00Z".into());
        let (first, _) =
            next_status(None, &Outcome::Pass(&report), None, Some(1), time(10)).unwrap();
        assert_eq!(first.last_handled_requested_at.as_deref(), Some("2026-12-03T10:00:00Z"));
        // A pass without the annotation leaves the last handled value.
        let (second, _) =
            next_status(Some(&first), &Outcome::Pass(&ok_report(2)), None, Some(1), time(20))
                .unwrap();
        assert_eq!(second.last_handled_requested_at, first.last_handled_requested_at);
    }

    #[test]
    fn failures_flip_conditions_and_keep_the_object_count() {
        let (ok, _) =
            next_status(None, &Outcome::Pass(&ok_report(3)), None, Some(1), time(10)).unwrap();
        let down = PassReport {
            database: Some(Err(Arc::new(PassError::ConnectTimeout))),
            ..PassReport::default()
        };
        let (failed, events) =
            next_status(Some(&ok), &Outcome::Pass(&down), None, Some(1), time(20)).unwrap();
        let get = |t: &str| failed.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(
            (get(READY).status.as_str(), get(READY).reason.as_str()),
            ("False", "ConnectionFailed")
        );
        assert_eq!(get(SYNCED).reason, "DatabaseUnavailable");
        assert_eq!(failed.object_count, Some(3));
        assert_eq!(failed.last_poll_time, Some(time(10)));
        assert!(events.iter().all(|e| e.warning));
    }

    fn guarded(ruling: Ruling, held: usize) -> PassReport {
        PassReport {
            guard: Some(GuardReport {
                ruling,
                held,
                owned: 3,
                confirm_in: None,
                confirmation: std::time::Duration::from_secs(30),
                released: false,
            }),
            ..ok_report(0)
        }
    }

    #[test]
    fn a_held_prune_is_reported_until_it_ends() {
        let get = |s: &DatabaseQueryResourceStatus, t: &str| {
            s.conditions.iter().find(|c| c.type_ == t).map(|c| (c.status.clone(), c.reason.clone()))
        };
        // No hold yet: no PruneHeld condition at all.
        let (first, _) = next_status(
            None,
            &Outcome::Pass(&guarded(Ruling::Immediate, 0)),
            None,
            Some(1),
            time(10),
        )
        .unwrap();
        assert_eq!(get(&first, PRUNE_HELD), None);

        let (held, events) = next_status(
            Some(&first),
            &Outcome::Pass(&guarded(Ruling::Holding, 3)),
            None,
            Some(1),
            time(20),
        )
        .unwrap();
        assert_eq!(get(&held, PRUNE_HELD), Some(("True".into(), "PruneHeld".into())));
        assert_eq!(get(&held, SYNCED), Some(("False".into(), "PruneHeld".into())));
        let event = events.iter().find(|e| e.message.starts_with("PruneHeld:")).unwrap();
        assert!(event.warning && event.message.contains("3 of 3"), "{event:?}");

        // A failed probe does not touch it; the end of the hold does.
        let probe = PassError::ProbeTimeout;
        let (probed, _) =
            next_status(Some(&held), &Outcome::ProbeFailed(&probe), None, Some(1), time(25))
                .unwrap();
        assert_eq!(get(&probed, PRUNE_HELD), Some(("True".into(), "PruneHeld".into())));
        let (ended, events) = next_status(
            Some(&held),
            &Outcome::Pass(&guarded(Ruling::Confirmed, 0)),
            None,
            Some(1),
            time(30),
        )
        .unwrap();
        assert_eq!(get(&ended, PRUNE_HELD), Some(("False".into(), "PruneConfirmed".into())));
        let event = events.iter().find(|e| e.reason == "PruneConfirmed").unwrap();
        assert!(!event.warning);
    }
}
