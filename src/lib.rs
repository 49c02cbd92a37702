//! db-query-operator: rows of a SQL database become Kubernetes objects.
//!
//! The domain lives here as plain Rust: the API types ([`api`]), SQL text
//! handling ([`sql`]), PostgreSQL access and row decoding ([`db`]), rendering
//! with validation ([`render`]), the reconcile pass ([`reconcile`]) and
//! databases for teams ([`provision`]). The
//! actor shells that schedule it are the `db-query-operator` package in
//! `actors/`; this crate does not depend on the actor framework at all.
#![forbid(unsafe_code)]

pub mod api;
pub mod backoff;
pub mod backup;
pub mod cli;
pub mod controller;
pub mod db;
#[cfg(test)]
pub(crate) mod fake_cluster;
pub mod intern;
pub mod kube_api;
pub mod lease;
pub mod provision;
pub mod reason;
pub mod reconcile;
pub mod render;
pub mod settings;
pub mod sql;
pub mod status_template;
