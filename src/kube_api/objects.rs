//! The objects DBQRs manage: how to address one, what the operator reads
//! of a live one, the watch cache's compact form, and the calls that read
//! and write them (made as the DBQR's ServiceAccount by the writer).

use std::collections::BTreeMap;

use kube::{
    api::{
        Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
        Preconditions,
    },
    Client,
};
use serde_json::Value as Json;

use super::{api, KubeError};

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "db-query-operator";

/// Annotation by which the owner of an existing object lets one DBQR
/// (`<namespace>/<name>`) take it over. Without it, an object the operator
/// did not make is never written, relabelled or deleted.
pub const ADOPT_ANNOTATION: &str = "dbqo.dev/adopt";

/// Per-object policy in a rendered manifest: [`CREATE_ONLY`] creates the
/// object when it is missing and never updates or repairs it.
pub const APPLY_ANNOTATION: &str = "dbqo.dev/apply";
pub const CREATE_ONLY: &str = "create-only";
/// Per-object policy in a rendered manifest: [`PRUNE_DISABLED`] detaches the
/// object (owner labels and reference removed) where it would be deleted,
/// by prune or by the DBQR's deletion.
pub const PRUNE_ANNOTATION: &str = "dbqo.dev/prune";
pub const PRUNE_DISABLED: &str = "disabled";

/// Per-object policy in a rendered manifest: within one row, objects of a
/// later wave (an integer in quotes, default 0) are applied only once every
/// object of the row's earlier waves is Ready.
pub const WAVE_ANNOTATION: &str = "dbqo.dev/wave";
/// Waves run from `-MAX_WAVE` to `MAX_WAVE`.
pub const MAX_WAVE: i32 = 1000;

/// The wave of a rendered manifest: 0 without the annotation, `None` when
/// it is not an integer in quotes within `±MAX_WAVE`.
pub fn wave(manifest: &Json) -> Option<i32> {
    match &manifest["metadata"]["annotations"][WAVE_ANNOTATION] {
        Json::Null => Some(0),
        Json::String(text) => text.trim().parse().ok().filter(|w: &i32| w.abs() <= MAX_WAVE),
        _ => None,
    }
}

/// The annotations the watch cache keeps readable in `metadata` (the rest
/// it keeps as text): what prune and clean-up decide by.
const POLICY_ANNOTATIONS: [&str; 2] = [PRUNE_ANNOTATION, ADOPT_ANNOTATION];

/// Whether a rendered manifest asks to be created only, never updated.
pub fn create_only(manifest: &Json) -> bool {
    manifest["metadata"]["annotations"][APPLY_ANNOTATION].as_str() == Some(CREATE_ONLY)
}

/// One object in the cluster: how to address its kind, and its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub resource: ApiResource,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
}

/// Labels an object must all carry (a label selector of `k=v` terms).
pub type Labels = BTreeMap<String, String>;

/// `k=v,k=v`: the API's form of an equality label selector.
pub fn selector(labels: &Labels) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn target_api(client: &Client, target: &Target) -> Api<DynamicObject> {
    api(client, &target.resource, target.namespace.as_deref())
}

/// The metadata of a live object the operator cares about.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveObject {
    pub namespace: Option<String>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// uid of the controller owner, if any.
    pub controller_uid: Option<String>,
    pub owner_references: Vec<Json>,
    pub deleting: bool,
    /// The object's uid: deletions name it as a precondition, so a
    /// same-named replacement made by someone else is never deleted.
    pub uid: Option<String>,
    /// The value of [`ADOPT_ANNOTATION`]: the DBQR (`namespace/name`) the
    /// object's owner lets take it over.
    pub adopt: Option<String>,
    /// [`PRUNE_ANNOTATION`] says [`PRUNE_DISABLED`]: detached, never deleted.
    pub prune_disabled: bool,
}

impl From<DynamicObject> for LiveObject {
    fn from(o: DynamicObject) -> Self {
        Self::from(&o)
    }
}

impl From<&DynamicObject> for LiveObject {
    fn from(o: &DynamicObject) -> Self {
        let refs = o.metadata.owner_references.clone().unwrap_or_default();
        let annotation = |key: &str| o.metadata.annotations.as_ref().and_then(|a| a.get(key));
        Self {
            namespace: o.metadata.namespace.clone(),
            name: o.metadata.name.clone().unwrap_or_default(),
            labels: o.metadata.labels.clone().unwrap_or_default(),
            controller_uid: refs.iter().find(|r| r.controller == Some(true)).map(|r| r.uid.clone()),
            owner_references: refs.iter().filter_map(|r| serde_json::to_value(r).ok()).collect(),
            deleting: o.metadata.deletion_timestamp.is_some(),
            uid: o.metadata.uid.clone(),
            adopt: annotation(ADOPT_ANNOTATION).cloned(),
            prune_disabled: annotation(PRUNE_ANNOTATION).map(String::as_str)
                == Some(PRUNE_DISABLED),
        }
    }
}

/// A managed object from the watch cache: its metadata, the object for
/// comparing with what a DBQR renders and for status write-back, and the
/// fields the operator's field manager owns (`fieldsV1` of its apply).
#[derive(Debug, Clone)]
pub struct CachedObject {
    pub live: LiveObject,
    pub manifest: Json,
    pub owned_fields: Option<Json>,
}

impl CachedObject {
    /// The cached object, expanded from what [`trim_for_cache`] kept.
    pub fn of(object: &DynamicObject) -> Option<Self> {
        let mut content = match expand(&object.data) {
            Json::Object(content) => content,
            _ => serde_json::Map::new(),
        };
        let owned_fields = content.remove(CACHED_OWNED_FIELDS);
        let annotations = content.remove(CACHED_ANNOTATIONS);
        let mut manifest = serde_json::Map::new();
        if let Some(types) = &object.types {
            manifest.insert("apiVersion".into(), Json::String(types.api_version.clone()));
            manifest.insert("kind".into(), Json::String(types.kind.clone()));
        }
        let mut metadata = serde_json::to_value(&object.metadata).ok()?;
        if let (Some(metadata), Some(annotations)) = (metadata.as_object_mut(), annotations) {
            metadata.insert("annotations".into(), annotations);
        }
        manifest.insert("metadata".into(), metadata);
        manifest.extend(content);
        Some(Self {
            live: LiveObject::from(object),
            manifest: Json::Object(manifest),
            owned_fields,
        })
    }
}

fn is_ours(entry: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry) -> bool {
    entry.manager.as_deref() == Some(FIELD_MANAGER) && entry.operation.as_deref() == Some("Apply")
}

/// Keys under which the cached text holds what came out of `metadata`
/// (a NUL-prefixed key cannot be a field of a Kubernetes object).
const CACHED_ANNOTATIONS: &str = "\u{0}annotations";
const CACHED_OWNED_FIELDS: &str = "\u{0}ownedFields";

/// What the watch cache keeps of a managed object: the object's content,
/// its annotations and the operator's field set (`fieldsV1` of its apply;
/// other managers' entries are dropped, they can outweigh the object) as
/// one JSON text. A tree of small maps costs an allocation per field, an
/// annotation map a node of half a kilobyte even for one entry; the text
/// costs one allocation, and the cache holds every managed object for as
/// long as the operator runs. Labels stay: the cache is searched by them.
/// A pass expands what it compares ([`CachedObject::of`]).
pub fn trim_for_cache(object: &mut DynamicObject) {
    let owned_fields = object
        .metadata
        .managed_fields
        .take()
        .into_iter()
        .flatten()
        .find(is_ours)
        .and_then(|entry| entry.fields_v1)
        .map(|fields| fields.0);
    let annotations = object.metadata.annotations.take();
    // The few that prune and clean-up read stay readable without parsing.
    let policy: BTreeMap<String, String> = POLICY_ANNOTATIONS
        .iter()
        .filter_map(|key| Some((key.to_string(), annotations.as_ref()?.get(*key)?.clone())))
        .collect();
    if !policy.is_empty() {
        object.metadata.annotations = Some(policy);
    }
    if !object.data.is_object() {
        object.data = Json::Object(serde_json::Map::new());
    }
    if let Some(content) = object.data.as_object_mut() {
        if let Some(fields) = owned_fields {
            content.insert(CACHED_OWNED_FIELDS.into(), fields);
        }
        if let Some(annotations) = annotations {
            if let Ok(annotations) = serde_json::to_value(annotations) {
                content.insert(CACHED_ANNOTATIONS.into(), annotations);
            }
        }
    }
    compact(&mut object.data);
}

fn compact(value: &mut Json) {
    if value.is_object() {
        *value = Json::String(value.to_string());
    }
}

/// The inverse of [`compact`]: an object kept as text, parsed again.
fn expand(value: &Json) -> Json {
    match value {
        Json::String(text) => serde_json::from_str(text).unwrap_or(Json::Null),
        other => other.clone(),
    }
}

pub async fn get(client: &Client, target: &Target) -> Result<Option<LiveObject>, KubeError> {
    Ok(target_api(client, target).get_opt(&target.name).await?.map(LiveObject::from))
}

/// The names of every object of a kind in `namespace` (or, cluster-scoped,
/// at all), from one metadata-only list: whether objects the watch cache
/// does not hold exist, at the cost of one request instead of a GET each.
pub async fn names(
    client: &Client,
    resource: &ApiResource,
    namespace: Option<&str>,
) -> Result<std::collections::HashSet<String>, KubeError> {
    let list = api(client, resource, namespace).list_metadata(&ListParams::default()).await?;
    Ok(list.items.into_iter().filter_map(|o| o.metadata.name).collect())
}

/// Server-side apply, forcing conflicts: the database is the source of truth.
pub async fn apply(client: &Client, target: &Target, manifest: &Json) -> Result<(), KubeError> {
    target_api(client, target)
        .patch(&target.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(manifest))
        .await?;
    Ok(())
}

/// Creates an object as the operator's field manager; an object of that
/// name already there is a 409 (`AlreadyExists`), never overwritten.
pub async fn create(client: &Client, target: &Target, manifest: &Json) -> Result<(), KubeError> {
    let object: DynamicObject = serde_json::from_value(manifest.clone())
        .map_err(|e| KubeError::Manifest(std::sync::Arc::new(e)))?;
    let params =
        PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
    target_api(client, target).create(&params, &object).await?;
    Ok(())
}

/// Deletes in the background (dependents follow via garbage collection); a
/// missing object counts as deleted. With `uid`, only the object of that uid
/// is deleted: one recreated under the same name by someone else since it
/// was read is not the one the operator meant, and the API server's
/// precondition answer (409) counts as deleted too.
pub async fn delete(client: &Client, target: &Target, uid: Option<&str>) -> Result<(), KubeError> {
    let mut params = DeleteParams::background();
    if let Some(uid) = uid {
        params = params
            .preconditions(Preconditions { uid: Some(uid.to_owned()), resource_version: None });
    }
    match target_api(client, target).delete(&target.name, &params).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = KubeError::from(e);
            if e.is_not_found() || (uid.is_some() && e.is_conflict()) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// JSON merge patch (metadata edits such as finalizers, labels, owner references).
pub async fn merge_patch(client: &Client, target: &Target, patch: &Json) -> Result<(), KubeError> {
    target_api(client, target)
        .patch(&target.name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_cache_keeps_text_and_gives_back_the_same_object() {
        use super::{trim_for_cache, CachedObject, DynamicObject};
        let original = serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "apps", "uid": "u1",
                "labels": {"app": "web"},
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
        });
        let object: DynamicObject = serde_json::from_value(original.clone()).unwrap();
        let mut kept = object.clone();
        trim_for_cache(&mut kept);
        assert!(kept.data.is_string(), "the content is kept as text");
        assert!(kept.metadata.managed_fields.is_none());
        assert!(kept.metadata.annotations.is_none());

        let cached = CachedObject::of(&kept).unwrap();
        let mut expected = original;
        expected["metadata"].as_object_mut().unwrap().remove("managedFields");
        assert_eq!(cached.manifest, expected);
        assert_eq!(cached.owned_fields, Some(serde_json::json!({"f:spec": {"f:replicas": {}}})));
        assert_eq!(cached.live.controller_uid.as_deref(), Some("u0"));
        assert_eq!(cached.live.labels.get("app").map(String::as_str), Some("web"));
    }

    #[test]
    fn the_cache_keeps_the_prune_policy_readable() {
        use super::{trim_for_cache, CachedObject, DynamicObject, LiveObject};
        let original = serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "apps",
                         "annotations": {"dbqo.dev/prune": "disabled", "note": "long text"}},
        });
        let mut kept: DynamicObject = serde_json::from_value(original.clone()).unwrap();
        trim_for_cache(&mut kept);
        let annotations = kept.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["dbqo.dev/prune"]);
        assert!(LiveObject::from(&kept).prune_disabled);
        assert_eq!(CachedObject::of(&kept).unwrap().manifest, original, "nothing lost");
    }
}
