//! LISTEN connections for `changeDetection.mode: notify`: one per connection
//! identity (host, port, database, user), shared by every DBQR of that
//! identity, channels multiplexed. Credentials are never shared across
//! identities. The connection takes a slot of the connection budget, uses TCP
//! keepalive and a round trip every [`PING`] so a half-open connection is
//! noticed within a minute, reconnects with backoff, and tells a subscriber
//! each time its channel is listened to (first, and after every reconnect):
//! a notification may have been missed before. A subscriber with newer
//! connection settings (a changed Secret) makes it reconnect with them.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::budget::{ConnectionBudget, ServerKey};
use super::connect::{connect_error, handshake, tls_connector, wire_config, ConnectError};
use super::conninfo::ConnInfo;
use super::deadline::within;
use crate::sql::quote_ident;

/// How often the LISTEN connection proves it is alive.
pub const PING: Duration = Duration::from_secs(20);
/// How long a ping may take before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a budget slot before trying again.
const SLOT_WAIT: Duration = Duration::from_secs(10);

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Notifications arrived on the subscriber's channel.
    Notified(Changed),
    /// The channel is listened to now (first, or again after a reconnect):
    /// changes before this moment may have been missed.
    Listening,
}

/// What the notifications say changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Anything may have: an empty payload (an unkeyed trigger, a TRUNCATE,
    /// keys over the payload limit), one that is not a list of keys, or
    /// more keys than a subscriber keeps.
    Anything,
    /// The rows of these keys (as `<key column>::text`), and nothing else.
    Keys(BTreeSet<String>),
}

/// Changed keys a subscriber keeps before they become [`Changed::Anything`]:
/// a keyed pass over more rows than this gains little over a full one.
pub const MAX_PENDING_KEYS: usize = 4096;

impl Changed {
    /// Reads a payload: a JSON array of strings (what `trigger-sql
    /// --key-column` sends) is keys; anything else means anything changed.
    /// Payloads are at most 8,000 bytes (PostgreSQL's limit).
    pub fn parse(payload: &str) -> Self {
        match serde_json::from_str::<Vec<String>>(payload) {
            Ok(keys) if !keys.is_empty() && keys.len() <= MAX_PENDING_KEYS => {
                Self::Keys(keys.into_iter().collect())
            }
            _ => Self::Anything,
        }
    }

    /// What `self` and then `later` changed, within [`MAX_PENDING_KEYS`].
    pub fn merge(self, later: Changed) -> Self {
        match (self, later) {
            (Self::Keys(mut keys), Self::Keys(more)) => {
                keys.extend(more);
                if keys.len() > MAX_PENDING_KEYS {
                    Self::Anything
                } else {
                    Self::Keys(keys)
                }
            }
            _ => Self::Anything,
        }
    }
}

impl Notice {
    /// One notice that says what `self` and then `later` say: listening
    /// again means a full pass, which covers any change.
    fn merge(self, later: Notice) -> Self {
        match (self, later) {
            (Self::Notified(a), Self::Notified(b)) => Self::Notified(a.merge(b)),
            _ => Self::Listening,
        }
    }
}

/// A subscriber's notices not yet taken, merged into one: a notice is
/// never dropped (its keys would be a lost change), and a burst costs one
/// pass. Bounded by [`MAX_PENDING_KEYS`].
#[derive(Default)]
struct Mailbox {
    pending: Mutex<Option<Notice>>,
    arrived: tokio::sync::Notify,
}

impl Mailbox {
    fn post(&self, notice: Notice) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending = Some(match pending.take() {
            Some(earlier) => earlier.merge(notice),
            None => notice,
        });
        drop(pending);
        self.arrived.notify_one();
    }

    async fn take(&self) -> Notice {
        loop {
            if let Some(notice) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return notice;
            }
            self.arrived.notified().await;
        }
    }
}

/// What a LISTEN connection is shared by: the server identity and a
/// fingerprint of the credentials and TLS settings. Only DBQRs that could
/// open the same connection themselves share it: one with a wrong password
/// neither borrows another's working connection nor makes it reconnect
/// with its own.
type HubKey = (ServerKey, [u8; 32]);

fn hub_key(info: &ConnInfo) -> HubKey {
    use sha2::{Digest, Sha256};
    (ServerKey::of(&info.config), Sha256::digest(settings(info)).into())
}

type Hubs = Arc<Mutex<HashMap<HubKey, mpsc::UnboundedSender<Command>>>>;

/// Every shared LISTEN connection of the operator.
#[derive(Clone, Default)]
pub struct Listeners {
    hubs: Hubs,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

/// A subscription to one channel; unsubscribes when dropped.
pub struct ChannelSubscription {
    notices: Arc<Mailbox>,
    id: u64,
    channel: String,
    hub: mpsc::UnboundedSender<Command>,
}

impl ChannelSubscription {
    /// The next notice, with every one that arrived since merged into it.
    pub async fn next(&self) -> Notice {
        self.notices.take().await
    }
}

impl Drop for ChannelSubscription {
    fn drop(&mut self) {
        let _ = self
            .hub
            .send(Command::Unsubscribe { id: self.id, channel: std::mem::take(&mut self.channel) });
    }
}

enum Command {
    Subscribe { id: u64, channel: String, info: Box<ConnInfo>, notices: Arc<Mailbox> },
    Unsubscribe { id: u64, channel: String },
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners").finish_non_exhaustive()
    }
}

impl Listeners {
    /// Subscribes to `channel` on the LISTEN connection of `info`'s identity,
    /// starting that connection if there is none. Must be called on a tokio runtime.
    pub fn subscribe(
        &self,
        info: &ConnInfo,
        channel: &str,
        budget: &ConnectionBudget,
    ) -> ChannelSubscription {
        let key = hub_key(info);
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notices = Arc::new(Mailbox::default());
        let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
        let hub = hubs.get(&key).filter(|hub| !hub.is_closed()).cloned().unwrap_or_else(|| {
            let (hub, commands) = mpsc::unbounded_channel();
            let registry = Registry { hubs: self.hubs.clone(), key: key.clone(), hub: hub.clone() };
            tokio::spawn(run_hub(registry, budget.clone(), commands));
            hubs.insert(key.clone(), hub.clone());
            hub
        });
        let _ = hub.send(Command::Subscribe {
            id,
            channel: channel.to_owned(),
            info: Box::new(info.clone()),
            notices: notices.clone(),
        });
        ChannelSubscription { notices, id, channel: channel.to_owned(), hub }
    }
}

/// Subscribers by channel.
type Channels = HashMap<String, Vec<(u64, Arc<Mailbox>)>>;

/// A hub's entry in the registry.
struct Registry {
    hubs: Hubs,
    key: HubKey,
    hub: mpsc::UnboundedSender<Command>,
}

impl Registry {
    /// The hub has no subscriber left: it leaves the registry and ends, unless
    /// a command arrived meanwhile (returned, to be applied). `subscribe`
    /// sends under the same lock, so no subscription can be lost in between.
    fn retire(&self, commands: &mut mpsc::UnboundedReceiver<Command>) -> Vec<Command> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = Vec::new();
        while let Ok(command) = commands.try_recv() {
            pending.push(command);
        }
        if pending.is_empty() && hubs.get(&self.key).is_some_and(|h| h.same_channel(&self.hub)) {
            hubs.remove(&self.key);
        }
        pending
    }
}

/// One identity's LISTEN connection, for as long as it has subscribers.
async fn run_hub(
    registry: Registry,
    budget: ConnectionBudget,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut hub = Hub { registry, commands, channels: HashMap::new(), info: None, failures: 0 };
    while hub.gather().await {
        let Some(slot) = budget.server(&hub.registry.key.0).acquire(SLOT_WAIT).await else {
            tracing::info!("no connection slot for the LISTEN connection yet");
            continue;
        };
        // Whatever arrived while waiting for the slot is LISTENed at once.
        while let Ok(command) = hub.commands.try_recv() {
            apply(command, &mut hub.channels, &mut hub.info, None).await;
        }
        let Some(current) = hub.info.clone().filter(|_| !hub.channels.is_empty()) else {
            continue;
        };
        let connection = match connect(&current, hub.channels.keys()).await {
            Ok(connection) => connection,
            Err(error) => {
                hub.failures = hub.failures.saturating_add(1);
                tracing::info!(reason = error.reason(), "LISTEN connection failed");
                drop(slot);
                let delay = crate::backoff::backoff(hub.failures, Duration::from_secs(30));
                wait_applying(&mut hub.commands, &mut hub.channels, &mut hub.info, delay).await;
                continue;
            }
        };
        hub.failures = 0;
        let Some(lost) = hub.serve(connection).await else {
            return;
        };
        tracing::info!(why = lost, "LISTEN connection lost; reconnecting");
        drop(slot);
    }
}

/// What a hub task holds: its registry entry, its commands, the channels
/// and their subscribers, the connection settings.
struct Hub {
    registry: Registry,
    commands: mpsc::UnboundedReceiver<Command>,
    channels: Channels,
    info: Option<ConnInfo>,
    failures: u32,
}

impl Hub {
    /// Gathers commands until there is something to connect with; `false`
    /// once the hub is to end (no subscriber left, no one to send more).
    async fn gather(&mut self) -> bool {
        while self.channels.is_empty() {
            let command = if self.info.is_none() {
                self.commands.recv().await
            } else {
                let mut pending = self.registry.retire(&mut self.commands).into_iter();
                let Some(first) = pending.next() else {
                    return false;
                };
                for command in pending {
                    apply(command, &mut self.channels, &mut self.info, None).await;
                }
                Some(first)
            };
            match command {
                Some(command) => apply(command, &mut self.channels, &mut self.info, None).await,
                None => return false,
            }
        }
        true
    }

    /// Serves `connection` until it is lost (why) or the hub is to end
    /// (`None`): notifications to their subscribers, commands applied, a
    /// ping every `PING` (a half-open connection answers none).
    async fn serve(&mut self, connection: SharedListener) -> Option<&'static str> {
        tracing::info!(channels = self.channels.len(), "listening for notifications");
        for subscribers in self.channels.values() {
            for (_, mailbox) in subscribers {
                mailbox.post(Notice::Listening);
            }
        }
        let SharedListener { client, mut notifications } = connection;
        let mut ping = tokio::time::interval(PING);
        ping.tick().await;
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    let before = self.info.as_ref().map(settings);
                    apply(command?, &mut self.channels, &mut self.info, Some(&client)).await;
                    if self.channels.is_empty() {
                        return Some("no subscriber is left");
                    }
                    if self.info.as_ref().map(settings) != before {
                        return Some("the connection settings changed");
                    }
                }
                notification = notifications.recv() => {
                    let Some((channel, payload)) = notification else {
                        return Some("the connection ended");
                    };
                    let Some(subscribers) = self.channels.get(&channel) else { continue };
                    let changed = Changed::parse(&payload);
                    for (_, mailbox) in subscribers {
                        mailbox.post(Notice::Notified(changed.clone()));
                    }
                }
                _ = ping.tick() => {
                    let alive = within(PING_TIMEOUT, client.simple_query("SELECT 1")).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        return Some("a ping went unanswered");
                    }
                }
            }
        }
    }
}

/// What identifies the connection settings (a changed Secret changes them).
fn settings(info: &ConnInfo) -> String {
    format!("{:?}{:?}{:?}", info.config.get_password(), info.ssl_mode, info.root_cert)
}

/// Applies a command; on a live connection, LISTENs or UNLISTENs as needed.
async fn apply(
    command: Command,
    channels: &mut Channels,
    info: &mut Option<ConnInfo>,
    client: Option<&tokio_postgres::Client>,
) {
    match command {
        Command::Subscribe { id, channel, info: newer, notices } => {
            *info = Some(*newer);
            let subscribers = channels.entry(channel.clone()).or_default();
            if let Some(client) = client {
                let listen = format!("LISTEN {}", quote_ident(&channel));
                let listening = !subscribers.is_empty()
                    || matches!(
                        within(PING_TIMEOUT, client.batch_execute(&listen)).await,
                        Ok(Ok(()))
                    );
                if listening {
                    notices.post(Notice::Listening);
                }
            }
            subscribers.push((id, notices));
        }
        Command::Unsubscribe { id, channel } => {
            let Some(subscribers) = channels.get_mut(&channel) else {
                return;
            };
            subscribers.retain(|(i, _)| *i != id);
            if subscribers.is_empty() {
                channels.remove(&channel);
                if let Some(client) = client {
                    let unlisten = format!("UNLISTEN {}", quote_ident(&channel));
                    let _ = within(PING_TIMEOUT, client.batch_execute(&unlisten)).await;
                }
            }
        }
    }
}

/// Sleeps `delay` while still taking commands (or until no subscriber is left).
async fn wait_applying(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    channels: &mut Channels,
    info: &mut Option<ConnInfo>,
    delay: Duration,
) {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return,
            command = commands.recv() => {
                let Some(command) = command else { return };
                apply(command, channels, info, None).await;
                if channels.is_empty() {
                    return;
                }
            }
        }
    }
}

/// An open LISTEN connection: the client, and the channels notifications arrive on.
struct SharedListener {
    client: tokio_postgres::Client,
    /// (channel, payload) of each notification.
    notifications: mpsc::UnboundedReceiver<(String, String)>,
}

/// Connects with keepalive and LISTENs on every channel, each round trip
/// within its deadline.
async fn connect<'a>(
    info: &ConnInfo,
    channels: impl Iterator<Item = &'a String>,
) -> Result<SharedListener, ConnectError> {
    let mut config = wire_config(info);
    // Told apart from the pools' connections in pg_stat_activity.
    let name =
        format!("{} (listen)", info.config.get_application_name().unwrap_or("db-query-operator"));
    config.application_name(&name);
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(20));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(4);
    let (client, mut connection) = handshake(&config, tls_connector(info)?).await?;
    // Unbounded: dropping one channel's notification because another's
    // flooded the buffer would lose a change; the hub drains it at once.
    let (tx, notifications) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
                }
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::debug!(code = notice.code().code(), "notice on the LISTEN connection");
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let statements: String = channels.map(|c| format!("LISTEN {};", quote_ident(c))).collect();
    within(PING_TIMEOUT, client.batch_execute(&statements))
        .await?
        .map_err(|e| connect_error(&e))?;
    Ok(SharedListener { client, notifications })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(keys: &[&str]) -> Changed {
        Changed::Keys(keys.iter().map(|k| k.to_string()).collect())
    }

    #[test]
    fn a_payload_of_keys_is_keys_and_anything_else_is_anything() {
        assert_eq!(Changed::parse(r#"["7","a b",""]"#), keys(&["7", "a b", ""]));
        for payload in ["", "[]", "{}", "7", r#"[7]"#, "not json", r#"["a""#] {
            assert_eq!(Changed::parse(payload), Changed::Anything, "{payload:?}");
        }
        let many: Vec<String> = (0..=MAX_PENDING_KEYS).map(|i| i.to_string()).collect();
        assert_eq!(Changed::parse(&serde_json::to_string(&many).unwrap()), Changed::Anything);
    }

    #[tokio::test]
    async fn notices_merge_and_none_is_lost() {
        let mailbox = Mailbox::default();
        mailbox.post(Notice::Notified(keys(&["1"])));
        mailbox.post(Notice::Notified(keys(&["2", "1"])));
        assert_eq!(mailbox.take().await, Notice::Notified(keys(&["1", "2"])));
        // Anything absorbs keys; listening again absorbs everything.
        mailbox.post(Notice::Notified(keys(&["3"])));
        mailbox.post(Notice::Notified(Changed::Anything));
        assert_eq!(mailbox.take().await, Notice::Notified(Changed::Anything));
        mailbox.post(Notice::Listening);
        mailbox.post(Notice::Notified(keys(&["4"])));
        assert_eq!(mailbox.take().await, Notice::Listening);
        // Past the bound, keys become anything.
        for i in 0..=MAX_PENDING_KEYS {
            mailbox.post(Notice::Notified(keys(&[&i.to_string()])));
        }
        assert_eq!(mailbox.take().await, Notice::Notified(Changed::Anything));
        // A notice posted while the taker waits wakes it.
        let mailbox = Arc::new(mailbox);
        let taker = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.take().await }
        });
        tokio::task::yield_now().await;
        mailbox.post(Notice::Notified(keys(&["5"])));
        assert_eq!(taker.await.unwrap(), Notice::Notified(keys(&["5"])));
    }
}
