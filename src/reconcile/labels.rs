//! The labels and owner reference every generated object carries. Objects are
//! found by these labels, never by a list kept in status.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use crate::kube_api::ADOPT_ANNOTATION;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "db-query-operator";
pub const OWNER_NAME: &str = "dbqo.dev/owner-name";
pub const OWNER_NAMESPACE: &str = "dbqo.dev/owner-namespace";

/// Which DBQR an object belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// Label values are at most 63 characters; longer DBQR names keep a readable
/// prefix and a hash so they stay unique.
pub fn label_value(s: &str) -> String {
    if s.len() <= 63 {
        return s.to_owned();
    }
    let digest = Sha256::digest(s.as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let mut prefix: String = s.chars().take(50).collect();
    while !prefix.ends_with(|c: char| c.is_ascii_alphanumeric()) && !prefix.is_empty() {
        prefix.pop();
    }
    format!("{prefix}-{hash}")
}

impl Owner {
    pub fn of(dbqr: &crate::api::DatabaseQueryResource) -> Self {
        use kube::ResourceExt;
        Self {
            name: dbqr.name_any(),
            namespace: dbqr.namespace().unwrap_or_default(),
            uid: dbqr.uid().unwrap_or_default(),
        }
    }

    /// The labels every object of this DBQR carries: the selector that finds them.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
            (OWNER_NAME.to_owned(), label_value(&self.name)),
            (OWNER_NAMESPACE.to_owned(), label_value(&self.namespace)),
        ])
    }

    /// The user this DBQR's object requests are made as (Kubernetes
    /// impersonation): its `serviceAccountName`, else the operator's default
    /// ServiceAccount, each of the DBQR's own namespace; `None` for the
    /// operator's own rights.
    pub fn acting_user(&self, spec_account: Option<&str>, default: Option<&str>) -> Option<String> {
        spec_account
            .or(default)
            .map(|account| format!("system:serviceaccount:{}:{account}", self.namespace))
    }

    /// The value of `dbqo.dev/adopt` that hands an existing object to this DBQR.
    pub fn adopter(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The merge patch that detaches an object from this DBQR: the owner
    /// labels and this DBQR's owner reference go (the garbage collector then
    /// keeps the object once the DBQR is gone). `hand_back` leaves the adopt
    /// annotation naming this DBQR, so that a row producing the object again
    /// takes it back instead of finding it taken.
    pub fn detach_patch(&self, owner_references: &[Json], hand_back: bool) -> Json {
        let kept: Vec<Json> =
            owner_references.iter().filter(|r| r["uid"] != self.uid.as_str()).cloned().collect();
        let mut patch = json!({
            "metadata": {
                "labels": { MANAGED_BY: null, OWNER_NAME: null, OWNER_NAMESPACE: null },
                "ownerReferences": if kept.is_empty() { Json::Null } else { Json::Array(kept) },
            }
        });
        if hand_back {
            patch["metadata"]["annotations"] = json!({ ADOPT_ANNOTATION: self.adopter() });
        }
        patch
    }

    /// The writer's key for drift notices: the owner label values.
    pub fn label_key(&self) -> (String, String) {
        (label_value(&self.namespace), label_value(&self.name))
    }

    /// Whether `labels` say the object belongs to this DBQR.
    pub fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels().iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Whether a live object is this DBQR's: its labels, and its controller
    /// reference's uid where it has one. Labels alone are not enough: a
    /// long DBQR name becomes a hashed label value, and a DBQR named like
    /// that value would carry the same labels.
    pub fn owns_object(&self, object: &crate::kube_api::LiveObject) -> bool {
        self.owns(&object.labels)
            && object.controller_uid.as_ref().is_none_or(|uid| *uid == self.uid)
    }

    /// Whether `labels` say the object belongs to some other DBQR.
    pub fn is_foreign(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE) && !self.owns(labels)
    }

    /// Adds the owner labels and, for objects in the DBQR's namespace, a
    /// controller owner reference (garbage collection cannot cross namespaces).
    pub fn decorate(&self, manifest: &mut Json, namespace: Option<&str>) {
        let metadata = &mut manifest["metadata"];
        if !metadata["labels"].is_object() {
            metadata["labels"] = json!({});
        }
        for (k, v) in self.labels() {
            metadata["labels"][k] = Json::String(v);
        }
        if namespace == Some(self.namespace.as_str()) {
            let reference = crate::controller::owner::controller_reference::<
                crate::api::DatabaseQueryResource,
            >(&self.name, &self.uid);
            let mut refs = metadata["ownerReferences"].as_array().cloned().unwrap_or_default();
            refs.retain(|r| r["uid"] != self.uid.as_str());
            refs.push(reference);
            metadata["ownerReferences"] = Json::Array(refs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acting_user_is_a_service_account_of_the_dbqrs_namespace() {
        let owner = Owner { name: "users".into(), namespace: "team-a".into(), uid: "u1".into() };
        assert_eq!(owner.acting_user(None, None), None);
        assert_eq!(
            owner.acting_user(None, Some("dbqr-runner")).as_deref(),
            Some("system:serviceaccount:team-a:dbqr-runner")
        );
        assert_eq!(
            owner.acting_user(Some("deployer"), Some("dbqr-runner")).as_deref(),
            Some("system:serviceaccount:team-a:deployer")
        );
    }

    #[test]
    fn long_names_become_valid_unique_label_values() {
        let a = label_value(&"a".repeat(100));
        let b = label_value(&format!("{}b", "a".repeat(99)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert_eq!(label_value("users"), "users");
    }

    #[test]
    fn decorate_adds_labels_and_owner_reference_only_in_own_namespace() {
        let owner = Owner { name: "users".into(), namespace: "apps".into(), uid: "u1".into() };
        let mut same = json!({"metadata": {"name": "x", "labels": {"keep": "me"}}});
        owner.decorate(&mut same, Some("apps"));
        assert_eq!(same["metadata"]["labels"]["keep"], "me");
        assert_eq!(same["metadata"]["labels"][OWNER_NAME], "users");
        assert_eq!(same["metadata"]["ownerReferences"][0]["controller"], true);
        let mut other = json!({"metadata": {"name": "x"}});
        owner.decorate(&mut other, Some("elsewhere"));
        assert!(other["metadata"].get("ownerReferences").is_none());
        assert!(owner.owns(&serde_json::from_value(other["metadata"]["labels"].clone()).unwrap()));
    }
}
