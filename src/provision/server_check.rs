//! A `DatabaseServer`'s check: connect with the admin Secret, read the
//! version and the admin's rights, and write the status when it changed
//! (an Event when its reason is new).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::ApiResource, Resource, ResourceExt};

use super::admin::{admin_connection, Sessions};
use super::error::ServerError;
use super::password;
use super::session::{ServerFacts, Session};
use super::status::{next_server_status, Verdict, READY};
use crate::api::server::DatabaseServer;
use crate::controller::condition::{self, Status};
use crate::kube_api::Cluster;

async fn facts<W: Cluster, S: Sessions>(
    server: &DatabaseServer,
    writer: &W,
    sessions: &S,
    allow_cross_namespace_secrets: bool,
) -> Result<ServerFacts, ServerError> {
    let info = admin_connection(server, writer, allow_cross_namespace_secrets).await?;
    sessions.open(server.spec.engine, info).await?.facts().await
}

/// What the check comes to.
fn verdict(server: &DatabaseServer, facts: &Result<ServerFacts, ServerError>) -> Verdict {
    match (facts, password::check(&server.spec.password_policy)) {
        (_, Err(e)) => Verdict::failed(crate::reason::SERVER_POLICY_INVALID, e.to_string()),
        (Ok(f), Ok(())) if !f.missing_rights.is_empty() => Verdict::failed(
            crate::reason::INSUFFICIENT_PRIVILEGES,
            format!("the admin lacks {}", f.missing_rights.join(", ")),
        ),
        (Ok(_), Ok(())) => Verdict::ready("reachable; the admin has the rights it needs"),
        (Err(e), Ok(())) => Verdict::failed(e.reason(), e.to_string()),
    }
}

/// Checks `server` and writes its status if it changed. A failed write is
/// left to the next check.
pub async fn check_server<W: Cluster, S: Sessions>(
    server: &DatabaseServer,
    writer: &W,
    sessions: &S,
    allow_cross_namespace_secrets: bool,
    now: Time,
) {
    let result = facts(server, writer, sessions, allow_cross_namespace_secrets).await;
    let verdict = verdict(server, &result);
    let facts = result.as_ref().ok().map(|f| (f.version.as_str(), f.missing_rights.as_slice()));
    let before = server.status.as_ref();
    let Some(next) = next_server_status(before, server.metadata.generation, facts, &verdict, now)
    else {
        return;
    };
    let before = before.and_then(|s| condition::find(&s.conditions, READY));
    let message = verdict.message.clone();
    if let Some(event) = condition::event_on_new_reason(before, &verdict, Status::False, message) {
        let _ = writer.publish_event(&server.object_ref(&()), &event).await;
    }
    let body = serde_json::to_value(&next).unwrap_or_default();
    let resource = ApiResource::erase::<DatabaseServer>(&());
    let namespace = server.namespace().unwrap_or_default();
    if let Err(error) = writer.patch_status(&resource, &namespace, &server.name_any(), &body).await
    {
        tracing::debug!(%error, "server status not written; retried with the next check");
    }
}
