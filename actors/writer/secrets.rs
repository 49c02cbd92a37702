//! Connection Secrets, from one watch per referenced Secret (a field selector
//! on its name), so a pass reads its Secret without an API request and a
//! changed Secret reaches its DBQRs at once. A watch lives while some DBQR
//! subscribes to its Secret.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use actix::{AsyncContext, Context, Handler, Message, Recipient, SpawnHandle, StreamHandler};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    api::Api,
    runtime::{
        reflector::{self, store::Writer as StoreWriter, ObjectRef, Store},
        watcher, WatchStreamExt,
    },
};

use super::KubeWriter;
use dbqo::kube_api::SecretData;

/// A Secret by namespace and name.
pub type SecretKey = (String, String);

/// A connection Secret changed; sent to the DBQRs that use it.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct SecretChanged;

/// Registers a DBQR for [`SecretChanged`] notices of one Secret (starting its
/// watch), or withdraws exactly that registration (ending the watch when no
/// DBQR is left).
#[derive(Message)]
#[rtype(result = "()")]
pub enum SecretSubscription {
    Subscribe(SecretKey, Recipient<SecretChanged>),
    Unsubscribe(SecretKey, Recipient<SecretChanged>),
}

/// Starts (or joins) the watch of a Secret; answers with its readiness.
#[derive(Message)]
#[rtype(result = "tokio::sync::watch::Receiver<bool>")]
pub(super) struct WatchSecret(pub SecretKey);

pub(super) struct WatchedSecret {
    ready: tokio::sync::watch::Sender<bool>,
    /// Lists done so far; a list after the first may carry a change.
    lists: u32,
    stream: SpawnHandle,
    subscribers: Vec<Recipient<SecretChanged>>,
}

/// The Secret stores, shared with the handle (read without a message).
pub(super) type SecretStores = Arc<Mutex<HashMap<SecretKey, Store<Secret>>>>;

/// Reads a Secret from its store.
pub(super) fn read(stores: &SecretStores, key: &SecretKey) -> Option<SecretData> {
    let store = stores.lock().ok()?.get(key)?.clone();
    let secret = store.get(&ObjectRef::new(&key.1).within(&key.0))?;
    Some(SecretData::of(&secret))
}

type SecretItem = (SecretKey, Result<watcher::Event<Secret>, watcher::Error>);

impl KubeWriter {
    fn watch_secret(
        &mut self,
        key: SecretKey,
        ctx: &mut Context<Self>,
    ) -> tokio::sync::watch::Receiver<bool> {
        if let Some(watched) = self.secrets.get(&key) {
            return watched.ready.subscribe();
        }
        let writer = StoreWriter::<Secret>::default();
        let store = writer.as_reader();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &key.0);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", key.1));
        let events = reflector::reflector(writer, watcher(api, config).default_backoff());
        let tagged = key.clone();
        let stream = ctx.add_stream(events.map(move |e| (tagged.clone(), e)).boxed_local());
        if let Ok(mut stores) = self.secret_stores.lock() {
            stores.insert(key.clone(), store);
        }
        let (ready, waiting) = tokio::sync::watch::channel(false);
        self.secrets
            .insert(key, WatchedSecret { ready, lists: 0, stream, subscribers: Vec::new() });
        waiting
    }

    fn unwatch_secret(&mut self, key: &SecretKey, ctx: &mut Context<Self>) {
        if let Some(watched) = self.secrets.remove(key) {
            ctx.cancel_future(watched.stream);
        }
        if let Ok(mut stores) = self.secret_stores.lock() {
            stores.remove(key);
        }
    }
}

impl Handler<WatchSecret> for KubeWriter {
    type Result = actix::MessageResult<WatchSecret>;

    fn handle(&mut self, WatchSecret(key): WatchSecret, ctx: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.watch_secret(key, ctx))
    }
}

impl Handler<SecretSubscription> for KubeWriter {
    type Result = ();

    fn handle(&mut self, subscription: SecretSubscription, ctx: &mut Context<Self>) {
        match subscription {
            SecretSubscription::Subscribe(key, recipient) => {
                self.watch_secret(key.clone(), ctx);
                if let Some(watched) = self.secrets.get_mut(&key) {
                    watched.subscribers.push(recipient);
                }
            }
            SecretSubscription::Unsubscribe(key, recipient) => {
                let Some(watched) = self.secrets.get_mut(&key) else {
                    return;
                };
                watched.subscribers.retain(|r| *r != recipient);
                if watched.subscribers.is_empty() {
                    self.unwatch_secret(&key, ctx);
                }
            }
        }
    }
}

impl StreamHandler<SecretItem> for KubeWriter {
    fn handle(&mut self, (key, event): SecretItem, _: &mut Context<Self>) {
        let Some(watched) = self.secrets.get_mut(&key) else {
            return;
        };
        let changed = match event {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => true,
            Ok(watcher::Event::InitDone) => {
                watched.ready.send_replace(true);
                watched.lists += 1;
                watched.lists > 1
            }
            Ok(_) => false,
            Err(error) => {
                tracing::warn!(namespace = %key.0, secret = %key.1, %error, "watch of a connection Secret failed; retrying");
                false
            }
        };
        if changed {
            for subscriber in &watched.subscribers {
                // A full mailbox drops the notice; the next poll reads the Secret anyway.
                let _ = subscriber.try_send(SecretChanged);
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {}
}
