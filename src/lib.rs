//! db-query-operator: rows of a SQL database become Kubernetes objects.
//!
//! The domain lives here, free of actix: the API types ([`api`]), SQL text
//! handling ([`sql`]), PostgreSQL access and row decoding ([`db`]), and
//! rendering with validation ([`render`]). The actor shells that drive it in
//! the running operator are in the `dbqo-actors` crate (`actors/`).
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
