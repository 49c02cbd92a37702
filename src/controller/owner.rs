//! Owner references, from the owner type's own `apiVersion` and `kind`
//! (kube's `Resource`), never spelled by hand: a new API version of the
//! operator's kinds changes them in one place.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use serde_json::Value as Json;

/// The controller reference to the `K` named `name` with `uid`: garbage
/// collection deletes the dependent with it, and blocks the owner's
/// foreground deletion until the dependent is gone.
pub fn controller_reference<K: Resource<DynamicType = ()>>(name: &str, uid: &str) -> Json {
    let reference = OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    serde_json::to_value(reference).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::database::Database;

    #[test]
    fn the_reference_names_the_owner_type_as_the_api_knows_it() {
        let reference = controller_reference::<Database>("orders", "uid-1");
        assert_eq!(
            reference,
            serde_json::json!({
                "apiVersion": "dbqo.dev/v1alpha1",
                "kind": "Database",
                "name": "orders",
                "uid": "uid-1",
                "controller": true,
                "blockOwnerDeletion": true,
            })
        );
    }
}
