//! What every controller of the operator does the same way, whatever it
//! reconciles (DBQRs, `Database`s, `DatabaseServer`s): conditions with a
//! typed status and an Event when a reason changes ([`condition`]), the
//! finalizer added and removed with a retry on conflict ([`finalizer`]),
//! owner references from kube's own helper ([`owner`]).
//!
//! A new condition goes through [`condition::Verdict`]; a new Kubernetes call
//! is a method of [`crate::kube_api::Cluster`] with its body in
//! [`crate::kube_api`].

pub mod condition;
pub mod finalizer;
pub mod owner;
