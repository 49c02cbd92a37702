//! What deleting a DBQR does to its objects, before its finalizer goes.
//!
//! Objects are found by label in every kind the DBQR recorded and every kind
//! the operator may write, so an object written just before a crash (and never
//! recorded in status) is found too.

use std::collections::BTreeSet;

use serde_json::{json, Value as Json};

use super::labels::{Owner, MANAGED_BY, OWNER_NAME, OWNER_NAMESPACE};
use super::pass::{parse_managed_kind, Problem};
use super::writer::Writer;
use crate::api::DeletionPolicy;
use crate::kube_api::resource_for;
use crate::render::GroupKind;

/// Where clean-up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// No object carries this DBQR's labels any more: the finalizer may go.
    Done,
    /// Deletions are under way; check again shortly.
    Waiting { remaining: usize },
}

/// Deletes (policy `Delete`) or detaches (policy `Orphan`) every object of
/// `owner` among `managed_kinds` (`apiVersion/Kind`) and `allowed_kinds`.
pub async fn clean_up<W: Writer>(
    owner: &Owner,
    policy: DeletionPolicy,
    managed_kinds: &[String],
    allowed_kinds: &BTreeSet<GroupKind>,
    writer: &W,
) -> Result<Cleanup, Problem> {
    let kinds = writer
        .kinds(false)
        .await
        .map_err(|e| Problem::new(e.reason(), format!("discovery failed: {e}")))?;
    let mut group_kinds: BTreeSet<GroupKind> = allowed_kinds.clone();
    let mut resources = Vec::new();
    for kind in managed_kinds {
        if let Some(gvk) = parse_managed_kind(kind) {
            let gk = GroupKind::new(gvk.group.clone(), gvk.kind.clone());
            if let Some(info) = kinds.get(&gk) {
                resources.push(resource_for(&gvk, info));
            }
            group_kinds.remove(&gk);
        }
    }
    // Allowed kinds that are not served (no CRD installed) hold no objects.
    resources.extend(
        group_kinds
            .iter()
            .filter_map(|gk| kinds.get(gk))
            .map(|info| info.resource.clone()),
    );

    let mut remaining = 0;
    for resource in resources {
        let live = writer
            .list(resource.clone(), owner.selector())
            .await
            .map_err(|e| Problem::new(e.reason(), format!("cannot list {}: {e}", resource.kind)))?;
        for object in live.into_iter().filter(|o| owner.owns(&o.labels)) {
            let failed = |e: crate::kube_api::KubeError| {
                Problem::new(
                    e.reason(),
                    format!("cannot clean up {} {}: {e}", resource.kind, object.name),
                )
            };
            match policy {
                DeletionPolicy::Delete => {
                    remaining += 1;
                    if !object.deleting {
                        writer
                            .delete(
                                resource.clone(),
                                object.namespace.clone(),
                                object.name.clone(),
                            )
                            .await
                            .map_err(failed)?;
                    }
                }
                DeletionPolicy::Orphan => {
                    writer
                        .merge_patch(
                            resource.clone(),
                            object.namespace.clone(),
                            object.name.clone(),
                            detach_patch(owner, &object.owner_references),
                        )
                        .await
                        .map_err(failed)?;
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
