//! Actor shells of db-query-operator (supervisor, per-DBQR query actors, the
//! shared Kubernetes writer). They hold state and timers and call the plain
//! domain code of the `db-query-operator` crate through small traits, so no
//! actix type leaks into the domain.
//!
//! The actors arrive with the operator loop; this crate is the place for them.
#![forbid(unsafe_code)]
