//! One reconcile pass of a DBQR and what follows from it, in the order a row
//! travels: [`run`] (connect, query) -> [`pass`] (render, gather) -> [`plan`] (apply /
//! skip / refuse / prune, pure, with [`compare`] deciding what is in place) ->
//! the [`Cluster`], a row's later waves waiting for [`readiness`]; then [`status`]
//! (conditions, Events), [`writeback`] (status SQL), [`change`] (timestamp
//! probe) and [`cleanup`] (deletion policies). Plain async Rust over the
//! [`Cluster`] trait; the actors only schedule it. A notification that names
//! the keys it changed runs a [`keyed`] pass of just those rows.

pub mod change;
pub mod cleanup;
pub mod compare;
pub mod error;
pub mod guard;
mod keyed;
pub mod labels;
pub mod pass;
pub mod plan;
pub mod readiness;
pub mod run;
pub mod schedule;
mod state;
pub mod status;
pub mod writeback;

#[cfg(test)]
mod tests;

pub use crate::kube_api::Cluster;
pub use error::{ObjectError, PassError, PruneFailure, RowFailure};
pub use labels::Owner;
pub use pass::{
    needs_no_repair, reconcile_rows, repair, Connection, KeyedPass, PassConfig, PassReport, Repair,
    Row,
};
pub use run::run_pass;
pub use schedule::PassScope;
pub use state::PassState;

/// The kinds in a DBQR status's `managedKinds` (the prune inventory earlier
/// passes wrote); an entry that does not parse is skipped.
pub fn managed_kinds(
    status: Option<&crate::api::DatabaseQueryResourceStatus>,
) -> std::collections::BTreeSet<crate::kube_api::Gvk> {
    status.iter().flat_map(|s| &s.managed_kinds).filter_map(|k| k.parse().ok()).collect()
}
