//! The actor shells of the running operator. They hold state, timers and the
//! Kubernetes client and call the plain domain code of the `dbqo` crate
//! (`reconcile`, `render`, `db`); this package is the only one that depends
//! on actix.
//!
//! - [`supervisor::Supervisor`] watches DBQRs and keeps one actor per DBQR.
//! - [`query::QueryActor`] owns one DBQR's pool and timers and runs its passes.
//! - [`provision::ProvisionSupervisor`] watches `DatabaseServer`s and
//!   `Database`s and keeps one [`provision::database::DatabaseActor`] per `Database`.
//! - [`writer::KubeWriter`] is the one place that talks to the API server.
#![forbid(unsafe_code)]

mod children;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod provision;
pub mod query;
pub mod stopping;
pub mod supervisor;
pub mod writer;

use std::{
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use actix::Actor;
use futures_util::StreamExt;
use kube::{
    api::Api,
    runtime::{watcher, WatchStreamExt},
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use dbqo::api::DatabaseQueryResource;
use dbqo::cli::RunArgs;
use dbqo::settings::{Operations, Settings};

/// Why the operator cannot go on; the process exits non-zero so that
/// Kubernetes restarts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    #[error("the DBQR watch ended")]
    WatchEnded,
    #[error("a task panicked at {0}")]
    Panicked(String),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(String),
    #[error("cannot serve {what} on {addr}: {error}")]
    Http { what: &'static str, addr: std::net::SocketAddr, error: String },
    #[error("leadership lost: the lease could not be renewed in time")]
    LeadershipLost,
    #[error("a second signal during the drain: exiting without waiting for work under way")]
    Interrupted,
}

/// `db-query-operator run`: runs the operator until SIGTERM or SIGINT (exit
/// code 0 once drained) or until something fatal happens (exit code 1).
pub fn run(args: RunArgs) -> i32 {
    let (settings, operations) = match args.settings().and_then(|s| Ok((s, args.operations()?))) {
        Ok(both) => both,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let (fatal, fatal_rx) = unbounded_channel();
    report_panics(fatal.clone());
    match actix::System::new().block_on(operate(settings, operations, fatal, fatal_rx)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "the operator stops");
            eprintln!("error: {e}");
            1
        }
    }
}

/// A panic anywhere (an actor's handler, a spawned future) is a bug: the
/// task that hit it is gone, so the process must not carry on without it.
pub fn report_panics(fatal: UnboundedSender<Fatal>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let place =
            info.location().map_or_else(|| "an unknown place".to_owned(), ToString::to_string);
        let _ = fatal.send(Fatal::Panicked(place));
    }));
}

/// Starts the writer and the supervisors and runs until a signal (then
/// drains, see [`drain`]) or a fatal event.
async fn operate(
    settings: Settings,
    operations: Operations,
    fatal: UnboundedSender<Fatal>,
    mut fatal_rx: UnboundedReceiver<Fatal>,
) -> Result<(), Fatal> {
    let (config, client) = kube_client().await?;
    let readiness = Arc::new(http::Readiness::default());
    let control = start_control(&operations, &readiness).await?;
    let mut signals = Signals::install().map_err(|e| Fatal::Signals(e.to_string()))?;

    // With leader election nothing starts before this replica holds the Lease.
    let mut keeper = None;
    if let Some(election) = &operations.leader_election {
        let mut elector = leader::Elector::new(client.clone(), election.clone());
        tokio::select! {
            () = elector.acquire(&readiness) => {}
            () = signals.next() => return Ok(()),
        }
        keeper = Some(control.spawn(elector.keep(fatal.clone())));
    } else {
        readiness.leading.store(true, Ordering::SeqCst);
        metrics::global().leading();
    }

    let settings = Arc::new(settings);
    let running = Running::start(&client, config, &settings, &readiness, fatal);
    tokio::select! {
        () = signals.next() => {}
        Some(fatal) = fatal_rx.recv() => return Err(fatal),
    }
    readiness.draining.store(true, Ordering::SeqCst);
    let drained = tokio::select! {
        drained = running.drain(settings.drain) => drained,
        () = signals.next() => return Err(Fatal::Interrupted),
    };
    // Nothing writes any more: the next replica may take over at once. After
    // a drain that timed out a request may still land, so the Lease is left
    // to expire instead.
    if let (Some(election), true) = (&operations.leader_election, drained) {
        // The renewals stop first: one after the release would take the
        // released Lease straight back (a free Lease is anyone's), and the
        // next replica would wait for it to expire.
        if let Some(keeper) = keeper {
            keeper.abort();
            let _ = keeper.await;
        }
        leader::release(client, election).await;
    }
    Ok(())
}

/// The Kubernetes client, from the kubeconfig or the pod's service account.
async fn kube_client() -> Result<(kube::Config, kube::Client), Fatal> {
    let mut config = kube::Config::infer().await.map_err(|e| Fatal::Client(e.to_string()))?;
    // kube's default retry repeats a 503 up to 15 times with a backoff that
    // outgrows the API timeout: one aggregated API whose backend is down
    // stalled discovery, and every pass waiting for it, for the whole
    // timeout. Every caller here has a backoff of its own, so a failure is
    // reported at once instead.
    config.default_retry = false;
    let client =
        kube::Client::try_from(config.clone()).map_err(|e| Fatal::Client(e.to_string()))?;
    Ok((config, client))
}

/// Starts the HTTP endpoints on the control runtime: the probes, /metrics
/// and lease renewal run on a thread of their own, so a long pass on the
/// actors' thread (thousands of rows to render) does not fail the liveness
/// probe or let the Lease lapse while its writes are still going out.
async fn start_control(
    operations: &Operations,
    readiness: &Arc<http::Readiness>,
) -> Result<&'static tokio::runtime::Handle, Fatal> {
    let control = control_runtime().map_err(|e| Fatal::Client(e.to_string()))?;
    let (operations, readiness) = (operations.clone(), readiness.clone());
    control
        .spawn(async move { serve_http(&operations, &readiness).await })
        .await
        .map_err(|e| Fatal::Client(e.to_string()))??;
    Ok(control)
}

/// The actors of a replica that leads: the writer and both supervisors.
struct Running {
    writer: writer::WriterHandle,
    provisioning: actix::Addr<provision::ProvisionSupervisor>,
    supervisor: actix::Addr<supervisor::Supervisor>,
}

impl Running {
    fn start(
        client: &kube::Client,
        config: kube::Config,
        settings: &Arc<Settings>,
        readiness: &http::Readiness,
        fatal: UnboundedSender<Fatal>,
    ) -> Self {
        let connections = dbqo::db::Connections::new(settings.connections_per_server);
        metrics::global().watch_budget(&connections.budget);
        let writer = writer::KubeWriter::start(
            client.clone(),
            config,
            settings.object_namespace().map(str::to_owned),
            settings.concurrency,
            settings.api_timeout,
            settings.writer_queue,
        );
        let api: Api<DatabaseQueryResource> = match &settings.watch_namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let mut watch = watcher::Config::default();
        if let Some(selector) = &settings.label_selector {
            watch = watch.labels(selector);
        }
        let events = watcher(api, watch).default_backoff().boxed_local();
        let shared = (settings.clone(), connections);
        let provisioning =
            provision::ProvisionSupervisor::new(client.clone(), writer.clone(), shared.clone())
                .start();
        let supervisor = supervisor::Supervisor::new(
            events,
            writer.clone(),
            shared,
            readiness.synced.clone(),
            fatal,
        )
        .start();
        Self { writer, provisioning, supervisor }
    }

    /// The drain, the same for both sides: every actor finishes the work
    /// under way and stops, then the writer's requests finish; all within
    /// `deadline`. Whether it finished in time.
    async fn drain(self, deadline: std::time::Duration) -> bool {
        let started = Instant::now();
        tracing::info!(drain = ?deadline, "shutting down");
        let drain = async {
            let _ = futures_util::future::join(
                self.provisioning.send(stopping::Shutdown),
                self.supervisor.send(stopping::Shutdown),
            )
            .await;
            self.writer.drain().await;
        };
        match tokio::time::timeout(deadline, drain).await {
            Ok(()) => {
                tracing::info!(took = ?started.elapsed(), "stopped");
                true
            }
            Err(_) => {
                tracing::warn!(drain = ?deadline, "drain deadline passed; exiting anyway");
                false
            }
        }
    }
}

/// The runtime of what must answer whatever the actors are doing: one
/// worker thread, alive for the rest of the process (a runtime may not be
/// dropped from inside another).
fn control_runtime() -> std::io::Result<&'static tokio::runtime::Handle> {
    static CONTROL: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(runtime) = CONTROL.get() {
        return Ok(runtime.handle());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("dbqo-control")
        .enable_all()
        .build()?;
    Ok(CONTROL.get_or_init(|| runtime).handle())
}

/// Starts the HTTP endpoints: one listener when metrics and probes share an
/// address, two otherwise. Logs each address bound (a `:0` port included).
async fn serve_http(
    operations: &Operations,
    readiness: &Arc<http::Readiness>,
) -> Result<(), Fatal> {
    let health = Some(readiness.clone());
    let listeners = match (operations.metrics, operations.health) {
        // The same fixed address: one listener (`:0` asks for two ports).
        (Some(m), Some(h)) if m == h && m.port() != 0 => {
            vec![(m, "metrics and probes", http::Routes { metrics: true, health })]
        }
        (metrics, probes) => metrics
            .map(|m| (m, "metrics", http::Routes { metrics: true, health: None }))
            .into_iter()
            .chain(probes.map(|h| (h, "probes", http::Routes { metrics: false, health })))
            .collect(),
    };
    for (addr, what, routes) in listeners {
        let bound = http::serve(addr, routes).await.map_err(|e| Fatal::Http {
            what,
            addr,
            error: e.to_string(),
        })?;
        tracing::info!(%bound, what, "serving HTTP");
    }
    Ok(())
}

/// SIGTERM and SIGINT, as they come: the first starts the drain, a second
/// ends it.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How long to wait for something that should be quick.
    const TEST_DEADLINE: Duration = Duration::from_secs(5);

    fn offline_writer() -> writer::WriterHandle {
        // Nothing listens there: requests fail fast, which these tests do not mind.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config.clone()).unwrap();
        writer::KubeWriter::start(client, config, None, 1, Duration::from_secs(1), 8)
    }

    /// The settings of `run` without flags.
    fn settings() -> Settings {
        use clap::Parser;
        #[derive(Parser)]
        struct Run {
            #[command(flatten)]
            args: RunArgs,
        }
        Run::parse_from(["run"]).args.settings().unwrap()
    }

    #[test]
    fn the_end_of_the_dbqr_watch_is_fatal() {
        actix::System::new().block_on(async {
            let (fatal, mut fatal_rx) = unbounded_channel();
            let events = futures_util::stream::empty().boxed_local();
            let _supervisor = supervisor::Supervisor::new(
                events,
                offline_writer(),
                (Arc::new(settings()), dbqo::db::Connections::new(1)),
                Arc::default(),
                fatal,
            )
            .start();
            let got = tokio::time::timeout(TEST_DEADLINE, fatal_rx.recv()).await;
            assert_eq!(got.unwrap(), Some(Fatal::WatchEnded));
        });
    }

    /// A DBQR with the finalizer (so its actor starts at once) named `name`.
    fn dbqr(name: &str) -> DatabaseQueryResource {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "dbqo.dev/v1alpha1",
            "kind": "DatabaseQueryResource",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "generation": 1, "finalizers": [dbqo::api::FINALIZER]},
            "spec": {"pollInterval": "1h", "database": {"connectionSecretRef": {"name": "db"}},
                     "query": "SELECT 1 AS id", "template": "a: 1"},
        }))
        .unwrap()
    }

    fn query_actors() -> Option<f64> {
        let text = metrics::global().encode();
        text.lines()
            .find_map(|l| l.strip_prefix("dbqo_query_actors "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// A DBQR deleted while the watch was down has no Delete event: the
    /// list after the watch's restart does not hold it, and its actor stops.
    #[test]
    fn an_actor_of_a_dbqr_missing_from_a_re_list_stops() {
        use kube::runtime::watcher::Event;
        actix::System::new().block_on(async {
            let (fatal, _fatal_rx) = unbounded_channel();
            let events = futures_util::stream::iter(vec![
                Ok(Event::Init),
                Ok(Event::InitApply(dbqr("a"))),
                Ok(Event::InitApply(dbqr("b"))),
                Ok(Event::InitDone),
            ]);
            let (relist_tx, relist_rx) = tokio::sync::oneshot::channel::<()>();
            let relist = futures_util::stream::once(async move {
                let _ = relist_rx.await;
            })
            .flat_map(|()| {
                futures_util::stream::iter(vec![
                    Ok(Event::Init),
                    Ok(Event::InitApply(dbqr("a"))),
                    Ok(Event::InitDone),
                ])
            });
            let events = events.chain(relist).chain(futures_util::stream::pending()).boxed_local();
            let _supervisor = supervisor::Supervisor::new(
                events,
                offline_writer(),
                (Arc::new(settings()), dbqo::db::Connections::new(1)),
                Arc::default(),
                fatal,
            )
            .start();
            let count = |want: f64| async move {
                tokio::time::timeout(TEST_DEADLINE, async {
                    while query_actors() != Some(want) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
                .is_ok()
            };
            assert!(count(2.0).await, "both actors run: {:?}", query_actors());
            relist_tx.send(()).unwrap();
            assert!(count(1.0).await, "b's actor stopped: {:?}", query_actors());
        });
    }

    #[test]
    fn a_panicking_actor_is_fatal() {
        struct Crashes;
        impl Actor for Crashes {
            type Context = actix::Context<Self>;
            fn started(&mut self, _: &mut Self::Context) {
                panic!("a bug");
            }
        }
        actix::System::new().block_on(async {
            let (fatal, mut fatal_rx) = unbounded_channel();
            report_panics(fatal);
            Crashes.start();
            let got = tokio::time::timeout(TEST_DEADLINE, fatal_rx.recv()).await;
            let _ = std::panic::take_hook();
            assert!(
                matches!(got, Ok(Some(Fatal::Panicked(place))) if place.contains("lib.rs")),
                "the panic was reported"
            );
        });
    }
}
