//! A Secret as the operator reads it: its data and its owners.

use std::collections::BTreeMap;

/// A Secret's data and the resourceVersion it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretData {
    pub resource_version: String,
    pub data: BTreeMap<String, Vec<u8>>,
    /// uids of the Secret's owners (a `Database`'s credentials Secret names it).
    pub owners: Vec<String>,
}

impl SecretData {
    pub fn of(secret: &k8s_openapi::api::core::v1::Secret) -> Self {
        Self {
            resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
            data: secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
            owners: secret
                .metadata
                .owner_references
                .iter()
                .flatten()
                .map(|r| r.uid.clone())
                .collect(),
        }
    }
}
