//! The operator's finalizer on its own objects (DBQRs, `Database`s): added
//! before any work that needs a clean-up, removed once the clean-up is done.
//! Both changes name the resourceVersion they were computed from, so a stale
//! view never overwrites newer finalizers; a conflict is retried with a
//! fresh read, a few times. An object already gone, or already as wanted,
//! counts as done.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ApiResource;

use crate::api::FINALIZER;
use crate::kube_api::Cluster;
use crate::kube_api::KubeError;

/// Fresh reads after a conflict before the change is reported as failed.
const REREADS: usize = 4;

/// Adds the finalizer to the object of `resource` last seen as `seen`.
pub async fn add<W: Cluster>(
    writer: &W,
    resource: &ApiResource,
    seen: &ObjectMeta,
) -> Result<(), KubeError> {
    change(writer, resource, seen, true).await
}

/// Removes the finalizer from the object of `resource` last seen as `seen`.
pub async fn remove<W: Cluster>(
    writer: &W,
    resource: &ApiResource,
    seen: &ObjectMeta,
) -> Result<(), KubeError> {
    change(writer, resource, seen, false).await
}

pub fn has(meta: &ObjectMeta) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == FINALIZER)
}

async fn change<W: Cluster>(
    writer: &W,
    resource: &ApiResource,
    seen: &ObjectMeta,
    wanted: bool,
) -> Result<(), KubeError> {
    let namespace = seen.namespace.clone().unwrap_or_default();
    let name = seen.name.clone().unwrap_or_default();
    let mut current = seen.clone();
    let mut rereads = 0;
    loop {
        // A deleting object takes no new finalizer.
        if has(&current) == wanted || (wanted && current.deletion_timestamp.is_some()) {
            return Ok(());
        }
        let mut finalizers: Vec<String> = current.finalizers.clone().unwrap_or_default();
        if wanted {
            finalizers.push(FINALIZER.to_owned());
        } else {
            finalizers.retain(|f| f != FINALIZER);
        }
        match writer.set_finalizers(resource, &current, &finalizers).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) if e.is_conflict() && rereads < REREADS => {
                rereads += 1;
                match writer.read_meta(resource, &namespace, &name).await? {
                    // Gone, or another object of the same name.
                    Some(fresh) if fresh.uid == seen.uid => current = fresh,
                    _ => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}
