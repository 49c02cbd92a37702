//! What a reconcile pass needs from Kubernetes. The shared writer actor
//! implements it; the pass only sees this trait.
#![allow(async_fn_in_trait)] // implemented and awaited on the actor runtime only, never boxed or sent

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use kube::api::ApiResource;
use serde_json::Value as Json;

use crate::kube_api::{CachedObject, KindInfo, KubeError, LiveObject};
use crate::render::GroupKind;

pub type Kinds = Arc<HashMap<GroupKind, KindInfo>>;

pub trait Writer {
    /// Discovery: every served kind. `refresh` asks for a new discovery run.
    async fn kinds(&self, refresh: bool) -> Result<Kinds, KubeError>;
    async fn get(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    ) -> Result<Option<LiveObject>, KubeError>;
    async fn apply(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
        manifest: Json,
    ) -> Result<(), KubeError>;
    async fn list(
        &self,
        resource: ApiResource,
        selector: String,
    ) -> Result<Vec<LiveObject>, KubeError>;
    async fn delete(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    ) -> Result<(), KubeError>;
    async fn merge_patch(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
        patch: Json,
    ) -> Result<(), KubeError>;
    async fn read_secret(
        &self,
        namespace: String,
        name: String,
    ) -> Result<Option<(String, BTreeMap<String, Vec<u8>>)>, KubeError>;
    /// Makes sure the managed objects of this kind are watched and cached;
    /// returns once the cache is filled.
    async fn watch(&self, resource: ApiResource) -> Result<(), KubeError>;
    /// A managed object from the watch cache (objects without the operator's
    /// label are not cached).
    async fn cached(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    ) -> Result<Option<CachedObject>, KubeError>;
    /// The cached objects of a kind carrying all of `selector`'s labels (`k=v,k=v`).
    async fn cached_list(
        &self,
        resource: ApiResource,
        selector: String,
    ) -> Result<Vec<LiveObject>, KubeError>;
}
