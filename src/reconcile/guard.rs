//! The prune guard: a pass can succeed and still be wrong. A table reloaded
//! with TRUNCATE then INSERT in two transactions, a replica that lags after a
//! failover or row-level security after a role change all return too few rows
//! without any error. Deleting on such a result is an outage (Namespaces,
//! Deployments), so a pass that would delete all of a DBQR's objects, or more
//! than a set share of them, holds those deletions. A held object is deleted
//! only by a pass at least the confirmation interval after it was first held
//! that still does not produce it. Small prunes (a deleted row) stay immediate.
//!
//! Holds live in the QueryActor's memory: an operator restart starts their
//! clocks again, which can only delay a deletion, never hasten it.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::api::PruneGuardSpec;
use crate::kube_api::Target;
use crate::kube_api::{Gvk, ObjectKey};

/// Annotation on a DBQR that releases its held prune at once. The operator
/// removes it after the pass that saw it.
pub const RELEASE_ANNOTATION: &str = "dbqo.dev/release-prune";

/// An owned object no row produced, with its kind and the uid it was seen
/// with (the deletion's precondition).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub gvk: Gvk,
    pub target: Target,
    pub uid: Option<String>,
    /// `dbqo.dev/prune: disabled`: detached instead of deleted, with the
    /// owner references it carries (this DBQR's is removed, others stay).
    /// The guard judges it like a deletion: a detached object is no longer
    /// managed, which a transiently wrong result must not cause either.
    pub detach: Option<Vec<serde_json::Value>>,
}

impl Candidate {
    fn key(&self) -> ObjectKey {
        ObjectKey {
            group_kind: self.gvk.group_kind(),
            namespace: self.target.namespace.clone(),
            name: self.target.name.clone(),
        }
    }
}

/// The guard's settings (`spec.pruneGuard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneGuard {
    pub max_percent: u32,
    pub confirmation: Duration,
}

impl From<&PruneGuardSpec> for PruneGuard {
    fn from(spec: &PruneGuardSpec) -> Self {
        Self { max_percent: spec.max_prune_percent, confirmation: spec.confirmation_interval.get() }
    }
}

/// Objects held back, with when each was first held, and the deletions
/// let through lately. Carried from pass to pass.
#[derive(Debug, Default, Clone)]
pub struct Held(HashMap<ObjectKey, Instant>, Recent);

/// Deletions let through within [`PruneGuard::window`]: a reload that
/// deletes in batches, each small, adds up to a large prune.
#[derive(Debug, Default, Clone)]
struct Recent(std::collections::VecDeque<(Instant, usize)>);

impl Recent {
    fn count(&mut self, now: Instant, window: Duration) -> usize {
        while self.0.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > window) {
            self.0.pop_front();
        }
        self.0.iter().map(|(_, n)| n).sum()
    }

    fn add(&mut self, now: Instant, deleted: usize) {
        if deleted > 0 {
            self.0.push_back((now, deleted));
        }
    }
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why the guard let deletions through or held them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ruling {
    /// Nothing to delete.
    Nothing,
    /// A small prune, or the guard is off: deleted at once.
    Immediate,
    /// A large prune: `held` objects wait; any others had waited long enough.
    Holding,
    /// Every held object waited the confirmation interval and is still not produced.
    Confirmed,
    /// The release annotation let everything through.
    Released,
}

/// What the guard decided for one pass.
#[derive(Debug)]
pub struct GuardDecision {
    pub delete: Vec<Candidate>,
    /// How many deletions wait.
    pub held: usize,
    /// How many objects this DBQR owns (the base of the percentage).
    pub owned: usize,
    /// When the earliest held object may be deleted, from now.
    pub confirm_in: Option<Duration>,
    pub ruling: Ruling,
}

impl PruneGuard {
    /// Whether deleting `count` of `owned` objects is a large prune.
    pub fn is_large(&self, count: usize, owned: usize) -> bool {
        count > 0 && (count >= owned || count * 100 > owned * self.max_percent as usize)
    }

    /// How far back deletions that were let through still count (for a
    /// pass deleting more than one object): ten
    /// confirmation intervals, at least five minutes.
    pub fn window(&self) -> Duration {
        (self.confirmation * 10).max(Duration::from_secs(300))
    }

    /// Rules on the deletions of a successful pass. `owned`: the objects this
    /// DBQR owns now, produced or not; `released`: the DBQR carries
    /// [`RELEASE_ANNOTATION`]. Updates `held` for the next pass.
    pub fn rule(
        &self,
        candidates: Vec<Candidate>,
        owned: usize,
        held: &mut Held,
        now: Instant,
        released: bool,
    ) -> GuardDecision {
        let verdict = |delete: Vec<Candidate>, ruling| GuardDecision {
            delete,
            held: 0,
            owned,
            confirm_in: None,
            ruling,
        };
        if candidates.is_empty() {
            held.0.clear();
            return verdict(candidates, Ruling::Nothing);
        }
        if released || self.confirmation.is_zero() {
            held.0.clear();
            held.1 = Recent::default();
            let ruling = if released { Ruling::Released } else { Ruling::Immediate };
            return verdict(candidates, ruling);
        }
        // Judged with what was deleted lately: against the objects there
        // were before those deletions.
        // A single deleted row stays immediate (unless it is the last
        // object): users delete rows one at a time.
        let recent = held.1.count(now, self.window());
        let alone = candidates.len() == 1 && owned > 1;
        if alone || !self.is_large(candidates.len() + recent, owned + recent) {
            // What was held and is still missing is part of a small prune now.
            held.0.clear();
            held.1.add(now, candidates.len());
            return verdict(candidates, Ruling::Immediate);
        }
        self.hold(candidates, owned, held, now)
    }

    /// A large prune: each candidate waits the confirmation interval from
    /// when it was first held; those that waited it out are deleted.
    fn hold(
        &self,
        candidates: Vec<Candidate>,
        owned: usize,
        held: &mut Held,
        now: Instant,
    ) -> GuardDecision {
        // An object produced again (the reload finished) is no longer held.
        let keys: HashMap<ObjectKey, ()> = candidates.iter().map(|c| (c.key(), ())).collect();
        held.0.retain(|k, _| keys.contains_key(k));
        let mut delete = Vec::new();
        let mut waiting = 0;
        let mut confirm_in: Option<Duration> = None;
        for candidate in candidates {
            let since = *held.0.entry(candidate.key()).or_insert(now);
            let waited = now.saturating_duration_since(since);
            if waited >= self.confirmation {
                delete.push(candidate);
            } else {
                waiting += 1;
                let left = self.confirmation - waited;
                confirm_in = Some(confirm_in.map_or(left, |c| c.min(left)));
            }
        }
        for candidate in &delete {
            held.0.remove(&candidate.key());
        }
        held.1.add(now, delete.len());
        let ruling = if waiting == 0 { Ruling::Confirmed } else { Ruling::Holding };
        GuardDecision { delete, held: waiting, owned, confirm_in, ruling }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ApiResource;

    fn candidates(names: &[&str]) -> Vec<Candidate> {
        let gvk: Gvk = "v1/ConfigMap".parse().unwrap();
        names
            .iter()
            .map(|name| Candidate {
                gvk: gvk.clone(),
                target: Target {
                    resource: ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
                    namespace: Some("ns".into()),
                    name: name.to_string(),
                },
                uid: Some(format!("uid-{name}")),
                detach: None,
            })
            .collect()
    }

    const GUARD: PruneGuard = PruneGuard { max_percent: 50, confirmation: Duration::from_secs(30) };

    #[test]
    fn deletions_in_small_batches_add_up_to_a_large_prune() {
        let mut held = Held::default();
        let start = Instant::now();
        // 10 objects; a reload deletes 4, then 3 of the 6 left: each alone
        // is at most half, together 7 of 10.
        let v = GUARD.rule(candidates(&["a", "b", "c", "d"]), 10, &mut held, start, false);
        assert_eq!((v.delete.len(), v.ruling), (4, Ruling::Immediate));
        let later = start + Duration::from_secs(5);
        let v = GUARD.rule(candidates(&["e", "f", "g"]), 6, &mut held, later, false);
        assert_eq!((v.delete.len(), v.held, v.ruling), (0, 3, Ruling::Holding));
        // Outside the window the batch is judged on its own again.
        let much_later = start + GUARD.window() + Duration::from_secs(1);
        let mut fresh = Held::default();
        let _ = GUARD.rule(candidates(&["a", "b", "c", "d"]), 10, &mut fresh, start, false);
        let v = GUARD.rule(candidates(&["e", "f", "g"]), 6, &mut fresh, much_later, false);
        assert_eq!((v.delete.len(), v.ruling), (3, Ruling::Immediate));
    }

    #[test]
    fn small_prunes_are_immediate() {
        let mut held = Held::default();
        let v = GUARD.rule(candidates(&["a"]), 10, &mut held, Instant::now(), false);
        assert_eq!((v.delete.len(), v.held, v.ruling), (1, 0, Ruling::Immediate));
        let mut fresh = Held::default();
        let v = GUARD.rule(candidates(&["a", "b"]), 4, &mut fresh, Instant::now(), false);
        assert_eq!(v.delete.len(), 2, "exactly half is not more than half");
    }

    #[test]
    fn all_or_most_is_held_until_confirmed_by_a_later_pass() {
        let mut held = Held::default();
        let start = Instant::now();
        let v = GUARD.rule(candidates(&["a", "b", "c"]), 3, &mut held, start, false);
        assert_eq!((v.delete.len(), v.held, v.ruling), (0, 3, Ruling::Holding));
        assert_eq!(v.confirm_in, Some(Duration::from_secs(30)));
        let later = start + Duration::from_secs(29);
        let v = GUARD.rule(candidates(&["a", "b", "c"]), 3, &mut held, later, false);
        assert_eq!(v.held, 3);
        assert_eq!(v.confirm_in, Some(Duration::from_secs(1)));
        let v = GUARD.rule(
            candidates(&["a", "b", "c"]),
            3,
            &mut held,
            start + Duration::from_secs(30),
            false,
        );
        assert_eq!((v.delete.len(), v.held, v.ruling), (3, 0, Ruling::Confirmed));
        assert!(held.is_empty());
        // Two of three over half of the owned objects.
        let v = GUARD.rule(candidates(&["a", "b"]), 3, &mut held, start, false);
        assert_eq!(v.held, 2);
    }

    #[test]
    fn an_object_produced_again_starts_over() {
        let mut held = Held::default();
        let start = Instant::now();
        GUARD.rule(candidates(&["a", "b"]), 2, &mut held, start, false);
        // The reload finished: nothing to delete, the holds go.
        let v = GUARD.rule(Vec::new(), 2, &mut held, start + Duration::from_secs(1), false);
        assert_eq!(v.ruling, Ruling::Nothing);
        let v = GUARD.rule(
            candidates(&["a", "b"]),
            2,
            &mut held,
            start + Duration::from_secs(40),
            false,
        );
        assert_eq!((v.delete.len(), v.held), (0, 2), "the clock restarted");
    }

    #[test]
    fn release_and_a_zero_interval_delete_at_once() {
        let mut held = Held::default();
        let now = Instant::now();
        GUARD.rule(candidates(&["a", "b"]), 2, &mut held, now, false);
        let v = GUARD.rule(candidates(&["a", "b"]), 2, &mut held, now, true);
        assert_eq!((v.delete.len(), v.ruling), (2, Ruling::Released));
        assert!(held.is_empty());
        let off = PruneGuard { confirmation: Duration::ZERO, ..GUARD };
        let v = off.rule(candidates(&["a", "b"]), 2, &mut held, now, false);
        assert_eq!((v.delete.len(), v.ruling), (2, Ruling::Immediate));
    }
}
