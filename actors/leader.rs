//! Leader election: the Lease loop around [`dbqo::lease::decide`]. A
//! replica acquires the Lease before it starts any actor, renews it every
//! retry period, and reports [`Fatal::LeadershipLost`] once it could not
//! renew for the renew deadline (shorter than the lease duration), so it
//! stops writing before another replica may take over. On shutdown it
//! releases the Lease, so the next replica need not wait for it to expire.

use std::{sync::atomic::Ordering, time::Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use tokio::sync::mpsc::UnboundedSender;

use crate::http::Readiness;
use crate::Fatal;
use dbqo::lease::{decide, Decision, ObservedLease, Record};
use dbqo::settings::LeaderElection;

pub struct Elector {
    api: Api<Lease>,
    config: LeaderElection,
    observed: Option<ObservedLease>,
}

fn record(lease: &Lease) -> Record {
    let spec = lease.spec.clone().unwrap_or_default();
    Record {
        holder: spec.holder_identity,
        renew_time: spec.renew_time.map(|t| t.0.to_string()),
        lease_duration: std::time::Duration::from_secs(
            spec.lease_duration_seconds.unwrap_or(0).max(0) as u64,
        ),
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaderElection) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    /// One try: reads the Lease and writes it with us as holder if we may.
    /// `Ok(true)`: we hold it now.
    async fn try_hold(&mut self) -> Result<bool, kube::Error> {
        let me = self.config.identity.clone();
        let current = self.api.get_opt(&self.config.name).await?;
        let decision =
            decide(current.as_ref().map(record).as_ref(), &me, &mut self.observed, Instant::now());
        let seconds = self.config.lease_duration.as_secs() as i32;
        match (decision, current) {
            (Decision::Wait, _) => Ok(false),
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: kube::api::ObjectMeta {
                        name: Some(self.config.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(now()),
                        renew_time: Some(now()),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    // Another replica created it first.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            (Decision::Take, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                if spec.holder_identity.as_deref() != Some(me.as_str()) {
                    spec.acquire_time = Some(now());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.holder_identity = Some(me);
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(now());
                // The resourceVersion read makes this a compare-and-swap.
                match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            (Decision::Take, None) => Ok(false),
        }
    }

    /// Waits until this replica holds the Lease. While it waits it is ready
    /// (to take over) as soon as it can reach the API server.
    pub async fn acquire(&mut self, readiness: &Readiness) {
        tracing::info!(lease = %self.config.name, namespace = %self.config.namespace, identity = %self.config.identity, "waiting for the lease");
        loop {
            match self.try_hold().await {
                Ok(true) => break,
                Ok(false) => readiness.candidate.store(true, Ordering::SeqCst),
                Err(error) => {
                    readiness.candidate.store(false, Ordering::SeqCst);
                    tracing::warn!(%error, "cannot read or write the lease");
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
        readiness.leading.store(true, Ordering::SeqCst);
        crate::metrics::global().leading();
        tracing::info!(identity = %self.config.identity, "became leader");
    }

    /// Renews the Lease every retry period; returns (after reporting
    /// [`Fatal::LeadershipLost`]) once renewals failed for the renew deadline.
    pub async fn keep(mut self, fatal: UnboundedSender<Fatal>) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let left = self.config.renew_deadline.saturating_sub(renewed.elapsed());
            let attempt = tokio::time::timeout(left, self.try_hold()).await;
            match attempt {
                Ok(Ok(true)) => renewed = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::error!("the lease was taken by another replica");
                    let _ = fatal.send(Fatal::LeadershipLost);
                    return;
                }
                Ok(Err(error)) => tracing::warn!(%error, "cannot renew the lease"),
                Err(_) => {}
            }
            if renewed.elapsed() >= self.config.renew_deadline {
                tracing::error!(deadline = ?self.config.renew_deadline, "could not renew the lease in time");
                let _ = fatal.send(Fatal::LeadershipLost);
                return;
            }
        }
    }
}

/// Gives the Lease up (if we still hold it) so another replica can take it
/// at once rather than after it expires.
pub async fn release(client: kube::Client, config: &LeaderElection) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!("lease released"),
        Err(error) => tracing::warn!(%error, "cannot release the lease"),
    }
}
