//! What deleting a DBQR does to its objects, before its finalizer goes.
//!
//! Objects are found by label in every kind the DBQR recorded and every kind
//! the operator may write, so an object written just before a crash (and never
//! recorded in status) is found too.

use std::collections::BTreeSet;

use serde_json::{json, Value as Json};

use super::labels::{Owner, MANAGED_BY, OWNER_NAME, OWNER_NAMESPACE};
use super::writer::Writer;
use crate::api::DeletionPolicy;
use crate::kube_api::{resource_for, KubeError, Target};
use crate::render::{GroupKind, Gvk};

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
}

impl CleanupError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Discovery(e) | Self::List { source: e, .. } | Self::Object { source: e, .. } => {
                e.reason()
            }
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
pub async fn clean_up<W: Writer>(
    owner: &Owner,
    policy: DeletionPolicy,
    managed_kinds: &BTreeSet<Gvk>,
    allowed_kinds: &BTreeSet<GroupKind>,
    writer: &W,
) -> Result<Cleanup, CleanupError> {
    let kinds = writer.kinds(false).await.map_err(CleanupError::Discovery)?;
    let mut group_kinds: BTreeSet<GroupKind> = allowed_kinds.clone();
    let mut resources = Vec::new();
    for gvk in managed_kinds {
        let gk = gvk.group_kind();
        if let Some(info) = kinds.get(&gk) {
            resources.push(resource_for(gvk, info));
        }
        group_kinds.remove(&gk);
    }
    // Allowed kinds that are not served (no CRD installed) hold no objects.
    resources.extend(
        group_kinds
            .iter()
            .filter_map(|gk| kinds.get(gk))
            .map(|info| info.resource.clone()),
    );

    let labels = owner.labels();
    let mut remaining = 0;
    for resource in resources {
        let live = writer
            .list(&resource, &labels)
            .await
            .map_err(|source| CleanupError::List {
                kind: resource.kind.clone(),
                source,
            })?;
        for object in live.into_iter().filter(|o| owner.owns(&o.labels)) {
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
                DeletionPolicy::Delete => {
                    remaining += 1;
                    if !object.deleting {
                        writer.delete(&target).await.map_err(failed)?;
                    }
                }
                DeletionPolicy::Orphan => {
                    let patch = detach_patch(owner, &object.owner_references);
                    writer.merge_patch(&target, &patch).await.map_err(failed)?;
                }
            }
        }
    }
    Ok(if remaining == 0 {
        Cleanup::Done
    } else {
        Cleanup::Waiting { remaining }
    })
}

/// Removes the owner labels and this DBQR's owner reference, so the garbage
/// collector keeps the object once the DBQR is gone.
fn detach_patch(owner: &Owner, owner_references: &[Json]) -> Json {
    let kept: Vec<Json> = owner_references
        .iter()
        .filter(|r| r["uid"] != owner.uid.as_str())
        .cloned()
        .collect();
    json!({
        "metadata": {
            "labels": { MANAGED_BY: null, OWNER_NAME: null, OWNER_NAMESPACE: null },
            "ownerReferences": if kept.is_empty() { Json::Null } else { Json::Array(kept) },
        }
    })
}
