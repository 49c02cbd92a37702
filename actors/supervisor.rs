//! `Supervisor`: watches DBQRs, keeps one `QueryActor` per DBQR at its current
//! generation, adds the finalizer, and runs the clean-up of deleted DBQRs.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use actix::{Actor, ActorFutureExt, Addr, AsyncContext, Context, StreamHandler, WrapFuture};
use futures_util::StreamExt;
use kube::{
    api::{Api, ApiResource},
    runtime::{watcher, WatchStreamExt},
    Client, ResourceExt,
};
use serde_json::json;

use super::query::{QueryActor, Stop};
use super::writer::{Op, WriterHandle};
use crate::api::{DatabaseQueryResource, FINALIZER};
use crate::reconcile::{
    cleanup::{clean_up, Cleanup},
    Owner, Writer,
};
use crate::settings::Settings;

type Key = (String, String);

struct Running {
    uid: String,
    generation: Option<i64>,
    actor: Addr<QueryActor>,
}

pub struct Supervisor {
    client: Client,
    writer: WriterHandle,
    settings: Arc<Settings>,
    actors: HashMap<Key, Running>,
    cleaning: HashSet<String>,
    ready: Arc<AtomicBool>,
}

impl Supervisor {
    pub fn new(
        client: Client,
        writer: WriterHandle,
        settings: Arc<Settings>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            client,
            writer,
            settings,
            actors: HashMap::new(),
            cleaning: HashSet::new(),
            ready,
        }
    }

    fn key(dbqr: &DatabaseQueryResource) -> Key {
        (dbqr.namespace().unwrap_or_default(), dbqr.name_any())
    }

    fn stop(&mut self, key: &Key) {
        if let Some(running) = self.actors.remove(key) {
            running.actor.do_send(Stop);
        }
    }

    fn on_change(&mut self, dbqr: DatabaseQueryResource, ctx: &mut Context<Self>) {
        let key = Self::key(&dbqr);
        let has_finalizer = dbqr.finalizers().iter().any(|f| f == FINALIZER);
        if dbqr.metadata.deletion_timestamp.is_some() {
            self.stop(&key);
            if has_finalizer {
                self.start_cleanup(dbqr, ctx);
            }
            return;
        }
        if !has_finalizer {
            // The change event that follows starts the actor.
            let mut finalizers = dbqr.finalizers().to_vec();
            finalizers.push(FINALIZER.to_owned());
            self.patch_metadata(&dbqr, json!({ "finalizers": finalizers }), ctx);
            return;
        }
        let uid = dbqr.uid().unwrap_or_default();
        if let Some(running) = self.actors.get(&key) {
            if running.uid == uid
                && running.generation == dbqr.metadata.generation
                && running.actor.connected()
            {
                return;
            }
        }
        self.stop(&key);
        tracing::info!(dbqr = %key.1, namespace = %key.0, generation = ?dbqr.metadata.generation, "starting query actor");
        let generation = dbqr.metadata.generation;
        let actor = QueryActor::new(dbqr, &self.settings, self.writer.clone()).start();
        self.actors.insert(
            key,
            Running {
                uid,
                generation,
                actor,
            },
        );
    }

    fn patch_metadata(
        &self,
        dbqr: &DatabaseQueryResource,
        metadata: serde_json::Value,
        ctx: &mut Context<Self>,
    ) {
        let writer = self.writer.clone();
        let (namespace, name) = Self::key(dbqr);
        let mut metadata = metadata;
        // Optimistic concurrency: a stale view must not overwrite newer finalizers.
        metadata["resourceVersion"] = json!(dbqr.resource_version());
        ctx.spawn(
            async move {
                let resource = ApiResource::erase::<DatabaseQueryResource>(&());
                let patch = json!({ "metadata": metadata });
                if let Err(error) = writer
                    .merge_patch(resource, Some(namespace), name, patch)
                    .await
                {
                    tracing::debug!(%error, "finalizer update deferred to the next event");
                }
            }
            .into_actor(self),
        );
    }

    fn start_cleanup(&mut self, dbqr: DatabaseQueryResource, ctx: &mut Context<Self>) {
        let uid = dbqr.uid().unwrap_or_default();
        if !self.cleaning.insert(uid.clone()) {
            return;
        }
        let owner = Owner {
            name: dbqr.name_any(),
            namespace: dbqr.namespace().unwrap_or_default(),
            uid: uid.clone(),
        };
        let policy = dbqr.spec.deletion_policy;
        let managed = dbqr
            .status
            .as_ref()
            .map(|s| s.managed_kinds.clone())
            .unwrap_or_default();
        let allowed = self.settings.policy.allowed_kinds.clone();
        let writer = self.writer.clone();
        let work = async move { clean_up(&owner, policy, &managed, &allowed, &writer).await };
        ctx.spawn(work.into_actor(self).map(move |result, supervisor, ctx| {
            supervisor.cleaning.remove(&uid);
            match result {
                Ok(Cleanup::Done) => {
                    let finalizers: Vec<String> = dbqr.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
                    tracing::info!(dbqr = %dbqr.name_any(), ?policy, "clean-up done, releasing the DBQR");
                    supervisor.patch_metadata(&dbqr, json!({ "finalizers": finalizers }), ctx);
                }
                Ok(Cleanup::Waiting { remaining }) => {
                    tracing::debug!(dbqr = %dbqr.name_any(), remaining, "waiting for objects to go");
                    ctx.run_later(Duration::from_millis(500), move |s, ctx| s.start_cleanup(dbqr, ctx));
                }
                Err(problem) => {
                    tracing::warn!(dbqr = %dbqr.name_any(), reason = %problem.reason, "clean-up failed; retrying");
                    ctx.run_later(Duration::from_secs(2), move |s, ctx| s.start_cleanup(dbqr, ctx));
                }
            }
        }));
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let api: Api<DatabaseQueryResource> = match &self.settings.watch_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut config = watcher::Config::default();
        if let Some(selector) = &self.settings.label_selector {
            config = config.labels(selector);
        }
        ctx.add_stream(watcher(api, config).default_backoff().boxed_local());
        // Warm the discovery cache before the first pass needs it.
        let writer = self.writer.clone();
        ctx.spawn(
            async move {
                if let Err(error) = writer.call(Op::Kinds { refresh: true }).await {
                    tracing::warn!(%error, "initial discovery failed");
                }
            }
            .into_actor(self),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        for (_, running) in self.actors.drain() {
            running.actor.do_send(Stop);
        }
    }
}

impl StreamHandler<Result<watcher::Event<DatabaseQueryResource>, watcher::Error>> for Supervisor {
    fn handle(
        &mut self,
        event: Result<watcher::Event<DatabaseQueryResource>, watcher::Error>,
        ctx: &mut Context<Self>,
    ) {
        match event {
            Ok(watcher::Event::Apply(dbqr) | watcher::Event::InitApply(dbqr)) => {
                self.on_change(dbqr, ctx)
            }
            Ok(watcher::Event::Delete(dbqr)) => {
                let key = Self::key(&dbqr);
                self.stop(&key);
            }
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitDone) => {
                if !self.ready.swap(true, Ordering::SeqCst) {
                    tracing::info!(dbqrs = self.actors.len(), "initial list done; ready");
                }
            }
            Err(error) => tracing::warn!(%error, "DBQR watch failed; retrying with backoff"),
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        tracing::error!("DBQR watch ended");
    }
}
