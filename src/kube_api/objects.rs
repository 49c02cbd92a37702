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
    /// `metadata.ownerReferences` as JSON text, empty when there are none
    /// (shared with the watch cache: a list of thousands copies nothing).
    pub owners_json: std::sync::Arc<str>,
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

impl LiveObject {
    /// The object's owner references.
    pub fn owner_references(&self) -> Vec<Json> {
        if self.owners_json.is_empty() {
            return Vec::new();
        }
        serde_json::from_str(&self.owners_json).unwrap_or_default()
    }
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
            owners_json: if refs.is_empty() {
                "".into()
            } else {
                serde_json::to_string(&refs).unwrap_or_default().into()
            },
            deleting: o.metadata.deletion_timestamp.is_some(),
            uid: o.metadata.uid.clone(),
            adopt: annotation(ADOPT_ANNOTATION).cloned(),
            prune_disabled: annotation(PRUNE_ANNOTATION).map(String::as_str)
                == Some(PRUNE_DISABLED),
        }
    }
}

/// A managed object from the watch cache ([`super::cache`]): its metadata,
/// the object for comparing with what a DBQR renders and for status
/// write-back, and the fields the operator's field manager owns (`fieldsV1`
/// of its apply).
#[derive(Debug, Clone)]
pub struct CachedObject {
    pub live: LiveObject,
    pub manifest: Json,
    pub owned_fields: Option<Json>,
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
