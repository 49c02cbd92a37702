//! The Kubernetes calls the operator makes, as plain async functions over a
//! [`kube::Client`]. The writer actor runs them under its concurrency limit and
//! timeouts; nothing here knows about actors.

use std::collections::{BTreeMap, HashMap};

use kube::{
    api::{
        Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
        Preconditions,
    },
    discovery::Scope as DiscoveryScope,
    Client,
};
use serde_json::Value as Json;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::api::{DatabaseQueryResource, DatabaseQueryResourceStatus};
use crate::render::{GroupKind, Gvk, Scope};

/// Field manager of every write.
pub const FIELD_MANAGER: &str = "db-query-operator";

/// Annotation by which the owner of an existing object lets one DBQR
/// (`<namespace>/<name>`) take it over. Without it, an object the operator
/// did not make is never written, relabelled or deleted.
pub const ADOPT_ANNOTATION: &str = "dbqo.dev/adopt";

/// A failed API call, by kind. Messages carry the API server's reason, never manifests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    #[error("{kind} is not served by the API server")]
    UnknownKind { kind: String },
    #[error("{kind}: the API server does not serve this version of the kind (it serves {served})")]
    VersionNotServed { kind: String, served: String },
    #[error("API server refused ({code}): {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("API request failed: {0}")]
    Transport(#[source] std::sync::Arc<kube::Error>),
    #[error("a manifest is not a Kubernetes object: {0}")]
    Manifest(#[source] std::sync::Arc<serde_json::Error>),
    #[error("API request timed out")]
    Timeout,
    #[error("writer is shutting down")]
    Closed,
}

impl KubeError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownKind { .. } => crate::reason::UNKNOWN_KIND,
            Self::VersionNotServed { .. } => crate::reason::VERSION_NOT_SERVED,
            Self::Api { code: 403, .. } => crate::reason::FORBIDDEN,
            Self::Api { code: 409, .. } => crate::reason::CONFLICT,
            Self::Api { code: 422, .. } => crate::reason::INVALID,
            Self::Api { .. } => crate::reason::API_ERROR,
            Self::Transport(_) => crate::reason::API_UNAVAILABLE,
            Self::Manifest(_) => crate::reason::INVALID_OBJECT,
            Self::Timeout => crate::reason::API_TIMEOUT,
            Self::Closed => crate::reason::SHUTTING_DOWN,
        }
    }

    /// The object changed since the resourceVersion the request named.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Api { code: 409, .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { code: 404, .. })
    }
}

impl From<kube::Error> for KubeError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => Self::Api {
                code: status.code,
                reason: status.reason.clone(),
                message: redact_quoted(&status.message),
            },
            other => Self::Transport(std::sync::Arc::new(other)),
        }
    }
}

/// An API server message with every double-quoted part blanked out. A 422
/// answer echoes the rejected value (`Invalid value: "<label value>"`), and
/// that value came from a row; the object's kind and name are known to the
/// caller, so nothing useful is lost.
pub fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        // Skip to the closing quote, honouring Go's backslash escapes.
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
        out.push_str("…\"");
    }
    out
}

/// What discovery knows about a kind: its scope, how to address it at the
/// version the API server prefers, and every version it serves.
#[derive(Debug, Clone)]
pub struct KindInfo {
    pub scope: Scope,
    /// At the preferred version: what watches and lookups use, so every
    /// DBQR shares one watch per kind whatever version it renders.
    pub resource: ApiResource,
    pub versions: Vec<String>,
}

/// Every kind the API server serves, and the API groups it could not
/// describe (an aggregated API whose backend is down).
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    pub kinds: HashMap<GroupKind, KindInfo>,
    pub unavailable: std::collections::BTreeSet<String>,
}

impl Discovered {
    pub fn get(&self, group_kind: &GroupKind) -> Option<&KindInfo> {
        self.kinds.get(group_kind)
    }

    /// Whether discovery confirms that `group_kind` is not served: its
    /// group answered and does not list it.
    pub fn confirms_absent(&self, group_kind: &GroupKind) -> bool {
        !self.kinds.contains_key(group_kind) && !self.unavailable.contains(&group_kind.group)
    }
}

/// Discovery, one request per group version (as kube's `Discovery::run`
/// makes), but a group version that fails (an aggregated API whose backend
/// is down) marks its group unavailable instead of failing the whole run.
pub async fn discover(client: &Client) -> Result<Discovered, KubeError> {
    use kube::core::GroupVersion;
    let core = client.list_core_api_versions().await?;
    let groups = client.list_api_groups().await?;
    // (group, version, whether it is the group's preferred version)
    let mut versions: Vec<(String, String, bool)> = core
        .versions
        .iter()
        .map(|v| (String::new(), v.clone(), v == "v1"))
        .collect();
    for group in groups.groups {
        let preferred = group.preferred_version.map(|p| p.version);
        for v in group.versions {
            let is_preferred = preferred.as_deref() == Some(v.version.as_str());
            versions.push((group.name.clone(), v.version, is_preferred));
        }
    }
    let answers = futures_util::future::join_all(versions.iter().map(|(group, version, _)| {
        let gv = GroupVersion::gv(group, version);
        async move { kube::discovery::pinned_group(client, &gv).await }
    }))
    .await;
    let mut discovered = Discovered::default();
    for ((group, version, preferred), answer) in versions.iter().zip(answers) {
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                let reason = KubeError::from(error).reason();
                tracing::debug!(%group, %version, reason, "API group version unavailable");
                discovered.unavailable.insert(group.clone());
                continue;
            }
        };
        for (resource, caps) in answer.versioned_resources(version) {
            let scope = match caps.scope {
                DiscoveryScope::Cluster => Scope::Cluster,
                DiscoveryScope::Namespaced => Scope::Namespaced,
            };
            let key = GroupKind::new(resource.group.clone(), resource.kind.clone());
            let info = discovered.kinds.entry(key).or_insert_with(|| KindInfo {
                scope,
                resource: resource.clone(),
                versions: Vec::new(),
            });
            if *preferred {
                info.resource = resource;
            }
            info.versions.push(version.clone());
        }
    }
    Ok(discovered)
}

/// The resource for an exact group/version/kind (the version a manifest names).
pub fn resource_for(gvk: &Gvk, known: &KindInfo) -> ApiResource {
    let mut resource = known.resource.clone();
    resource.version = gvk.version.clone();
    resource.api_version = gvk.api_version();
    resource
}

/// The resource of `gvk` if the API server serves its kind at that version.
pub fn resolve(kinds: &Discovered, gvk: &Gvk) -> Result<ApiResource, KubeError> {
    let info = kinds
        .get(&gvk.group_kind())
        .ok_or_else(|| KubeError::UnknownKind {
            kind: gvk.to_string(),
        })?;
    if !info.versions.contains(&gvk.version) {
        return Err(KubeError::VersionNotServed {
            kind: gvk.to_string(),
            served: info.versions.join(", "),
        });
    }
    Ok(resource_for(gvk, info))
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
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A Secret's data and the resourceVersion it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretData {
    pub resource_version: String,
    pub data: BTreeMap<String, Vec<u8>>,
    /// uids of the Secret's owners (a `Database`'s credentials Secret names it).
    pub owners: Vec<String>,
}

/// An Event about a DBQR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbqrEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

fn api(client: &Client, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
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
}

impl From<DynamicObject> for LiveObject {
    fn from(o: DynamicObject) -> Self {
        Self::from(&o)
    }
}

impl From<&DynamicObject> for LiveObject {
    fn from(o: &DynamicObject) -> Self {
        let refs = o.metadata.owner_references.clone().unwrap_or_default();
        Self {
            namespace: o.metadata.namespace.clone(),
            name: o.metadata.name.clone().unwrap_or_default(),
            labels: o.metadata.labels.clone().unwrap_or_default(),
            controller_uid: refs
                .iter()
                .find(|r| r.controller == Some(true))
                .map(|r| r.uid.clone()),
            owner_references: refs
                .iter()
                .filter_map(|r| serde_json::to_value(r).ok())
                .collect(),
            deleting: o.metadata.deletion_timestamp.is_some(),
            uid: o.metadata.uid.clone(),
            adopt: o
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ADOPT_ANNOTATION))
                .cloned(),
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
    Ok(target_api(client, target)
        .get_opt(&target.name)
        .await?
        .map(LiveObject::from))
}

/// The names of every object of a kind in `namespace` (or, cluster-scoped,
/// at all), from one metadata-only list: whether objects the watch cache
/// does not hold exist, at the cost of one request instead of a GET each.
pub async fn names(
    client: &Client,
    resource: &ApiResource,
    namespace: Option<&str>,
) -> Result<std::collections::HashSet<String>, KubeError> {
    let list = api(client, resource, namespace)
        .list_metadata(&ListParams::default())
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect())
}

/// Server-side apply, forcing conflicts: the database is the source of truth.
pub async fn apply(client: &Client, target: &Target, manifest: &Json) -> Result<(), KubeError> {
    target_api(client, target)
        .patch(
            &target.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(manifest),
        )
        .await?;
    Ok(())
}

/// Creates an object as the operator's field manager; an object of that
/// name already there is a 409 (`AlreadyExists`), never overwritten.
pub async fn create(client: &Client, target: &Target, manifest: &Json) -> Result<(), KubeError> {
    let object: DynamicObject = serde_json::from_value(manifest.clone())
        .map_err(|e| KubeError::Manifest(std::sync::Arc::new(e)))?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
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
        params = params.preconditions(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        });
    }
    match target_api(client, target)
        .delete(&target.name, &params)
        .await
    {
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

fn dbqrs(client: &Client, namespace: &str) -> Api<DatabaseQueryResource> {
    Api::namespaced(client.clone(), namespace)
}

/// The metadata of a namespaced object of `resource` as the API server
/// has it now (a metadata-only read).
pub async fn read_meta(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
) -> Result<Option<ObjectMeta>, KubeError> {
    Ok(api(client, resource, Some(namespace))
        .get_metadata_opt(name)
        .await?
        .map(|partial| partial.metadata))
}

/// Merge patch of a DBQR's status subresource.
pub async fn patch_dbqr_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &DatabaseQueryResourceStatus,
) -> Result<(), KubeError> {
    dbqrs(client, namespace)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&status_patch(status)),
        )
        .await?;
    Ok(())
}

/// The merge patch that makes the DBQR's status `status`. A merge patch
/// keeps what it does not mention, so an inventory that became empty is
/// written as `null` (removed), not left out.
pub fn status_patch(status: &DatabaseQueryResourceStatus) -> Json {
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let Some(fields) = body.as_object_mut() {
        fields.entry("managedKinds").or_insert(Json::Null);
    }
    serde_json::json!({ "status": body })
}

/// Merge-patches the status subresource of a namespaced object of `resource`
/// (the operator's own kinds) to `status`.
pub async fn patch_status(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
    status: &Json,
) -> Result<(), KubeError> {
    api(client, resource, Some(namespace))
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "status": status })),
        )
        .await?;
    Ok(())
}

/// Replaces the finalizers of a namespaced object of `resource` (DBQRs,
/// `Database`s), if it is still at `resource_version` (optimistic
/// concurrency: a stale view must not overwrite newer finalizers).
pub async fn set_finalizers(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
    resource_version: Option<&str>,
    finalizers: &[String],
) -> Result<(), KubeError> {
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": resource_version }
    });
    api(client, resource, Some(namespace))
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Publishes an Event about the object `regarding`.
pub async fn publish_event(
    client: &Client,
    reporter: &Reporter,
    regarding: &ObjectReference,
    event: &DbqrEvent,
) -> Result<(), KubeError> {
    let event = Event {
        type_: if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: event.reason.to_owned(),
        note: Some(event.message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    Recorder::new(client.clone(), reporter.clone())
        .publish(&event, regarding)
        .await?;
    Ok(())
}

impl SecretData {
    pub fn of(secret: &k8s_openapi::api::core::v1::Secret) -> Self {
        Self {
            resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
            data: secret
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            owners: secret
                .metadata
                .owner_references
                .iter()
                .flatten()
                .map(|r| r.uid.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_quoted, status_patch};

    #[test]
    fn an_empty_inventory_is_written_not_left_out() {
        let patch = status_patch(&Default::default());
        assert_eq!(patch["status"]["managedKinds"], serde_json::Value::Null);
        assert!(patch["status"]
            .as_object()
            .unwrap()
            .contains_key("managedKinds"));
    }

    #[test]
    fn quoted_values_leave_api_messages() {
        let message = r#"ConfigMap "c" is invalid: metadata.labels: Invalid value: "m4rker \"x\" ok": a valid label must be 63 characters"#;
        let redacted = redact_quoted(message);
        assert!(!redacted.contains("m4rker"), "{redacted}");
        assert_eq!(
            redacted,
            r#"ConfigMap "…" is invalid: metadata.labels: Invalid value: "…": a valid label must be 63 characters"#
        );
        assert_eq!(redact_quoted("unterminated \"m4rker"), "unterminated \"…\"");
    }

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
        expected["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("managedFields");
        assert_eq!(cached.manifest, expected);
        assert_eq!(
            cached.owned_fields,
            Some(serde_json::json!({"f:spec": {"f:replicas": {}}}))
        );
        assert_eq!(cached.live.controller_uid.as_deref(), Some("u0"));
        assert_eq!(
            cached.live.labels.get("app").map(String::as_str),
            Some("web")
        );
    }
}
