//! `KubeWriter`: the one actor that talks to the API server. It owns the
//! client, the discovery cache, one label-selected watch + cache per managed
//! kind and a concurrency limit; every call runs under a timeout.
//!
//! [`WriterHandle`] implements the domain's `Cluster` trait, the one list of
//! what the operator asks of Kubernetes. Each API call is one typed
//! [`ApiCall`] whose body is the plain `kube_api` function; cache reads go
//! straight to the watch caches (`dbqo::kube_api::cache`) and cost no
//! message.
//!
//! The bound is real: a caller takes one of `queue` admission permits before
//! its call is handed to the actor, and the permit travels with the call
//! until it has finished. At most `queue` calls are ever running or waiting
//! in the writer; further callers wait in their own task (back-pressure),
//! not in a queue that grows.

mod secrets;

pub use secrets::{SecretChanged, SecretKey, SecretSubscription};

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, RwLock},
    time::Duration,
};

use actix::{
    Actor, Addr, AsyncContext, Context, Handler, Message, Recipient, ResponseFuture, StreamHandler,
};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    api::{Api, ApiResource, DynamicObject},
    runtime::{events::Reporter, watcher, WatchStreamExt},
    Client,
};
use serde_json::Value as Json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use dbqo::api::DatabaseQueryResourceStatus;
use dbqo::kube_api::cache::{split_key, CacheEvent, KindCache};
use dbqo::kube_api::cluster::{Cluster, Kinds};
use dbqo::kube_api::{
    self, CachedObject, KubeError, Labels, LiveObject, NewEvent, SecretData, Target,
};
use dbqo::kube_api::{GroupKind, ObjectKey};
use dbqo::reconcile::labels::{MANAGED_BY, MANAGED_BY_VALUE, OWNER_NAME, OWNER_NAMESPACE};

type Work<T> = Pin<Box<dyn Future<Output = Result<T, KubeError>>>>;

/// One API request: a plain `kube_api` call the writer runs under a permit
/// and its timeout. The result type is the call's own; nothing is downcast.
pub struct ApiCall<T> {
    call: Box<dyn FnOnce(Client) -> Work<T> + Send>,
    /// The user the request is made as (impersonation); `None`: the operator.
    user: Option<Arc<str>>,
    /// The caller's place in the writer's bound, given back when the call has
    /// finished (also when the caller stopped waiting for it).
    admitted: OwnedSemaphorePermit,
}

impl<T: Send + 'static> Message for ApiCall<T> {
    type Result = Result<T, KubeError>;
}

/// Starts (or joins) the watch of a managed kind; answers with its readiness.
#[derive(Message)]
#[rtype(result = "tokio::sync::watch::Receiver<bool>")]
struct Watch(ApiResource);

/// A managed object changed or disappeared; sent to the DBQR that owns it.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Drifted {
    pub key: ObjectKey,
}

/// Registers a DBQR (by its owner label values) for [`Drifted`] notices, or
/// withdraws the registration of exactly that recipient.
#[derive(Message)]
#[rtype(result = "()")]
pub enum DriftSubscription {
    Subscribe((String, String), Recipient<Drifted>),
    Unsubscribe((String, String), Recipient<Drifted>),
}

/// Resolves once every request handed to the writer before it has finished.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// One watched kind: whether the first list has landed in its store. (The
/// store's own readiness future wakes only one waiter when several passes
/// wait at once, so readiness is tracked here.)
struct Watched {
    ready: tokio::sync::watch::Sender<bool>,
}

/// The cache of each watched kind (at the version it watches).
type Stores = Arc<RwLock<HashMap<GroupKind, KindCache>>>;

pub struct KubeWriter {
    client: Client,
    /// What impersonating clients are made from.
    config: kube::Config,
    /// One client per impersonated user, made on first use (one per
    /// ServiceAccount that DBQRs act as).
    impersonating: HashMap<Arc<str>, Client>,
    /// Where managed objects are watched: one namespace (every DBQR's
    /// objects are there: see `Settings::object_namespace`), or all.
    object_namespace: Option<String>,
    secrets: HashMap<SecretKey, secrets::WatchedSecret>,
    secret_stores: secrets::SecretStores,
    permits: Arc<Semaphore>,
    concurrency: u32,
    timeout: Duration,
    watches: HashMap<GroupKind, Watched>,
    stores: Stores,
    subscribers: HashMap<(String, String), Recipient<Drifted>>,
}

impl KubeWriter {
    /// Starts the writer; returns the handle the rest of the operator uses.
    /// `concurrency` calls run at once; `queue` (at least `concurrency`) are
    /// admitted at once, running or waiting for a slot.
    pub fn start(
        client: Client,
        config: kube::Config,
        object_namespace: Option<String>,
        concurrency: usize,
        timeout: Duration,
        queue: usize,
    ) -> WriterHandle {
        let concurrency = concurrency.clamp(1, Semaphore::MAX_PERMITS) as u32;
        let queue = queue.clamp(concurrency as usize, Semaphore::MAX_PERMITS);
        let stores = Stores::default();
        let secret_stores = secrets::SecretStores::default();
        let writer = Self {
            client,
            config,
            impersonating: HashMap::new(),
            object_namespace,
            secrets: HashMap::new(),
            secret_stores: secret_stores.clone(),
            permits: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
            timeout,
            watches: HashMap::new(),
            stores: stores.clone(),
            subscribers: HashMap::new(),
        };
        WriterHandle {
            addr: writer.start(),
            stores,
            secret_stores,
            kinds: Arc::default(),
            timeout,
            admission: Arc::new(Semaphore::new(queue)),
            queue,
            waiting: Arc::default(),
            acting_as: None,
            reporter: Reporter {
                controller: "db-query-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        }
    }

    /// Starts one label-selected watch per kind (shared by every DBQR) unless it runs already.
    fn watch(
        &mut self,
        resource: ApiResource,
        ctx: &mut Context<Self>,
    ) -> tokio::sync::watch::Receiver<bool> {
        let gk = GroupKind::new(resource.group.clone(), resource.kind.clone());
        if let Some(watched) = self.watches.get(&gk) {
            return watched.ready.subscribe();
        }
        let api: Api<DynamicObject> = match &self.object_namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
        // Each object is made compact as it arrives: the watch's own copy
        // is dropped before the next one is read.
        let events =
            watcher(api, config).default_backoff().map(|event| event.map(CacheEvent::from));
        let kind = gk.clone();
        ctx.add_stream(events.map(move |event| (kind.clone(), event)).boxed_local());
        tracing::debug!(kind = %gk, "watching managed objects");
        if let Ok(mut stores) = self.stores.write() {
            stores.insert(gk.clone(), KindCache::new(resource));
        }
        let (ready, waiting) = tokio::sync::watch::channel(false);
        self.watches.insert(gk, Watched { ready });
        waiting
    }

    /// The drift notice an event makes, and the DBQR it goes to.
    fn drift_notice(
        &self,
        group_kind: &GroupKind,
        event: &CacheEvent,
    ) -> Option<(Recipient<Drifted>, Drifted)> {
        let (key, object) = event.changed()?;
        let owner =
            (object.label(OWNER_NAMESPACE)?.to_owned(), object.label(OWNER_NAME)?.to_owned());
        let recipient = self.subscribers.get(&owner)?.clone();
        let (namespace, name) = split_key(key);
        let key = ObjectKey {
            group_kind: group_kind.clone(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        };
        Some((recipient, Drifted { key }))
    }
}

impl Actor for KubeWriter {
    type Context = Context<Self>;
}

impl<T: Send + 'static> Handler<ApiCall<T>> for KubeWriter {
    type Result = ResponseFuture<Result<T, KubeError>>;

    fn handle(&mut self, request: ApiCall<T>, _: &mut Context<Self>) -> Self::Result {
        let client = self.client_for(request.user.as_ref());
        let permits = self.permits.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let _admitted = request.admitted;
            let _permit = permits.acquire_owned().await.map_err(|_| KubeError::Closed)?;
            tokio::time::timeout(timeout, (request.call)(client?))
                .await
                .map_err(|_| KubeError::Timeout)?
        })
    }
}

impl KubeWriter {
    /// The client for requests made as `user`: kube's impersonation headers
    /// (`Impersonate-User`) on the operator's own configuration. For a
    /// ServiceAccount the API server adds its groups itself, so the operator
    /// needs `impersonate` on serviceaccounts and nothing more.
    fn client_for(&mut self, user: Option<&Arc<str>>) -> Result<Client, KubeError> {
        let Some(user) = user else {
            return Ok(self.client.clone());
        };
        if let Some(client) = self.impersonating.get(user) {
            return Ok(client.clone());
        }
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_string());
        let client = Client::try_from(config).map_err(|e| KubeError::Transport(Arc::new(e)))?;
        self.impersonating.insert(user.clone(), client.clone());
        Ok(client)
    }
}

impl Handler<Watch> for KubeWriter {
    type Result = actix::MessageResult<Watch>;

    fn handle(&mut self, Watch(resource): Watch, ctx: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.watch(resource, ctx))
    }
}

impl Handler<DriftSubscription> for KubeWriter {
    type Result = ();

    fn handle(&mut self, subscription: DriftSubscription, _: &mut Context<Self>) {
        match subscription {
            DriftSubscription::Subscribe(owner, recipient) => {
                self.subscribers.insert(owner, recipient);
            }
            // A stopping actor must not unsubscribe the successor that took its place.
            DriftSubscription::Unsubscribe(owner, recipient) => {
                if self.subscribers.get(&owner) == Some(&recipient) {
                    self.subscribers.remove(&owner);
                }
            }
        }
    }
}

impl Handler<Drain> for KubeWriter {
    type Result = ResponseFuture<()>;

    /// Every request queued before this one has taken or is waiting for a
    /// permit; holding all permits means they have all finished.
    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        let permits = self.permits.clone();
        let all = self.concurrency;
        Box::pin(async move {
            let _ = permits.acquire_many(all).await;
        })
    }
}

type WatchItem = (GroupKind, Result<CacheEvent, watcher::Error>);

impl StreamHandler<WatchItem> for KubeWriter {
    fn handle(&mut self, (kind, event): WatchItem, _: &mut Context<Self>) {
        match event {
            Ok(event) => {
                let listed = matches!(event, CacheEvent::InitDone);
                let notice = self.drift_notice(&kind, &event);
                if let Ok(mut stores) = self.stores.write() {
                    if let Some(cache) = stores.get_mut(&kind) {
                        cache.apply(event);
                    }
                }
                // After the cache: the pass a notice starts reads it. A full
                // mailbox drops the notice; the next pass compares against
                // the cache anyway.
                if let Some((recipient, notice)) = notice {
                    let _ = recipient.try_send(notice);
                }
                if listed {
                    if let Some(watched) = self.watches.get(&kind) {
                        watched.ready.send_replace(true);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%kind, %error, "watch of managed objects failed; retrying")
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

/// What the rest of the operator holds of the writer: its address, the
/// discovery cache and the watch caches (read without a message).
#[derive(Clone)]
pub struct WriterHandle {
    addr: Addr<KubeWriter>,
    stores: Stores,
    secret_stores: secrets::SecretStores,
    /// Discovery, run by one caller at a time: the others wait for its answer.
    kinds: Arc<tokio::sync::Mutex<Option<(Kinds, std::time::Instant)>>>,
    timeout: Duration,
    /// Admission to the writer: a caller holds one of these from before its
    /// call is queued until the call has finished.
    admission: Arc<Semaphore>,
    queue: usize,
    /// Callers of this writer waiting for admission now.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// The user the object requests of this handle are made as.
    acting_as: Option<Arc<str>>,
    reporter: Reporter,
}

impl WriterHandle {
    /// A handle whose object requests (reads, applies, deletes of managed
    /// objects) are made as `user`; DBQR status, Events, finalizers and the
    /// watches stay the operator's.
    pub fn acting_as(&self, user: Option<String>) -> Self {
        Self { acting_as: user.map(Arc::from), ..self.clone() }
    }

    /// A request with the operator's own rights.
    async fn request<T, F, Fut>(&self, call: F) -> Result<T, KubeError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, KubeError>> + 'static,
    {
        self.send(None, call).await
    }

    /// A request about objects, made as the user this handle acts as. A
    /// refusal names that user, the verb and the resource (the API
    /// server's own message is redacted of every quoted part).
    async fn object_request<T, F, Fut>(
        &self,
        verb: &'static str,
        resource: &ApiResource,
        namespace: Option<&str>,
        call: F,
    ) -> Result<T, KubeError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, KubeError>> + 'static,
    {
        let result = self.send(self.acting_as.clone(), call).await;
        match (&self.acting_as, result) {
            (Some(user), Err(KubeError::Api { code: 403, .. })) => {
                let place = match namespace {
                    Some(ns) => format!(" in namespace {ns}"),
                    None => String::new(),
                };
                Err(KubeError::Api {
                    code: 403,
                    reason: dbqo::reason::FORBIDDEN.into(),
                    message: format!("{user} may not {verb} {}{place}", resource.plural),
                })
            }
            (_, result) => result,
        }
    }

    async fn send<T, F, Fut>(&self, user: Option<Arc<str>>, call: F) -> Result<T, KubeError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, KubeError>> + 'static,
    {
        let metrics = crate::metrics::global();
        let admitted = {
            use std::sync::atomic::Ordering::SeqCst;
            metrics.writer_waiting(true);
            self.waiting.fetch_add(1, SeqCst);
            let admitted = self.admission.clone().acquire_owned().await;
            self.waiting.fetch_sub(1, SeqCst);
            metrics.writer_waiting(false);
            admitted
        };
        let request = ApiCall {
            call: Box::new(move |client| Box::pin(call(client))),
            user,
            admitted: admitted.map_err(|_| KubeError::Closed)?,
        };
        metrics.writer_request(true);
        let answer = self.addr.send(request).await;
        metrics.writer_request(false);
        answer.map_err(|_| KubeError::Closed)?
    }

    /// Calls admitted to the writer now: running, or waiting for one of its
    /// `concurrency` slots. Never more than `queue`.
    pub fn admitted(&self) -> usize {
        self.queue - self.admission.available_permits()
    }

    /// Reads the cache of `resource`'s kind (at whatever version it watches).
    fn with_cache<T>(
        &self,
        resource: &ApiResource,
        read: impl FnOnce(&KindCache) -> T,
    ) -> Option<T> {
        let gk = GroupKind::new(resource.group.clone(), resource.kind.clone());
        Some(read(self.stores.read().ok()?.get(&gk)?))
    }

    pub fn subscription(&self, subscription: DriftSubscription) {
        self.addr.do_send(subscription);
    }

    pub fn secret_subscription(&self, subscription: SecretSubscription) {
        self.addr.do_send(subscription);
    }

    /// Waits for a watch to have listed once, failing after the API timeout
    /// (a kind or Secret the operator may not list never becomes ready).
    async fn ready(&self, mut ready: tokio::sync::watch::Receiver<bool>) -> Result<(), KubeError> {
        tokio::time::timeout(self.timeout, ready.wait_for(|ready| *ready))
            .await
            .map_err(|_| KubeError::Timeout)?
            .map_err(|_| KubeError::Closed)?;
        Ok(())
    }

    /// Waits until every request sent so far has finished.
    pub async fn drain(&self) {
        let _ = self.addr.send(Drain).await;
    }
}

/// Discovery runs at most this often on request.
const DISCOVERY_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl Cluster for WriterHandle {
    async fn kinds(&self, refresh: bool) -> Result<Kinds, KubeError> {
        let asked = std::time::Instant::now();
        let mut cache = self.kinds.lock().await;
        // A refresh is satisfied by a discovery that ran while this caller
        // waited, or a few seconds before: rows of an unknown kind ask for
        // one on every pass, and discovery costs a request per API group.
        let fresh = cache
            .as_ref()
            .filter(|(_, at)| !refresh || *at >= asked || at.elapsed() < DISCOVERY_MIN_INTERVAL);
        if let Some((kinds, _)) = fresh {
            return Ok(kinds.clone());
        }
        let kinds: Kinds = Arc::new(
            self.request(|client| async move { kube_api::discover(&client).await }).await?,
        );
        *cache = Some((kinds.clone(), std::time::Instant::now()));
        Ok(kinds)
    }

    async fn watch(&self, resource: &ApiResource) -> Result<(), KubeError> {
        let ready = self.addr.send(Watch(resource.clone())).await.map_err(|_| KubeError::Closed)?;
        self.ready(ready).await
    }

    fn cached(&self, target: &Target) -> Option<CachedObject> {
        self.with_cache(&target.resource, |cache| {
            cache.get(target.namespace.as_deref(), &target.name)
        })?
    }

    fn cached_list(&self, resource: &ApiResource, labels: &Labels) -> Vec<LiveObject> {
        self.with_cache(resource, |cache| cache.list(labels)).unwrap_or_default()
    }

    async fn get(&self, target: &Target) -> Result<Option<LiveObject>, KubeError> {
        let t = target.clone();
        self.object_request(
            "get",
            &target.resource,
            target.namespace.as_deref(),
            |client| async move { kube_api::get(&client, &t).await },
        )
        .await
    }

    async fn names(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
    ) -> Result<std::collections::HashSet<String>, KubeError> {
        let (r, ns) = (resource.clone(), namespace.map(str::to_owned));
        self.object_request("list", resource, namespace, |client| async move {
            kube_api::names(&client, &r, ns.as_deref()).await
        })
        .await
    }

    async fn apply(&self, target: &Target, manifest: &Json) -> Result<(), KubeError> {
        let (t, manifest) = (target.clone(), manifest.clone());
        self.object_request(
            "patch",
            &target.resource,
            target.namespace.as_deref(),
            |client| async move { kube_api::apply(&client, &t, &manifest).await },
        )
        .await
    }

    async fn create(&self, target: &Target, manifest: &Json) -> Result<(), KubeError> {
        let (t, manifest) = (target.clone(), manifest.clone());
        self.object_request(
            "create",
            &target.resource,
            target.namespace.as_deref(),
            |client| async move { kube_api::create(&client, &t, &manifest).await },
        )
        .await
    }

    async fn delete(&self, target: &Target, uid: Option<&str>) -> Result<(), KubeError> {
        let (t, uid) = (target.clone(), uid.map(str::to_owned));
        self.object_request(
            "delete",
            &target.resource,
            target.namespace.as_deref(),
            |client| async move { kube_api::delete(&client, &t, uid.as_deref()).await },
        )
        .await
    }

    async fn merge_patch(&self, target: &Target, patch: &Json) -> Result<(), KubeError> {
        let (t, patch) = (target.clone(), patch.clone());
        self.object_request(
            "patch",
            &target.resource,
            target.namespace.as_deref(),
            |client| async move { kube_api::merge_patch(&client, &t, &patch).await },
        )
        .await
    }

    async fn read_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<SecretData>, KubeError> {
        let key = (namespace.to_owned(), name.to_owned());
        let ready = self
            .addr
            .send(secrets::WatchSecret(key.clone()))
            .await
            .map_err(|_| KubeError::Closed)?;
        self.ready(ready).await?;
        Ok(secrets::read(&self.secret_stores, &key))
    }

    async fn patch_dbqr_status(
        &self,
        namespace: &str,
        name: &str,
        status: &DatabaseQueryResourceStatus,
    ) -> Result<(), KubeError> {
        let (namespace, name, status) = (namespace.to_owned(), name.to_owned(), status.clone());
        self.request(|client| async move {
            kube_api::patch_dbqr_status(&client, &namespace, &name, &status).await
        })
        .await
    }

    async fn patch_status(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
        status: &Json,
    ) -> Result<(), KubeError> {
        let (resource, namespace, name, status) =
            (resource.clone(), namespace.to_owned(), name.to_owned(), status.clone());
        self.request(|client| async move {
            kube_api::patch_status(&client, &resource, &namespace, &name, &status).await
        })
        .await
    }

    async fn read_meta(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ObjectMeta>, KubeError> {
        let (resource, namespace, name) = (resource.clone(), namespace.to_owned(), name.to_owned());
        self.request(|client| async move {
            kube_api::read_meta(&client, &resource, &namespace, &name).await
        })
        .await
    }

    async fn read_object(
        &self,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Json>, KubeError> {
        let (resource, namespace, name) = (resource.clone(), namespace.to_owned(), name.to_owned());
        self.request(|client| async move {
            kube_api::read_object(&client, &resource, &namespace, &name).await
        })
        .await
    }

    async fn list_objects(
        &self,
        resource: &ApiResource,
        namespace: &str,
        selector: &str,
        limit: u32,
    ) -> Result<Vec<Json>, KubeError> {
        let (resource, namespace, selector) =
            (resource.clone(), namespace.to_owned(), selector.to_owned());
        self.request(move |client| async move {
            kube_api::list_objects(&client, &resource, &namespace, &selector, limit).await
        })
        .await
    }

    async fn set_finalizers(
        &self,
        resource: &ApiResource,
        seen: &ObjectMeta,
        finalizers: &[String],
    ) -> Result<(), KubeError> {
        let (resource, seen, finalizers) = (resource.clone(), seen.clone(), finalizers.to_vec());
        self.request(|client| async move {
            kube_api::set_finalizers(&client, &resource, &seen, &finalizers).await
        })
        .await
    }

    async fn publish_event(
        &self,
        regarding: &ObjectReference,
        event: &NewEvent,
    ) -> Result<(), KubeError> {
        let (regarding, event, reporter) =
            (regarding.clone(), event.clone(), self.reporter.clone());
        self.request(|client| async move {
            kube_api::publish_event(&client, &reporter, &regarding, &event).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::{mpsc, Notify};

    use super::*;

    /// How long to wait for something that should be quick.
    const DEADLINE: Duration = Duration::from_secs(5);

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        tokio::time::timeout(DEADLINE, async {
            while !check() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} within {DEADLINE:?}"));
    }

    /// One call slot, two admitted calls: the third caller waits before its
    /// call is queued, and goes on once one finishes.
    #[test]
    fn a_full_writer_makes_callers_wait_before_their_call_is_queued() {
        actix::System::new().block_on(async {
            // The calls never use the client: nothing has to listen there.
            let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
            let client = Client::try_from(config.clone()).unwrap();
            let writer = KubeWriter::start(client, config, None, 1, DEADLINE * 4, 2);
            let gate = Arc::new(Notify::new());
            let (started, mut started_rx) = mpsc::unbounded_channel();
            let mut callers = Vec::new();
            for n in 0..3 {
                let (writer, gate, started) = (writer.clone(), gate.clone(), started.clone());
                callers.push(actix::spawn(async move {
                    writer
                        .request(move |_| async move {
                            let _ = started.send(n);
                            gate.notified().await;
                            Ok(n)
                        })
                        .await
                }));
            }
            assert!(started_rx.recv().await.is_some(), "one call runs");
            until("two calls admitted", || writer.admitted() == 2).await;
            // The third caller is parked at admission, not queued in the actor.
            until("a caller waiting for admission", || {
                writer.waiting.load(std::sync::atomic::Ordering::SeqCst) == 1
            })
            .await;
            assert_eq!(writer.admitted(), 2, "never more than the queue");
            // One call finishing lets the next run and the waiting one in.
            for _ in 0..2 {
                gate.notify_one();
                assert!(started_rx.recv().await.is_some(), "the next call runs");
            }
            assert_eq!(writer.waiting.load(std::sync::atomic::Ordering::SeqCst), 0);
            gate.notify_one();
            let mut answers = Vec::new();
            for caller in callers {
                answers
                    .push(tokio::time::timeout(DEADLINE, caller).await.unwrap().unwrap().unwrap());
            }
            answers.sort_unstable();
            assert_eq!(answers, vec![0, 1, 2]);
            assert_eq!(writer.admitted(), 0, "every permit given back");
        });
    }
}
