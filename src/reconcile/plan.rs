//! The decision of a pass, as a pure function: from what the rows rendered,
//! what the cluster holds (the watch cache, and a GET for objects it does not
//! hold) and what this DBQR has written before, to what to apply, skip,
//! refuse and prune. No I/O: `pass.rs` gathers the inputs and carries out the
//! plan, so every rule here is a unit test away.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use kube::api::ApiResource;
use serde_json::Value as Json;

use super::compare::in_place;
use super::error::{ObjectError, PruneFailure, RowFailure};
use super::guard::Candidate;
use super::labels::Owner;
use super::readiness;
use crate::kube_api::{create_only, wave, CachedObject, LiveObject, Target};
use crate::kube_api::{GroupKind, Gvk, ObjectKey};

/// One rendered object, decorated with its owner's labels and resolved to
/// its API resource: what this DBQR wants in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Index of the row that produced it.
    pub row: usize,
    pub gvk: Gvk,
    pub target: Target,
    pub manifest: Json,
}

impl Desired {
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            group_kind: self.gvk.group_kind(),
            namespace: self.target.namespace.clone(),
            name: self.target.name.clone(),
        }
    }
}

/// What the cluster shows of one desired object.
#[derive(Debug, Clone)]
pub enum Live {
    /// In the watch cache (it carries the `managed-by` label), judged
    /// against the desired object as it was read ([`Live::cached`]).
    Cached(Judged),
    /// Not in the cache but present (read with a GET): nobody labelled it ours.
    Unmanaged(LiveObject),
    /// Not there.
    Absent,
}

/// A cached object, judged against what a row renders: a pass holds this
/// for every object at once, not the object (at 10,000 objects the expanded
/// objects were 90 of the 210 MB a first pass peaked at).
#[derive(Debug, Clone)]
pub struct Judged {
    pub live: LiveObject,
    /// Holds what the row renders (or is create-only and there): no apply.
    pub in_place: bool,
    /// Ready, as a later wave of its row waits for.
    pub ready: bool,
}

impl Live {
    /// `cached`, as the plan of `desired` sees it.
    pub fn cached(cached: CachedObject, desired: &Desired) -> Self {
        let (group, kind) = (&desired.gvk.group, &desired.gvk.kind);
        Self::Cached(Judged {
            in_place: create_only(&desired.manifest) || in_place(&cached, &desired.manifest),
            ready: readiness::ready(group, kind, &cached.manifest),
            live: cached.live,
        })
    }
}

/// This DBQR's live objects of one kind, from the watch cache, or why they
/// cannot be looked at.
#[derive(Debug)]
pub struct Owned {
    pub gvk: Gvk,
    pub listing: Result<(ApiResource, Vec<LiveObject>), PruneFailure>,
}

/// Everything the plan is decided from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub owner: &'a Owner,
    /// The objects the rows produced, resolved.
    pub desired: Vec<Desired>,
    /// Rows that failed before planning (rendering, unknown kinds, watches,
    /// reads). Any of them means nothing is pruned.
    pub failed: Vec<RowFailure>,
    /// The live state of each desired object, by key.
    pub live: HashMap<ObjectKey, Live>,
    /// This DBQR's objects of every kind it wrote before or renders now.
    pub owned: BTreeMap<GroupKind, Owned>,
    /// The kinds this DBQR had written before this pass (`status.managedKinds`).
    pub inventory: &'a BTreeSet<Gvk>,
    /// `spec.prune`.
    pub prune: bool,
}

/// What a pass does.
#[derive(Debug, Default)]
pub struct Plan {
    /// Objects whose live copy is missing or differs in a rendered field.
    pub apply: Vec<Desired>,
    /// Objects the cache shows already in place.
    pub skip: Vec<Desired>,
    /// Rows that fail, sorted by row.
    pub refuse: Vec<RowFailure>,
    /// Owned objects no row produced, with their kind and uid; deleted only
    /// if every apply succeeds.
    pub prune: Vec<Candidate>,
    /// Kinds whose objects could not be looked at for pruning.
    pub prune_failures: Vec<(Gvk, PruneFailure)>,
    /// Whether this pass prunes: `spec.prune` and no refused row.
    pub pruning: bool,
    /// How many live objects this DBQR owns, produced or not (counted only
    /// when pruning): the base of the prune guard's share.
    pub owned: usize,
    /// The kinds written before this pass.
    pub inventory: BTreeSet<Gvk>,
    /// The kinds this pass renders (applied or skipped).
    pub written: BTreeSet<Gvk>,
    /// Every object identity the rows produced.
    pub produced: HashSet<ObjectKey>,
    /// Objects of later waves whose row waits for an earlier wave to be
    /// Ready: neither applied nor pruned this pass.
    pub waiting: Vec<Desired>,
    /// The rows that wait.
    pub waiting_rows: BTreeSet<usize>,
}

impl Plan {
    /// `status.managedKinds` after the pass: what may still hold objects of
    /// this DBQR. After any failure nothing was pruned, so nothing drops out;
    /// kinds that failed to prune stay too.
    ///
    /// `apply_failed`: an apply of this plan failed (so nothing was pruned);
    /// `unpruned`: kinds a deletion failed for.
    pub fn next_inventory<'a>(
        &self,
        apply_failed: bool,
        unpruned: impl IntoIterator<Item = &'a Gvk>,
    ) -> BTreeSet<Gvk> {
        let mut next = self.written.clone();
        if apply_failed || !self.pruning {
            next.extend(self.inventory.iter().cloned());
        }
        next.extend(self.prune_failures.iter().map(|(gvk, _)| gvk.clone()));
        next.extend(unpruned.into_iter().cloned());
        next
    }
}

/// Whether an object with `live`'s metadata belongs to someone other than `owner`:
/// another DBQR's labels, or another controller.
pub(crate) fn owned_elsewhere(owner: &Owner, live: &LiveObject) -> bool {
    owner.is_foreign(&live.labels)
        || live.controller_uid.as_ref().is_some_and(|uid| *uid != owner.uid)
}

/// Why an existing object may not be written by `owner`, if it may not:
/// it belongs to another DBQR or controller, or nobody made it ours. An
/// object is this DBQR's when it carries its labels, or when its owner
/// handed it over with [`ADOPT_ANNOTATION`](crate::kube_api::ADOPT_ANNOTATION) naming this DBQR.
pub(crate) fn refusal(owner: &Owner, key: &ObjectKey, live: &LiveObject) -> Option<ObjectError> {
    let (kind, name) = (key.group_kind.clone(), key.name.clone());
    if owned_elsewhere(owner, live) {
        return Some(ObjectError::OwnedElsewhere { kind, name });
    }
    let adopter = owner.adopter();
    if owner.owns(&live.labels) || live.adopt.as_deref() == Some(adopter.as_str()) {
        return None;
    }
    Some(ObjectError::Exists { kind, name, adopter })
}

/// Decides the pass.
pub fn plan(inputs: Inputs<'_>) -> Plan {
    let Inputs { owner, desired, failed, live, owned, inventory, prune } = inputs;
    let mut plan = Plan { refuse: failed, inventory: inventory.clone(), ..Plan::default() };
    plan.produced = desired.iter().map(Desired::key).collect();
    if desired.iter().all(|d| wave(&d.manifest) == Some(0)) {
        for object in desired {
            plan.place(owner, object, &live);
        }
    } else {
        for (row, waves) in in_waves(desired) {
            plan.place_row(owner, row, waves, &live);
        }
    }
    plan.refuse.sort_by_key(|f| f.row);

    // A refused row might be the one that produces an object: prune only
    // after a pass in which every row rendered and was planned.
    plan.pruning = prune && plan.refuse.is_empty();
    if plan.pruning {
        for (group_kind, owned) in owned {
            plan.prune_unproduced(owner, group_kind, owned);
        }
    }
    plan
}

/// Each row's objects by wave, lowest first (in render order within a wave).
fn in_waves(desired: Vec<Desired>) -> BTreeMap<usize, BTreeMap<i32, Vec<Desired>>> {
    let mut rows: BTreeMap<usize, BTreeMap<i32, Vec<Desired>>> = BTreeMap::new();
    for object in desired {
        let wave = wave(&object.manifest).unwrap_or(0);
        rows.entry(object.row).or_default().entry(wave).or_default().push(object);
    }
    rows
}

impl Plan {
    /// Places one row's objects wave by wave: a wave's objects are placed
    /// only once every object of the earlier waves is in place and Ready
    /// (seen in the cache before this pass); the rest of the row waits.
    fn place_row(
        &mut self,
        owner: &Owner,
        row: usize,
        waves: BTreeMap<i32, Vec<Desired>>,
        live: &HashMap<ObjectKey, Live>,
    ) {
        let mut waves = waves.into_values();
        while let Some(objects) = waves.next() {
            let ready = objects
                .iter()
                .all(|o| matches!(live.get(&o.key()), Some(Live::Cached(c)) if c.ready));
            let (applied, refused) = (self.apply.len(), self.refuse.len());
            for object in objects {
                self.place(owner, object, live);
            }
            let settled = ready && self.apply.len() == applied && self.refuse.len() == refused;
            if !settled {
                let rest: Vec<Desired> = waves.flatten().collect();
                if !rest.is_empty() {
                    self.waiting_rows.insert(row);
                    // Their kinds stay in the inventory: a waiting object
                    // may exist from an earlier pass.
                    self.written.extend(rest.iter().map(|o| o.gvk.clone()));
                    self.waiting.extend(rest);
                }
                return;
            }
        }
    }

    /// Refuses `object` (its name is taken), skips it (in place) or applies it.
    fn place(&mut self, owner: &Owner, object: Desired, live: &HashMap<ObjectKey, Live>) {
        let key = object.key();
        let state = live.get(&key).unwrap_or(&Live::Absent);
        let metadata = match state {
            Live::Cached(cached) => Some(&cached.live),
            Live::Unmanaged(live) => Some(live),
            Live::Absent => None,
        };
        if let Some(error) = metadata.and_then(|m| refusal(owner, &key, m)) {
            self.refuse.push(RowFailure { row: object.row, error });
            return;
        }
        self.written.insert(object.gvk.clone());
        // A create-only object of this DBQR's is never updated once there.
        if matches!(state, Live::Cached(c) if c.in_place) {
            self.skip.push(object);
        } else {
            self.apply.push(object);
        }
    }

    /// Every object of one kind this DBQR owns and no row produces becomes
    /// a prune candidate (a kind that could not be listed, a failure).
    fn prune_unproduced(&mut self, owner: &Owner, group_kind: GroupKind, owned: Owned) {
        let Owned { gvk, listing } = owned;
        let (resource, objects) = match listing {
            Ok(listing) => listing,
            Err(failure) => {
                self.prune_failures.push((gvk, failure));
                return;
            }
        };
        for object in objects {
            let key = ObjectKey {
                group_kind: group_kind.clone(),
                namespace: object.namespace.clone(),
                name: object.name.clone(),
            };
            if object.deleting || !owner.owns_object(&object) {
                continue;
            }
            self.owned += 1;
            if self.produced.contains(&key) {
                continue;
            }
            let detach = object.prune_disabled.then(|| object.owner_references());
            let target = Target {
                resource: resource.clone(),
                namespace: object.namespace,
                name: object.name,
            };
            self.prune.push(Candidate { gvk: gvk.clone(), target, uid: object.uid, detach });
        }
    }
}
