//! The Kubernetes calls the operator makes, as plain async functions over a
//! [`kube::Client`], and the types they speak in. The writer actor runs them
//! under its concurrency limit and timeouts; nothing here knows about actors.
//! A new call is a function in the file of its concern plus a method of
//! `reconcile::Cluster` that the writer implements with it.
//!
//! - kinds: group/version/kind, scope, discovery ([`kinds`]);
//! - the objects DBQRs manage, read and written ([`objects`]), and the
//!   watch cache that holds them ([`cache`]);
//! - the operator's own kinds: status, finalizers, metadata reads ([`own`]);
//! - Events ([`events`]) and Secret data as the operator reads it ([`secrets`]);
//! - what a call can fail with (`error`).

pub mod cache;
pub mod cluster;
mod error;
pub mod events;
pub mod kinds;
pub mod objects;
pub mod own;
pub mod secrets;

pub use cluster::{Cluster, Kinds};
pub use error::{redact_quoted, KubeError};
pub use events::{publish_event, NewEvent};
pub use kinds::{
    discover, resolve, resource_for, Discovered, GroupKind, Gvk, InvalidGvk, KindInfo, ObjectKey,
    Scope,
};
pub use objects::{
    apply, create, create_only, delete, get, merge_patch, names, selector, wave, CachedObject,
    Labels, LiveObject, Target, ADOPT_ANNOTATION, APPLY_ANNOTATION, CREATE_ONLY, FIELD_MANAGER,
    PRUNE_ANNOTATION, PRUNE_DISABLED, WAVE_ANNOTATION,
};
pub use own::{
    list_objects, patch_dbqr_status, patch_status, read_meta, read_object, set_finalizers,
    status_patch,
};
pub use secrets::SecretData;

use kube::api::{Api, ApiResource, DynamicObject};
use kube::Client;

/// The API of `resource`'s objects in `namespace` (`None`: all namespaces,
/// or cluster-scoped).
pub(crate) fn api(
    client: &Client,
    resource: &ApiResource,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}
