//! What the benchmark programs share: a watch that records when each
//! content arrived, percentiles, and namespaces with the database Secret.
// Each benchmark uses a part of it.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::common;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Every ConfigMap content a watch of a namespace has delivered, with the
/// moment it arrived.
#[derive(Clone, Default)]
pub struct Seen {
    /// (name, value) -> first arrival.
    at: Arc<Mutex<HashMap<(String, String), Instant>>>,
    /// name -> latest value.
    latest: Arc<Mutex<HashMap<String, String>>>,
    changed: Arc<Notify>,
}

impl Seen {
    pub fn watch(client: &kube::Client, ns: &str) -> Self {
        let seen = Self::default();
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let s = seen.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let now = Instant::now();
                let cm = match event {
                    Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => cm,
                    _ => continue,
                };
                let name = cm.metadata.name.unwrap_or_default();
                let value = cm.data.and_then(|d| d.get("value").cloned()).unwrap_or_default();
                s.at.lock().unwrap().entry((name.clone(), value.clone())).or_insert(now);
                s.latest.lock().unwrap().insert(name, value);
                s.changed.notify_waiters();
            }
        });
        seen
    }

    /// Waits until `done` holds for the latest contents; when it first held.
    pub async fn until(
        &self,
        timeout: Duration,
        done: impl Fn(&HashMap<String, String>) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if done(&self.latest.lock().unwrap()) {
                return Instant::now();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out after {timeout:?}");
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// When the first content ending in `suffix` arrived.
    pub fn first(&self, suffix: &str) -> Option<Instant> {
        let at = self.at.lock().unwrap();
        at.iter().filter(|((_, value), _)| value.ends_with(suffix)).map(|(_, at)| *at).min()
    }

    /// Waits for `name` to carry `value`; when the watch delivered it.
    pub async fn arrival(&self, name: &str, value: &str, timeout: Duration) -> Instant {
        let key = (name.to_owned(), value.to_owned());
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(at) = self.at.lock().unwrap().get(&key) {
                return *at;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{name}={value} not seen after {timeout:?}");
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

pub async fn new_namespace(
    client: &kube::Client,
    prefix: &str,
    server: &dbqo_testenv::PostgresInfo,
) -> String {
    let ns = common::namespace(client, prefix).await;
    common::operator::create_secret(
        client,
        &ns,
        "db",
        common::server_secret_keys(server, "postgres"),
    )
    .await;
    ns
}
