//! Kinds: group/version/kind and group/kind (the same kind whatever the
//! version), whether a kind is namespaced, an object's identity, and what
//! discovery says the API server serves.

use std::collections::HashMap;

use kube::{api::ApiResource, discovery::Scope as DiscoveryScope, Client};

use super::KubeError;

/// A kind regardless of version: `apps/Deployment`, `ConfigMap` (core group).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

impl GroupKind {
    pub fn new(group: impl Into<String>, kind: impl Into<String>) -> Self {
        Self { group: group.into(), kind: kind.into() }
    }
}

impl std::fmt::Display for GroupKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}/{}", self.group, self.kind)
        }
    }
}

impl std::str::FromStr for GroupKind {
    type Err = InvalidGvk;

    /// `Kind` for the core group, `group/Kind` otherwise.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (group, kind) = s.rsplit_once('/').unwrap_or(("", s));
        if kind.is_empty()
            || !kind.chars().all(|c| c.is_ascii_alphanumeric())
            || group.contains('/')
        {
            return Err(InvalidGvk(s.to_owned()));
        }
        Ok(Self::new(group, kind))
    }
}

/// A kind at one version: what a manifest names (`apiVersion` + `kind`), what
/// discovery resolves, and what the prune inventory records.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gvk {
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl Gvk {
    pub fn new(
        group: impl Into<String>,
        version: impl Into<String>,
        kind: impl Into<String>,
    ) -> Self {
        Self { group: group.into(), version: version.into(), kind: kind.into() }
    }

    /// From a manifest's `apiVersion` (`v1`, `apps/v1`) and `kind`.
    pub fn from_api_version(api_version: &str, kind: &str) -> Option<Self> {
        let (group, version) = match api_version.split('/').collect::<Vec<_>>()[..] {
            [version] if !version.is_empty() => ("", version),
            [group, version] if !group.is_empty() && !version.is_empty() => (group, version),
            _ => return None,
        };
        Some(Self::new(group, version, kind))
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn group_kind(&self) -> GroupKind {
        GroupKind::new(self.group.clone(), self.kind.clone())
    }
}

/// `v1/ConfigMap`, `apps/v1/Deployment`: the form `status.managedKinds` holds.
impl std::fmt::Display for Gvk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.api_version(), self.kind)
    }
}

impl std::str::FromStr for Gvk {
    type Err = InvalidGvk;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (api_version, kind) = s.rsplit_once('/').ok_or_else(|| InvalidGvk(s.to_owned()))?;
        if kind.is_empty() {
            return Err(InvalidGvk(s.to_owned()));
        }
        Self::from_api_version(api_version, kind).ok_or_else(|| InvalidGvk(s.to_owned()))
    }
}

/// A kind that is not `Kind`/`group/Kind` (or `apiVersion/Kind` for a [`Gvk`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid kind")]
pub struct InvalidGvk(pub String);

/// Whether objects of a kind live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// Identity of an object in the cluster: the same object whatever the apiVersion.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group_kind: GroupKind,
    pub namespace: Option<String>,
    pub name: String,
}

/// What discovery knows about a kind: its scope, how to address it at the
/// version the API server prefers, and every version it serves.
#[derive(Debug, Clone)]
pub struct KindInfo {
    pub scope: Scope,
    /// At the preferred version: what watches and lookups use, so every
    /// DBQR shares one watch per kind whatever version it renders.
    pub resource: ApiResource,
    pub versions: Vec<String>,
}

/// Every kind the API server serves, and the API groups it could not
/// describe (an aggregated API whose backend is down).
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    pub kinds: HashMap<GroupKind, KindInfo>,
    pub unavailable: std::collections::BTreeSet<String>,
}

impl Discovered {
    pub fn get(&self, group_kind: &GroupKind) -> Option<&KindInfo> {
        self.kinds.get(group_kind)
    }

    /// Whether discovery confirms that `group_kind` is not served: its
    /// group answered and does not list it.
    pub fn confirms_absent(&self, group_kind: &GroupKind) -> bool {
        !self.kinds.contains_key(group_kind) && !self.unavailable.contains(&group_kind.group)
    }
}

/// Discovery, one request per group version (as kube's `Discovery::run`
/// makes), but a group version that fails (an aggregated API whose backend
/// is down) marks its group unavailable instead of failing the whole run.
pub async fn discover(client: &Client) -> Result<Discovered, KubeError> {
    use kube::core::GroupVersion;
    let core = client.list_core_api_versions().await?;
    let groups = client.list_api_groups().await?;
    // (group, version, whether it is the group's preferred version)
    let mut versions: Vec<(String, String, bool)> =
        core.versions.iter().map(|v| (String::new(), v.clone(), v == "v1")).collect();
    for group in groups.groups {
        let preferred = group.preferred_version.map(|p| p.version);
        for v in group.versions {
            let is_preferred = preferred.as_deref() == Some(v.version.as_str());
            versions.push((group.name.clone(), v.version, is_preferred));
        }
    }
    let answers = futures_util::future::join_all(versions.iter().map(|(group, version, _)| {
        let gv = GroupVersion::gv(group, version);
        async move { kube::discovery::pinned_group(client, &gv).await }
    }))
    .await;
    let mut discovered = Discovered::default();
    for ((group, version, preferred), answer) in versions.iter().zip(answers) {
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                let reason = KubeError::from(error).reason();
                tracing::debug!(%group, %version, reason, "API group version unavailable");
                discovered.unavailable.insert(group.clone());
                continue;
            }
        };
        for (resource, caps) in answer.versioned_resources(version) {
            let scope = match caps.scope {
                DiscoveryScope::Cluster => Scope::Cluster,
                DiscoveryScope::Namespaced => Scope::Namespaced,
            };
            let key = GroupKind::new(resource.group.clone(), resource.kind.clone());
            let info = discovered.kinds.entry(key).or_insert_with(|| KindInfo {
                scope,
                resource: resource.clone(),
                versions: Vec::new(),
            });
            if *preferred {
                info.resource = resource;
            }
            info.versions.push(version.clone());
        }
    }
    Ok(discovered)
}

/// The resource for an exact group/version/kind (the version a manifest names).
pub fn resource_for(gvk: &Gvk, known: &KindInfo) -> ApiResource {
    let mut resource = known.resource.clone();
    resource.version = gvk.version.clone();
    resource.api_version = gvk.api_version();
    resource
}

/// The resource of `gvk` if the API server serves its kind at that version.
pub fn resolve(kinds: &Discovered, gvk: &Gvk) -> Result<ApiResource, KubeError> {
    let info = kinds
        .get(&gvk.group_kind())
        .ok_or_else(|| KubeError::UnknownKind { kind: gvk.to_string() })?;
    if !info.versions.contains(&gvk.version) {
        return Err(KubeError::VersionNotServed {
            kind: gvk.to_string(),
            served: info.versions.join(", "),
        });
    }
    Ok(resource_for(gvk, info))
}
