//! Events: what happened to one of the operator's objects, as a reason
//! and a message for `kubectl describe`.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;

use super::KubeError;

/// An Event to publish about one of the operator's objects (a DBQR, a
/// `Database`, a `DatabaseServer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Publishes an Event about the object `regarding`.
pub async fn publish_event(
    client: &Client,
    reporter: &Reporter,
    regarding: &ObjectReference,
    event: &NewEvent,
) -> Result<(), KubeError> {
    let event = Event {
        type_: if event.warning { EventType::Warning } else { EventType::Normal },
        reason: event.reason.to_owned(),
        note: Some(event.message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    Recorder::new(client.clone(), reporter.clone()).publish(&event, regarding).await?;
    Ok(())
}
