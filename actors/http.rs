//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz`
//! (the process serves) and `/readyz` (see [`Readiness`]). Three fixed
//! paths, served by hyper's HTTP/1 server on the runtime of the actors.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What `/readyz` answers from. A replica is ready when it does its job:
/// the leader (or the only replica) once its first list of DBQRs is done, a
/// replica waiting for the Lease once it can reach the API server (it is
/// ready to take over).
#[derive(Debug, Default)]
pub struct Readiness {
    /// The first list of DBQRs is done.
    pub synced: Arc<AtomicBool>,
    /// This replica runs the actors (always, without leader election).
    pub leading: AtomicBool,
    /// Waiting for the Lease, and the API server answers.
    pub candidate: AtomicBool,
    /// Shutting down: no new work is taken, so the replica is not ready.
    pub draining: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        if self.draining.load(Ordering::SeqCst) {
            false
        } else if self.leading.load(Ordering::SeqCst) {
            self.synced.load(Ordering::SeqCst)
        } else {
            self.candidate.load(Ordering::SeqCst)
        }
    }
}

/// Which paths one listener serves.
#[derive(Clone)]
pub struct Routes {
    pub metrics: bool,
    pub health: Option<Arc<Readiness>>,
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn answer(path: &str, routes: &Routes) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (path, &routes.health) {
        ("/metrics", _) if routes.metrics => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::global().encode(),
        ),
        ("/healthz", Some(_)) => respond(StatusCode::OK, TEXT, "ok\n".into()),
        ("/readyz", Some(readiness)) if readiness.ready() => {
            respond(StatusCode::OK, TEXT, "ok\n".into())
        }
        ("/readyz", Some(_)) => {
            respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into())
        }
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// Binds `addr` and serves `routes` on it; returns the address bound (so a
/// `:0` port can be found in the log).
pub async fn serve(addr: SocketAddr, routes: Routes) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = answer(request.uri().path(), &routes);
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(error) =
                    http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
                {
                    tracing::debug!(%error, "HTTP connection ended");
                }
            });
        }
    });
    Ok(bound)
}
