//! The actor shells of the running operator. They hold state, timers and the
//! Kubernetes client and call the plain domain code (`reconcile`, `render`,
//! `db`); actix stays inside this folder.
//!
//! - [`supervisor::Supervisor`] watches DBQRs and keeps one actor per DBQR.
//! - [`query::QueryActor`] owns one DBQR's pool and timers and runs its passes.
//! - [`writer::KubeWriter`] is the one place that talks to the API server.

pub mod query;
pub mod supervisor;
pub mod writer;

use std::sync::{atomic::AtomicBool, Arc};

use actix::Actor;

use crate::settings::Settings;

/// Starts the writer and the supervisor on the current actix system and runs
/// until SIGTERM or SIGINT; then stops the actors (closing their pools) and
/// gives in-flight writes `drain` to finish.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    drain: std::time::Duration,
) -> std::io::Result<()> {
    let settings = Arc::new(settings);
    let writer = writer::KubeWriter::new(
        client.clone(),
        settings.concurrency,
        settings.api_timeout,
        settings.mailbox,
    )
    .start();
    let ready = Arc::new(AtomicBool::new(false));
    let supervisor = supervisor::Supervisor::new(
        client,
        writer::WriterHandle(writer.clone()),
        settings,
        ready,
    )
    .start();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    drop(supervisor);
    // The writer finishes what is queued while the timers are gone.
    actix_rt::time::sleep(drain.min(std::time::Duration::from_secs(1))).await;
    drop(writer);
    Ok(())
}

/// Runs the operator on a new actix system until a signal stops it.
pub fn run_system(settings: Settings, drain: std::time::Duration) -> Result<(), String> {
    actix::System::new().block_on(async move {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
        run(client, settings, drain)
            .await
            .map_err(|e| format!("cannot install signal handlers: {e}"))
    })
}
