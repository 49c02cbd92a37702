//! What deleting a DBQR does to its objects, before its finalizer goes.
//!
//! Objects are found by label in every kind the DBQR recorded and every kind
//! the operator may write, so an object written just before a crash (and never
//! recorded in status) is found too.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::labels::Owner;
use crate::api::{DatabaseQueryResource, DatabaseQueryResourceStatus, DeletionPolicy};
use crate::controller::{
    condition::{self, Status, Verdict},
    finalizer,
};
use crate::kube_api::cluster::Cluster;

/// Condition of a DBQR whose deletion waits on a clean-up that fails.
pub const CLEANUP_BLOCKED: &str = "CleanupBlocked";
use crate::kube_api::{GroupKind, Gvk};
use crate::kube_api::{KubeError, NewEvent, Target};

/// Why clean-up could not finish (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("discovery failed: {0}")]
    Discovery(#[source] KubeError),
    #[error("cannot list {kind}: {source}")]
    List {
        kind: String,
        #[source]
        source: KubeError,
    },
    #[error("cannot clean up {kind} {name}: {source}")]
    Object {
        kind: String,
        name: String,
        #[source]
        source: KubeError,
    },
    #[error("cannot remove the finalizer: {0}")]
    Release(#[source] KubeError),
}

impl CleanupError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Discovery(e)
            | Self::List { source: e, .. }
            | Self::Object { source: e, .. }
            | Self::Release(e) => e.reason(),
        }
    }
}

/// Where clean-up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// No object carries this DBQR's labels any more: the finalizer may go.
    Done,
    /// Deletions are under way; check again shortly.
    Waiting { remaining: usize },
}

/// Deletes (policy `Delete`) or detaches (policy `Orphan`) every object of
/// `owner` among `managed_kinds` and `allowed_kinds`.
pub async fn clean_up<W: Cluster>(
    owner: &Owner,
    policy: DeletionPolicy,
    managed_kinds: &BTreeSet<Gvk>,
    allowed_kinds: &BTreeSet<GroupKind>,
    writer: &W,
) -> Result<Cleanup, CleanupError> {
    let kinds = writer.kinds(false).await.map_err(CleanupError::Discovery)?;
    // Every kind at the version the API server prefers (a recorded version
    // may no longer be served). Kinds that are not served (a CRD deleted or
    // never installed) hold no objects.
    let group_kinds: BTreeSet<GroupKind> =
        allowed_kinds.iter().cloned().chain(managed_kinds.iter().map(Gvk::group_kind)).collect();
    let resources =
        group_kinds.iter().filter_map(|gk| kinds.get(gk)).map(|info| info.resource.clone());

    let mut remaining = 0;
    for resource in resources {
        // The writer's label-selected watch of the kind holds every object
        // the operator made: no list of the whole cluster per retry, and
        // the watch is the operator's own, whatever the DBQR's rights.
        match writer.watch(&resource).await {
            Ok(()) => {}
            // Gone since discovery ran: nothing of it is left to clean up.
            Err(e) if e.is_not_found() => continue,
            Err(source) => return Err(CleanupError::List { kind: resource.kind.clone(), source }),
        }
        remaining += clean_up_kind(owner, policy, &resource, writer).await?;
    }
    Ok(if remaining == 0 { Cleanup::Done } else { Cleanup::Waiting { remaining } })
}

/// Deletes or detaches the objects of `owner` of one kind (from the
/// writer's watch cache of it); the deletions still under way.
async fn clean_up_kind<W: Cluster>(
    owner: &Owner,
    policy: DeletionPolicy,
    resource: &kube::api::ApiResource,
    writer: &W,
) -> Result<usize, CleanupError> {
    let mut remaining = 0;
    let live = writer.cached_list(resource, &owner.labels());
    for object in live.into_iter().filter(|o| owner.owns_object(o)) {
        let failed = |source| CleanupError::Object {
            kind: resource.kind.clone(),
            name: object.name.clone(),
            source,
        };
        let target = Target {
            resource: resource.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        };
        match policy {
            // Kept by its own policy: detached like an orphan.
            DeletionPolicy::Delete if object.prune_disabled => {
                let patch = owner.detach_patch(&object.owner_references(), false);
                writer.merge_patch(&target, &patch).await.map_err(failed)?;
            }
            DeletionPolicy::Delete => {
                remaining += 1;
                if !object.deleting {
                    writer.delete(&target, object.uid.as_deref()).await.map_err(failed)?;
                }
            }
            DeletionPolicy::Orphan => {
                let patch = owner.detach_patch(&object.owner_references(), false);
                writer.merge_patch(&target, &patch).await.map_err(failed)?;
            }
        }
    }
    Ok(remaining)
}

/// The DBQR status that reports a blocked clean-up: condition
/// `CleanupBlocked` (True, with the failure's reason) and an Event when the
/// reason is new; `None` when the status already says so.
pub fn blocked_status(
    previous: Option<&DatabaseQueryResourceStatus>,
    error: &CleanupError,
    now: Time,
) -> Option<(DatabaseQueryResourceStatus, Option<NewEvent>)> {
    let mut status = previous.cloned().unwrap_or_default();
    let verdict = Verdict::new(
        Status::True,
        error.reason(),
        format!("the DBQR is kept until its objects are cleaned up: {error}"),
    );
    let before = condition::find(&status.conditions, CLEANUP_BLOCKED);
    let condition = condition::condition(before, CLEANUP_BLOCKED, &verdict, None, &now);
    if before == Some(&condition) {
        return None;
    }
    let message = format!("{CLEANUP_BLOCKED}: {}", verdict.message);
    let event = condition::event_on_new_reason(before, &verdict, Status::True, message);
    status.conditions.retain(|c| c.type_ != CLEANUP_BLOCKED);
    status.conditions.push(condition);
    Some((status, event))
}

/// Removes the DBQR's finalizer (conflicts retried with a fresh read).
pub async fn release<W: Cluster>(
    writer: &W,
    seen: &DatabaseQueryResource,
) -> Result<(), KubeError> {
    let resource = kube::api::ApiResource::erase::<DatabaseQueryResource>(&());
    finalizer::remove(writer, &resource, &seen.metadata).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden() -> CleanupError {
        CleanupError::Object {
            kind: "ConfigMap".into(),
            name: "cm-1".into(),
            source: KubeError::Api { code: 403, reason: "Forbidden".into(), message: "no".into() },
        }
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(10).unwrap())
    }

    #[test]
    fn a_blocked_clean_up_is_reported_once_per_reason() {
        let (status, event) = blocked_status(None, &forbidden(), now()).unwrap();
        let condition = &status.conditions[0];
        assert_eq!(
            (condition.type_.as_str(), condition.status.as_str(), condition.reason.as_str()),
            (CLEANUP_BLOCKED, "True", "Forbidden")
        );
        assert!(condition.message.contains("ConfigMap cm-1"), "{}", condition.message);
        assert_eq!(event.unwrap().reason, "Forbidden");
        assert!(blocked_status(Some(&status), &forbidden(), now()).is_none());
        let gone = CleanupError::Discovery(KubeError::Timeout);
        let (next, event) = blocked_status(Some(&status), &gone, now()).unwrap();
        assert_eq!(next.conditions.len(), 1);
        assert_eq!(event.unwrap().reason, "ApiTimeout");
    }
}
