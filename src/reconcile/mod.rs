//! One reconcile pass of a DBQR and what follows from it: the apply/skip/prune
//! plan, the owner labels, status conditions and deletion clean-up. Plain
//! async Rust over the [`Writer`] trait; the actors only schedule it.

pub mod change;
pub mod cleanup;
pub mod labels;
pub mod pass;
pub mod status;
pub mod writer;

pub use labels::Owner;
pub use pass::{run_pass, PassConfig, PassReport, PassState, Problem};
pub use writer::Writer;
