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
//! - A pass waits for drift repairs under way (a repair must not race a
//!   prune of the same object).
//! - A prune held by the guard is confirmed by a pass once its interval has
//!   passed, whatever the poll interval.
//! - A suspended DBQR (`spec.suspend`) runs nothing: no pass at start, on a
//!   change or on a timer. Resuming is a new spec generation, hence a new
//!   scheduler, whose first pass runs at once.
//! - Once stopping, nothing new runs.

use std::time::{Duration, Instant};

use crate::backoff::backoff;

/// Changes that arrive while a pass runs are collapsed into one pass this
/// long after it: a burst of row changes costs a few passes, not one per
/// statement.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// What the actor does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Start a pass (its number).
    RunPass(u64),
    /// Arm the timer for this instant (replacing the armed one).
    WakeAt(Instant),
    /// Keep the timer as it is.
    Nothing,
}

/// How a pass ended, as far as scheduling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassEnd {
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
    /// A change came while a pass ran.
    dirty: bool,
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
            dirty: false,
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
    pub fn start(&mut self) -> Next {
        self.due()
    }

    /// Something changed in the database (or the DBQR's Secret or metadata).
    pub fn changed(&mut self, now: Instant) -> Next {
        if self.running {
            self.dirty = true;
            return Next::Nothing;
        }
        match self.wake_at {
            Some(at) if at <= now + DEBOUNCE => Next::Nothing,
            _ => self.due(),
        }
    }

    /// The armed timer fired.
    pub fn woke(&mut self) -> Next {
        self.wake_at = None;
        self.due()
    }

    pub fn pass_ended(&mut self, end: PassEnd, now: Instant) -> Next {
        self.running = false;
        let delay = if end.succeeded {
            self.failures = 0;
            self.poll
        } else {
            self.failures = self.failures.saturating_add(1);
            backoff(self.failures, self.poll)
        };
        let delay = end.confirm_in.map_or(delay, |confirm| delay.min(confirm));
        let delay = if std::mem::take(&mut self.dirty) { DEBOUNCE } else { delay };
        self.wake_in(delay, now)
    }

    pub fn repair_started(&mut self) {
        self.repairs += 1;
    }

    pub fn repair_ended(&mut self) -> Next {
        self.repairs = self.repairs.saturating_sub(1);
        if self.repairs == 0 && std::mem::take(&mut self.waiting_for_repairs) {
            return self.due();
        }
        Next::Nothing
    }

    /// Nothing new runs from now on; the armed timer is void.
    pub fn stop(&mut self) {
        self.stopping = true;
        self.wake_at = None;
    }

    /// A pass is due now.
    fn due(&mut self) -> Next {
        if self.stopping || self.suspended || self.running {
            return Next::Nothing;
        }
        if self.repairs > 0 {
            self.waiting_for_repairs = true;
            return Next::Nothing;
        }
        self.wake_at = None;
        self.running = true;
        self.passes += 1;
        Next::RunPass(self.passes)
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
        PassEnd { succeeded: true, confirm_in: None }
    }

    fn failed() -> PassEnd {
        PassEnd { succeeded: false, confirm_in: None }
    }

    #[test]
    fn passes_run_at_start_then_every_poll_interval_after_the_last_ended() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        assert_eq!(s.start(), Next::RunPass(1));
        assert!(s.running());
        let ended = t0 + Duration::from_secs(3);
        assert_eq!(s.pass_ended(ok(), ended), Next::WakeAt(ended + POLL));
        assert_eq!(s.woke(), Next::RunPass(2));
    }

    #[test]
    fn a_suspended_dbqr_runs_nothing_and_its_resumed_spec_runs_at_once() {
        let t0 = Instant::now();
        let mut s = Scheduler::with_suspend(POLL, true);
        assert!(s.suspended());
        assert_eq!(s.start(), Next::Nothing);
        assert_eq!(s.changed(t0), Next::Nothing);
        assert_eq!(s.woke(), Next::Nothing);
        s.repair_started();
        assert_eq!(s.repair_ended(), Next::Nothing);
        assert!(!s.running());
        // Resuming is a new generation: a new scheduler.
        let mut resumed = Scheduler::with_suspend(POLL, false);
        assert_eq!(resumed.start(), Next::RunPass(1));
    }

    #[test]
    fn failures_back_off_and_a_success_resets() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Duration::from_secs(60));
        let mut delays = Vec::new();
        for _ in 0..3 {
            let Next::RunPass(_) = s.woke() else { panic!("a pass runs") };
            let Next::WakeAt(at) = s.pass_ended(failed(), t0) else { panic!("a retry is armed") };
            delays.push((at - t0).as_secs_f64());
        }
        // 1 s, 2 s, 4 s, each within the jitter.
        for (delay, base) in delays.iter().zip([1.0, 2.0, 4.0]) {
            assert!((base * 0.8..=base * 1.2).contains(delay), "{delays:?}");
        }
        s.woke();
        assert_eq!(s.pass_ended(ok(), t0), Next::WakeAt(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_change_runs_a_pass_at_once_or_once_more_after_the_running_one() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        s.start();
        s.pass_ended(ok(), t0);
        assert_eq!(s.changed(t0 + Duration::from_secs(1)), Next::RunPass(2));
        // During the pass: remembered, not run.
        assert_eq!(s.changed(t0 + Duration::from_secs(2)), Next::Nothing);
        assert_eq!(s.changed(t0 + Duration::from_secs(2)), Next::Nothing);
        let ended = t0 + Duration::from_secs(3);
        assert_eq!(s.pass_ended(ok(), ended), Next::WakeAt(ended + DEBOUNCE));
        assert_eq!(s.woke(), Next::RunPass(3));
        // Nothing came during this one: back to the poll interval.
        assert_eq!(s.pass_ended(ok(), ended), Next::WakeAt(ended + POLL));
    }

    #[test]
    fn a_pass_due_within_the_debounce_window_covers_a_change() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        s.start();
        s.changed(t0);
        let Next::WakeAt(at) = s.pass_ended(ok(), t0) else { panic!("armed") };
        assert_eq!(at, t0 + DEBOUNCE);
        // A stream of changes never postpones the pass already due.
        assert_eq!(s.changed(t0 + Duration::from_millis(10)), Next::Nothing);
        assert_eq!(s.changed(t0 + Duration::from_millis(20)), Next::Nothing);
        assert_eq!(s.woke(), Next::RunPass(2));
    }

    #[test]
    fn a_pass_waits_for_repairs_under_way() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        s.start();
        s.pass_ended(ok(), t0);
        s.repair_started();
        s.repair_started();
        assert_eq!(s.changed(t0), Next::Nothing, "waits for the repairs");
        assert!(s.repairing());
        assert_eq!(s.repair_ended(), Next::Nothing, "one still under way");
        assert_eq!(s.repair_ended(), Next::RunPass(2));
        assert_eq!(s.repair_ended(), Next::Nothing, "no pass owed");
    }

    #[test]
    fn a_held_prune_is_confirmed_on_time_whatever_the_poll_interval() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(Duration::from_secs(3600));
        s.start();
        let end = PassEnd { succeeded: true, confirm_in: Some(Duration::from_secs(30)) };
        assert_eq!(s.pass_ended(end, t0), Next::WakeAt(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn once_stopping_nothing_new_runs() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(POLL);
        s.start();
        s.changed(t0);
        s.stop();
        assert_eq!(s.pass_ended(ok(), t0), Next::Nothing, "no timer");
        assert!(!s.running());
        assert_eq!(s.changed(t0), Next::Nothing);
        assert_eq!(s.woke(), Next::Nothing);
    }
}
