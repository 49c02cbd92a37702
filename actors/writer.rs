//! `KubeWriter`: the one actor that talks to the API server. It owns the
//! client, the discovery cache, a bounded mailbox and a concurrency limit;
//! every call runs under a timeout.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use std::collections::HashMap;

use actix::{
    Actor, Addr, AsyncContext, Context, Handler, Message, Recipient, ResponseFuture, StreamHandler,
};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    api::{Api, ApiResource, DynamicObject},
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, store::Writer as StoreWriter, ObjectRef, Store},
        watcher, WatchStreamExt,
    },
    Client, ResourceExt,
};
use reflector::reflector;
use serde_json::Value as Json;
use tokio::sync::Semaphore;

use crate::kube_api::{self, CachedObject, KubeError, LiveObject};
use crate::reconcile::labels::{MANAGED_BY, MANAGED_BY_VALUE, OWNER_NAME, OWNER_NAMESPACE};
use crate::reconcile::status::StatusEvent;
use crate::reconcile::writer::{Kinds, Writer};
use crate::render::{GroupKind, ObjectKey};

/// One request to the API server.
pub enum Op {
    Kinds {
        refresh: bool,
    },
    Get {
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    },
    Apply {
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
        manifest: Json,
    },
    List {
        resource: ApiResource,
        selector: String,
    },
    Delete {
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    },
    MergePatch {
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
        patch: Json,
    },
    PatchStatus {
        resource: ApiResource,
        namespace: String,
        name: String,
        status: Json,
    },
    ReadSecret {
        namespace: String,
        name: String,
    },
    Event {
        reference: ObjectReference,
        event: StatusEvent,
    },
    Watch {
        resource: ApiResource,
    },
    Cached {
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    },
    CachedList {
        resource: ApiResource,
        selector: String,
    },
}

pub enum Reply {
    Kinds(Kinds),
    Object(Option<LiveObject>),
    Objects(Vec<LiveObject>),
    Secret(Option<(String, BTreeMap<String, Vec<u8>>)>),
    Cached(Option<CachedObject>),
    Done,
}

/// A managed object changed or disappeared; sent to the DBQR that owns it.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Drifted {
    pub key: ObjectKey,
}

/// Registers a DBQR (by its owner label values) for [`Drifted`] notices.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub owner: (String, String),
    pub recipient: Option<Recipient<Drifted>>,
}

/// One cached kind: the store its reflector fills, and whether the first
/// list has landed. (The store's own readiness future wakes only one waiter
/// when several passes wait at once, so readiness is tracked here.)
struct Watched {
    store: Store<DynamicObject>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Message for Op {
    type Result = Result<Reply, KubeError>;
}

pub struct KubeWriter {
    client: Client,
    permits: Arc<Semaphore>,
    timeout: Duration,
    mailbox: usize,
    kinds: Arc<Mutex<Option<Kinds>>>,
    recorder: Recorder,
    watches: HashMap<GroupKind, Watched>,
    subscribers: HashMap<(String, String), Recipient<Drifted>>,
}

impl KubeWriter {
    pub fn new(client: Client, concurrency: usize, timeout: Duration, mailbox: usize) -> Self {
        let reporter = Reporter {
            controller: "db-query-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            timeout,
            mailbox,
            kinds: Arc::default(),
            watches: HashMap::new(),
            subscribers: HashMap::new(),
        }
    }
}

impl KubeWriter {
    fn store(&self, resource: &ApiResource) -> Option<Store<DynamicObject>> {
        let gk = GroupKind::new(resource.group.clone(), resource.kind.clone());
        self.watches.get(&gk).map(|w| w.store.clone())
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
        let writer = StoreWriter::<DynamicObject>::new(resource.clone());
        let store = writer.as_reader();
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
        let events = reflector(writer, watcher(api, config).default_backoff());
        let kind = gk.clone();
        ctx.add_stream(events.map(move |event| (kind.clone(), event)).boxed_local());
        tracing::debug!(kind = %gk, "watching managed objects");
        let (ready, waiting) = tokio::sync::watch::channel(false);
        self.watches.insert(gk, Watched { store, ready });
        waiting
    }

    fn notify(&self, group_kind: &GroupKind, object: &DynamicObject) {
        let labels = object.labels();
        let (Some(name), Some(namespace)) = (labels.get(OWNER_NAME), labels.get(OWNER_NAMESPACE))
        else {
            return;
        };
        if let Some(recipient) = self.subscribers.get(&(namespace.clone(), name.clone())) {
            let key = ObjectKey {
                group_kind: group_kind.clone(),
                namespace: object.namespace(),
                name: object.name_any(),
            };
            // A full mailbox drops the notice; the next pass compares against the cache anyway.
            let _ = recipient.try_send(Drifted { key });
        }
    }
}

type WatchItem = (
    GroupKind,
    Result<watcher::Event<DynamicObject>, watcher::Error>,
);

impl StreamHandler<WatchItem> for KubeWriter {
    fn handle(&mut self, (kind, event): WatchItem, _: &mut Context<Self>) {
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => {
                self.notify(&kind, &object)
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(watched) = self.watches.get(&kind) {
                    watched.ready.send_replace(true);
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%kind, %error, "watch of managed objects failed; retrying")
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Handler<Subscribe> for KubeWriter {
    type Result = ();

    fn handle(&mut self, Subscribe { owner, recipient }: Subscribe, _: &mut Context<Self>) {
        match recipient {
            Some(r) => {
                self.subscribers.insert(owner, r);
            }
            None => {
                self.subscribers.remove(&owner);
            }
        }
    }
}

impl Actor for KubeWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Producers `send` and wait when the writer is saturated.
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Handler<Op> for KubeWriter {
    type Result = ResponseFuture<Result<Reply, KubeError>>;

    fn handle(&mut self, op: Op, ctx: &mut Self::Context) -> Self::Result {
        let op = match op {
            Op::Kinds { refresh: false } => match self.kinds.lock().ok().and_then(|k| k.clone()) {
                Some(kinds) => return Box::pin(async move { Ok(Reply::Kinds(kinds)) }),
                None => Op::Kinds { refresh: false },
            },
            // Cache reads cost no API request and take no permit.
            Op::Watch { resource } => {
                let mut ready = self.watch(resource, ctx);
                let timeout = self.timeout;
                // A kind the operator may not list never becomes ready: fail the
                // pass (and retry it) instead of waiting forever.
                return Box::pin(async move {
                    tokio::time::timeout(timeout, ready.wait_for(|ready| *ready))
                        .await
                        .map_err(|_| KubeError::Timeout)?
                        .map_err(|_| KubeError::Closed)?;
                    Ok(Reply::Done)
                });
            }
            Op::Cached {
                resource,
                namespace,
                name,
            } => {
                let found = self.store(&resource).and_then(|store| {
                    let mut key = ObjectRef::new_with(&name, resource.clone());
                    if let Some(ns) = &namespace {
                        key = key.within(ns);
                    }
                    store.get(&key)
                });
                let cached = found.and_then(|o| {
                    Some(CachedObject {
                        manifest: serde_json::to_value(&*o).ok()?,
                        live: LiveObject::from((*o).clone()),
                    })
                });
                return Box::pin(async move { Ok(Reply::Cached(cached)) });
            }
            Op::CachedList { resource, selector } => {
                let wanted: Vec<(String, String)> = selector
                    .split(',')
                    .filter_map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    })
                    .collect();
                let objects = self
                    .store(&resource)
                    .map(|store| {
                        store
                            .state()
                            .into_iter()
                            .filter(|o| wanted.iter().all(|(k, v)| o.labels().get(k) == Some(v)))
                            .map(|o| LiveObject::from((*o).clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                return Box::pin(async move { Ok(Reply::Objects(objects)) });
            }
            other => other,
        };
        let client = self.client.clone();
        let permits = self.permits.clone();
        let timeout = self.timeout;
        let cache = self.kinds.clone();
        let recorder = self.recorder.clone();
        Box::pin(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| KubeError::Closed)?;
            let work = async {
                Ok(match op {
                    Op::Kinds { .. } => {
                        let kinds: Kinds = Arc::new(kube_api::discover(&client).await?);
                        if let Ok(mut slot) = cache.lock() {
                            *slot = Some(kinds.clone());
                        }
                        Reply::Kinds(kinds)
                    }
                    Op::Get {
                        resource,
                        namespace,
                        name,
                    } => Reply::Object(
                        kube_api::get(&client, &resource, namespace.as_deref(), &name).await?,
                    ),
                    Op::Apply {
                        resource,
                        namespace,
                        name,
                        manifest,
                    } => {
                        kube_api::apply(&client, &resource, namespace.as_deref(), &name, &manifest)
                            .await?;
                        Reply::Done
                    }
                    Op::List { resource, selector } => {
                        Reply::Objects(kube_api::list(&client, &resource, &selector).await?)
                    }
                    Op::Delete {
                        resource,
                        namespace,
                        name,
                    } => {
                        kube_api::delete(&client, &resource, namespace.as_deref(), &name).await?;
                        Reply::Done
                    }
                    Op::MergePatch {
                        resource,
                        namespace,
                        name,
                        patch,
                    } => {
                        kube_api::merge_patch(
                            &client,
                            &resource,
                            namespace.as_deref(),
                            &name,
                            &patch,
                        )
                        .await?;
                        Reply::Done
                    }
                    Op::PatchStatus {
                        resource,
                        namespace,
                        name,
                        status,
                    } => {
                        kube_api::patch_status(&client, &resource, &namespace, &name, &status)
                            .await?;
                        Reply::Done
                    }
                    Op::ReadSecret { namespace, name } => {
                        Reply::Secret(kube_api::read_secret(&client, &namespace, &name).await?)
                    }
                    Op::Watch { .. } | Op::Cached { .. } | Op::CachedList { .. } => Reply::Done,
                    Op::Event { reference, event } => {
                        let event = Event {
                            type_: if event.warning {
                                EventType::Warning
                            } else {
                                EventType::Normal
                            },
                            reason: event.reason,
                            note: Some(event.message),
                            action: "Reconcile".into(),
                            secondary: None,
                        };
                        recorder
                            .publish(&event, &reference)
                            .await
                            .map_err(KubeError::from)?;
                        Reply::Done
                    }
                })
            };
            tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| KubeError::Timeout)?
        })
    }
}

/// The [`Writer`] the reconcile code sees: requests to the writer actor.
#[derive(Clone)]
pub struct WriterHandle(pub Addr<KubeWriter>);

impl WriterHandle {
    pub async fn call(&self, op: Op) -> Result<Reply, KubeError> {
        self.0.send(op).await.map_err(|_| KubeError::Closed)?
    }

    async fn done(&self, op: Op) -> Result<(), KubeError> {
        self.call(op).await.map(|_| ())
    }
}

fn unexpected() -> KubeError {
    KubeError::Transport("writer returned an unexpected reply".into())
}

impl Writer for WriterHandle {
    async fn watch(&self, resource: ApiResource) -> Result<(), KubeError> {
        self.done(Op::Watch { resource }).await
    }

    async fn cached(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    ) -> Result<Option<CachedObject>, KubeError> {
        match self
            .call(Op::Cached {
                resource,
                namespace,
                name,
            })
            .await?
        {
            Reply::Cached(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn cached_list(
        &self,
        resource: ApiResource,
        selector: String,
    ) -> Result<Vec<LiveObject>, KubeError> {
        match self.call(Op::CachedList { resource, selector }).await? {
            Reply::Objects(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    async fn kinds(&self, refresh: bool) -> Result<Kinds, KubeError> {
        match self.call(Op::Kinds { refresh }).await? {
            Reply::Kinds(k) => Ok(k),
            _ => Err(unexpected()),
        }
    }

    async fn get(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    ) -> Result<Option<LiveObject>, KubeError> {
        match self
            .call(Op::Get {
                resource,
                namespace,
                name,
            })
            .await?
        {
            Reply::Object(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    async fn apply(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
        manifest: Json,
    ) -> Result<(), KubeError> {
        self.done(Op::Apply {
            resource,
            namespace,
            name,
            manifest,
        })
        .await
    }

    async fn list(
        &self,
        resource: ApiResource,
        selector: String,
    ) -> Result<Vec<LiveObject>, KubeError> {
        match self.call(Op::List { resource, selector }).await? {
            Reply::Objects(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    async fn delete(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    ) -> Result<(), KubeError> {
        self.done(Op::Delete {
            resource,
            namespace,
            name,
        })
        .await
    }

    async fn merge_patch(
        &self,
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
        patch: Json,
    ) -> Result<(), KubeError> {
        self.done(Op::MergePatch {
            resource,
            namespace,
            name,
            patch,
        })
        .await
    }

    async fn read_secret(
        &self,
        namespace: String,
        name: String,
    ) -> Result<Option<(String, BTreeMap<String, Vec<u8>>)>, KubeError> {
        match self.call(Op::ReadSecret { namespace, name }).await? {
            Reply::Secret(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }
}
