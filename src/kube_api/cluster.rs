//! Everything the operator asks of the cluster, reads (watch caches, the API
//! server) and writes alike, as one trait. The shared
//! writer actor implements it (each method one request under the writer's
//! permits and timeout); the reconcile code sees only this trait, and the
//! unit tests implement it in memory.
#![allow(async_fn_in_trait)] // implemented and awaited on the actor runtime only, never boxed or sent

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ApiResource;
use serde_json::Value as Json;

use crate::api::DatabaseQueryResourceStatus;
use crate::kube_api::{
    CachedObject, Discovered, KubeError, Labels, LiveObject, NewEvent, SecretData, Target,
};

pub type Kinds = Arc<Discovered>;

pub trait Cluster {
    /// Discovery: every served kind. `refresh` asks for a new discovery run.
    async fn kinds(&self, refresh: bool) -> Result<Kinds, KubeError>;

    /// Makes sure the managed objects of this kind are watched and cached;
    /// returns once the cache is filled.
    async fn watch(&self, resource: &ApiResource) -> Result<(), KubeError>;
    /// A managed object from the watch cache (objects without the operator's
    /// `managed-by` label are not cached). Costs no API request.
    fn cached(&self, target: &Target) -> Option<CachedObject>;
    /// The cached objects of a kind carrying all of `labels`.
    fn cached_list(&self, resource: &ApiResource, labels: &Labels) -> Vec<LiveObject>;

    /// One object, read from the API server.
    async fn get(&self, target: &Target) -> Result<Option<LiveObject>, KubeError>;
    /// The names of every object of a kind in `namespace` (`None`: cluster-scoped),
    /// read from the API server in one metadata-only list.
    async fn names(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
    ) -> Result<std::collections::HashSet<String>, KubeError>;
    /// Server-side apply, forced, as the operator's field manager.
    async fn apply(&self, target: &Target, manifest: &Json) -> Result<(), KubeError>;
    /// Creates an object; one of that name already there is an error (409).
    async fn create(&self, target: &Target, manifest: &Json) -> Result<(), KubeError>;
    /// Deletes in the background; an object already gone, or replaced by
    /// one of another `uid`, counts as deleted.
    async fn delete(&self, target: &Target, uid: Option<&str>) -> Result<(), KubeError>;
    /// JSON merge patch (detaching an orphaned object).
    async fn merge_patch(&self, target: &Target, patch: &Json) -> Result<(), KubeError>;

    /// A connection Secret.
    async fn read_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, KubeError>;

    /// Writes a DBQR's status subresource.
    async fn patch_dbqr_status(
        &self,
        namespace: &str,
        name: &str,
        status: &DatabaseQueryResourceStatus,
    ) -> Result<(), KubeError>;
    /// Merge-patches the status of one of the operator's own objects
    /// (`DatabaseServer`, `Database`).
    async fn patch_status(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
        status: &Json,
    ) -> Result<(), KubeError>;
    /// The metadata of one of the operator's own objects, read from the API
    /// server (not a watch), with the operator's rights.
    async fn read_meta(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ObjectMeta>, KubeError>;
    /// One object (a Job the operator made) as the API server has it now.
    async fn read_object(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Json>, KubeError>;
    /// The objects of a kind in `namespace` with the labels `selector`
    /// names (a Job's Pods, a `Database`'s scheduled backups); at most `limit`.
    async fn list_objects(
        &self,
        resource: &ApiResource,
        namespace: &str,
        selector: &str,
        limit: u32,
    ) -> Result<Vec<Json>, KubeError>;
    /// Replaces the finalizers of one of the operator's own objects if it
    /// is still at the resourceVersion `seen` has (see `controller::finalizer`).
    async fn set_finalizers(
        &self,
        resource: &ApiResource,
        seen: &ObjectMeta,
        finalizers: &[String],
    ) -> Result<(), KubeError>;
    /// An Event about one of the operator's own objects.
    async fn publish_event(
        &self,
        regarding: &ObjectReference,
        event: &NewEvent,
    ) -> Result<(), KubeError>;
}
