//! The cluster engine: several relays share rooms through one Redis (7 or Valkey).
//!
//! Every room has, under one hash tag so a Redis Cluster keeps them on one shard:
//! - a meta hash `{epoch, top}` and a stream of its messages (entry id `<offset>-0`);
//! - a shard channel on which each new message is published.
//!
//! A publish runs `publish.lua`, which atomically checks the idempotency key, takes the next
//! offset, appends, trims (count and age) and publishes, so offsets are contiguous cluster-wide
//! and a retried id gets its original position on any node. The node that published delivers
//! the message to its own hub at once; every node subscribed to the room's channel gets it from
//! Redis and delivers it too (the hub ignores an offset it already has).
//!
//! A node subscribes only to rooms its hub holds. Pub/sub is at-most-once, so nothing relies on
//! it alone: a gap in offsets sends the room's members to history (see `hub`), a probe published
//! to the node's own channel detects a silent subscription (it is reconnected), and a periodic
//! check of every room's top offset against what the hub delivered turns anything still missing
//! into a resync from the stream. If Redis loses a room (restart without persistence, eviction),
//! the room gets a new epoch on next use and clients are told, as with the embedded engine.
//!
//! Publishes go to Redis in pipelines, one at a time, in the order they were made, so a
//! client's publishes keep their order. A pipeline that fails on the connection is retried
//! (the idempotency key makes that safe) until twice `command_timeout` has passed since its
//! first failure, which itself came one `command_timeout` after the first attempt; then the
//! publish is refused with `store_unavailable`, never acknowledged: about 3 x `command_timeout`
//! after it was made, up to 4 x for one queued behind it (docs/operations.md has the figures).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, Client, ClientLike, Config as FredConfig, Error as FredError, ErrorKind, EventInterface, HashesInterface,
    KeysInterface, LuaInterface, PubsubInterface, ReconnectPolicy, StreamsInterface, Value,
};
use fred::types::{ClusterHash, CustomCommand};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Accepted, CallLink, Done, Engine, EngineError, Publish, SessionLink};
use crate::connection::unix_ms;
use crate::control::{Control, Revocation};
use crate::hub::remote::{LocalPresence, OtherNodes, PresenceLink, RemoteEntry};
use crate::hub::{Hub, RoomKey};
use crate::outbox::Wakes;
use crate::proto::presence::{PresenceEntry, Status};
use crate::proto::{Payload, Position, RoomName};
use crate::store::{Cursor, Retention, RoomMeta, StoredMessage, new_epoch};

const PUBLISH_LUA: &str = include_str!("publish.lua");
const META_LUA: &str = include_str!("meta.lua");

/// An unused room's meta (its epoch and offset counter) is kept this long.
const ROOM_META_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// A user's cursors are kept this long after their last update.
const CURSORS_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// A room the hub no longer holds is unsubscribed after this long unused.
const UNSUBSCRIBE_AFTER_MS: u64 = 60_000;
/// Messages read per step when a room is resynchronised from its stream.
const RESYNC_PAGE: usize = 512;
/// Rooms checked per pipeline by the top-offset check.
const CHECK_CHUNK: usize = 256;
/// Pause before a failed pipeline is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Pub/sub messages buffered between Redis and the node's listener.
const PUBSUB_BUFFER: usize = 65_536;

#[derive(Debug, Clone)]
pub struct RedisEngineConfig {
    /// `redis://[user:password@]host:port[/db]`
    pub url: String,
    /// Prefix of every key and channel, so several deployments can share one Redis.
    pub prefix: String,
    pub retention: Retention,
    pub dedupe_window_ms: u64,
    /// Most publishes in one pipeline.
    pub max_batch: usize,
    /// A command without an answer after this long fails (and the connection is reconnected).
    pub command_timeout: Duration,
    /// How often every room's top offset is compared with what this node delivered.
    pub resync_every: Duration,
    /// How often a probe is published to this node's own channel.
    pub probe_every: Duration,
    /// A probe not received within this is a silent subscription: it is reconnected.
    pub probe_timeout: Duration,
    /// How long this node's presence entries count for other nodes without a refresh: the
    /// bound on how long a dead node's users stay present.
    pub presence_ttl: Duration,
}

/// A message as Redis holds it (stream entry field `m`, and after `<epoch>:<offset>:` on the
/// room's channel): postcard, so payloads stay bytes.
#[derive(Serialize, Deserialize)]
struct WireMessage {
    time: u64,
    from: String,
    id: String,
    data: Bytes,
}

fn encode_message(p: &Publish) -> Bytes {
    let wire = WireMessage { time: p.now_ms, from: p.from.clone(), id: p.id.clone(), data: p.data.0.clone() };
    Bytes::from(postcard::to_allocvec(&wire).unwrap_or_default())
}

fn decode_message(offset: u64, bytes: &[u8]) -> Option<StoredMessage> {
    let wire: WireMessage = postcard::from_bytes(bytes).ok()?;
    Some(StoredMessage { offset, time: wire.time, from: wire.from, id: wire.id, data: Payload(wire.data) })
}

/// `<epoch>:<offset>:<message>`, as `publish.lua` publishes it.
fn parse_published(bytes: &[u8]) -> Option<(u64, StoredMessage)> {
    let mut parts = bytes.splitn(3, |b| *b == b':');
    let epoch = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let offset = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    Some((epoch, decode_message(offset, parts.next()?)?))
}

/// Key and channel names. A room's are all `<prefix>:{<tenant>/<room>}...`: the braces make it
/// one Redis Cluster hash slot, and a room name cannot contain `/`, so the pair is unambiguous.
struct Names {
    prefix: String,
}

impl Names {
    fn channel(&self, key: &RoomKey) -> String {
        format!("{}:{{{}/{}}}", self.prefix, key.tenant, key.room.as_str())
    }

    fn meta(channel: &str) -> String {
        format!("{channel}:m")
    }

    fn stream(channel: &str) -> String {
        format!("{channel}:s")
    }

    fn idempotency(channel: &str, from: &str, id: &str) -> String {
        format!("{channel}:i:{}:{from}{id}", from.len())
    }

    fn cursors(&self, tenant: &str, user: &str) -> String {
        format!("{}:{{{tenant}/{user}}}:cursors", self.prefix)
    }

    fn probe(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// A room's members on every node: field `<node>/<user>`, value `<expires ms>\n<entry JSON>`.
    fn presence(channel: &str) -> String {
        format!("{channel}:p")
    }

    /// Where server API actions travel between nodes.
    fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// Where the call service's messages travel between nodes (`crate::call::region`).
    fn calls(&self) -> String {
        format!("{}:calls", self.prefix)
    }

    /// Where the receipts service's changes travel between nodes (`crate::receipts`).
    fn receipts(&self) -> String {
        format!("{}:receipts", self.prefix)
    }

    /// Where the notifications service's per-user events travel between nodes
    /// (`crate::notify::region`).
    fn notifications(&self) -> String {
        format!("{}:notifications", self.prefix)
    }

    /// Where collaborative-session messages for `node` travel (`crate::collab::region`).
    fn sessions(&self, node: &str) -> String {
        format!("{}:sessions:{node}", self.prefix)
    }

    /// Revocations in force, by [`Revocation::key`](crate::control::Revocation::key).
    fn revocations(&self) -> String {
        format!("{}:revocations", self.prefix)
    }

    /// Every node's last report (the admin view): field `<node>`, value the report's JSON.
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

/// The URL without its password, for logs and errors.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => "<unparsable url>".to_string(),
    }
}

fn unavailable(err: FredError) -> EngineError {
    EngineError::Unavailable(format!("redis: {err}"))
}

use crate::lock::lock;

/// Whether a failed command may have failed on the way (worth sending again), rather than being
/// refused by Redis.
fn transient(err: &FredError) -> bool {
    matches!(err.kind(), ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Routing)
        || err.details().starts_with("LOADING")
        || err.details().starts_with("BUSY")
}

fn is_noscript(err: &FredError) -> bool {
    err.details().starts_with("NOSCRIPT")
}

/// A publish waiting for Redis.
struct Pending {
    publish: Publish,
    message: Bytes,
    done: Done,
    first_sent: Option<Instant>,
}

/// A room this node is subscribed to.
struct Subscription {
    channel: String,
    last_used_ms: u64,
    /// `(epoch, top)` Redis reported at the previous check.
    seen: Option<(u64, u64)>,
}

/// A room to check: its key, channel, and the `(epoch, top)` seen at the previous check.
type CheckedRoom = (RoomKey, String, Option<(u64, u64)>);

#[derive(Default)]
struct Subscriptions {
    rooms: HashMap<RoomKey, Subscription>,
    by_channel: HashMap<String, RoomKey>,
}

struct Scripts {
    publish: String,
    meta: String,
}

struct Shared {
    config: RedisEngineConfig,
    names: Names,
    client: Client,
    subscriber: SubscriberClient,
    hub: Arc<Hub>,
    scripts: Scripts,
    subs: Mutex<Subscriptions>,
    /// Serialises subscribe and unsubscribe commands, so they reach Redis in decision order.
    subscribing: tokio::sync::Mutex<()>,
    probe_channel: String,
    probe_received: AtomicU64,
    node: String,
    control_channel: String,
    /// Actions from other nodes, for the relay to apply.
    controls: mpsc::UnboundedSender<Control>,
    /// Other nodes' presence, for the awareness service.
    others: mpsc::UnboundedSender<OtherNodes>,
    calls_channel: String,
    /// Other nodes' call messages, for the call service.
    calls_in: mpsc::UnboundedSender<(String, String)>,
    receipts_channel: String,
    /// Other nodes' receipts changes, for the receipts service.
    receipts_in: mpsc::UnboundedSender<(String, String)>,
    notifications_channel: String,
    /// Other nodes' notification events, for the notifications service.
    notifications_in: mpsc::UnboundedSender<(String, String)>,
    /// This node's collaborative-session channel.
    sessions_channel: String,
    /// Other nodes' session messages for this node, for the collaborative-session service.
    sessions_in: mpsc::UnboundedSender<(String, Vec<u8>)>,
    check_now: Notify,
    resyncs: metrics::Counter,
    probe_failures: metrics::Counter,
    /// [`crate::metrics::REDIS_UP`].
    up: metrics::Gauge,
}

pub struct RedisEngine {
    shared: Arc<Shared>,
    remote_controls: Mutex<Option<mpsc::UnboundedReceiver<Control>>>,
    presence_link: Mutex<Option<PresenceLink>>,
    call_link: Mutex<Option<CallLink>>,
    receipts_link: Mutex<Option<CallLink>>,
    notifications_link: Mutex<Option<CallLink>>,
    session_link: Mutex<Option<SessionLink>>,
    queue: Mutex<Option<mpsc::UnboundedSender<Pending>>>,
    /// Actions (and events) for the other nodes, sent one at a time in this order.
    actions: mpsc::UnboundedSender<Control>,
    stopping: AtomicBool,
    publisher: TaskTracker,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl RedisEngine {
    /// Connects to Redis (failing if it cannot within `command_timeout`), loads the scripts and
    /// starts the publisher, the pub/sub listener, the probe and the top-offset check.
    pub async fn connect(config: RedisEngineConfig, hub: Arc<Hub>) -> Result<RedisEngine, EngineError> {
        let fred_config = FredConfig::from_url(&config.url)
            .map_err(|e| EngineError::Unavailable(format!("redis url {}: {e}", redacted(&config.url))))?;
        let mut builder = Builder::from_config(fred_config);
        builder
            .with_performance_config(|p| {
                p.default_command_timeout = config.command_timeout;
                p.broadcast_channel_capacity = PUBSUB_BUFFER;
            })
            .with_connection_config(|c| {
                c.connection_timeout = config.command_timeout;
                c.internal_command_timeout = config.command_timeout;
                c.unresponsive.max_timeout = Some(config.command_timeout);
                c.unresponsive.interval = (config.command_timeout / 4).max(Duration::from_millis(50));
            })
            .set_policy(ReconnectPolicy::new_constant(0, 200));
        let client = builder.build().map_err(unavailable)?;
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;
        let connect = async {
            client.init().await?;
            subscriber.init().await?;
            let publish: String = client.script_load(PUBLISH_LUA).await?;
            let meta: String = client.script_load(META_LUA).await?;
            Ok::<_, FredError>(Scripts { publish, meta })
        };
        let scripts = match tokio::time::timeout(config.command_timeout, connect).await {
            Ok(Ok(scripts)) => scripts,
            Ok(Err(err)) => return Err(unavailable(err)),
            Err(_) => {
                let _ = client.quit().await;
                let _ = subscriber.quit().await;
                return Err(EngineError::Unavailable(format!("redis at {} did not answer", redacted(&config.url))));
            }
        };
        let names = Names { prefix: config.prefix.clone() };
        let node = format!("{:016x}", rand::random::<u64>());
        let (controls, remote_controls) = mpsc::unbounded_channel();
        let (others, others_rx) = mpsc::unbounded_channel();
        let (local_tx, local_rx) = mpsc::unbounded_channel();
        let (calls_in, calls_in_rx) = mpsc::unbounded_channel();
        let (calls_out, calls_out_rx) = mpsc::unbounded_channel();
        let (receipts_in, receipts_in_rx) = mpsc::unbounded_channel();
        let (receipts_out, receipts_out_rx) = mpsc::unbounded_channel();
        let (notifications_in, notifications_in_rx) = mpsc::unbounded_channel();
        let (notifications_out, notifications_out_rx) = mpsc::unbounded_channel();
        let (sessions_in, sessions_in_rx) = mpsc::unbounded_channel();
        let (sessions_out, sessions_out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            probe_channel: names.probe(&node),
            control_channel: names.control(),
            calls_channel: names.calls(),
            calls_in,
            receipts_channel: names.receipts(),
            receipts_in,
            notifications_channel: names.notifications(),
            notifications_in,
            sessions_channel: names.sessions(&node),
            sessions_in,
            node: node.clone(),
            controls,
            others,
            names,
            client,
            subscriber,
            hub,
            scripts,
            subs: Mutex::new(Subscriptions::default()),
            subscribing: tokio::sync::Mutex::new(()),
            probe_received: AtomicU64::new(0),
            check_now: Notify::new(),
            resyncs: metrics::counter!(crate::metrics::REDIS_RESYNCS_TOTAL),
            probe_failures: metrics::counter!(crate::metrics::REDIS_PROBE_FAILURES_TOTAL),
            up: metrics::gauge!(crate::metrics::REDIS_UP),
            config,
        });
        let own = vec![
            shared.probe_channel.clone(),
            shared.control_channel.clone(),
            shared.calls_channel.clone(),
            shared.receipts_channel.clone(),
            shared.notifications_channel.clone(),
            shared.sessions_channel.clone(),
        ];
        shared.subscriber.ssubscribe(own).await.map_err(unavailable)?;
        shared.load_revocations().await?;
        let (queue, rx) = mpsc::unbounded_channel();
        let (publisher, tasks, stop) = (TaskTracker::new(), TaskTracker::new(), CancellationToken::new());
        publisher.spawn(run_publisher(shared.clone(), rx));
        tasks.spawn(run_listener(shared.clone(), stop.clone()));
        tasks.spawn(run_probe(shared.clone(), stop.clone()));
        tasks.spawn(run_checks(shared.clone(), stop.clone()));
        tasks.spawn(run_presence(shared.clone(), local_rx, stop.clone()));
        tasks.spawn(run_outbound(shared.clone(), shared.calls_channel.clone(), calls_out_rx, stop.clone()));
        tasks.spawn(run_outbound(shared.clone(), shared.receipts_channel.clone(), receipts_out_rx, stop.clone()));
        let notifications_channel = shared.notifications_channel.clone();
        tasks.spawn(run_outbound(shared.clone(), notifications_channel, notifications_out_rx, stop.clone()));
        let (actions, actions_rx) = mpsc::unbounded_channel();
        tasks.spawn(run_actions(shared.clone(), actions_rx, stop.clone()));
        tasks.spawn(run_sessions(shared.clone(), sessions_out_rx, stop.clone()));
        tracing::info!(url = %redacted(&shared.config.url), node = %shared.node, "redis engine connected");
        shared.up.set(1.0);
        let (sessions_client, sessions_prefix) = (shared.client.clone(), shared.config.prefix.clone());
        Ok(RedisEngine {
            shared,
            remote_controls: Mutex::new(Some(remote_controls)),
            presence_link: Mutex::new(Some(PresenceLink { local: local_tx, others: others_rx })),
            call_link: Mutex::new(Some(CallLink { node: node.clone(), out: calls_out, inbound: calls_in_rx })),
            receipts_link: Mutex::new(Some(CallLink {
                node: node.clone(),
                out: receipts_out,
                inbound: receipts_in_rx,
            })),
            notifications_link: Mutex::new(Some(CallLink {
                node: node.clone(),
                out: notifications_out,
                inbound: notifications_in_rx,
            })),
            session_link: Mutex::new(Some(SessionLink {
                node,
                out: sessions_out,
                inbound: sessions_in_rx,
                client: sessions_client,
                prefix: sessions_prefix,
            })),
            queue: Mutex::new(Some(queue)),
            actions,
            stopping: AtomicBool::new(false),
            publisher,
            tasks,
            stop,
        })
    }
}

impl RedisEngine {
    /// The engine's command connection, for other data kept in the same Redis (the call
    /// history).
    pub fn client(&self) -> Client {
        self.shared.client.clone()
    }
}

impl Shared {
    /// The `EVALSHA` arguments of `publish.lua` for a message, published on the room's channel
    /// (or on `publish_to`, for tests that lose pub/sub messages on purpose).
    fn publish_command(&self, publish: &Publish, message: &Bytes, publish_to: Option<&str>) -> Vec<Value> {
        let channel = self.names.channel(&publish.key);
        let publish_to = publish_to.unwrap_or(&channel);
        let r = &self.config.retention;
        vec![
            Value::from(self.scripts.publish.as_str()),
            Value::Integer(3),
            Value::from(Names::meta(&channel)),
            Value::from(Names::stream(&channel)),
            Value::from(Names::idempotency(&channel, &publish.from, &publish.id)),
            Value::Bytes(message.clone()),
            Value::from(publish.now_ms.to_string()),
            Value::from(self.config.dedupe_window_ms.max(1).to_string()),
            Value::from(r.max_messages.max(1).to_string()),
            Value::from(r.max_age_ms.max(1).to_string()),
            Value::from(new_epoch().to_string()),
            Value::from(publish_to.to_string()),
            Value::from(ROOM_META_TTL_MS.to_string()),
            Value::from(self.hub.position(&publish.key).map_or(String::new(), |p| format!("{}:{}", p.epoch, p.offset))),
        ]
    }

    /// Sends one pipeline of publishes; returns those to send again.
    async fn commit(&self, batch: Vec<Pending>) -> Vec<Pending> {
        let pipeline = self.client.pipeline();
        let evalsha = evalsha();
        let commands: Vec<Vec<Value>> =
            batch.iter().map(|p| self.publish_command(&p.publish, &p.message, None)).collect();
        for args in commands {
            let queued: Result<(), FredError> = pipeline.custom(evalsha.clone(), args).await;
            if let Err(err) = queued {
                tracing::debug!(%err, "queueing a publish in a pipeline");
            }
        }
        let mut results = pipeline.try_all::<Value>().await.into_iter();
        let mut retry = Vec::new();
        let mut reload = false;
        for mut p in batch {
            let result = results.next().unwrap_or_else(|| Err(FredError::new(ErrorKind::IO, "no reply")));
            match result.map_err(|e| (is_noscript(&e), transient(&e), e)) {
                Ok(value) => self.accepted(p, value),
                Err((true, _, _)) => {
                    reload = true;
                    retry.push(p);
                }
                Err((false, true, err)) => {
                    let first = *p.first_sent.get_or_insert_with(Instant::now);
                    if first.elapsed() < self.config.command_timeout * 2 {
                        retry.push(p);
                    } else {
                        p.done.complete(Err(unavailable(err)));
                    }
                }
                Err((false, false, err)) => p.done.complete(Err(unavailable(err))),
            }
        }
        if reload {
            // Redis restarted (or its script cache was flushed): load the scripts again.
            for script in [PUBLISH_LUA, META_LUA] {
                if let Err(err) = self.client.script_load::<String, _>(script).await {
                    tracing::warn!(%err, "loading the redis scripts");
                }
            }
        }
        retry
    }

    /// A publish Redis answered: delivered here (other nodes get it through pub/sub), then
    /// acknowledged.
    fn accepted(&self, p: Pending, value: Value) {
        let reply = value.into_array();
        let number = |i: usize| reply.get(i).and_then(Value::as_u64);
        let (Some(duplicate), Some(epoch), Some(offset)) = (number(0), number(1), number(2)) else {
            p.done.complete(Err(EngineError::Unavailable(format!("redis: unexpected publish reply {reply:?}"))));
            return;
        };
        // A duplicate of a publish this node already sent once (its reply was lost) is this
        // publish itself: deliver it (the hub ignores it if it has it) and acknowledge it as new.
        let retried = p.first_sent.is_some();
        if duplicate == 0 || retried {
            let Publish { from, id, data, now_ms, key } = p.publish;
            let message = StoredMessage { offset, time: now_ms, from, id, data };
            let committed = std::time::Instant::now();
            let delivered = self.hub.deliver(&key, epoch, &message);
            crate::metrics::delivered(committed, delivered.delivered);
        }
        let position = Position { epoch, offset };
        p.done.complete(Ok(Accepted { position, duplicate: duplicate == 1 && !retried }));
    }

    /// Subscribes to the room's channel unless already subscribed; marks it used.
    async fn subscribe(&self, key: &RoomKey) -> Result<(), EngineError> {
        let now = unix_ms();
        if let Some(sub) = lock(&self.subs).rooms.get_mut(key) {
            sub.last_used_ms = now;
            return Ok(());
        }
        let _order = self.subscribing.lock().await;
        if lock(&self.subs).rooms.contains_key(key) {
            return Ok(());
        }
        let channel = self.names.channel(key);
        self.subscriber.ssubscribe(channel.clone()).await.map_err(unavailable)?;
        {
            let mut subs = lock(&self.subs);
            subs.by_channel.insert(channel.clone(), key.clone());
            subs.rooms.insert(key.clone(), Subscription { channel: channel.clone(), last_used_ms: now, seen: None });
        }
        // Who is here on other nodes, before their next change or refresh.
        self.read_presence(vec![(key.clone(), channel)]).await;
        Ok(())
    }

    /// Subscribes again to every room this node holds and to its probe, from its own record
    /// (after a reconnect, Redis knows none of them).
    async fn resubscribe(&self) {
        let _order = self.subscribing.lock().await;
        let mut channels: Vec<String> = lock(&self.subs).rooms.values().map(|sub| sub.channel.clone()).collect();
        channels.push(self.probe_channel.clone());
        channels.push(self.control_channel.clone());
        channels.push(self.calls_channel.clone());
        channels.push(self.receipts_channel.clone());
        channels.push(self.notifications_channel.clone());
        channels.push(self.sessions_channel.clone());
        for chunk in channels.chunks(1000) {
            if let Err(err) = self.subscriber.ssubscribe(chunk.to_vec()).await {
                tracing::warn!(%err, "subscribing again after a reconnect");
            }
        }
    }

    /// Unsubscribes rooms the hub dropped and nobody used for a while.
    async fn unsubscribe_unused(&self, now_ms: u64) {
        let _order = self.subscribing.lock().await;
        let unused: Vec<String> = {
            let mut subs = lock(&self.subs);
            let stale: Vec<RoomKey> = subs
                .rooms
                .iter()
                .filter(|(key, sub)| {
                    now_ms.saturating_sub(sub.last_used_ms) >= UNSUBSCRIBE_AFTER_MS && !self.hub.has_room(key)
                })
                .map(|(key, _)| key.clone())
                .collect();
            let mut channels = Vec::with_capacity(stale.len());
            for key in stale {
                if let Some(sub) = subs.rooms.remove(&key) {
                    subs.by_channel.remove(&sub.channel);
                    channels.push(sub.channel);
                }
            }
            channels
        };
        if !unused.is_empty()
            && let Err(err) = self.subscriber.sunsubscribe(unused).await
        {
            tracing::warn!(%err, "unsubscribing unused rooms");
        }
    }

    /// Revocations still in force, for the relay to apply before it serves; lapsed ones are
    /// deleted.
    async fn load_revocations(&self) -> Result<(), EngineError> {
        let hash = self.names.revocations();
        let all: HashMap<String, String> = self.client.hgetall(hash.as_str()).await.map_err(unavailable)?;
        let now_s = unix_ms() / 1000;
        let mut lapsed = Vec::new();
        for (key, json) in all {
            match serde_json::from_str::<Revocation>(&json) {
                Ok(revocation) if revocation.until > now_s => drop(self.controls.send(Control::Revoke(revocation))),
                _ => lapsed.push(key),
            }
        }
        if !lapsed.is_empty() {
            let _: Value = self.client.hdel(hash, lapsed).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// Publishes an action for the other nodes; a revocation is also kept for nodes that start
    /// later.
    async fn broadcast(&self, control: Control) -> Result<(), FredError> {
        let json = serde_json::to_string(&control).unwrap_or_default();
        if let Control::Revoke(revocation) = &control {
            let _: Value = self.client.hset(self.names.revocations(), (revocation.key(), json.as_str())).await?;
        }
        let _: Value = self.client.spublish(self.control_channel.as_str(), format!("{}\n{json}", self.node)).await?;
        Ok(())
    }

    /// A message from pub/sub: a room's message, this node's probe, an action, or a call
    /// message.
    fn on_message(&self, channel: &str, value: &Value) {
        if channel == self.probe_channel {
            if let Some(seq) = value.as_u64() {
                self.probe_received.fetch_max(seq, Ordering::Relaxed);
            }
            return;
        }
        if let Some(bytes) = value.as_bytes()
            && let Some(presence) = bytes.strip_prefix(b"p\n")
        {
            let Some(key) = lock(&self.subs).by_channel.get(channel).cloned() else { return };
            match parse_presence(presence) {
                Some(remote) if *remote.node != *self.node => {
                    let _ = self.others.send(OtherNodes::Set { room: key, remote });
                }
                Some(_) => {}
                None => tracing::warn!(channel, "undecodable presence on a room channel"),
            }
            return;
        }
        if let Some(bytes) = value.as_bytes()
            && let Some(typing) = bytes.strip_prefix(b"t\n")
        {
            let Some(room) = lock(&self.subs).by_channel.get(channel).cloned() else { return };
            let text = std::str::from_utf8(typing).unwrap_or_default();
            let mut parts = text.splitn(3, '\n');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(node), Some(flag), Some(user)) if node != self.node => {
                    let (node, user, typing) = (node.into(), user.to_owned(), flag == "1");
                    let _ = self.others.send(OtherNodes::Typing { room, node, user, typing });
                }
                (Some(_), Some(_), Some(_)) => {}
                _ => tracing::warn!(channel, "undecodable typing on a room channel"),
            }
            return;
        }
        let region = if channel == self.calls_channel {
            Some(&self.calls_in)
        } else if channel == self.receipts_channel {
            Some(&self.receipts_in)
        } else if channel == self.notifications_channel {
            Some(&self.notifications_in)
        } else {
            None
        };
        if let Some(inbound) = region {
            match value.as_str().as_deref().and_then(|text| text.split_once('\n')) {
                Some((node, _)) if node == self.node => {}
                Some((node, body)) => drop(inbound.send((node.to_owned(), body.to_owned()))),
                None => tracing::warn!(channel, "undecodable message on a region channel"),
            }
            return;
        }
        if channel == self.sessions_channel {
            let parsed = value.as_bytes().and_then(|b| {
                let split = b.iter().position(|c| *c == b'\n')?;
                Some((std::str::from_utf8(&b[..split]).ok()?, unframe(&b[split + 1..])?))
            });
            match parsed {
                Some((node, chunks)) => {
                    for chunk in chunks {
                        let _ = self.sessions_in.send((node.to_owned(), chunk));
                    }
                }
                None => tracing::warn!("undecodable message on the sessions channel"),
            }
            return;
        }
        if channel == self.control_channel {
            let text = value.as_str().unwrap_or_default();
            match text.split_once('\n') {
                Some((node, _)) if node == self.node => {}
                Some((_, json)) => match serde_json::from_str::<Control>(json) {
                    Ok(control) => drop(self.controls.send(control)),
                    Err(err) => tracing::warn!(%err, "undecodable action on the control channel"),
                },
                None => tracing::warn!("undecodable action on the control channel"),
            }
            return;
        }
        let Some(key) = lock(&self.subs).by_channel.get(channel).cloned() else { return };
        match value.as_bytes().and_then(parse_published) {
            Some((epoch, message)) => {
                let received = std::time::Instant::now();
                let delivered = self.hub.deliver(&key, epoch, &message);
                crate::metrics::delivered(received, delivered.delivered);
            }
            None => tracing::warn!(channel, "undecodable message on a room channel"),
        }
    }

    async fn meta(&self, key: &RoomKey) -> Result<RoomMeta, EngineError> {
        let channel = self.names.channel(key);
        let keys = vec![Names::meta(&channel), Names::stream(&channel)];
        let args = vec![new_epoch().to_string(), ROOM_META_TTL_MS.to_string()];
        let reply =
            match self.client.evalsha::<Value, _, _, _>(self.scripts.meta.as_str(), keys.clone(), args.clone()).await {
                Err(err) if is_noscript(&err) => {
                    self.client.script_load::<String, _>(META_LUA).await.map_err(unavailable)?;
                    self.client.evalsha::<Value, _, _, _>(self.scripts.meta.as_str(), keys, args).await
                }
                other => other,
            }
            .map_err(unavailable)?
            .into_array();
        let number = |i: usize| reply.get(i).and_then(Value::as_u64);
        match (number(0), number(1), number(2)) {
            (Some(epoch), Some(first), Some(top)) => Ok(RoomMeta { epoch, first, top }),
            _ => Err(EngineError::Unavailable(format!("redis: unexpected meta reply {reply:?}"))),
        }
    }

    async fn read_after(&self, key: &RoomKey, after: u64, limit: usize) -> Result<Vec<StoredMessage>, EngineError> {
        let stream = Names::stream(&self.names.channel(key));
        let entries: Value = self
            .client
            .xrange(stream, format!("{}-0", after.saturating_add(1)), "+", Some(limit as u64))
            .await
            .map_err(unavailable)?;
        Ok(parse_entries(entries))
    }

    async fn read_before(&self, key: &RoomKey, before: u64, limit: usize) -> Result<Vec<StoredMessage>, EngineError> {
        if before <= 1 {
            return Ok(Vec::new());
        }
        let stream = Names::stream(&self.names.channel(key));
        let entries: Value = self
            .client
            .xrevrange(stream, format!("({before}-0"), "-", Some(limit as u64))
            .await
            .map_err(unavailable)?;
        let mut messages = parse_entries(entries);
        messages.reverse();
        Ok(messages)
    }

    fn presence_expiry(&self) -> u64 {
        unix_ms() + self.config.presence_ttl.as_millis() as u64
    }

    /// One local change: into the room's presence hash, and to the nodes holding the room.
    async fn share_change(&self, room: &RoomKey, entry: &PresenceEntry) -> Result<(), FredError> {
        let channel = self.names.channel(room);
        let hash = Names::presence(&channel);
        let field = format!("{}/{}", self.node, entry.user);
        let expires = self.presence_expiry();
        let pipeline = self.client.pipeline();
        if entry.status == Status::Offline {
            let _: () = pipeline.hdel(hash.as_str(), field).await?;
        } else {
            let _: () = pipeline.hset(hash.as_str(), (field, presence_value(expires, entry))).await?;
            let _: () = pipeline.pexpire(hash.as_str(), 2 * self.config.presence_ttl.as_millis() as i64, None).await?;
        }
        let message = format!("p\n{}\n{}", self.node, presence_value(expires, entry));
        let _: () = pipeline.spublish(channel, message).await?;
        pipeline.all::<Value>().await.map(drop)
    }

    /// Every local entry again (they would lapse otherwise), then a fresh read of every held
    /// room.
    async fn share_all(&self, rooms: Vec<(RoomKey, Vec<PresenceEntry>)>) -> Result<(), FredError> {
        let expires = self.presence_expiry();
        let ttl = 2 * self.config.presence_ttl.as_millis() as i64;
        for chunk in rooms.chunks(CHECK_CHUNK) {
            let pipeline = self.client.pipeline();
            for (room, entries) in chunk.iter().filter(|(_, entries)| !entries.is_empty()) {
                let hash = Names::presence(&self.names.channel(room));
                let fields: Vec<(String, String)> =
                    entries.iter().map(|e| (format!("{}/{}", self.node, e.user), presence_value(expires, e))).collect();
                let _: () = pipeline.hset(hash.as_str(), fields).await?;
                let _: () = pipeline.pexpire(hash.as_str(), ttl, None).await?;
            }
            pipeline.all::<Value>().await.map(drop)?;
        }
        let held: Vec<(RoomKey, String)> = lock(&self.subs)
            .rooms
            .iter()
            .filter(|(key, _)| self.hub.has_room(key))
            .map(|(key, sub)| (key.clone(), sub.channel.clone()))
            .collect();
        self.read_presence(held).await;
        Ok(())
    }

    /// Reads rooms' presence hashes and hands the other nodes' entries still in force to the
    /// awareness service; lapsed fields are deleted.
    async fn read_presence(&self, rooms: Vec<(RoomKey, String)>) {
        let now = unix_ms();
        for chunk in rooms.chunks(CHECK_CHUNK) {
            let pipeline = self.client.pipeline();
            for (_, channel) in chunk {
                let queued: Result<(), FredError> = pipeline.hgetall(Names::presence(channel)).await;
                if let Err(err) = queued {
                    tracing::debug!(%err, "queueing a presence read");
                }
            }
            let replies = pipeline.try_all::<HashMap<String, String>>().await;
            for ((room, channel), reply) in chunk.iter().zip(replies) {
                let Ok(fields) = reply else { continue };
                let mut entries = Vec::new();
                let mut lapsed = Vec::new();
                for (field, value) in fields {
                    let Some((node, _)) = field.split_once('/') else { continue };
                    match parse_presence(format!("{node}\n{value}").as_bytes()) {
                        Some(remote) if remote.expires <= now => lapsed.push(field),
                        Some(remote) if *remote.node != *self.node => entries.push(remote),
                        Some(_) => {}
                        None => lapsed.push(field),
                    }
                }
                if !lapsed.is_empty() {
                    let _: Result<Value, FredError> = self.client.hdel(Names::presence(channel), lapsed).await;
                }
                let _ = self.others.send(OtherNodes::Replace { room: room.clone(), entries });
            }
        }
    }

    /// Compares every held room's top offset in Redis with what the hub delivered, and reads
    /// from the stream whatever pub/sub did not bring within one check interval.
    async fn check_rooms(&self) {
        let rooms: Vec<CheckedRoom> = lock(&self.subs)
            .rooms
            .iter()
            .filter(|(key, _)| self.hub.has_room(key))
            .map(|(key, sub)| (key.clone(), sub.channel.clone(), sub.seen))
            .collect();
        for chunk in rooms.chunks(CHECK_CHUNK) {
            let pipeline = self.client.pipeline();
            for (_, channel, _) in chunk {
                let queued: Result<(), FredError> = pipeline.hmget(Names::meta(channel), vec!["epoch", "top"]).await;
                if let Err(err) = queued {
                    tracing::debug!(%err, "queueing a room check");
                }
            }
            let replies = pipeline.try_all::<Value>().await;
            for ((key, _, seen), reply) in chunk.iter().zip(replies) {
                let Ok(reply) = reply else { continue };
                let reply = reply.into_array();
                let now = match (reply.first().and_then(Value::as_u64), reply.get(1).and_then(Value::as_u64)) {
                    (Some(epoch), Some(top)) => Some((epoch, top)),
                    _ => None,
                };
                let here = self.hub.position(key);
                if let (Some((epoch, top)), Some(here)) = (now, here)
                    && epoch == here.epoch
                    && top < here.offset
                {
                    self.went_back(key, epoch, here.offset).await;
                    continue;
                }
                if let (Some(before), Some(here)) = (*seen, here)
                    && now.is_some_and(|(epoch, _)| epoch == before.0)
                    && (here.epoch != before.0 || here.offset < before.1)
                {
                    let from = if here.epoch == before.0 { here.offset } else { 0 };
                    self.resync(key, before.0, from).await;
                }
                if let Some(sub) = lock(&self.subs).rooms.get_mut(key) {
                    sub.seen = now;
                }
            }
        }
    }

    /// Redis says the room's top is below what this node delivered in the same epoch: its data
    /// went back (restarted from an older snapshot, or a replica that was behind took over), and
    /// the next publishes would get offsets members already have. The room's meta is dropped (if
    /// it still says so), so the next publish starts a new epoch, which members see.
    async fn went_back(&self, key: &RoomKey, epoch: u64, delivered: u64) {
        const DROP_IF_BEHIND: &str = "if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] \
            and tonumber(redis.call('HGET', KEYS[1], 'top') or '0') < tonumber(ARGV[2]) then \
            return redis.call('DEL', KEYS[1]) end return 0";
        let meta = Names::meta(&self.names.channel(key));
        let args = vec![
            Value::from(DROP_IF_BEHIND),
            Value::Integer(1),
            Value::from(meta),
            Value::from(epoch.to_string()),
            Value::from(delivered.to_string()),
        ];
        let eval = CustomCommand::new_static("EVAL", ClusterHash::FirstKey, false);
        match self.client.custom::<Value, _>(eval, args).await {
            Ok(dropped) if dropped.as_u64() == Some(1) => {
                tracing::warn!(room = %key.room, epoch, delivered, "room data in Redis went back; the next publish starts a new epoch");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "dropping a room's meta that went back"),
        }
    }

    /// Delivers a room's messages after `from` from its stream.
    async fn resync(&self, key: &RoomKey, epoch: u64, mut from: u64) {
        self.resyncs.increment(1);
        tracing::warn!(room = %key.room, from, "pub/sub missed messages; resyncing from the stream");
        loop {
            match self.read_after(key, from, RESYNC_PAGE).await {
                Ok(messages) => {
                    let Some(last) = messages.last().map(|m| m.offset) else { return };
                    let mut wakes = Wakes::new();
                    for message in &messages {
                        self.hub.deliver_batched(key, epoch, message, &mut wakes);
                    }
                    self.hub.wake(wakes);
                    if messages.len() < RESYNC_PAGE {
                        return;
                    }
                    from = last;
                }
                Err(err) => {
                    tracing::warn!(%err, "resync read");
                    return;
                }
            }
        }
    }
}

/// `<node>\n<expires ms>\n<entry JSON>`: a node's presence entry for one user, as published on
/// a room's channel (after `p\n`) and kept in the room's presence hash (after `<node>/<user>`).
fn parse_presence(bytes: &[u8]) -> Option<RemoteEntry> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (node, rest) = text.split_once('\n')?;
    let (expires, json) = rest.split_once('\n')?;
    Some(RemoteEntry { node: node.into(), entry: serde_json::from_str(json).ok()?, expires: expires.parse().ok()? })
}

fn presence_value(expires: u64, entry: &PresenceEntry) -> String {
    format!("{expires}\n{}", serde_json::to_string(entry).unwrap_or_default())
}

/// `EVALSHA sha numkeys keys... args...`: the first key (offset 2) picks the cluster shard.
fn evalsha() -> CustomCommand {
    CustomCommand::new_static("EVALSHA", ClusterHash::Offset(2), false)
}

/// Stream entries `[[id, [field, value, ...]], ...]` as messages; entries that do not parse
/// are skipped.
fn parse_entries(entries: Value) -> Vec<StoredMessage> {
    entries
        .into_array()
        .into_iter()
        .filter_map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let id = parts.next()?;
            let offset = id.as_str()?.split('-').next()?.parse().ok()?;
            let fields = parts.next()?.into_array();
            let message = fields.chunks(2).find(|kv| kv[0].as_str().as_deref() == Some("m"))?.get(1)?;
            decode_message(offset, message.as_bytes()?)
        })
        .collect()
}

async fn run_publisher(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(p) => batch.push(p),
                None => return,
            }
        }
        while batch.len() < shared.config.max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        batch = shared.commit(batch).await;
        if !batch.is_empty() {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

async fn run_listener(shared: Arc<Shared>, stop: CancellationToken) {
    use tokio::sync::broadcast::error::RecvError;
    let mut messages = shared.subscriber.message_rx();
    let mut reconnects = shared.subscriber.reconnect_rx();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            message = messages.recv() => match message {
                Ok(m) => shared.on_message(&m.channel, &m.value),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "pub/sub listener fell behind; checking every room");
                    shared.check_now.notify_one();
                }
                Err(RecvError::Closed) => return,
            },
            reconnect = reconnects.recv() => {
                if matches!(reconnect, Err(RecvError::Closed)) {
                    return;
                }
                tracing::info!("redis pub/sub reconnected; subscribing again");
                shared.resubscribe().await;
                shared.check_now.notify_one();
            }
        }
    }
}

/// Publishes a growing number on this node's own channel; if the subscription does not bring
/// one back within `probe_timeout`, it is wedged or detached: reconnect it.
async fn run_probe(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.probe_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    let mut waiting_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The previous probe went round: Redis takes commands and pub/sub delivers.
        let answered = shared.probe_received.load(Ordering::Relaxed) >= sent;
        if answered {
            waiting_since = None;
        } else if waiting_since.is_some_and(|since| since.elapsed() >= shared.config.probe_timeout) {
            shared.up.set(0.0);
            shared.probe_failures.increment(1);
            tracing::warn!("redis pub/sub is silent (probe not received); reconnecting it");
            if let Err(err) = shared.subscriber.force_reconnection().await {
                tracing::warn!(%err, "reconnecting pub/sub");
            }
            waiting_since = None;
            shared.check_now.notify_one();
        }
        match shared.client.spublish::<Value, _, _>(shared.probe_channel.clone(), (sent + 1).to_string()).await {
            Ok(_) => {
                if answered {
                    shared.up.set(1.0);
                }
                sent += 1;
                waiting_since.get_or_insert_with(Instant::now);
            }
            Err(err) => {
                shared.up.set(0.0);
                tracing::debug!(%err, "probe publish");
            }
        }
    }
}

/// Sends this node's presence to Redis and the other nodes: each change at once (kept in the
/// room's presence hash and published on its channel), and every entry again each refresh, so
/// they lapse `presence_ttl` after this node stops (it died). After a refresh, reads every held
/// room's presence hash: lost pub/sub messages and lapsed nodes are healed there.
async fn run_presence(shared: Arc<Shared>, mut local: mpsc::UnboundedReceiver<LocalPresence>, stop: CancellationToken) {
    while let Some(next) = stop.run_until_cancelled(local.recv()).await.flatten() {
        let result = match next {
            LocalPresence::Changed { room, entry } => shared.share_change(&room, &entry).await,
            LocalPresence::All(rooms) => shared.share_all(rooms).await,
            LocalPresence::Typing { room, user, typing } => {
                let message = format!("t\n{}\n{}\n{user}", shared.node, u8::from(typing));
                shared.client.spublish::<Value, _, _>(shared.names.channel(&room), message).await.map(drop)
            }
        };
        if let Err(err) = result {
            tracing::debug!(%err, "sharing presence");
        }
    }
}

/// Publishes a service's messages on a region channel (calls, receipts), one at a time in the
/// order they were made (a reply before the events it caused, signals in order). A message that
/// fails is dropped (pub/sub is at most once anyway; `crate::call::region` and
/// `crate::receipts` say what heals).
async fn run_outbound(
    shared: Arc<Shared>,
    channel: String,
    mut out: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
) {
    while let Some(message) = stop.run_until_cancelled(out.recv()).await.flatten() {
        let message = format!("{}\n{message}", shared.node);
        if let Err(err) = shared.client.spublish::<Value, _, _>(channel.as_str(), message).await {
            tracing::debug!(%err, channel, "a message did not reach the other nodes");
        }
    }
}

/// Most session messages published as one pub/sub message.
const SESSIONS_BATCH: usize = 256;

/// Publishes the collaborative-session service's messages to the node each is for, in the order
/// they were made; what queued meanwhile goes out in one pub/sub message per node (a patch's
/// `patched` for a hundred members on another node is one message, not a hundred). A message
/// that fails is dropped (`crate::collab::region` says what heals).
async fn run_sessions(
    shared: Arc<Shared>,
    mut out: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    stop: CancellationToken,
) {
    while let Some(first) = stop.run_until_cancelled(out.recv()).await.flatten() {
        let mut batch = vec![first];
        while batch.len() < SESSIONS_BATCH
            && let Ok(more) = out.try_recv()
        {
            batch.push(more);
        }
        // One message per destination, in order.
        let mut by_node: Vec<(String, Vec<u8>)> = Vec::new();
        for (to, chunk) in batch {
            let at = match by_node.iter().position(|(n, _)| *n == to) {
                Some(at) => at,
                None => {
                    let mut head = shared.node.as_bytes().to_vec();
                    head.push(b'\n');
                    by_node.push((to, head));
                    by_node.len() - 1
                }
            };
            let body = &mut by_node[at].1;
            body.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            body.extend_from_slice(&chunk);
        }
        for (to, body) in by_node {
            let channel = shared.names.sessions(&to);
            if let Err(err) = shared.client.spublish::<Value, _, _>(channel, Bytes::from(body)).await {
                tracing::debug!(%err, "a session message did not reach its node");
            }
        }
    }
}

/// The length-prefixed chunks of a sessions-channel message.
fn unframe(mut bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut chunks = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        chunks.push(bytes.get(4..4 + len)?.to_vec());
        bytes = &bytes[4 + len..];
    }
    Some(chunks)
}

/// Publishes this node's actions for the others, in the order they were made (events of one
/// topic must arrive in their order).
async fn run_actions(shared: Arc<Shared>, mut actions: mpsc::UnboundedReceiver<Control>, stop: CancellationToken) {
    while let Some(control) = stop.run_until_cancelled(actions.recv()).await.flatten() {
        if let Err(err) = shared.broadcast(control).await {
            tracing::warn!(%err, "an action did not reach the other nodes");
        }
    }
}

async fn run_checks(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.resync_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = shared.check_now.notified() => {}
        }
        shared.check_rooms().await;
    }
}

impl Engine for RedisEngine {
    fn publish(&self, publish: Publish, done: Done) {
        if self.stopping.load(Ordering::Relaxed) {
            done.complete(Err(EngineError::ShuttingDown));
            return;
        }
        let pending = Pending { message: encode_message(&publish), publish, done, first_sent: None };
        match lock(&self.queue).as_ref() {
            // A send fails only once the publisher stopped: dropping `done` answers ShuttingDown.
            Some(queue) => drop(queue.send(pending)),
            None => pending.done.complete(Err(EngineError::ShuttingDown)),
        }
    }

    fn meta(&self, key: &RoomKey) -> BoxFuture<'_, Result<RoomMeta, EngineError>> {
        let key = key.clone();
        async move {
            // Subscribed before the meta is read: whatever is published after it reaches the hub.
            self.shared.subscribe(&key).await?;
            self.shared.meta(&key).await
        }
        .boxed()
    }

    fn read_after(
        &self,
        key: &RoomKey,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, EngineError>> {
        let key = key.clone();
        async move { self.shared.read_after(&key, after, limit).await }.boxed()
    }

    fn read_before(
        &self,
        key: &RoomKey,
        before: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, EngineError>> {
        let key = key.clone();
        async move { self.shared.read_before(&key, before, limit).await }.boxed()
    }

    fn save_cursors(&self, tenant: &str, user: &str, cursors: Vec<Cursor>) {
        if cursors.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let hash = shared.names.cursors(tenant, user);
        self.tasks.spawn(async move {
            let fields: Vec<(String, String)> = cursors
                .iter()
                .map(|c| (c.room.to_string(), format!("{}:{}:{}", c.position.epoch, c.position.offset, c.updated)))
                .collect();
            let pipeline = shared.client.pipeline();
            let _: Result<(), FredError> = pipeline.hset(hash.as_str(), fields).await;
            let _: Result<(), FredError> = pipeline.pexpire(hash.as_str(), CURSORS_TTL_MS as i64, None).await;
            if let Err(err) = pipeline.all::<Value>().await {
                tracing::warn!(%err, "saving cursors");
            }
        });
    }

    fn forget_cursor(&self, tenant: &str, user: &str, room: RoomName) {
        let shared = self.shared.clone();
        let hash = shared.names.cursors(tenant, user);
        self.tasks.spawn(async move {
            if let Err(err) = shared.client.hdel::<Value, _, _>(hash, room.to_string()).await {
                tracing::warn!(%err, "forgetting a cursor");
            }
        });
    }

    fn cursors(&self, tenant: &str, user: &str, limit: usize) -> BoxFuture<'_, Result<Vec<Cursor>, EngineError>> {
        let hash = self.shared.names.cursors(tenant, user);
        async move {
            let all: HashMap<String, String> = self.shared.client.hgetall(hash).await.map_err(unavailable)?;
            let mut cursors: Vec<Cursor> = all
                .into_iter()
                .filter_map(|(room, value)| {
                    let mut parts = value.split(':').map(str::parse::<u64>);
                    let (Some(Ok(epoch)), Some(Ok(offset)), Some(Ok(updated))) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        return None;
                    };
                    let room = RoomName::parse(&room).ok()?;
                    Some(Cursor { room, position: Position { epoch, offset }, updated })
                })
                .collect();
            cursors.sort_by_key(|c| std::cmp::Reverse(c.updated));
            cursors.truncate(limit);
            Ok(cursors)
        }
        .boxed()
    }

    fn broadcast(&self, control: &Control) {
        let _ = self.actions.send(control.clone());
    }

    fn share_presence(&self) -> Option<PresenceLink> {
        lock(&self.presence_link).take()
    }

    fn remote_controls(&self) -> Option<mpsc::UnboundedReceiver<Control>> {
        lock(&self.remote_controls).take()
    }

    fn share_calls(&self) -> Option<CallLink> {
        lock(&self.call_link).take()
    }

    fn node_name(&self) -> String {
        self.shared.node.clone()
    }

    fn report_node(&self, report: &crate::admin::NodeReport) -> BoxFuture<'_, Result<(), EngineError>> {
        let json = serde_json::to_string(report).unwrap_or_default();
        async move {
            let nodes = self.shared.names.nodes();
            let _: Value =
                self.shared.client.hset(nodes, (self.shared.node.as_str(), json)).await.map_err(unavailable)?;
            Ok(())
        }
        .boxed()
    }

    fn node_reports(&self) -> BoxFuture<'_, Result<Vec<crate::admin::NodeReport>, EngineError>> {
        async move {
            let nodes = self.shared.names.nodes();
            let fields: HashMap<String, String> =
                self.shared.client.hgetall(nodes.as_str()).await.map_err(unavailable)?;
            let now = unix_ms();
            let (mut reports, mut gone) = (Vec::new(), Vec::new());
            for (node, json) in fields {
                match serde_json::from_str::<crate::admin::NodeReport>(&json) {
                    // Long gone (a node that died): tidied here, by whoever reads.
                    Ok(report) if report.seen_at + 10 * crate::admin::LAPSE_MS < now => gone.push(node),
                    Ok(report) => reports.push(report),
                    Err(_) => gone.push(node),
                }
            }
            if !gone.is_empty() {
                let _: Result<Value, FredError> = self.shared.client.hdel(nodes, gone).await;
            }
            Ok(reports)
        }
        .boxed()
    }

    fn share_receipts(&self) -> Option<CallLink> {
        lock(&self.receipts_link).take()
    }

    fn share_notifications(&self) -> Option<CallLink> {
        lock(&self.notifications_link).take()
    }

    /// One pipeline of meta reads, subscribing to nothing (the receipts service asks for rooms
    /// this node may not hold); a room without meta yet gets one through [`Engine::meta`].
    fn tops(&self, keys: Vec<RoomKey>) -> BoxFuture<'_, Vec<Option<Position>>> {
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(CHECK_CHUNK) {
                let pipeline = self.shared.client.pipeline();
                for key in chunk {
                    let meta = Names::meta(&self.shared.names.channel(key));
                    let queued: Result<(), FredError> = pipeline.hmget(meta, vec!["epoch", "top"]).await;
                    if let Err(err) = queued {
                        tracing::debug!(%err, "queueing a top read");
                    }
                }
                let replies = pipeline.try_all::<Value>().await;
                for (i, key) in chunk.iter().enumerate() {
                    let reply = replies.get(i).and_then(|r| r.as_ref().ok()).map(|v| v.clone().into_array());
                    let number = |j: usize| reply.as_ref().and_then(|r| r.get(j)).and_then(Value::as_u64);
                    let top = match (number(0), number(1)) {
                        (Some(epoch), Some(offset)) => Some(Position { epoch, offset }),
                        _ => self.shared.meta(key).await.ok().map(|meta| meta.position()),
                    };
                    out.push(top);
                }
            }
            out
        }
        .boxed()
    }

    fn share_sessions(&self) -> Option<SessionLink> {
        lock(&self.session_link).take()
    }

    fn maintain(&self, now_ms: u64) {
        // Retention is applied by the publish script; here only subscriptions are tidied.
        let shared = self.shared.clone();
        self.tasks.spawn(async move { shared.unsubscribe_unused(now_ms).await });
    }

    fn shutdown(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        async move {
            self.stopping.store(true, Ordering::Relaxed);
            // Closing the queue lets the publisher finish what was accepted, then stop.
            lock(&self.queue).take();
            self.publisher.close();
            if tokio::time::timeout(deadline, self.publisher.wait()).await.is_err() {
                tracing::warn!("redis publishes still unanswered at the shutdown deadline");
            }
            self.stop.cancel();
            self.tasks.close();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
            // Leave the region's node list at once rather than when the report lapses.
            let gone = self.shared.client.hdel::<Value, _, _>(self.shared.names.nodes(), self.shared.node.as_str());
            let _ = tokio::time::timeout(self.shared.config.command_timeout, gone).await;
            let _ = self.shared.subscriber.quit().await;
            let _ = self.shared.client.quit().await;
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::suite::redis::config;
    use crate::engine::suite::{Rig, collect, key};
    use crate::proto::ServerFrame;
    use crate::testing::RedisServer;

    /// A node whose engine the test can reach into.
    async fn node(server: &Arc<RedisServer>) -> (Rig, Arc<RedisEngine>) {
        let hub = Arc::new(Hub::new(4, 60_000));
        let engine = Arc::new(RedisEngine::connect(config(server.url()), hub.clone()).await.expect("connect"));
        (Rig::new(hub, engine.clone(), Some(server.clone())), engine)
    }

    fn server() -> Arc<RedisServer> {
        Arc::new(RedisServer::start().expect("start redis-server"))
    }

    /// Joins a member on `rig` and waits for its `joined`.
    async fn member(rig: &Rig, k: &RoomKey, id: u64) -> Arc<crate::outbox::Outbox> {
        let (outbox, sub) = rig.member(1 << 20);
        rig.join(k, id, sub, None).await;
        assert!(matches!(collect(&outbox, 0).await.0, Some(ServerFrame::Joined { .. })));
        outbox
    }

    async fn shard_subscribers(engine: &RedisEngine, channel: &str) -> u64 {
        let reply: Value = engine
            .shared
            .client
            .custom(CustomCommand::new_static("PUBSUB", ClusterHash::Random, false), vec!["SHARDNUMSUB", channel])
            .await
            .expect("PUBSUB SHARDNUMSUB");
        reply.into_array().get(1).and_then(Value::as_u64).unwrap_or(0)
    }

    /// Appends messages `ids` (`m<i>`, expected at offset `i`) to a room, published where nobody
    /// listens, as if pub/sub lost them; returns them as stored.
    async fn unheard(engine: &RedisEngine, k: &RoomKey, ids: std::ops::RangeInclusive<u64>) -> Vec<StoredMessage> {
        let mut stored = Vec::new();
        for i in ids {
            let publish = Publish {
                key: k.clone(),
                from: "alice".into(),
                id: format!("m{i}"),
                data: Payload::from("1"),
                now_ms: unix_ms(),
            };
            let message = encode_message(&publish);
            let args = engine.shared.publish_command(&publish, &message, Some("nowhere"));
            let reply: Value = engine.shared.client.custom(evalsha(), args).await.expect("publish.lua");
            assert_eq!(reply.into_array().get(2).and_then(Value::as_u64), Some(i));
            stored.extend(decode_message(i, &message));
        }
        stored
    }

    #[tokio::test]
    async fn a_room_spans_nodes_in_order_and_ids_are_deduplicated_cluster_wide() {
        let server = server();
        let ((a, _), (b, _)) = (node(&server).await, node(&server).await);
        let k = key("r");
        let (on_a, on_b) = (member(&a, &k, 1).await, member(&b, &k, 2).await);
        for i in 1..=100u64 {
            let publisher = if i % 3 == 0 { &a } else { &b };
            assert_eq!(publisher.publish(&k, &format!("m{i}")).await.offset, i);
        }
        let all: Vec<u64> = (1..=100).collect();
        assert_eq!(collect(&on_a, 100).await.1, all);
        assert_eq!(collect(&on_b, 100).await.1, all);
        let original = a.publish_as(&k, "carol", "x").await.unwrap();
        let retried = b.publish_as(&k, "carol", "x").await.unwrap();
        assert_eq!((retried.position, retried.duplicate), (original.position, true));
        assert_eq!(collect(&on_b, 101).await.1, vec![101], "delivered once");
    }

    #[tokio::test]
    async fn messages_pub_sub_never_brought_are_read_from_the_stream() {
        let server = server();
        let ((a, engine_a), (b, _)) = (node(&server).await, node(&server).await);
        let k = key("r");
        let on_b = member(&b, &k, 1).await;
        a.publish(&k, "m1").await;
        assert_eq!(collect(&on_b, 1).await.1, vec![1]);
        // Offsets 2..=4 are appended but published where nobody listens, as if pub/sub lost
        // them; nothing is published after them, so only the top-offset check can find them.
        unheard(&engine_a, &k, 2..=4).await;
        assert_eq!(collect(&on_b, 4).await.1, vec![2, 3, 4]);
        a.publish(&k, "m5").await;
        assert_eq!(collect(&on_b, 5).await.1, vec![5]);
    }

    /// A node on a persistent Redis without the periodic check (only a catch-up reads missing
    /// offsets), whose reads fail after 300 ms, with a member of room `r` that has offset 1.
    async fn quiet_node() -> (tempfile::TempDir, Arc<RedisServer>, Rig, Arc<crate::outbox::Outbox>, Position) {
        let dir = tempfile::tempdir().unwrap();
        let server = Arc::new(RedisServer::start_persistent(dir.path()).expect("start redis-server"));
        let quiet = RedisEngineConfig {
            resync_every: Duration::from_secs(3600),
            command_timeout: Duration::from_millis(300),
            ..config(server.url())
        };
        let b = crate::engine::suite::redis::node(&server, quiet).await;
        let on_b = member(&b, &key("r"), 1).await;
        let first = b.publish(&key("r"), "m1").await;
        assert_eq!(collect(&on_b, 1).await.1, vec![1]);
        (dir, server, b, on_b, first)
    }

    /// A member that falls behind while Redis is down stays and catches up once Redis is back
    /// (it used to be closed with `slow_consumer`, as if history had lost its offsets).
    #[tokio::test]
    async fn a_member_catching_up_while_redis_is_down_waits_for_it() {
        let (_dir, server, b, on_b, first) = quiet_node().await;
        let k = key("r");
        // Offsets 2..=4 are stored, but published where nobody listens.
        let engine = RedisEngine::connect(config(server.url()), Arc::new(Hub::new(4, 60_000))).await.unwrap();
        let fourth = unheard(&engine, &k, 2..=4).await.pop();
        engine.shutdown(Duration::from_secs(1)).await;
        server.kill();
        // Offset 4 reaches node b without 2 and 3: the member must read them, and Redis is down.
        b.hub.deliver(&k, first.epoch, &fourth.unwrap());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.restart().expect("restart redis-server");
        let (other, offsets) = collect(&on_b, 4).await;
        assert_eq!(other, None, "nothing but messages (no slow_consumer error)");
        assert_eq!(offsets, vec![2, 3, 4]);
    }

    /// A member catching up when Redis comes back empty gets the new epoch from its start, with
    /// the new epoch's positions: the room's stream then holds the new epoch's messages under
    /// the numbers the member was missing in the old one, and they must not go out as those.
    #[tokio::test]
    async fn a_member_catching_up_when_redis_comes_back_empty_gets_the_new_epoch() {
        let (_dir, server, b, on_b, first) = quiet_node().await;
        let k = key("r");
        server.kill();
        // Offset 3 reaches node b without 2 while Redis is down: the member waits to catch up.
        let third =
            StoredMessage { offset: 3, time: 1, from: "alice".into(), id: "m3".into(), data: Payload::from("1") };
        b.hub.deliver(&k, first.epoch, &third);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        server.restart_empty().expect("restart redis-server empty");
        // The new epoch's offsets 1..=3 are stored where the old epoch's were, unheard by b.
        let engine = RedisEngine::connect(config(server.url()), Arc::new(Hub::new(4, 60_000))).await.unwrap();
        unheard(&engine, &k, 1..=3).await;
        engine.shutdown(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        // The next publish brings the new epoch to node b's hub: the member reads it from 1.
        let fourth = b.publish(&k, "m4").await;
        assert_ne!(fourth.epoch, first.epoch);
        let (other, offsets) = collect(&on_b, 4).await;
        assert_eq!(other, None);
        assert_eq!(offsets, vec![1, 2, 3, 4], "the new epoch from its start, not its 2 and 3 as the old epoch's");
    }

    #[tokio::test]
    async fn a_subscription_redis_forgot_is_found_by_the_probe_and_renewed() {
        let server = server();
        let ((a, _), (b, engine_b)) = (node(&server).await, node(&server).await);
        let k = key("r");
        let on_b = member(&b, &k, 1).await;
        let channel = engine_b.shared.names.channel(&k);
        assert_eq!(shard_subscribers(&engine_b, &channel).await, 1);
        // The connection stays up but Redis no longer sends it anything (as after a failover to
        // a server that never had the subscription).
        let probe = engine_b.shared.probe_channel.clone();
        engine_b.shared.subscriber.sunsubscribe(vec![channel.clone(), probe]).await.expect("sunsubscribe");
        assert_eq!(shard_subscribers(&engine_b, &channel).await, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while shard_subscribers(&engine_b, &channel).await == 0 {
            assert!(Instant::now() < deadline, "the probe never renewed the subscription");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 1..=20 {
            a.publish(&k, &format!("m{i}")).await;
        }
        assert_eq!(collect(&on_b, 20).await.1, (1..=20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn when_redis_loses_everything_the_room_gets_a_new_epoch_and_members_see_it() {
        let server = server();
        let ((a, _), (b, _)) = (node(&server).await, node(&server).await);
        let k = key("r");
        let on_b = member(&b, &k, 1).await;
        let mut before = Position::default();
        for i in 1..=3 {
            before = a.publish(&k, &format!("m{i}")).await;
        }
        assert_eq!(collect(&on_b, 3).await.1, vec![1, 2, 3]);
        server.restart().expect("restart redis-server");
        // Publishes are refused while the engine reconnects, then accepted in a new epoch.
        let deadline = Instant::now() + Duration::from_secs(15);
        let after = loop {
            match a.publish_as(&k, "alice", "after").await {
                Ok(accepted) => break accepted.position,
                Err(err) => assert!(Instant::now() < deadline, "still refused: {err}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_ne!(after.epoch, before.epoch);
        assert_eq!(after.offset, 1);
        assert_eq!(collect(&on_b, 1).await.1, vec![1]);
        assert_eq!(b.hub.position(&k), Some(after), "node b moved to the new epoch");
        let meta = b.engine.meta(&k).await.unwrap();
        assert_eq!((meta.epoch, meta.first, meta.top), (after.epoch, 1, 1));
    }

    #[tokio::test]
    async fn a_publish_whose_append_fails_leaves_no_gap() {
        let server = server();
        let (a, engine) = node(&server).await;
        let k = key("r");
        assert_eq!(a.publish(&k, "m1").await.offset, 1);
        // The stream already holds offset 2 although the meta's top is 1 (as when the two were
        // restored from different snapshots): the append of the next publish is refused.
        let stream = Names::stream(&engine.shared.names.channel(&k));
        let xadd = CustomCommand::new_static("XADD", ClusterHash::FirstKey, false);
        let _: Value =
            engine.shared.client.custom(xadd, vec![stream.as_str(), "2-0", "t", "0", "m", "x"]).await.unwrap();
        assert!(a.publish_as(&k, "alice", "m2").await.is_err());
        let meta: Value = engine
            .shared
            .client
            .custom(
                CustomCommand::new_static("HGET", ClusterHash::FirstKey, false),
                vec![Names::meta(&engine.shared.names.channel(&k)), "top".into()],
            )
            .await
            .unwrap();
        assert_eq!(meta.as_u64(), Some(1), "the refused append took no offset");
    }

    /// Redis coming back from an older snapshot: the room's meta and stream say offset 1 while
    /// the nodes delivered 3. Handing out offset 2 again would be acked but never delivered
    /// (the nodes have it); the next publish starts a new epoch instead, which members see.
    #[tokio::test]
    async fn a_room_whose_redis_data_went_back_starts_a_new_epoch() {
        went_back(false).await;
    }

    /// The same when the publishing node holds the room: its publish script catches it too
    /// (whichever of the two comes first).
    #[tokio::test]
    async fn a_room_whose_redis_data_went_back_starts_a_new_epoch_when_the_publisher_holds_it() {
        went_back(true).await;
    }

    async fn went_back(publisher_holds_room: bool) {
        let server = server();
        let ((a, engine), (b, _)) = (node(&server).await, node(&server).await);
        let k = key("r");
        let on_b = member(&b, &k, 1).await;
        let on_a = if publisher_holds_room { Some(member(&a, &k, 2).await) } else { None };
        let first = a.publish(&k, "m1").await;
        let channel = engine.shared.names.channel(&k);
        let keys = [Names::meta(&channel), Names::stream(&channel)];
        let dump = CustomCommand::new_static("DUMP", ClusterHash::FirstKey, false);
        let mut snapshot = Vec::new();
        for key in &keys {
            let value: Value = engine.shared.client.custom(dump.clone(), vec![key.clone()]).await.unwrap();
            snapshot.push(value);
        }
        a.publish(&k, "m2").await;
        a.publish(&k, "m3").await;
        assert_eq!(collect(&on_b, 3).await.1, vec![1, 2, 3]);
        let restore = CustomCommand::new_static("RESTORE", ClusterHash::FirstKey, false);
        for (key, value) in keys.iter().zip(snapshot) {
            let args = vec![Value::from(key.clone()), Value::from("0"), value, Value::from("REPLACE")];
            let _: Value = engine.shared.client.custom(restore.clone(), args).await.unwrap();
        }
        if let Some(on_a) = &on_a {
            assert_eq!(collect(on_a, 3).await.1, vec![1, 2, 3]);
        }
        // Without the room, node a cannot tell: node b's periodic check finds Redis behind what
        // it delivered and drops the room's meta.
        let exists = CustomCommand::new_static("EXISTS", ClusterHash::FirstKey, false);
        if !publisher_holds_room {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let meta: Value = engine.shared.client.custom(exists.clone(), vec![keys[0].clone()]).await.unwrap();
                if meta.as_u64() == Some(0) {
                    break;
                }
                assert!(Instant::now() < deadline, "the check never noticed the room went back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let after = a.publish(&k, "m4").await;
        assert_ne!(after.epoch, first.epoch, "a new epoch, not offset 2 again");
        assert_eq!(after.offset, 1);
        assert_eq!(collect(&on_b, 1).await.1, vec![1], "the member receives it, in the new epoch");
        assert_eq!(b.hub.position(&k), Some(after));
    }

    #[test]
    fn published_messages_round_trip_with_binary_payloads() {
        let publish = Publish {
            key: crate::engine::suite::key("r"),
            from: "alice".into(),
            id: "m:1".into(),
            data: Payload(Bytes::from_static(&[0, 58, 255, 10])),
            now_ms: 42,
        };
        let mut published = b"17:5:".to_vec();
        published.extend_from_slice(&encode_message(&publish));
        let (epoch, message) = parse_published(&published).expect("parses");
        assert_eq!(epoch, 17);
        assert_eq!(
            message,
            StoredMessage { offset: 5, time: 42, from: "alice".into(), id: "m:1".into(), data: publish.data }
        );
        assert!(parse_published(b"17:x:").is_none());
        assert!(parse_published(b"garbage").is_none());
    }

    #[test]
    fn names_keep_a_room_in_one_hash_slot_and_are_unambiguous() {
        let names = Names { prefix: "er".into() };
        let room = RoomKey { tenant: "acme/x".into(), room: RoomName::parse("chat:lobby").unwrap() };
        let channel = names.channel(&room);
        assert_eq!(channel, "er:{acme/x/chat:lobby}");
        assert_eq!(Names::meta(&channel), "er:{acme/x/chat:lobby}:m");
        assert_ne!(Names::idempotency(&channel, "ab", "c"), Names::idempotency(&channel, "a", "bc"));
    }
}
