//! Calls on the operator's own kinds (DBQRs, `Database`s,
//! `DatabaseServer`s): status, finalizers, metadata reads. Always made with
//! the operator's own rights.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    api::{Api, ApiResource, Patch, PatchParams},
    Client,
};
use serde_json::Value as Json;

use super::{api, KubeError};
use crate::api::{DatabaseQueryResource, DatabaseQueryResourceStatus};

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

/// One object as the API server has it, as JSON (a Job's status).
pub async fn read_object(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
) -> Result<Option<serde_json::Value>, KubeError> {
    let object = api(client, resource, Some(namespace)).get_opt(name).await?;
    Ok(object.map(|o| serde_json::to_value(o).unwrap_or_default()))
}

/// The objects of a kind in `namespace` carrying `selector` (a label
/// selector), as JSON; at most `limit` of them.
pub async fn list_objects(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    selector: &str,
    limit: u32,
) -> Result<Vec<serde_json::Value>, KubeError> {
    let params = kube::api::ListParams::default().labels(selector).limit(limit);
    let list = api(client, resource, Some(namespace)).list(&params).await?;
    Ok(list.items.into_iter().map(|o| serde_json::to_value(o).unwrap_or_default()).collect())
}

/// Merge patch of a DBQR's status subresource.
pub async fn patch_dbqr_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &DatabaseQueryResourceStatus,
) -> Result<(), KubeError> {
    dbqrs(client, namespace)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status_patch(status)))
        .await?;
    Ok(())
}

/// The merge patch that makes the DBQR's status `status`. A merge patch
/// keeps what it does not mention, so an inventory that became empty, or
/// rows that no longer wait, are written as `null` (removed), not left out.
pub fn status_patch(status: &DatabaseQueryResourceStatus) -> Json {
    let mut body = serde_json::to_value(status).unwrap_or_default();
    if let Some(fields) = body.as_object_mut() {
        fields.entry("managedKinds").or_insert(Json::Null);
        fields.entry("waitingRows").or_insert(Json::Null);
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
    seen: &ObjectMeta,
    finalizers: &[String],
) -> Result<(), KubeError> {
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": seen.resource_version }
    });
    let name = seen.name.as_deref().unwrap_or_default();
    api(client, resource, seen.namespace.as_deref())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::status_patch;

    #[test]
    fn an_empty_inventory_is_written_not_left_out() {
        let patch = status_patch(&Default::default());
        assert_eq!(patch["status"]["managedKinds"], serde_json::Value::Null);
        assert!(patch["status"].as_object().unwrap().contains_key("managedKinds"));
        assert!(patch["status"].as_object().unwrap().contains_key("waitingRows"));
    }
}
