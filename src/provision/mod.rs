//! Databases for teams: what a `Database` asks of a `DatabaseServer`
//! ([`request`]), whether the operator may act on what it finds
//! ([`adopt`]), the SQL per engine ([`sql`]), the admin session per engine
//! ([`postgres`], [`mysql`] behind [`session::Session`]), one provisioning
//! pass ([`reconcile`]), generated passwords and the credentials Secret.
//! Free of actix: the actors in `actors/provision` drive it.
//!
//! A server backend that creates the server itself (a cloud API) would be
//! another way to produce the admin connection; a backup resource another
//! pass over the same [`session::Session`].

pub mod admin;
pub mod adopt;
pub mod connect;
pub mod credentials;
pub mod database_pass;
pub mod error;
pub mod mysql;
pub mod password;
pub mod postgres;
pub mod reconcile;
pub mod request;
pub mod secret_template;
pub mod server_check;
pub mod session;
pub mod sql;
pub mod status;

#[cfg(test)]
mod tests;
