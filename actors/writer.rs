//! `KubeWriter`: the one actor that talks to the API server. It owns the
//! client, the discovery cache, a bounded mailbox and a concurrency limit;
//! every call runs under a timeout.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    api::ApiResource,
    runtime::events::{Event, EventType, Recorder, Reporter},
    Client,
};
use serde_json::Value as Json;
use tokio::sync::Semaphore;

use crate::kube_api::{self, KubeError, LiveObject};
use crate::reconcile::status::StatusEvent;
use crate::reconcile::writer::{Kinds, Writer};

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
}

pub enum Reply {
    Kinds(Kinds),
    Object(Option<LiveObject>),
    Objects(Vec<LiveObject>),
    Secret(Option<(String, BTreeMap<String, Vec<u8>>)>),
    Done,
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

    fn handle(&mut self, op: Op, _: &mut Self::Context) -> Self::Result {
        if let Op::Kinds { refresh: false } = op {
            if let Some(kinds) = self.kinds.lock().ok().and_then(|k| k.clone()) {
                return Box::pin(async move { Ok(Reply::Kinds(kinds)) });
            }
        }
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
