//! The admin side of a `DatabaseServer`: where its admin Secret is, the
//! connection it describes (with the namespace rule), and sessions opened
//! with it. Sessions come from a [`Sessions`] so the passes can be run
//! against an in-memory server in unit tests.
#![allow(async_fn_in_trait)] // awaited in place on the actor runtime, never boxed or sent

use std::time::Duration;

use kube::ResourceExt;

use super::connect::{admin_conninfo, open, AnySession};
use super::error::ServerError;
use super::session::Session;
use crate::api::server::{DatabaseServer, Engine};
use crate::db::{ConnInfo, ConnectionBudget};
use crate::kube_api::Cluster;

/// How long a session waits for a slot of the server's connection budget.
const BUDGET_WAIT: Duration = Duration::from_secs(30);
/// How long connecting to a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where admin sessions come from.
pub trait Sessions {
    type Session: Session;
    /// A session as the admin `info` describes, on a server of `engine`.
    async fn open(&self, engine: Engine, info: ConnInfo) -> Result<Self::Session, ServerError>;
}

/// Real sessions, within the operator's connection budget.
pub struct BudgetedSessions<'a>(pub &'a ConnectionBudget);

impl Sessions for BudgetedSessions<'_> {
    type Session = AnySession;

    async fn open(&self, engine: Engine, info: ConnInfo) -> Result<AnySession, ServerError> {
        open(engine, info, self.0, BUDGET_WAIT, CONNECT_TIMEOUT).await
    }
}

/// Where `server`'s admin Secret lives (namespace, name).
pub fn admin_secret(server: &DatabaseServer) -> (String, String) {
    let reference = &server.spec.connection_secret_ref;
    let namespace = reference.namespace.clone().or_else(|| server.namespace()).unwrap_or_default();
    (namespace, reference.name.clone())
}

/// `server`'s admin connection, from its Secret (read through the writer's
/// watch of it: no API request once watched). A Secret of another namespace
/// than the server's is refused unless the operator allows cross-namespace
/// Secrets, as for DBQRs: whoever may create a `DatabaseServer` in one
/// namespace may not use another namespace's admin Secret through it.
pub async fn admin_connection<W: Cluster>(
    server: &DatabaseServer,
    writer: &W,
    allow_cross_namespace_secrets: bool,
) -> Result<ConnInfo, ServerError> {
    let (namespace, name) = admin_secret(server);
    if Some(&namespace) != server.namespace().as_ref() && !allow_cross_namespace_secrets {
        return Err(ServerError::SecretNotAllowed(namespace));
    }
    let label = format!("{namespace}/{name}");
    let admin = writer
        .read_secret(&namespace, &name)
        .await?
        .ok_or_else(|| ServerError::SecretNotFound(label.clone()))?;
    Ok(admin_conninfo(server.spec.engine, &label, &admin.data, &server.spec.connection_secret_ref)?)
}
