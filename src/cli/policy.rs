//! Settings that decide which objects a DBQR may produce.

use std::collections::BTreeSet;

use clap::Args;

use crate::kube_api::{GroupKind, InvalidGvk};
use crate::render::{ObjectPolicy, DEFAULT_KINDS};

#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Kinds DBQRs may create, as `Kind` (core group) or `group/Kind`, comma-separated.
    /// Cluster-scoped kinds are allowed only when listed here.
    #[arg(long, env = "DBQO_ALLOWED_KINDS", value_delimiter = ',', default_values_t = DEFAULT_KINDS.iter().map(|k| k.to_string()).collect::<Vec<_>>())]
    pub allowed_kinds: Vec<String>,
    /// Namespaces other than a DBQR's own that its objects may go to, comma-separated; `*` for any.
    #[arg(long, env = "DBQO_ALLOWED_NAMESPACES", value_delimiter = ',')]
    pub allowed_namespaces: Vec<String>,
}

impl PolicyArgs {
    pub fn policy(&self) -> Result<ObjectPolicy, InvalidGvk> {
        let allowed_kinds = self
            .allowed_kinds
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(|k| k.parse::<GroupKind>())
            .collect::<Result<BTreeSet<_>, _>>()?;
        let extra_namespaces = if self.allowed_namespaces.iter().any(|n| n.trim() == "*") {
            None
        } else {
            Some(
                self.allowed_namespaces
                    .iter()
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect(),
            )
        };
        Ok(ObjectPolicy { allowed_kinds, extra_namespaces })
    }
}
