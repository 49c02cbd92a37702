//! A key-scoped pass: the rows of the keys a notification named, read with
//! the DBQR's query restricted to those keys, rendered, applied, and the
//! objects those keys produced before and no longer do pruned. Its cost
//! follows the keys, not the DBQR: one changed row of 10,000 renders one
//! row and plans its objects.
//!
//! It changes a complete state key by key and only when the result is
//! plain: a row that fails, an object another row produces, an apply that
//! fails or a kind that cannot be watched hands the pass to a full one,
//! which decides and reports as always. Deletions pass the prune guard,
//! judged against every object the DBQR owns.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::pass::{self, KeyedPass, PassConfig, PassReport};
use super::plan::{self, Desired, Inputs, Owned};
use super::state::PassState;
use crate::db::QueryResult;
use crate::kube_api::cluster::Cluster;
use crate::kube_api::{GroupKind, ObjectKey};

/// How a keyed pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keyed {
    /// Done; the report says how it went.
    Done,
    /// A full pass must decide (why), and nothing is pruned before it.
    Full(&'static str),
}

/// Reconciles the rows `result` holds for `keys` (asked as text) into a
/// complete `state`.
pub(super) async fn reconcile<W: Cluster>(
    config: &PassConfig,
    state: &mut PassState,
    writer: &W,
    result: QueryResult,
    keys: &[String],
    now: &str,
    report: &mut PassReport,
) -> Keyed {
    let QueryResult { rows, keys: row_keys, .. } = result;
    report.keyed = Some(KeyedPass { keys: keys.len(), rows: rows.len() });
    let asked: HashSet<&str> = keys.iter().map(String::as_str).collect();
    // An oversized row comes without its key.
    if row_keys.iter().any(|k| k.as_deref().is_none_or(|k| !asked.contains(k))) {
        return Keyed::Full("a row came without one of the keys");
    }
    // The rows these keys had.
    let old_rows: BTreeSet<usize> =
        keys.iter().filter_map(|key| state.key_rows.get(key.as_str())).flatten().copied().collect();
    let Ok(kinds) = writer.kinds(false).await else {
        return Keyed::Full("discovery failed");
    };
    let rendered = pass::render(config, &rows, &kinds, now);
    if !rendered.failures.is_empty() {
        return Keyed::Full("a row failed");
    }
    // New rows are numbered after every row the state knows.
    let base = state.next_row;
    let mut objects = rendered.objects;
    for object in &mut objects {
        object.row += base;
    }
    let mut failed = Vec::new();
    let mut desired = pass::resolve_objects(&config.owner, &kinds, objects, &mut failed);
    let elsewhere =
        |d: &Desired| state.row_index(&d.key()).is_some_and(|row| !old_rows.contains(&row));
    if desired.iter().any(elsewhere) {
        return Keyed::Full("an object another row produces");
    }
    let managed_before = state.managed_kinds.clone();
    let involved =
        pass::watch_kinds(writer, &kinds, &mut desired, &managed_before, &mut failed).await;
    let live = pass::read_live(writer, &mut desired, &mut failed).await;
    if !failed.is_empty() || involved.values().any(|kind| kind.resource.is_err()) {
        return Keyed::Full("an object cannot be looked at");
    }
    let produced: HashSet<ObjectKey> = desired.iter().map(Desired::key).collect();
    let old_objects: Vec<ObjectKey> = state.objects_of_rows(&old_rows).collect();
    let owned = unproduced(state, writer, &old_objects, &produced);
    let inputs = Inputs {
        owner: &config.owner,
        desired,
        failed,
        live,
        owned,
        inventory: &managed_before,
        prune: config.spec.prune,
    };
    let mut plan = plan::plan(inputs);
    if !plan.refuse.is_empty() {
        return Keyed::Full("a row is refused");
    }
    // The guard's share is of every object the DBQR owns, not of these keys'.
    plan.owned = plan.owned.max(state.produced_count());
    let results = pass::apply_all(config, writer, &plan.apply).await;
    // Kinds written are in the inventory from now on, whatever follows.
    state.managed_kinds.extend(plan.written.iter().cloned());
    if results.iter().any(Result::is_err) {
        return Keyed::Full("an apply failed");
    }

    // The keys' rows and objects replace what they were.
    state.forget_rows(&old_rows);
    report.applied = plan.apply.len();
    report.skipped = plan.skip.len();
    if config.status_template.is_some() {
        for object in plan.apply.iter().chain(&plan.skip) {
            state.keep_row(&object.key(), rows[object.row - base].clone());
        }
    }
    for object in std::mem::take(&mut plan.skip).into_iter().chain(std::mem::take(&mut plan.apply))
    {
        state.keep(object);
    }
    state.waiting_rows = std::mem::take(&mut plan.waiting_rows);
    state.done_waiting.clear();
    for key in keys {
        state.key_rows.remove(key.as_str());
    }
    for (i, key) in row_keys.into_iter().enumerate() {
        if let Some(key) = key {
            state.key_rows.entry(key.into_boxed_str()).or_default().push(base + i);
        }
    }
    state.next_row = base + rows.len();
    state.row_count = (state.row_count + rows.len()).saturating_sub(old_rows.len());

    pass::prune(config, state, writer, plan, report).await;
    // A keyed pass saw only its keys' kinds: every other kind stays.
    state.managed_kinds.extend(managed_before);
    report.managed_kinds = state.managed_kinds.clone();
    report.rows = state.row_count;
    report.objects = state.produced_count();
    report.waiting_rows = state.waiting_rows.len();
    state.complete = report.succeeded();
    Keyed::Done
}

/// Those of `objects` (what the keys' rows produced in the last pass) that
/// no row produces now, as the watch cache holds them (one already gone
/// needs no prune), by kind: the prune candidates of a keyed pass.
fn unproduced<W: Cluster>(
    state: &PassState,
    writer: &W,
    objects: &[ObjectKey],
    produced: &HashSet<ObjectKey>,
) -> BTreeMap<GroupKind, Owned> {
    let mut owned: BTreeMap<GroupKind, Owned> = BTreeMap::new();
    for key in objects.iter().filter(|key| !produced.contains(*key)) {
        let (Some(target), Some(gvk)) = (state.produced_target(key), state.produced_gvk(key))
        else {
            continue;
        };
        let Some(cached) = writer.cached(&target) else {
            continue;
        };
        let entry = owned.entry(key.group_kind.clone()).or_insert_with(|| Owned {
            gvk: gvk.clone(),
            listing: Ok((target.resource.clone(), Vec::new())),
        });
        if let Ok((_, listed)) = &mut entry.listing {
            listed.push(cached.live);
        }
    }
    owned
}
