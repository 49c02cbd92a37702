//! One connection to a database server as the admin, whatever the engine:
//! the reads provisioning decides from and the statements it runs.
#![allow(async_fn_in_trait)] // awaited in place on the actor runtime, never boxed or sent

use super::adopt::Found;
use super::error::ServerError;
use super::request::Request;

/// What a server says about itself and its admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub version: String,
    /// Rights the admin needs and lacks, e.g. `CREATEROLE`, `GRANT OPTION`.
    pub missing_rights: Vec<String>,
}

/// A `Database`'s objects on the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerObjects {
    pub database: Found,
    pub user: Found,
    /// The privileges last granted, as recorded (`None`: never granted).
    pub privileges: Option<String>,
}

/// Who claims an object in the ownership records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    pub uid: String,
    /// `namespace/name` of the `Database`, for people reading the records.
    pub name: String,
}

pub trait Session {
    /// The server's version and the admin's missing rights.
    async fn facts(&mut self) -> Result<ServerFacts, ServerError>;
    /// Whether the database and the user exist and whom the records name.
    async fn observe(&mut self, request: &Request) -> Result<ServerObjects, ServerError>;
    /// Records `claimant` as owner of the database and the user where no
    /// owner is recorded yet; returns the state afterwards (another
    /// `Database` may have claimed first).
    async fn claim(
        &mut self,
        request: &Request,
        claimant: &Claimant,
    ) -> Result<ServerObjects, ServerError>;
    /// Runs statements as the admin in its own database.
    async fn execute(&mut self, statements: &[String]) -> Result<(), ServerError>;
    /// Runs statements as the admin inside `request`'s database
    /// (PostgreSQL: schema and table rights, extensions).
    async fn execute_inside(
        &mut self,
        request: &Request,
        statements: &[String],
    ) -> Result<(), ServerError>;
    /// Extensions of `request.extensions` not yet in the database.
    async fn missing_extensions(&mut self, request: &Request) -> Result<Vec<String>, ServerError>;
    /// Whether the user holds on its database exactly what the spec asks
    /// (or owns it, when it asks to), by the server's catalogs.
    async fn privileges_as_asked(&mut self, request: &Request) -> Result<bool, ServerError>;
    /// Makes the user's privileges on its database the spec's; `replace`:
    /// an earlier set may have been granted.
    async fn grant(&mut self, request: &Request, replace: bool) -> Result<(), ServerError>;
    /// Records the privileges now granted.
    async fn record_privileges(&mut self, request: &Request, text: &str)
        -> Result<(), ServerError>;
    /// Drops the ownership records of the database and the user that name `uid`.
    async fn forget(&mut self, request: &Request, uid: &str) -> Result<(), ServerError>;
}
