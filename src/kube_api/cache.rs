//! The watch cache of managed objects: one [`KindCache`] per watched kind,
//! fed by the kind's label-selected watch, read by every pass.
//!
//! The cache holds every managed object for as long as the operator runs,
//! so its form is chosen for size: an object is a handful of strings, not a
//! tree of maps. What the objects of one DBQR share (their labels, owner
//! references and the operator's field set are the same text for every
//! row of a template) is held once and shared ([`crate::intern`]); what is the
//! object's own (uid, content, annotations) is its own text. kube-runtime's
//! reflector kept a `DynamicObject` per object (an `ObjectMeta`, a B-tree
//! node of half a kilobyte for its labels, an `Arc`) under a key that
//! repeats the kind's five-string `ApiResource`: about 3 KiB per object. A
//! pass expands what it compares ([`KindCache::get`]).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::{
    api::{ApiResource, DynamicObject},
    runtime::watcher,
};
use serde_json::{Map, Value as Json};

use crate::intern::Interner;

use super::objects::{
    CachedObject, Labels, LiveObject, ADOPT_ANNOTATION, FIELD_MANAGER, PRUNE_ANNOTATION,
    PRUNE_DISABLED,
};

/// One cached object. Its name and namespace are its key in the cache; its
/// kind and version are the cache's.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `key NUL value NUL` per label, sorted by key (shared).
    labels: Arc<str>,
    uid: Box<str>,
    /// `metadata.ownerReferences` as JSON text; empty when there are none
    /// (shared).
    owners: Arc<str>,
    /// The uid of the controller among the owners (shared).
    controller_uid: Option<Arc<str>>,
    /// The operator's field set (`fieldsV1` of its apply) as JSON text;
    /// other managers' entries are dropped, they can outweigh the object
    /// (shared).
    owned_fields: Option<Arc<str>>,
    /// The value of [`ADOPT_ANNOTATION`], which clean-up and prune read.
    adopt: Option<Box<str>>,
    deleting: bool,
    prune_disabled: bool,
    /// The rest of the object as JSON text: its content and the metadata
    /// not kept above (annotations included).
    text: Box<str>,
}

impl Entry {
    /// The cache key of an object: `namespace/name`, or `name` for a
    /// cluster-scoped one (neither a name nor a namespace holds a `/`).
    pub fn key(namespace: Option<&str>, name: &str) -> Box<str> {
        match namespace {
            Some(ns) => format!("{ns}/{name}").into(),
            None => name.into(),
        }
    }

    /// The object's cache key and its compact form.
    pub fn of(object: DynamicObject) -> (Box<str>, Self) {
        let DynamicObject { metadata: mut meta, data, .. } = object;
        let name = meta.name.take().unwrap_or_default();
        let key = Self::key(meta.namespace.take().as_deref(), &name);
        let labels = meta.labels.take().unwrap_or_default();
        let refs = meta.owner_references.take().unwrap_or_default();
        let controller_uid =
            refs.iter().find(|r| r.controller == Some(true)).map(|r| Arc::from(r.uid.as_str()));
        let owners = if refs.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&refs).unwrap_or_default()
        };
        let owned_fields = meta
            .managed_fields
            .take()
            .into_iter()
            .flatten()
            .find(is_ours)
            .and_then(|entry| entry.fields_v1)
            .map(|fields| Arc::from(fields.0.to_string()));
        let annotation =
            |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str);
        let adopt = annotation(ADOPT_ANNOTATION).map(Box::from);
        let prune_disabled = annotation(PRUNE_ANNOTATION) == Some(PRUNE_DISABLED);
        let uid = meta.uid.take().unwrap_or_default().into();
        let deleting = meta.deletion_timestamp.is_some();

        let mut rest = match data {
            Json::Object(content) => content,
            _ => Map::new(),
        };
        if let Ok(Json::Object(metadata)) = serde_json::to_value(&meta) {
            if !metadata.is_empty() {
                rest.insert("metadata".into(), Json::Object(metadata));
            }
        }
        let entry = Self {
            labels: encode_labels(&labels),
            uid,
            owners: owners.into(),
            controller_uid,
            owned_fields,
            adopt,
            deleting,
            prune_disabled,
            text: Json::Object(rest).to_string().into(),
        };
        (key, entry)
    }

    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.label_pairs().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn label_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.labels.split('\0');
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    fn has_labels(&self, wanted: &Labels) -> bool {
        wanted.iter().all(|(k, v)| self.label(k) == Some(v.as_str()))
    }

    /// What prune and clean-up read of the object.
    pub fn live(&self, key: &str) -> LiveObject {
        let (namespace, name) = split_key(key);
        LiveObject {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            labels: self.label_pairs().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            controller_uid: self.controller_uid.as_deref().map(str::to_owned),
            owners_json: self.owners.clone(),
            deleting: self.deleting,
            uid: (!self.uid.is_empty()).then(|| self.uid.to_string()),
            adopt: self.adopt.as_deref().map(str::to_owned),
            prune_disabled: self.prune_disabled,
        }
    }

    /// The whole object as the API server sent it (without other managers'
    /// field sets), for comparing and for status write-back.
    pub fn expand(&self, resource: &ApiResource, key: &str) -> CachedObject {
        let live = self.live(key);
        let mut rest = match serde_json::from_str(&self.text) {
            Ok(Json::Object(rest)) => rest,
            _ => Map::new(),
        };
        let owned_fields = self.owned_fields.as_deref().and_then(|f| serde_json::from_str(f).ok());
        let mut metadata = Map::new();
        metadata.insert("name".into(), live.name.clone().into());
        if let Some(ns) = &live.namespace {
            metadata.insert("namespace".into(), ns.clone().into());
        }
        if let Some(uid) = &live.uid {
            metadata.insert("uid".into(), uid.clone().into());
        }
        if !live.labels.is_empty() {
            let labels = live.labels.iter().map(|(k, v)| (k.clone(), Json::from(v.clone())));
            metadata.insert("labels".into(), Json::Object(labels.collect()));
        }
        if !live.owners_json.is_empty() {
            metadata.insert("ownerReferences".into(), live.owner_references().into());
        }
        if let Some(Json::Object(kept)) = rest.remove("metadata") {
            metadata.extend(kept);
        }
        let mut manifest = Map::new();
        manifest.insert("apiVersion".into(), resource.api_version.clone().into());
        manifest.insert("kind".into(), resource.kind.clone().into());
        manifest.insert("metadata".into(), Json::Object(metadata));
        manifest.extend(rest);
        CachedObject { live, manifest: Json::Object(manifest), owned_fields }
    }
}

fn is_ours(entry: &ManagedFieldsEntry) -> bool {
    entry.manager.as_deref() == Some(FIELD_MANAGER) && entry.operation.as_deref() == Some("Apply")
}

fn encode_labels(labels: &Labels) -> Arc<str> {
    let mut text = String::new();
    for (k, v) in labels {
        text.push_str(k);
        text.push('\0');
        text.push_str(v);
        text.push('\0');
    }
    text.into()
}

/// `(namespace, name)` of a cache key.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// A watch event in the cache's terms.
#[derive(Debug)]
pub enum CacheEvent {
    Apply(Box<str>, Entry),
    Delete(Box<str>, Entry),
    /// A (re-)list starts: its objects follow, then [`CacheEvent::InitDone`].
    Init,
    InitApply(Box<str>, Entry),
    InitDone,
}

impl From<watcher::Event<DynamicObject>> for CacheEvent {
    fn from(event: watcher::Event<DynamicObject>) -> Self {
        match event {
            watcher::Event::Apply(o) => {
                let (key, entry) = Entry::of(o);
                Self::Apply(key, entry)
            }
            watcher::Event::Delete(o) => {
                let (key, entry) = Entry::of(o);
                Self::Delete(key, entry)
            }
            watcher::Event::Init => Self::Init,
            watcher::Event::InitApply(o) => {
                let (key, entry) = Entry::of(o);
                Self::InitApply(key, entry)
            }
            watcher::Event::InitDone => Self::InitDone,
        }
    }
}

impl CacheEvent {
    /// The object an event reports a change of, outside a list.
    pub fn changed(&self) -> Option<(&str, &Entry)> {
        match self {
            Self::Apply(key, entry) | Self::Delete(key, entry) => Some((key, entry)),
            _ => None,
        }
    }
}

/// Shares the texts the objects of a DBQR have in common.
fn share_entry(texts: &mut Interner, entry: &mut Entry) {
    texts.share(&mut entry.labels);
    texts.share(&mut entry.owners);
    if let Some(uid) = &mut entry.controller_uid {
        texts.share(uid);
    }
    if let Some(fields) = &mut entry.owned_fields {
        texts.share(fields);
    }
}

/// The cache of one watched kind, at the version it is watched at.
#[derive(Debug)]
pub struct KindCache {
    resource: ApiResource,
    objects: HashMap<Box<str>, Entry>,
    texts: Interner,
    /// A list in progress: what it has brought so far. Until it is done the
    /// cache answers from what it had (a re-list after a lost watch must not
    /// look like every object vanished).
    listing: Option<HashMap<Box<str>, Entry>>,
}

impl KindCache {
    pub fn new(resource: ApiResource) -> Self {
        Self { resource, objects: HashMap::new(), texts: Interner::default(), listing: None }
    }

    pub fn apply(&mut self, event: CacheEvent) {
        match event {
            CacheEvent::Apply(key, mut entry) => {
                share_entry(&mut self.texts, &mut entry);
                self.objects.insert(key, entry);
            }
            CacheEvent::Delete(key, _) => {
                self.objects.remove(&key);
            }
            CacheEvent::Init => self.listing = Some(HashMap::new()),
            CacheEvent::InitApply(key, mut entry) => {
                share_entry(&mut self.texts, &mut entry);
                self.listing.get_or_insert_with(HashMap::new).insert(key, entry);
            }
            CacheEvent::InitDone => {
                if let Some(mut listed) = self.listing.take() {
                    listed.shrink_to_fit();
                    self.objects = listed;
                }
            }
        }
    }

    /// The object `namespace/name`, expanded.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<CachedObject> {
        let key = Entry::key(namespace, name);
        Some(self.objects.get(&key)?.expand(&self.resource, &key))
    }

    /// Every object carrying all of `labels`.
    pub fn list(&self, labels: &Labels) -> Vec<LiveObject> {
        self.objects
            .iter()
            .filter(|(_, entry)| entry.has_labels(labels))
            .map(|(key, entry)| entry.live(key))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Json {
        serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "apps", "uid": "u1",
                "resourceVersion": "7",
                "labels": {"app": "web", "dbqo.dev/owner-name": "users"},
                "annotations": {"dbqo.dev/applied-hash": "abc"},
                "ownerReferences": [{"apiVersion": "dbqo.dev/v1alpha1", "kind": "DatabaseQueryResource",
                                     "name": "users", "uid": "u0", "controller": true}],
                "managedFields": [
                    {"manager": "db-query-operator", "operation": "Apply", "apiVersion": "apps/v1",
                     "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                    {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "apps/v1",
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:replicas": {}}}}
                ]
            },
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"replicas": 2}
        })
    }

    fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    #[test]
    fn the_cache_gives_back_the_object_without_other_managers_fields() {
        let original = deployment();
        let mut cache = KindCache::new(resource("apps/v1", "Deployment", "deployments"));
        let (key, entry) = Entry::of(serde_json::from_value(original.clone()).unwrap());
        assert_eq!(&*key, "apps/web");
        cache.apply(CacheEvent::Apply(key, entry));

        let cached = cache.get(Some("apps"), "web").expect("cached");
        let mut expected = original;
        expected["metadata"].as_object_mut().unwrap().remove("managedFields");
        assert_eq!(cached.manifest, expected);
        assert_eq!(cached.owned_fields, Some(serde_json::json!({"f:spec": {"f:replicas": {}}})));
        assert_eq!(cached.live.controller_uid.as_deref(), Some("u0"));
        assert_eq!(cached.live.uid.as_deref(), Some("u1"));
        assert_eq!(cached.live.labels.get("app").map(String::as_str), Some("web"));
        assert!(cache.get(Some("other"), "web").is_none());
    }

    #[test]
    fn the_cache_keeps_the_prune_policy_readable_and_lists_by_label() {
        let original = serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "apps", "labels": {"a": "1", "b": "2"},
                         "annotations": {"dbqo.dev/prune": "disabled", "dbqo.dev/adopt": "apps/x",
                                         "note": "long text"}},
        });
        let mut cache = KindCache::new(resource("v1", "PersistentVolumeClaim", "pvcs"));
        let (key, entry) = Entry::of(serde_json::from_value(original.clone()).unwrap());
        assert_eq!(entry.label("b"), Some("2"));
        assert_eq!(entry.label("c"), None);
        cache.apply(CacheEvent::Apply(key, entry));

        let wanted = |pairs: &[(&str, &str)]| -> Labels {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let listed = cache.list(&wanted(&[("a", "1")]));
        assert_eq!(listed.len(), 1);
        assert!(listed[0].prune_disabled);
        assert_eq!(listed[0].adopt.as_deref(), Some("apps/x"));
        assert_eq!(listed[0].namespace.as_deref(), Some("apps"));
        assert!(cache.list(&wanted(&[("a", "1"), ("b", "3")])).is_empty());
        assert_eq!(cache.get(Some("apps"), "data").unwrap().manifest, original, "nothing lost");
    }

    #[test]
    fn objects_of_one_dbqr_share_labels_owners_and_field_set_and_unused_texts_go() {
        let mut cache = KindCache::new(resource("apps/v1", "Deployment", "deployments"));
        let apply = |cache: &mut KindCache, name: &str, label: &str| {
            let mut object = deployment();
            object["metadata"]["name"] = name.into();
            object["metadata"]["labels"]["row"] = label.into();
            let (key, entry) = Entry::of(serde_json::from_value(object).unwrap());
            cache.apply(CacheEvent::Apply(key, entry));
        };
        apply(&mut cache, "a", "same");
        apply(&mut cache, "b", "same");
        let (a, b) = (&cache.objects["apps/a"], &cache.objects["apps/b"]);
        assert!(Arc::ptr_eq(&a.labels, &b.labels));
        assert!(Arc::ptr_eq(&a.owners, &b.owners));
        assert!(Arc::ptr_eq(a.owned_fields.as_ref().unwrap(), b.owned_fields.as_ref().unwrap()));
        assert_ne!(a.uid.as_ptr(), b.uid.as_ptr(), "an object's own text is its own");

        // One object relabelled 1,000 times: the labels it no longer has go.
        for n in 0..1000 {
            apply(&mut cache, "c", &n.to_string());
        }
        assert!(cache.texts.len() < 100, "{} texts kept", cache.texts.len());
        assert_eq!(cache.get(Some("apps"), "c").unwrap().live.labels["row"], "999");
        assert_eq!(cache.get(Some("apps"), "a").unwrap().live.labels["row"], "same");
    }

    #[test]
    fn a_relist_replaces_the_objects_only_when_it_is_done() {
        let config_map = |name: &str| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            }))
            .unwrap()
        };
        let mut cache = KindCache::new(resource("v1", "Namespace", "namespaces"));
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(config_map("a")),
            watcher::Event::InitApply(config_map("b")),
            watcher::Event::InitDone,
        ] {
            cache.apply(event.into());
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(None, "a").unwrap().live.namespace, None, "cluster-scoped");

        cache.apply(watcher::Event::Init.into());
        cache.apply(watcher::Event::InitApply(config_map("c")).into());
        assert!(cache.get(None, "a").is_some(), "the old objects stay while listing");
        assert!(cache.get(None, "c").is_none());
        cache.apply(watcher::Event::InitDone.into());
        assert!(cache.get(None, "a").is_none());
        assert!(cache.get(None, "c").is_some());

        let deleted = CacheEvent::from(watcher::Event::Delete(config_map("c")));
        assert_eq!(deleted.changed().map(|(key, _)| key), Some("c"));
        cache.apply(deleted);
        assert!(cache.is_empty());
    }
}
