//! A cluster in memory behind the [`Cluster`] trait, for the unit tests of
//! both passes (DBQRs and `Database`s): objects by kind, namespace and name;
//! every request recorded; statuses, Events and finalizer changes kept;
//! conflicts and refusals on demand. (The real API server is exercised by
//! the acceptance tests in `tests/`.)

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use serde_json::{json, Value as Json};

use crate::api::DatabaseQueryResourceStatus;
use crate::kube_api::cluster::{Cluster, Kinds};
use crate::kube_api::{
    CachedObject, KindInfo, KubeError, Labels, LiveObject, NewEvent, SecretData, Target,
};
use crate::kube_api::{GroupKind, Scope};
use crate::reconcile::labels::{MANAGED_BY, MANAGED_BY_VALUE};

/// Cluster objects by (kind, namespace, name), as JSON.
type Objects = BTreeMap<(String, Option<String>, String), Json>;

/// A cluster in memory. Objects carrying the `managed-by` label are in the
/// "watch cache"; applies land there at once, as the watch would put them.
#[derive(Default)]
pub(crate) struct FakeCluster {
    pub(crate) objects: RefCell<Objects>,
    /// Every API request, as `verb kind namespace/name`.
    pub(crate) calls: RefCell<Vec<String>>,
    /// Names whose apply the API server refuses.
    pub(crate) refuse_apply: HashSet<String>,
    /// API groups discovery could not describe.
    pub(crate) unavailable: BTreeSet<String>,
    /// Names of managed objects the watch cache has not seen yet.
    pub(crate) uncached: RefCell<HashSet<String>>,
    /// An object (name, new uid) someone deletes and makes again just before
    /// the operator's delete of it arrives.
    pub(crate) replaced: RefCell<Option<(String, String)>>,
    /// Every delete, with the uid it named.
    pub(crate) deletions: RefCell<Vec<(String, Option<String>)>>,
    /// Statuses written, by (kind, namespace, name).
    pub(crate) statuses: RefCell<BTreeMap<(String, String, String), Json>>,
    /// Every status written, in order.
    pub(crate) status_writes: RefCell<Vec<Json>>,
    /// Events published: (reason, warning).
    pub(crate) events: RefCell<Vec<(String, bool)>>,
    /// Finalizer changes the API server refuses with a conflict first.
    pub(crate) conflicts: std::cell::Cell<usize>,
}

pub(crate) fn kinds() -> Kinds {
    let mut kinds = HashMap::new();
    kinds.insert(
        GroupKind::new("", "ConfigMap"),
        KindInfo {
            scope: Scope::Namespaced,
            resource: ApiResource::erase::<ConfigMap>(&()),
            versions: vec!["v1".into()],
        },
    );
    kinds.insert(
        GroupKind::new("apps", "Deployment"),
        KindInfo {
            scope: Scope::Namespaced,
            resource: ApiResource::erase::<Deployment>(&()),
            versions: vec!["v1".into()],
        },
    );
    Arc::new(crate::kube_api::Discovered { kinds, unavailable: Default::default() })
}

fn slot(target: &Target) -> (String, Option<String>, String) {
    (target.resource.kind.clone(), target.namespace.clone(), target.name.clone())
}

pub(crate) fn live(object: &Json) -> LiveObject {
    let object: DynamicObject = serde_json::from_value(object.clone()).unwrap();
    LiveObject::from(object)
}

fn managed(object: &Json) -> bool {
    object["metadata"]["labels"][MANAGED_BY] == MANAGED_BY_VALUE
}

impl FakeCluster {
    pub(crate) fn record(&self, verb: &str, target: &Target) {
        self.calls.borrow_mut().push(format!(
            "{verb} {} {}/{}",
            target.resource.kind,
            target.namespace.as_deref().unwrap_or(""),
            target.name
        ));
    }

    pub(crate) fn put(&self, kind: &str, namespace: &str, name: &str, object: Json) {
        self.objects
            .borrow_mut()
            .insert((kind.into(), Some(namespace.into()), name.into()), object);
    }

    pub(crate) fn writes(&self) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| ["apply", "create", "delete"].iter().any(|v| c.starts_with(v)))
            .cloned()
            .collect()
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.objects.borrow().keys().map(|k| k.2.clone()).collect()
    }
}

impl Cluster for FakeCluster {
    async fn kinds(&self, _refresh: bool) -> Result<Kinds, KubeError> {
        let mut kinds = (*kinds()).clone();
        kinds.unavailable = self.unavailable.clone();
        Ok(Arc::new(kinds))
    }

    async fn watch(&self, _resource: &ApiResource) -> Result<(), KubeError> {
        Ok(())
    }

    fn cached(&self, target: &Target) -> Option<CachedObject> {
        let objects = self.objects.borrow();
        let object = objects.get(&slot(target)).filter(|o| managed(o))?;
        if self.uncached.borrow().contains(&target.name) {
            return None;
        }
        Some(CachedObject { live: live(object), manifest: object.clone(), owned_fields: None })
    }

    fn cached_list(&self, resource: &ApiResource, labels: &Labels) -> Vec<LiveObject> {
        self.objects
            .borrow()
            .iter()
            .filter(|(k, o)| k.0 == resource.kind && managed(o))
            .map(|(_, o)| live(o))
            .filter(|l| labels.iter().all(|(k, v)| l.labels.get(k) == Some(v)))
            .collect()
    }

    async fn get(&self, target: &Target) -> Result<Option<LiveObject>, KubeError> {
        self.record("get", target);
        Ok(self.objects.borrow().get(&slot(target)).map(live))
    }

    async fn names(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
    ) -> Result<std::collections::HashSet<String>, KubeError> {
        self.calls.borrow_mut().push(format!(
            "names {} {}",
            resource.kind,
            namespace.unwrap_or("")
        ));
        Ok(self
            .objects
            .borrow()
            .keys()
            .filter(|(kind, ns, _)| *kind == resource.kind && ns.as_deref() == namespace)
            .map(|(_, _, name)| name.clone())
            .collect())
    }

    async fn apply(&self, target: &Target, manifest: &Json) -> Result<(), KubeError> {
        self.record("apply", target);
        if self.refuse_apply.contains(&target.name) {
            return Err(KubeError::Api {
                code: 422,
                reason: "Invalid".into(),
                message: "refused".into(),
            });
        }
        let mut objects = self.objects.borrow_mut();
        let object = objects.entry(slot(target)).or_insert_with(|| json!({}));
        merge(object, manifest);
        Ok(())
    }

    async fn create(&self, target: &Target, manifest: &Json) -> Result<(), KubeError> {
        self.record("create", target);
        let mut objects = self.objects.borrow_mut();
        if objects.contains_key(&slot(target)) {
            return Err(KubeError::Api {
                code: 409,
                reason: "AlreadyExists".into(),
                message: "exists".into(),
            });
        }
        objects.insert(slot(target), manifest.clone());
        Ok(())
    }

    async fn delete(&self, target: &Target, uid: Option<&str>) -> Result<(), KubeError> {
        self.record("delete", target);
        self.deletions.borrow_mut().push((target.name.clone(), uid.map(str::to_owned)));
        let mut objects = self.objects.borrow_mut();
        if let Some((name, new_uid)) = self.replaced.borrow_mut().take() {
            if let Some(object) = objects.get_mut(&slot(target)).filter(|_| name == target.name) {
                object["metadata"]["uid"] = json!(new_uid);
            }
        }
        // The API server's uid precondition: a replacement is not deleted.
        let current = objects.get(&slot(target));
        if uid.is_some() && current.is_some_and(|o| o["metadata"]["uid"].as_str() != uid) {
            return Ok(());
        }
        objects.remove(&slot(target));
        Ok(())
    }

    async fn merge_patch(&self, target: &Target, patch: &Json) -> Result<(), KubeError> {
        self.record("patch", target);
        if let Some(object) = self.objects.borrow_mut().get_mut(&slot(target)) {
            merge(object, patch);
        }
        Ok(())
    }

    async fn read_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, KubeError> {
        let key = ("Secret".to_owned(), Some(namespace.to_owned()), name.to_owned());
        Ok(self.objects.borrow().get(&key).map(secret_data))
    }

    async fn patch_dbqr_status(
        &self,
        _: &str,
        _: &str,
        _: &DatabaseQueryResourceStatus,
    ) -> Result<(), KubeError> {
        unreachable!("a pass does not write the DBQR status")
    }

    async fn patch_status(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
        status: &Json,
    ) -> Result<(), KubeError> {
        let key = (resource.kind.clone(), namespace.to_owned(), name.to_owned());
        self.statuses.borrow_mut().insert(key, status.clone());
        self.status_writes.borrow_mut().push(status.clone());
        Ok(())
    }

    async fn read_object(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Json>, KubeError> {
        let key = (resource.kind.clone(), Some(namespace.to_owned()), name.to_owned());
        Ok(self.objects.borrow().get(&key).cloned())
    }

    async fn list_objects(
        &self,
        resource: &ApiResource,
        namespace: &str,
        selector: &str,
        limit: u32,
    ) -> Result<Vec<Json>, KubeError> {
        let wanted: Vec<(&str, &str)> =
            selector.split(',').filter_map(|pair| pair.split_once('=')).collect();
        Ok(self
            .objects
            .borrow()
            .iter()
            .filter(|((kind, ns, _), object)| {
                *kind == resource.kind
                    && ns.as_deref() == Some(namespace)
                    && wanted.iter().all(|(k, v)| object["metadata"]["labels"][*k] == *v)
            })
            .map(|(_, object)| object.clone())
            .take(limit as usize)
            .collect())
    }

    async fn read_meta(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ObjectMeta>, KubeError> {
        let key = (resource.kind.clone(), Some(namespace.to_owned()), name.to_owned());
        Ok(self
            .objects
            .borrow()
            .get(&key)
            .map(|o| serde_json::from_value(o["metadata"].clone()).unwrap()))
    }

    /// Optimistic concurrency as the API server does it: a stale
    /// resourceVersion is a conflict (and `conflicts` forces some).
    async fn set_finalizers(
        &self,
        resource: &ApiResource,
        seen: &ObjectMeta,
        finalizers: &[String],
    ) -> Result<(), KubeError> {
        let target = Target {
            resource: resource.clone(),
            namespace: seen.namespace.clone(),
            name: seen.name.clone().unwrap_or_default(),
        };
        let key = slot(&target);
        let resource_version = seen.resource_version.as_deref();
        self.record("finalizers", &target);
        let mut objects = self.objects.borrow_mut();
        let Some(object) = objects.get_mut(&key) else {
            return Err(api_error(404, "NotFound"));
        };
        let current = object["metadata"]["resourceVersion"].as_str();
        let forced = self.conflicts.get() > 0;
        if forced || resource_version.is_some_and(|v| Some(v) != current) {
            self.conflicts.set(self.conflicts.get().saturating_sub(1));
            bump(object);
            return Err(api_error(409, "Conflict"));
        }
        object["metadata"]["finalizers"] = json!(finalizers);
        bump(object);
        Ok(())
    }

    async fn publish_event(
        &self,
        _: &k8s_openapi::api::core::v1::ObjectReference,
        event: &NewEvent,
    ) -> Result<(), KubeError> {
        self.events.borrow_mut().push((event.reason.to_owned(), event.warning));
        Ok(())
    }
}

fn api_error(code: u16, reason: &str) -> KubeError {
    KubeError::Api { code, reason: reason.into(), message: reason.into() }
}

/// A new resourceVersion, as every write gets.
fn bump(object: &mut Json) {
    let version = object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    object["metadata"]["resourceVersion"] = json!((version + 1).to_string());
}

/// A stored Secret as the writer's Secret watch hands it out.
fn secret_data(object: &Json) -> SecretData {
    use base64::Engine as _;
    let data = object["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .unwrap();
            (k.clone(), bytes)
        })
        .collect();
    let owners = object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_str().map(str::to_owned))
        .collect();
    SecretData {
        resource_version: object["metadata"]["resourceVersion"].as_str().unwrap_or("1").to_owned(),
        data,
        owners,
    }
}

/// What a forced server-side apply does to the fields it names (enough for these tests).
pub(crate) fn merge(into: &mut Json, from: &Json) {
    match (into, from) {
        (Json::Object(a), Json::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Json::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}
