//! When a DBQR's next pass runs. A pure state machine: the actor tells it
//! what happened (a change in the database, a timer, the end of a pass or
//! of a drift repair) with the time, and it answers what to do now: run a
//! pass, wake at an instant, or nothing. The actor keeps one timer and
//! re-arms it from each answer.
//!
//! The rules:
//! - A pass runs at start, then every `pollInterval` after the last one
//!   ended (never overlapping), and after a failure with backoff instead.
//! - A change (a notification, a probe that saw a new maximum, a Secret or
//!   metadata change, a requested pass) runs a pass at once; during a pass,
//!   once more `DEBOUNCE` after it (its query may have missed the change).
//!   A pass already due within `DEBOUNCE` covers a change, so a steady
//!   stream of changes never postpones it.
//! - A change of known keys (a keyed notification) runs a pass of those
//!   keys only; keys that arrive before it starts join it, and keys that
//!   arrive during a pass run right after it (no debounce: they are a
//!   batch already). Every other
//!   pass is full: the first, each at `pollInterval` (which keyed passes
//!   never postpone), a retry after a failure, a guard's confirmation, and
//!   any pass that also covers a change of unknown extent.
//! - A pass waits for drift repairs under way (a repair must not race a
//!   prune of the same object).
//! - A prune held by the guard is confirmed by a pass once its interval has
//!   passed, whatever the poll interval.
//! - A suspended DBQR (`spec.suspend`) runs nothing: no pass at start, on a
//!   change or on a timer. Resuming is a new spec generation, hence a new
//!   scheduler, whose first pass runs at once.
//! - Once stopping, nothing new runs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::backoff::backoff;

/// Changes that arrive while a pass runs are collapsed into one pass this
/// long after it: a burst of row changes costs a few passes, not one per
/// statement.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// What a pass covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassScope {
    /// Every row of the query.
    Full,
    /// The rows of these keys (`changeDetection.keyColumn` as text).
    Keys(BTreeSet<String>),
}

impl PassScope {
    /// What a pass must cover for `self` and then `later`: past
    /// [`MAX_PENDING_KEYS`](crate::db::MAX_PENDING_KEYS) keys, everything.
    fn merge(self, later: PassScope) -> PassScope {
        match (self, later) {
            (PassScope::Keys(mut keys), PassScope::Keys(more)) => {
                keys.extend(more);
                if keys.len() > crate::db::MAX_PENDING_KEYS {
                    return PassScope::Full;
                }
                PassScope::Keys(keys)
            }
            _ => PassScope::Full,
        }
    }
}

/// What the actor does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Start a pass (its number) over this scope.
    RunPass(u64, PassScope),
    /// Arm the timer for this instant (replacing the armed one).
    WakeAt(Instant),
    /// Keep the timer as it is.
    Nothing,
}

/// How a pass ended, as far as scheduling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassEnd {
    /// A full pass ran (asked for, or in place of a keyed one).
    pub full: bool,
    pub succeeded: bool,
    /// A held prune is due for confirmation in this long.
    pub confirm_in: Option<Duration>,
}

#[derive(Debug)]
pub struct Scheduler {
    poll: Duration,
    /// Failed passes in a row.
    failures: u32,
    /// Passes started so far.
    passes: u64,
    running: bool,
    /// What the next pass must cover beyond the last one: changes that came
    /// while a pass ran or while one was due.
    pending: Option<PassScope>,
    /// When the next full pass is due (`None`: now).
    full_at: Option<Instant>,
    /// Drift repairs under way.
    repairs: usize,
    /// A pass is due once the repairs are done.
    waiting_for_repairs: bool,
    /// When the armed timer fires.
    wake_at: Option<Instant>,
    suspended: bool,
    stopping: bool,
}

impl Scheduler {
    pub fn new(poll: Duration) -> Self {
        Self::with_suspend(poll, false)
    }

    /// The scheduler of a DBQR whose `spec.suspend` is `suspended`.
    pub fn with_suspend(poll: Duration, suspended: bool) -> Self {
        Self {
            poll,
            failures: 0,
            passes: 0,
            running: false,
            pending: None,
            full_at: None,
            repairs: 0,
            waiting_for_repairs: false,
            wake_at: None,
            suspended,
            stopping: false,
        }
    }

    /// Nothing runs: `spec.suspend` is true.
    pub fn suspended(&self) -> bool {
        self.suspended
    }

    /// A pass is running now.
    pub fn running(&self) -> bool {
        self.running
    }

    /// Drift repairs are under way.
    pub fn repairing(&self) -> bool {
        self.repairs > 0
    }

    /// The actor starts: the first pass runs at once.
    pub fn start(&mut self, now: Instant) -> Next {
        self.due(now)
    }

    /// Something changed in the database (or the DBQR's Secret or metadata).
    pub fn changed(&mut self, now: Instant) -> Next {
        self.changed_in(PassScope::Full, now)
    }

    /// The rows of `keys` changed in the database, and nothing else.
    pub fn changed_keys(&mut self, keys: BTreeSet<String>, now: Instant) -> Next {
        self.changed_in(PassScope::Keys(keys), now)
    }

    fn changed_in(&mut self, scope: PassScope, now: Instant) -> Next {
        self.pending = Some(match self.pending.take() {
            Some(earlier) => earlier.merge(scope),
            None => scope,
        });
        if self.running {
            return Next::Nothing;
        }
        match self.wake_at {
            Some(at) if at <= now + DEBOUNCE => Next::Nothing,
            _ => self.due(now),
        }
    }

    /// The armed timer fired.
    pub fn woke(&mut self, now: Instant) -> Next {
        self.wake_at = None;
        self.due(now)
    }

    pub fn pass_ended(&mut self, end: PassEnd, now: Instant) -> Next {
        self.running = false;
        if end.full || !end.succeeded {
            let delay = if end.succeeded {
                self.failures = 0;
                self.poll
            } else {
                self.failures = self.failures.saturating_add(1);
                backoff(self.failures, self.poll)
            };
            self.full_at = Some(now + delay);
        }
        if let Some(confirm) = end.confirm_in {
            self.full_at = self.full_at.map(|at| at.min(now + confirm));
        }
        let at = match (&self.pending, self.full_at) {
            // Keys that came during the pass are a batch already, and a
            // pass of them is cheap: at once.
            (Some(PassScope::Keys(_)), Some(full_at)) if full_at > now + DEBOUNCE => now,
            (Some(_), _) => now + DEBOUNCE,
            (None, Some(at)) => at,
            (None, None) => now,
        };
        self.wake_in(at.saturating_duration_since(now), now)
    }

    pub fn repair_started(&mut self) {
        self.repairs += 1;
    }

    pub fn repair_ended(&mut self, now: Instant) -> Next {
        self.repairs = self.repairs.saturating_sub(1);
        if self.repairs == 0 && std::mem::take(&mut self.waiting_for_repairs) {
            return self.due(now);
        }
        Next::Nothing
    }

    /// Nothing new runs from now on; the armed timer is void.
    pub fn stop(&mut self) {
        self.stopping = true;
        self.wake_at = None;
    }

    /// A pass is due now: a full one if one is due (within `DEBOUNCE`) or
    /// asked for, else one of the pending keys.
    fn due(&mut self, now: Instant) -> Next {
        if self.stopping || self.suspended || self.running {
            return Next::Nothing;
        }
        if self.repairs > 0 {
            self.waiting_for_repairs = true;
            return Next::Nothing;
        }
        let full_due = self.full_at.is_none_or(|at| at <= now + DEBOUNCE);
        let scope = match self.pending.take() {
            Some(PassScope::Keys(keys)) if !full_due => PassScope::Keys(keys),
            _ => PassScope::Full,
        };
        self.wake_at = None;
        self.running = true;
        self.passes += 1;
        Next::RunPass(self.passes, scope)
    }

    fn wake_in(&mut self, delay: Duration, now: Instant) -> Next {
        if self.stopping || self.suspended {
            return Next::Nothing;
        }
        let at = now + delay;
        self.wake_at = Some(at);
        Next::WakeAt(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(10);

    fn ok() -> PassEnd {
        PassEnd { full: true, succeeded: true, confirm_in: None }
    }

    fn failed() -> PassEnd {
        PassEnd { full: true, succeeded: false, confirm_in: None }
    }

    fn full(pass: u64) -> Next {
        Next::RunPass(pass, PassScope::Full)
    }

    fn keys(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn passes_run_at_start_then_every_poll_interval_after_the_last_ended() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        assert_eq!(s.start(t0), full(1));
        assert!(s.running());
        let ended = t0 + Duration::from_secs(3);
        assert_eq!(s.pass_ended(ok(), ended), Next::WakeAt(ended + POLL));
        assert_eq!(s.woke(t0), full(2));
    }

    #[test]
    fn a_suspended_dbqr_runs_nothing_and_its_resumed_spec_runs_at_once() {
        let t0 = Instant::now();
        let mut s = Scheduler::with_suspend(POLL, true);
        assert!(s.suspended());
        assert_eq!(s.start(t0), Next::Nothing);
        assert_eq!(s.changed(t0), Next::Nothing);
        assert_eq!(s.woke(t0), Next::Nothing);
        s.repair_started();
        assert_eq!(s.repair_ended(t0), Next::Nothing);
        assert!(!s.running());
        // Resuming is a new generation: a new scheduler.
        let mut resumed = Scheduler::with_suspend(POLL, false);
        assert_eq!(resumed.start(t0), full(1));
    }

    #[test]
    fn failures_back_off_and_a_success_resets() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Duration::from_secs(60));
        let mut delays = Vec::new();
        for _ in 0..3 {
            let Next::RunPass(..) = s.woke(t0) else { panic!("a pass runs") };
            let Next::WakeAt(at) = s.pass_ended(failed(), t0) else { panic!("a retry is armed") };
            delays.push((at - t0).as_secs_f64());
        }
        // 1 s, 2 s, 4 s, each within the jitter.
        for (delay, base) in delays.iter().zip([1.0, 2.0, 4.0]) {
            assert!((base * 0.8..=base * 1.2).contains(delay), "{delays:?}");
        }
        s.woke(t0);
        assert_eq!(s.pass_ended(ok(), t0), Next::WakeAt(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_change_runs_a_pass_at_once_or_once_more_after_the_running_one() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        s.start(t0);
        s.pass_ended(ok(), t0);
        assert_eq!(s.changed(t0 + Duration::from_secs(1)), full(2));
        // During the pass: remembered, not run.
        assert_eq!(s.changed(t0 + Duration::from_secs(2)), Next::Nothing);
        assert_eq!(s.changed(t0 + Duration::from_secs(2)), Next::Nothing);
        let ended = t0 + Duration::from_secs(3);
        assert_eq!(s.pass_ended(ok(), ended), Next::WakeAt(ended + DEBOUNCE));
        assert_eq!(s.woke(t0), full(3));
        // Nothing came during this one: back to the poll interval.
        assert_eq!(s.pass_ended(ok(), ended), Next::WakeAt(ended + POLL));
    }

    #[test]
    fn a_pass_due_within_the_debounce_window_covers_a_change() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        s.start(t0);
        s.changed(t0);
        let Next::WakeAt(at) = s.pass_ended(ok(), t0) else { panic!("armed") };
        assert_eq!(at, t0 + DEBOUNCE);
        // A stream of changes never postpones the pass already due.
        assert_eq!(s.changed(t0 + Duration::from_millis(10)), Next::Nothing);
        assert_eq!(s.changed(t0 + Duration::from_millis(20)), Next::Nothing);
        assert_eq!(s.woke(t0), full(2));
    }

    #[test]
    fn a_pass_waits_for_repairs_under_way() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        s.start(t0);
        s.pass_ended(ok(), t0);
        s.repair_started();
        s.repair_started();
        assert_eq!(s.changed(t0), Next::Nothing, "waits for the repairs");
        assert!(s.repairing());
        assert_eq!(s.repair_ended(t0), Next::Nothing, "one still under way");
        assert_eq!(s.repair_ended(t0), full(2));
        assert_eq!(s.repair_ended(t0), Next::Nothing, "no pass owed");
    }

    #[test]
    fn a_held_prune_is_confirmed_on_time_whatever_the_poll_interval() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Duration::from_secs(3600));
        s.start(t0);
        let end =
            PassEnd { full: true, succeeded: true, confirm_in: Some(Duration::from_secs(30)) };
        assert_eq!(s.pass_ended(end, t0), Next::WakeAt(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn once_stopping_nothing_new_runs() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        s.start(t0);
        s.changed(t0);
        s.stop();
        assert_eq!(s.pass_ended(ok(), t0), Next::Nothing, "no timer");
        assert!(!s.running());
        assert_eq!(s.changed(t0), Next::Nothing);
        assert_eq!(s.woke(t0), Next::Nothing);
    }

    #[test]
    fn keyed_changes_run_keyed_passes_and_never_postpone_the_full_one() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        assert_eq!(s.start(t0), full(1));
        assert_eq!(s.pass_ended(ok(), t0), Next::WakeAt(t0 + POLL));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            s.changed_keys(keys(&["a"]), t1),
            Next::RunPass(2, PassScope::Keys(keys(&["a"])))
        );
        // Keys that come during the pass join the next one.
        assert_eq!(s.changed_keys(keys(&["b"]), t1), Next::Nothing);
        assert_eq!(s.changed_keys(keys(&["c", "b"]), t1), Next::Nothing);
        let keyed = PassEnd { full: false, ..ok() };
        assert_eq!(s.pass_ended(keyed, t1), Next::WakeAt(t1), "keys wait for no debounce");
        assert_eq!(s.woke(t1), Next::RunPass(3, PassScope::Keys(keys(&["b", "c"]))));
        // The full pass stays due at the poll interval after the last full one.
        assert_eq!(s.pass_ended(keyed, t1), Next::WakeAt(t0 + POLL));
        assert_eq!(s.woke(t0 + POLL), full(4));
    }

    #[test]
    fn a_change_of_unknown_extent_or_a_due_full_pass_covers_pending_keys() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        s.start(t0);
        s.changed_keys(keys(&["a"]), t0);
        s.changed(t0);
        assert_eq!(s.pass_ended(ok(), t0), Next::WakeAt(t0 + DEBOUNCE));
        assert_eq!(s.woke(t0 + DEBOUNCE), full(2));
        s.pass_ended(ok(), t0);
        // Keys heard just before the full pass is due: that pass covers them.
        let late = t0 + POLL - Duration::from_millis(10);
        assert_eq!(s.changed_keys(keys(&["b"]), late), Next::Nothing);
        assert_eq!(s.woke(t0 + POLL), full(3));
        assert_eq!(s.pass_ended(ok(), t0 + POLL), Next::WakeAt(t0 + POLL + POLL), "b is covered");
    }

    #[test]
    fn keys_pending_past_the_bound_become_a_full_pass() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        s.start(t0);
        for i in 0..=crate::db::MAX_PENDING_KEYS {
            s.changed_keys(keys(&[&i.to_string()]), t0);
        }
        assert_eq!(s.pass_ended(ok(), t0), Next::WakeAt(t0 + DEBOUNCE));
        assert_eq!(s.woke(t0 + DEBOUNCE), full(2));
    }

    #[test]
    fn a_failed_keyed_pass_is_followed_by_a_full_one_with_backoff() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Duration::from_secs(60));
        s.start(t0);
        s.pass_ended(ok(), t0);
        assert_eq!(
            s.changed_keys(keys(&["a"]), t0),
            Next::RunPass(2, PassScope::Keys(keys(&["a"])))
        );
        let Next::WakeAt(at) = s.pass_ended(PassEnd { full: false, ..failed() }, t0) else {
            panic!("a retry is armed")
        };
        assert!(at < t0 + Duration::from_secs(2), "backoff, not the poll interval");
        assert_eq!(s.woke(at), full(3));
    }
}
