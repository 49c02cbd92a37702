//! What a DBQR carries from pass to pass: the objects it produced (for drift
//! repair, prune and status write-back), the prune inventory, held
//! deletions, and for a keyed DBQR the indexes a keyed pass starts from.
//!
//! The state lives as long as the DBQR and holds an entry per object, so an
//! object is kept small: its kind as an index, its namespace and name as one
//! text ([`StateKey`]), the manifest as JSON text with the owner labels and
//! references every object of the DBQR carries held once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kube::api::ApiResource;
use serde_json::Value as Json;

use super::guard::Held;
use super::plan::Desired;
use crate::db::Row;
use crate::intern::Interner;
use crate::kube_api::cache::{split_key, Entry};
use crate::kube_api::{GroupKind, Gvk, ObjectKey, Target};

/// Carried from pass to pass.
#[derive(Default)]
pub struct PassState {
    /// What this DBQR wants of each object it produced in the last pass: the
    /// reference for drift repair between passes.
    applied: HashMap<StateKey, Kept>,
    /// The kind (version included) and resource of the objects in `applied`,
    /// each held once rather than per object; `Kept::kind` indexes it.
    kinds: Vec<(Gvk, ApiResource)>,
    /// The group and kind of every key, each held once; `StateKey` indexes
    /// it. Never shrinks: a DBQR's kinds are a handful.
    group_kinds: Vec<GroupKind>,
    /// The metadata the objects share (`Kept::shared`), one copy each.
    shared: Interner,
    /// The row that produced each object in the last pass (for status write-back).
    rows: HashMap<StateKey, Row>,
    /// The kinds this DBQR has written and not yet pruned.
    pub managed_kinds: BTreeSet<Gvk>,
    /// Deletions the prune guard holds, and since when.
    pub(super) held: Held,
    /// A request of the last pass found no such resource (a CRD deleted,
    /// a version withdrawn): the next one asks for a fresh discovery.
    pub(super) rediscover: bool,
    /// Rows whose later waves waited in the last pass.
    pub(super) waiting_rows: BTreeSet<usize>,
    /// Rows that waited before the last pass and no longer do: their
    /// readiness changed without a status change of theirs.
    pub(super) done_waiting: BTreeSet<usize>,
    /// A keyed DBQR's rows by key (`keyColumn` as text) and its objects by
    /// row, so a keyed pass finds what its keys had without a scan. A full
    /// pass numbers its rows from 0; a keyed pass gives the rows it reads
    /// new numbers from `next_row` on.
    pub(super) key_rows: HashMap<Box<str>, Vec<usize>>,
    row_objects: HashMap<usize, Vec<StateKey>>,
    /// Whether `row_objects` is kept (a keyed DBQR).
    pub(super) by_row: bool,
    pub(super) next_row: usize,
    /// How many rows the query returns, as the passes since the last full
    /// one have seen.
    pub(super) row_count: usize,
    /// The last pass succeeded and a full pass has run: the state is
    /// complete, and a keyed pass can change it key by key.
    pub(super) complete: bool,
}

/// An object as the state knows it: its group and kind (an index into
/// `PassState::group_kinds`) and `namespace/name` as one text. An
/// [`ObjectKey`] is four strings; this is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StateKey {
    group_kind: u32,
    name: Box<str>,
}

/// What the state keeps of an object a pass produced, for as long as the
/// DBQR lives: its row and the manifest as JSON text, one allocation instead
/// of one per field (the kind and its resource are an index into
/// `PassState::kinds`, the namespace and name come from the key). Only
/// drift repair reads the manifest again.
struct Kept {
    row: usize,
    kind: usize,
    /// `metadata.labels` and `metadata.ownerReferences` as one JSON object:
    /// the same text for every object of a template (shared).
    shared: Arc<str>,
    /// The rest of the manifest.
    manifest: Box<str>,
}

/// The parts of `metadata` that [`Kept::shared`] holds.
const SHARED_METADATA: [&str; 2] = ["labels", "ownerReferences"];

impl Kept {
    fn of(row: usize, kind: usize, mut manifest: Json, texts: &mut Interner) -> Self {
        let mut shared = serde_json::Map::new();
        if let Some(metadata) = manifest.get_mut("metadata").and_then(Json::as_object_mut) {
            for key in SHARED_METADATA {
                if let Some(value) = metadata.remove(key) {
                    shared.insert(key.into(), value);
                }
            }
        }
        Self {
            row,
            kind,
            shared: texts.get(&Json::Object(shared).to_string()),
            manifest: manifest.to_string().into_boxed_str(),
        }
    }

    fn manifest(&self) -> Json {
        // Written by `of` from JSON values: both parse.
        let mut manifest: Json = serde_json::from_str(&self.manifest).unwrap_or(Json::Null);
        let shared = serde_json::from_str(&self.shared).unwrap_or(Json::Null);
        if let (Some(metadata), Json::Object(shared)) =
            (manifest.get_mut("metadata").and_then(Json::as_object_mut), shared)
        {
            metadata.extend(shared);
        }
        manifest
    }
}

impl PassState {
    pub fn new(managed_kinds: BTreeSet<Gvk>) -> Self {
        Self { managed_kinds, ..Self::default() }
    }

    /// The state's key of `key`, if the state knows its kind.
    fn state_key(&self, key: &ObjectKey) -> Option<StateKey> {
        let group_kind = self.group_kinds.iter().position(|gk| *gk == key.group_kind)?;
        Some(StateKey {
            group_kind: group_kind as u32,
            name: Entry::key(key.namespace.as_deref(), &key.name),
        })
    }

    fn intern(&mut self, key: &ObjectKey) -> StateKey {
        if let Some(known) = self.state_key(key) {
            return known;
        }
        self.group_kinds.push(key.group_kind.clone());
        StateKey {
            group_kind: (self.group_kinds.len() - 1) as u32,
            name: Entry::key(key.namespace.as_deref(), &key.name),
        }
    }

    fn object_key(&self, key: &StateKey) -> ObjectKey {
        let (namespace, name) = split_key(&key.name);
        ObjectKey {
            group_kind: self.group_kinds[key.group_kind as usize].clone(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    fn kept(&self, key: &ObjectKey) -> Option<&Kept> {
        self.applied.get(&self.state_key(key)?)
    }

    /// The row that produced `key` in the last pass.
    pub fn row(&self, key: &ObjectKey) -> Option<&Row> {
        self.rows.get(&self.state_key(key)?)
    }

    /// Every object this DBQR produced (and applied or found in place) in
    /// the last pass.
    pub fn produced(&self) -> impl Iterator<Item = ObjectKey> + '_ {
        self.applied.keys().map(|key| self.object_key(key))
    }

    /// How many objects this DBQR produced in the last pass.
    pub fn produced_count(&self) -> usize {
        self.applied.len()
    }

    /// The wanted state of `key`, if this DBQR produced it in the last pass.
    pub fn applied(&self, key: &ObjectKey) -> Option<Desired> {
        let kept = self.kept(key)?;
        let (gvk, _) = self.kinds.get(kept.kind)?;
        Some(Desired {
            row: kept.row,
            gvk: gvk.clone(),
            target: self.produced_target(key)?,
            manifest: kept.manifest(),
        })
    }

    /// The index of the row that produced `key` in the last pass.
    pub fn row_index(&self, key: &ObjectKey) -> Option<usize> {
        self.kept(key).map(|kept| kept.row)
    }

    /// Whether row `row` had objects waiting for an earlier wave in the
    /// last pass.
    pub fn row_waits(&self, row: usize) -> bool {
        self.waiting_rows.contains(&row)
    }

    /// The objects row `row` produced (and applied or found in place) in the
    /// last pass. A scan of every object: asked only for status templates
    /// that use `RowReady`.
    pub fn row_objects(&self, row: usize) -> impl Iterator<Item = (ObjectKey, Target)> + '_ {
        self.applied.iter().filter(move |(_, kept)| kept.row == row).filter_map(|(key, _)| {
            let key = self.object_key(key);
            let target = self.produced_target(&key)?;
            Some((key, target))
        })
    }

    /// The objects of the rows whose waves stopped waiting in the last pass.
    pub fn done_waiting(&self) -> Vec<ObjectKey> {
        if self.done_waiting.is_empty() {
            return Vec::new();
        }
        self.applied
            .iter()
            .filter(|(_, kept)| self.done_waiting.contains(&kept.row))
            .map(|(key, _)| self.object_key(key))
            .collect()
    }

    /// The kind (version included) of the object `key` this DBQR produced
    /// in the last pass.
    pub(super) fn produced_gvk(&self, key: &ObjectKey) -> Option<&Gvk> {
        self.kinds.get(self.kept(key)?.kind).map(|(gvk, _)| gvk)
    }

    /// Whether this DBQR produced `key` in the last pass.
    pub fn produced_key(&self, key: &ObjectKey) -> bool {
        self.kept(key).is_some()
    }

    /// Where the object `key` this DBQR produced in the last pass lives.
    pub fn produced_target(&self, key: &ObjectKey) -> Option<Target> {
        let (_, resource) = self.kinds.get(self.kept(key)?.kind)?;
        Some(Target {
            resource: resource.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        })
    }

    /// The objects the rows `rows` produced (kept for a keyed DBQR only).
    pub(super) fn objects_of_rows<'a>(
        &'a self,
        rows: impl IntoIterator<Item = &'a usize> + 'a,
    ) -> impl Iterator<Item = ObjectKey> + 'a {
        rows.into_iter()
            .filter_map(|row| self.row_objects.get(row))
            .flatten()
            .map(|key| self.object_key(key))
    }

    /// Whether the state is complete and simple enough for a keyed pass:
    /// no held deletions (the guard judges those with every candidate) and
    /// no rows waiting for a wave (their readiness is judged row by row).
    pub(super) fn keyed_ready(&self) -> bool {
        self.complete && self.held.is_empty() && self.waiting_rows.is_empty()
    }

    /// Records the keys of a full pass's rows, by index.
    pub(super) fn index_keys(&mut self, keys: Vec<Option<String>>) {
        self.row_count = keys.len();
        self.next_row = keys.len();
        self.key_rows.clear();
        for (row, key) in keys.into_iter().enumerate() {
            if let Some(key) = key {
                self.key_rows.entry(key.into_boxed_str()).or_default().push(row);
            }
        }
    }

    /// Forgets every object a pass produced (a full pass keeps what it
    /// produces anew).
    pub(super) fn forget_objects(&mut self) {
        self.applied.clear();
        self.kinds.clear();
        self.row_objects.clear();
    }

    /// Forgets the objects of `rows` (a keyed pass replaces its keys' rows).
    pub(super) fn forget_rows(&mut self, rows: &BTreeSet<usize>) {
        for row in rows {
            for key in self.row_objects.remove(row).unwrap_or_default() {
                self.applied.remove(&key);
                self.rows.remove(&key);
            }
        }
    }

    /// Keeps the row that produced `key`, for status write-back.
    pub(super) fn keep_row(&mut self, key: &ObjectKey, row: Row) {
        let key = self.intern(key);
        self.rows.insert(key, row);
    }

    /// Forgets every row kept for status write-back.
    pub(super) fn clear_rows(&mut self) {
        self.rows = HashMap::new();
    }

    pub(super) fn keep(&mut self, object: Desired) {
        let key = self.intern(&object.key());
        let kind = match self.kinds.iter().position(|(gvk, _)| *gvk == object.gvk) {
            Some(kind) => kind,
            None => {
                self.kinds.push((object.gvk, object.target.resource));
                self.kinds.len() - 1
            }
        };
        if self.by_row {
            self.row_objects.entry(object.row).or_default().push(key.clone());
        }
        let kept = Kept::of(object.row, kind, object.manifest, &mut self.shared);
        self.applied.insert(key, kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_manifest_comes_back_whole_and_objects_share_their_owner_metadata() {
        let manifest = |name: &str| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "apps",
                             "labels": {"dbqo.dev/owner-name": "users"},
                             "ownerReferences": [{"uid": "u0", "controller": true}],
                             "annotations": {"dbqo.dev/applied-hash": name}},
                "data": {"value": name},
            })
        };
        let mut texts = Interner::default();
        let (a, b) =
            (Kept::of(0, 0, manifest("a"), &mut texts), Kept::of(1, 0, manifest("b"), &mut texts));
        assert_eq!(a.manifest(), manifest("a"));
        assert_eq!(b.manifest(), manifest("b"));
        assert!(Arc::ptr_eq(&a.shared, &b.shared));
        assert!(!a.manifest.contains("ownerReferences"));
        let bare =
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        assert_eq!(Kept::of(2, 0, bare.clone(), &mut texts).manifest(), bare);
    }
}
