//! db-query-operator: rows of a SQL database become Kubernetes objects.
//!
//! The domain lives here as plain Rust: the API types ([`api`]), SQL text
//! handling ([`sql`]), PostgreSQL access and row decoding ([`db`]), rendering
//! with validation ([`render`]) and the reconcile pass ([`reconcile`]). The
//! actor shells that schedule it are mounted from `actors/` as [`actors`],
//! the only module that uses the actor framework.
#![forbid(unsafe_code)]

#[path = "../actors/mod.rs"]
pub mod actors;
pub mod api;
pub mod cli;
pub mod db;
pub mod kube_api;
pub mod reconcile;
pub mod render;
pub mod settings;
pub mod sql;
pub mod writeback;
