//! From a rendered YAML document to a [`RenderedObject`]: required fields,
//! names valid for the kind, allowed kinds and namespaces.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::error::ObjectProblem;
use crate::api::names::{dns_label_problem, dns_subdomain_problem};
use crate::kube_api::WAVE_ANNOTATION;
use crate::kube_api::{wave, APPLY_ANNOTATION, CREATE_ONLY, PRUNE_ANNOTATION, PRUNE_DISABLED};
use crate::kube_api::{GroupKind, Gvk, ObjectKey, Scope};

/// Answers "is this kind namespaced?". The operator asks API discovery; the
/// offline `render` command uses [`BuiltinScopes`].
pub trait ScopeLookup {
    fn scope(&self, group_kind: &GroupKind) -> Option<Scope>;
}

/// Scopes of the built-in kinds; unknown kinds are taken as namespaced.
pub struct BuiltinScopes;

impl ScopeLookup for BuiltinScopes {
    fn scope(&self, gk: &GroupKind) -> Option<Scope> {
        const CLUSTER: &[(&str, &str)] = &[
            ("", "Namespace"),
            ("", "Node"),
            ("", "PersistentVolume"),
            ("rbac.authorization.k8s.io", "ClusterRole"),
            ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
            ("apiextensions.k8s.io", "CustomResourceDefinition"),
            ("storage.k8s.io", "StorageClass"),
            ("scheduling.k8s.io", "PriorityClass"),
            ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
            ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
        ];
        let cluster = CLUSTER.iter().any(|(g, k)| *g == gk.group && *k == gk.kind);
        Some(if cluster { Scope::Cluster } else { Scope::Namespaced })
    }
}

/// Which objects a DBQR may produce. Built from the operator's settings.
#[derive(Debug, Clone)]
pub struct ObjectPolicy {
    pub allowed_kinds: BTreeSet<GroupKind>,
    /// Namespaces other than the DBQR's own that objects may go to; `None` means any.
    pub extra_namespaces: Option<BTreeSet<String>>,
}

impl Default for ObjectPolicy {
    /// ConfigMap, Secret, Service, ServiceAccount, Deployment, StatefulSet,
    /// Job, CronJob; only the DBQR's own namespace.
    fn default() -> Self {
        Self {
            allowed_kinds: DEFAULT_KINDS
                .iter()
                .map(|k| k.parse().expect("default kinds are well-formed"))
                .collect(),
            extra_namespaces: Some(BTreeSet::new()),
        }
    }
}

pub const DEFAULT_KINDS: &[&str] = &[
    "ConfigMap",
    "Secret",
    "Service",
    "ServiceAccount",
    "apps/Deployment",
    "apps/StatefulSet",
    "batch/Job",
    "batch/CronJob",
];

/// A validated object, ready to be applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedObject {
    /// Index of the row that produced it.
    pub row: usize,
    pub gvk: Gvk,
    pub group_kind: GroupKind,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
    /// The manifest, namespace filled in.
    pub manifest: Json,
}

impl RenderedObject {
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            group_kind: self.group_kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

fn string_at<'a>(doc: &'a Json, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(doc, |v, k| v.get(k))?.as_str()
}

/// Validates one document produced for a row of a DBQR in `dbqr_namespace`.
pub fn validate_object(
    mut doc: Json,
    row: usize,
    dbqr_namespace: &str,
    policy: &ObjectPolicy,
    scopes: &dyn ScopeLookup,
) -> Result<RenderedObject, ObjectProblem> {
    if !doc.is_object() {
        return Err(ObjectProblem::NotAMapping);
    }
    let api_version = string_at(&doc, &["apiVersion"])
        .filter(|s| !s.is_empty())
        .ok_or(ObjectProblem::MissingField("apiVersion"))?
        .to_owned();
    let kind = string_at(&doc, &["kind"])
        .filter(|s| !s.is_empty())
        .ok_or(ObjectProblem::MissingField("kind"))?
        .to_owned();
    let name = string_at(&doc, &["metadata", "name"])
        .filter(|s| !s.is_empty())
        .ok_or(ObjectProblem::MissingField("metadata.name"))?
        .to_owned();
    let gvk = Gvk::from_api_version(&api_version, &kind)
        .ok_or(ObjectProblem::BadApiVersion(api_version))?;
    let group_kind = gvk.group_kind();
    if !policy.allowed_kinds.contains(&group_kind) {
        return Err(ObjectProblem::KindNotAllowed(group_kind.to_string()));
    }
    check_name(&kind, &name)?;
    check_policies(&doc)?;

    let namespace = namespace_of(&mut doc, &group_kind, dbqr_namespace, policy, scopes)?;
    Ok(RenderedObject { row, gvk, group_kind, namespace, name, manifest: doc })
}

/// The namespace the object goes to: none for a cluster-scoped kind; the
/// DBQR's unless the document names one the policy allows (written into
/// the document).
fn namespace_of(
    doc: &mut Json,
    group_kind: &GroupKind,
    dbqr_namespace: &str,
    policy: &ObjectPolicy,
    scopes: &dyn ScopeLookup,
) -> Result<Option<String>, ObjectProblem> {
    let requested = string_at(doc, &["metadata", "namespace"]).map(str::to_owned);
    let scope = scopes
        .scope(group_kind)
        .ok_or_else(|| ObjectProblem::UnknownKind(group_kind.to_string()))?;
    if scope == Scope::Cluster {
        if requested.as_deref().is_some_and(|ns| !ns.is_empty()) {
            return Err(ObjectProblem::NamespaceOnClusterScoped(group_kind.to_string()));
        }
        return Ok(None);
    }
    let ns = requested.filter(|ns| !ns.is_empty()).unwrap_or_else(|| dbqr_namespace.to_owned());
    if dns_label_problem(&ns).is_some() {
        return Err(ObjectProblem::InvalidNamespace(ns));
    }
    let allowed = ns == dbqr_namespace
        || policy.extra_namespaces.as_ref().is_none_or(|extra| extra.contains(&ns));
    if !allowed {
        return Err(ObjectProblem::NamespaceNotAllowed(ns));
    }
    doc["metadata"]["namespace"] = Json::String(ns.clone());
    Ok(Some(ns))
}

/// The per-object policy annotations, if set, hold a value the operator
/// knows: a misspelt policy must not quietly mean the default.
fn check_policies(doc: &Json) -> Result<(), ObjectProblem> {
    let annotations = &doc["metadata"]["annotations"];
    for (annotation, allowed) in
        [(APPLY_ANNOTATION, CREATE_ONLY), (PRUNE_ANNOTATION, PRUNE_DISABLED)]
    {
        let value = &annotations[annotation];
        if !value.is_null() && value.as_str() != Some(allowed) {
            return Err(ObjectProblem::BadPolicy { annotation, allowed });
        }
    }
    if wave(doc).is_none() {
        return Err(ObjectProblem::BadPolicy {
            annotation: WAVE_ANNOTATION,
            allowed: "an integer in quotes from -1000 to 1000",
        });
    }
    Ok(())
}

fn check_name(kind: &str, name: &str) -> Result<(), ObjectProblem> {
    let problem = match kind {
        "Namespace" => dns_label_problem(name),
        // Services become DNS names and must start with a letter (RFC 1035).
        "Service" => dns_label_problem(name).or_else(|| {
            (!name.starts_with(|c: char| c.is_ascii_lowercase()))
                .then_some("must start with a lower-case letter")
        }),
        // The controller appends an 11-character suffix to Job names.
        "CronJob" if name.len() > 52 => Some("must be at most 52 characters"),
        _ => dns_subdomain_problem(name),
    };
    match problem {
        Some(rule) => Err(ObjectProblem::InvalidName { kind: kind.to_owned(), rule }),
        None => Ok(()),
    }
}
