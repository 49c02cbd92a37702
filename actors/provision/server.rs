//! A `DatabaseServer`'s check: connect with the admin Secret, read the
//! version and the admin's rights, and write the status when it changed.

use std::time::Duration;

/// How long a session waits for a slot of the server's connection budget.
const BUDGET_WAIT: Duration = Duration::from_secs(30);
/// How long connecting to a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::ApiResource, Resource, ResourceExt};

use crate::writer::WriterHandle;
use dbqo::api::server::{DatabaseServer, Engine};
use dbqo::db::ConnInfo;
use dbqo::kube_api::DbqrEvent;
use dbqo::provision::{
    connect::{admin_conninfo, open, AnySession},
    error::ServerError,
    password,
    session::{ServerFacts, Session},
    status::{next_server_status, Verdict},
};
use dbqo::reconcile::Writer;
use dbqo::settings::Settings;

/// Where `server`'s admin Secret lives (namespace, name).
pub(super) fn admin_secret(server: &DatabaseServer) -> (String, String) {
    let reference = &server.spec.connection_secret_ref;
    let namespace = reference
        .namespace
        .clone()
        .or_else(|| server.namespace())
        .unwrap_or_default();
    (namespace, reference.name.clone())
}

/// `server`'s admin connection, from its Secret (read through the writer's
/// watch of it: no API request once watched). A Secret of another namespace
/// than the server's is refused unless the operator allows cross-namespace
/// Secrets, as for DBQRs: whoever may create a `DatabaseServer` in one
/// namespace may not use another namespace's admin Secret through it.
pub(super) async fn admin_connection(
    server: &DatabaseServer,
    writer: &WriterHandle,
    settings: &Settings,
) -> Result<ConnInfo, ServerError> {
    let (namespace, name) = admin_secret(server);
    if Some(&namespace) != server.namespace().as_ref() && !settings.allow_cross_namespace_secrets {
        return Err(ServerError::SecretNotAllowed(namespace));
    }
    let label = format!("{namespace}/{name}");
    let admin = writer
        .read_secret(&namespace, &name)
        .await?
        .ok_or_else(|| ServerError::SecretNotFound(label.clone()))?;
    Ok(admin_conninfo(
        server.spec.engine,
        &label,
        &admin.data,
        &server.spec.connection_secret_ref,
    )?)
}

/// An admin session on `server`, within the connection budget.
pub(super) async fn admin_session(
    server: &DatabaseServer,
    writer: &WriterHandle,
    settings: &Settings,
) -> Result<AnySession, ServerError> {
    let info = admin_connection(server, writer, settings).await?;
    session(server.spec.engine, info, settings).await
}

/// A session with the admin connection `info`, within the connection budget.
pub(super) async fn session(
    engine: Engine,
    info: ConnInfo,
    settings: &Settings,
) -> Result<AnySession, ServerError> {
    open(engine, info, &settings.budget, BUDGET_WAIT, CONNECT_TIMEOUT).await
}

async fn facts(
    server: &DatabaseServer,
    writer: &WriterHandle,
    settings: &Settings,
) -> Result<ServerFacts, ServerError> {
    admin_session(server, writer, settings).await?.facts().await
}

pub async fn check(server: &DatabaseServer, writer: &WriterHandle, settings: &Settings) {
    let result = facts(server, writer, settings).await;
    let verdict = match (&result, password::check(&server.spec.password_policy)) {
        (_, Err(e)) => Verdict::failed("ServerPolicyInvalid", e.to_string()),
        (Ok(f), Ok(())) if !f.missing_rights.is_empty() => Verdict::failed(
            "InsufficientPrivileges",
            format!("the admin lacks {}", f.missing_rights.join(", ")),
        ),
        (Ok(_), Ok(())) => Verdict::ready("reachable; the admin has the rights it needs"),
        (Err(e), Ok(())) => Verdict::failed(e.reason(), e.to_string()),
    };
    let facts = result
        .as_ref()
        .ok()
        .map(|f| (f.version.as_str(), f.missing_rights.as_slice()));
    let Some(next) = next_server_status(
        server.status.as_ref(),
        server.metadata.generation,
        facts,
        &verdict,
        Time(k8s_openapi::jiff::Timestamp::now()),
    ) else {
        return;
    };
    let before = server
        .status
        .as_ref()
        .and_then(|s| s.conditions.first())
        .map(|c| c.reason.clone());
    if before.as_deref() != Some(verdict.reason) {
        let event = DbqrEvent {
            warning: !verdict.ready,
            reason: verdict.reason,
            message: verdict.message.clone(),
        };
        let _ = writer.publish_event(&server.object_ref(&()), &event).await;
    }
    let body = serde_json::to_value(&next).unwrap_or_default();
    if let Err(error) = writer
        .patch_status(
            &ApiResource::erase::<DatabaseServer>(&()),
            &server.namespace().unwrap_or_default(),
            &server.name_any(),
            &body,
        )
        .await
    {
        tracing::debug!(%error, "server status not written; retried with the next check");
    }
}
