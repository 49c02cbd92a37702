//! A `DatabaseServer`'s check: connect with the admin Secret, read the
//! version and the admin's rights, and write the status when it changed.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{api::ApiResource, Resource, ResourceExt};

use crate::writer::WriterHandle;
use dbqo::api::server::DatabaseServer;
use dbqo::kube_api::DbqrEvent;
use dbqo::provision::{
    connect::{admin_conninfo, open},
    error::ServerError,
    password,
    session::{ServerFacts, Session},
    status::{next_server_status, Verdict},
};
use dbqo::reconcile::Writer;
use dbqo::settings::Settings;

async fn facts(
    server: &DatabaseServer,
    writer: &WriterHandle,
    settings: &Settings,
) -> Result<ServerFacts, ServerError> {
    let reference = &server.spec.connection_secret_ref;
    let ns = reference
        .namespace
        .clone()
        .or_else(|| server.namespace())
        .unwrap_or_default();
    let label = format!("{ns}/{}", reference.name);
    let admin = writer
        .read_secret(&ns, &reference.name)
        .await
        .map_err(|e| ServerError::Unreachable(e.to_string()))?
        .ok_or_else(|| ServerError::SecretNotFound(label.clone()))?;
    let info = admin_conninfo(server.spec.engine, &label, &admin.data, reference)?;
    let mut session = open(
        server.spec.engine,
        info,
        &settings.budget,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .await?;
    session.facts().await
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
