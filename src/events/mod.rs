//! Event broadcasting: topics with wildcard subscriptions and tag filters (docs/events.md).
//!
//! A topic is a dotted name. Events of a topic that `events.persistent` names are stored in a
//! room named `#<topic>` (a name no client can join), so they get what rooms have: positions,
//! epochs, retention, region-wide idempotency, history and exact resume. Other topics are
//! ephemeral: delivered to whoever is subscribed now, never stored. Topics `events.latest`
//! names conflate: a subscriber that reads slowly gets each topic's newest event, not a backlog
//! (they ride the outbox's latest-wins queue, see `outbox`).
//!
//! Subscriptions live in one [`TopicIndex`] per tenant; an event walks it once and, per matching
//! subscription, its compiled filter decides whether the already-encoded frame (once per codec)
//! is queued. An event goes at most once to a connection, however many of its subscriptions
//! match. Critical events may fill the whole outbox; normal ones only three quarters of it; a
//! subscriber past that is closed as a slow consumer (`slow_consumer`, retryable: resume from
//! the last position). Fanout never waits on a subscriber.
//!
//! In a Redis region, each event is carried to the other nodes on the control channel after it
//! is committed (persistent) or accepted (ephemeral), in the order this node accepted them.

pub mod batch;
pub mod filter;
pub mod topic;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use filter::{Filter, FilterError, Tags};
pub use topic::{Pattern, TopicIndex, TopicName};

use crate::config::EventsConfig;
use crate::control::Control;
use crate::engine::{Accepted, Done, Engine, EngineError, Publish};
use crate::hub::{Hub, RoomKey};
use crate::outbox::{CloseReason, DatagramKey, LaneId, Outbox, PushError, Reply, Wakes};
use crate::proto::{EncodeOnce, ErrorCode, Payload, Position, RoomName, ServerFrame};
use crate::store::StoredMessage;

/// Most tags on one event.
pub const MAX_TAGS: usize = 16;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY: usize = 64;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE: usize = 256;
/// Datagram queue key kind of a latest-value event (one key per topic).
pub const KIND_EVENT: u8 = 7;
/// Events read from history per step of a resume.
const RESUME_CHUNK: usize = 256;
/// Ephemeral event ids remembered per node for idempotency (the oldest are forgotten first).
const EPHEMERAL_IDS: usize = 100_000;

/// Checks an event's tags: at most [`MAX_TAGS`], keys 1-64 of `[A-Za-z0-9_.-]`, values at
/// most 256 bytes. The error is the message for `bad_tags`.
pub fn check_tags(tags: &Tags) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags"));
    }
    for (key, value) in tags {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_TAG_KEY
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !key_ok {
            return Err(format!("tag key {key:?} must be 1-{MAX_TAG_KEY} of [A-Za-z0-9_.-]"));
        }
        if value.len() > MAX_TAG_VALUE {
            return Err(format!("tag {key:?}: value longer than {MAX_TAG_VALUE} bytes"));
        }
    }
    Ok(())
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub topic: TopicName,
    /// Its place in a persistent topic's log; `None` for an ephemeral topic.
    pub position: Option<Position>,
    /// Unix milliseconds when the relay accepted it.
    pub time: u64,
    /// The publisher's id (idempotency key).
    pub id: String,
    pub tags: Tags,
    /// Base64 between nodes: the control channel's JSON is read through serde's internally
    /// tagged enums, which cannot hand a raw JSON value to [`Payload`].
    #[serde(with = "base64_payload")]
    pub data: Payload,
    /// Critical events may use the whole outbox (normal ones three quarters of it).
    pub critical: bool,
}

mod base64_payload {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::proto::Payload;

    pub fn serialize<S: Serializer>(p: &Payload, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&p.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map(Payload::from).map_err(serde::de::Error::custom)
    }
}

impl Event {
    pub fn frame(&self) -> ServerFrame {
        ServerFrame::Event {
            topic: self.topic.to_string(),
            position: self.position,
            time: self.time,
            id: self.id.clone(),
            tags: self.tags.clone(),
            data: self.data.clone(),
        }
    }
}

/// How a persistent event is kept as a room message's payload (postcard): tags and class
/// beside the application's bytes. Time, id and publisher are the message's own fields.
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    tags: Tags,
    critical: bool,
    data: Bytes,
}

fn store_event(event: &Event) -> Payload {
    let stored = StoredEvent { tags: event.tags.clone(), critical: event.critical, data: event.data.0.clone() };
    Payload(Bytes::from(postcard::to_allocvec(&stored).unwrap_or_default()))
}

fn stored_event(topic: &TopicName, epoch: u64, m: StoredMessage) -> Option<Event> {
    let stored: StoredEvent = postcard::from_bytes(&m.data.0).ok()?;
    Some(Event {
        topic: topic.clone(),
        position: Some(Position { epoch, offset: m.offset }),
        time: m.time,
        id: m.id,
        tags: stored.tags,
        data: Payload(stored.data),
        critical: stored.critical,
    })
}

/// The connection (or SSE stream) subscriptions belong to: its id, and how many subscriptions
/// it holds (fanout only remembers which connections an event reached when one holds several).
#[derive(Clone)]
pub struct Owner {
    pub id: u64,
    subscriptions: Arc<std::sync::atomic::AtomicUsize>,
}

impl Owner {
    pub fn new(id: u64) -> Owner {
        Owner { id, subscriptions: Default::default() }
    }
}

/// One subscription: where its events go, and what it lets through.
pub struct Subscription {
    id: u64,
    /// The connection (or SSE stream) it belongs to.
    pub owner: Owner,
    pub pattern: Pattern,
    pub filter: Option<Filter>,
    pub outbox: Arc<Outbox>,
    pub lane: LaneId,
    /// `Some` while a resume replays history: live events wait here, in order.
    pending: Mutex<Option<Vec<Event>>>,
    /// Whether `pending` is `Some`, so live fanout skips its lock (it is cleared under the lock,
    /// after the held events were queued).
    resuming: std::sync::atomic::AtomicBool,
    /// Set by [`Events::unsubscribe`]: a resume still running stops.
    ended: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Subscription {
    fn accepts(&self, event: &Event) -> bool {
        self.filter.as_ref().is_none_or(|f| f.accepts(&event.tags))
    }

    /// Queues an encoded event without waiting; a subscriber too far behind is closed. With
    /// batching (`batch`: the batcher and the wake-ups it holds back), a normal event's writer
    /// is woken later, a critical one's at once (with what is held back before it).
    fn push(
        &self,
        event: &Event,
        bytes: crate::proto::WireFrame,
        latest: bool,
        wakes: &mut Wakes,
        batch: Option<(&batch::Batcher, &mut Wakes)>,
    ) {
        if latest {
            let key = DatagramKey::new(KIND_EVENT, event.topic.as_str());
            let _ = self.outbox.push_datagram(key, bytes);
            return;
        }
        let limit = if event.critical { self.outbox.cap() } else { self.outbox.cap() / 4 * 3 };
        let batching = batch.is_some();
        let (target, batcher) = match batch {
            Some((batcher, deferred)) if !event.critical => (deferred, Some(batcher)),
            _ => (wakes, None),
        };
        let owed_before = target.len();
        match self.outbox.push_batched(self.lane, bytes, limit, target) {
            Err(PushError::Full) => slow(&self.outbox, "events arrive faster than this connection reads them"),
            Err(_) => {}
            Ok(()) => {
                let owed = target.len() > owed_before;
                let wake_now = match batcher {
                    Some(batcher) => self.outbox.queued_bytes() >= batcher.max_bytes,
                    // A critical event behind a held-back batch.
                    None => batching && !owed,
                };
                if wake_now {
                    self.outbox.wake_now(self.lane);
                }
            }
        }
    }
}

fn slow(outbox: &Outbox, message: &str) {
    let _ = outbox.send(crate::outbox::CONTROL, &ServerFrame::error(0, ErrorCode::SLOW_CONSUMER, message));
    outbox.close(CloseReason::Error(ErrorCode::SLOW_CONSUMER));
}

/// A publish as the server API makes it (validated).
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub topic: TopicName,
    pub id: String,
    pub tags: Tags,
    pub data: Payload,
    pub critical: bool,
    /// Shown as the publisher in a persistent topic's room history.
    pub from: String,
    pub now_ms: u64,
}

/// An ephemeral event's idempotency key: tenant, topic (or `@user`), id.
type IdKey = (Arc<str>, String, String);

impl NewEvent {
    /// The event as subscribers get it (no position yet).
    fn into_event(self) -> Event {
        Event {
            topic: self.topic,
            position: None,
            time: self.now_ms,
            id: self.id,
            tags: self.tags,
            data: self.data,
            critical: self.critical,
        }
    }
}

/// Ids of ephemeral events seen recently on this node, with when.
#[derive(Default)]
struct RecentIds {
    seen: HashSet<IdKey>,
    order: VecDeque<(u64, IdKey)>,
}

impl RecentIds {
    /// Records the id; false when it was seen within `window_ms`.
    fn first(&mut self, key: IdKey, now_ms: u64, window_ms: u64) -> bool {
        while let Some((time, _)) = self.order.front() {
            if now_ms.saturating_sub(*time) < window_ms && self.order.len() < EPHEMERAL_IDS {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.order.push_back((now_ms, key));
        true
    }
}

/// A subscription request that passed the checks both clients' `subscribe` and SSE make.
#[derive(Debug)]
pub struct Checked {
    pub pattern: Pattern,
    pub filter: Option<Filter>,
    /// An exact persistent topic: it starts at a position (its top, or after `since`), through
    /// [`Events::resume`].
    pub resume: Option<(TopicName, Option<Position>)>,
}

/// The outcome of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub position: Option<Position>,
    pub duplicate: bool,
}

pub struct Events {
    persistent: Vec<Pattern>,
    latest: Vec<Pattern>,
    pub max_subscriptions: usize,
    resume_buffer: usize,
    pub sse_heartbeat_ms: u64,
    dedupe_window_ms: u64,
    index: RwLock<HashMap<Arc<str>, TopicIndex<Arc<Subscription>>>>,
    next_id: AtomicU64,
    recent: Mutex<RecentIds>,
    hub: Arc<Hub>,
    engine: Arc<dyn Engine>,
    /// Batching of normal events; `None` when `events.batch_delay_ms` is 0.
    batch: Option<Arc<batch::Batcher>>,
}

impl Events {
    /// `config` is validated (its patterns parse).
    pub fn new(config: &EventsConfig, dedupe_window_ms: u64, hub: Arc<Hub>, engine: Arc<dyn Engine>) -> Arc<Events> {
        let patterns = |list: &[String]| list.iter().filter_map(|p| Pattern::parse(p).ok()).collect();
        Arc::new(Events {
            persistent: patterns(&config.persistent),
            latest: patterns(&config.latest),
            max_subscriptions: config.max_subscriptions as usize,
            resume_buffer: config.resume_buffer,
            sse_heartbeat_ms: config.sse_heartbeat_ms,
            dedupe_window_ms,
            index: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            recent: Mutex::new(RecentIds::default()),
            hub,
            engine,
            batch: (config.batch_delay_ms > 0).then(|| {
                Arc::new(batch::Batcher::new(Duration::from_millis(config.batch_delay_ms), config.batch_bytes))
            }),
        })
    }

    /// The batcher whose timer ([`batch::run`]) the relay runs, when batching is on.
    pub fn batcher(&self) -> Option<Arc<batch::Batcher>> {
        self.batch.clone()
    }

    pub fn is_persistent(&self, topic: &TopicName) -> bool {
        self.persistent.iter().any(|p| p.matches(topic))
    }

    pub fn is_latest(&self, topic: &TopicName) -> bool {
        !self.is_persistent(topic) && self.latest.iter().any(|p| p.matches(topic))
    }

    /// Checks a subscription request: the pattern, the token's right to every topic it can
    /// match (a `join` capability covering the pattern's text, wildcards included), the
    /// filter, and whether `since` can be honoured (an exact persistent topic).
    pub fn check(
        &self,
        identity: &crate::auth::Identity,
        pattern: &str,
        filter: Option<&str>,
        since: Option<Position>,
    ) -> Result<Checked, (ErrorCode, String)> {
        let pattern = Pattern::parse(pattern).map_err(|code| (code, format!("invalid topic pattern {pattern:?}")))?;
        // A capability glob's `*` must cover each wildcard of the pattern, so it covers every
        // topic the pattern matches.
        if !identity.can_join(pattern.as_str()) {
            return Err((ErrorCode::PERMISSION_DENIED, format!("token does not allow subscribing to {pattern}")));
        }
        let filter = match filter.filter(|f| !f.trim().is_empty()) {
            Some(text) => Some(Filter::parse(text).map_err(|err| (ErrorCode::BAD_FILTER, err.to_string()))?),
            None => None,
        };
        let resume = pattern.exact().filter(|t| self.is_persistent(t)).map(|t| (t, since));
        Ok(Checked { pattern, filter, resume })
    }

    fn topic_key(tenant: &str, topic: &TopicName) -> RoomKey {
        RoomKey { tenant: tenant.into(), room: RoomName::topic_log(topic) }
    }

    /// Adds a checked subscription of `owner` whose frames go to `lane` of `outbox`.
    /// For an exact persistent topic, live events are held until [`Events::resume`] (which the
    /// caller runs with what is returned beside the subscription) has started it.
    pub fn subscribe(
        &self,
        tenant: &Arc<str>,
        owner: &Owner,
        checked: Checked,
        outbox: Arc<Outbox>,
        lane: LaneId,
    ) -> (Arc<Subscription>, Option<(TopicName, Option<Position>)>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Checked { pattern, filter, resume } = checked;
        let pending = Mutex::new(resume.is_some().then(Vec::new));
        let resuming = resume.is_some().into();
        let (ended, owner) = (Default::default(), owner.clone());
        owner.subscriptions.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Subscription { id, owner, pattern, filter, outbox, lane, pending, resuming, ended });
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        index.entry(tenant.clone()).or_default().insert(&sub.pattern, id, sub.clone());
        metrics::gauge!(crate::metrics::EVENT_SUBSCRIPTIONS).increment(1.0);
        (sub, resume)
    }

    pub fn unsubscribe(&self, tenant: &str, sub: &Subscription) {
        sub.ended.store(true, Ordering::Release);
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        if let Some(tree) = index.get_mut(tenant) {
            if tree.remove(&sub.pattern, sub.id) {
                sub.owner.subscriptions.fetch_sub(1, Ordering::Relaxed);
                metrics::gauge!(crate::metrics::EVENT_SUBSCRIPTIONS).decrement(1.0);
            }
            if tree.is_empty() {
                index.remove(tenant);
            }
        }
    }

    /// Delivers an event to this node's subscribers; returns to how many connections.
    pub fn fanout(&self, tenant: &str, event: &Event) -> usize {
        let frame = event.frame();
        let mut encoded = EncodeOnce::new(&frame);
        let latest = self.is_latest(&event.topic);
        let mut wakes = Wakes::new();
        // Wake-ups batching holds back (normal events, `events.batch_delay_ms`).
        let mut deferred = Wakes::new();
        // Connections with several subscriptions that this event reached already. The index
        // cannot change during the walk (read lock), so the counts hold.
        let mut reached = HashSet::new();
        let mut count = 0;
        {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            let Some(tree) = index.get(tenant) else { return 0 };
            tree.for_each_match(&event.topic, |_, sub| {
                let several = sub.owner.subscriptions.load(Ordering::Relaxed) > 1;
                if (several && reached.contains(&sub.owner.id)) || !sub.accepts(event) {
                    return;
                }
                if several {
                    reached.insert(sub.owner.id);
                }
                count += 1;
                if sub.resuming.load(Ordering::Acquire) {
                    let mut pending = lock(&sub.pending);
                    if let Some(held) = pending.as_mut() {
                        if held.len() >= self.resume_buffer {
                            slow(&sub.outbox, "too many events arrived while history was replayed");
                        } else {
                            held.push(event.clone());
                        }
                        return;
                    }
                }
                let batch = self.batch.as_deref().map(|b| (b, &mut deferred));
                sub.push(event, encoded.get(sub.outbox.codec()), latest, &mut wakes, batch);
            });
        }
        self.hub.wake(wakes);
        if let Some(batcher) = &self.batch {
            batcher.defer(deferred);
        }
        metrics::counter!(crate::metrics::EVENTS_TOTAL).increment(1);
        metrics::counter!(crate::metrics::EVENT_DELIVERIES_TOTAL).increment(count as u64);
        count
    }

    /// Publishes an event: a persistent topic's goes through the engine (stored, positioned,
    /// deduplicated region-wide) and is delivered once committed; an ephemeral one at once
    /// (deduplicated on this node). Either way other nodes get it too. `done` gets the outcome.
    pub fn publish(
        self: &Arc<Self>,
        tenant: &str,
        new: NewEvent,
        done: impl FnOnce(Result<Published, EngineError>) + Send + 'static,
    ) {
        let tenant: Arc<str> = tenant.into();
        let (from, now_ms) = (new.from.clone(), new.now_ms);
        let mut event = new.into_event();
        if !self.is_persistent(&event.topic) {
            let key = (tenant.clone(), event.topic.to_string(), event.id.clone());
            let first = lock(&self.recent).first(key, now_ms, self.dedupe_window_ms);
            if first {
                self.fanout(&tenant, &event);
                self.engine.broadcast(&Control::Event { tenant: tenant.to_string(), event: Box::new(event) });
            }
            return done(Ok(Published { position: None, duplicate: !first }));
        }
        let publish = Publish {
            key: Self::topic_key(&tenant, &event.topic),
            from,
            id: event.id.clone(),
            data: store_event(&event),
            now_ms,
        };
        let events = self.clone();
        // Runs where the engine completes publishes, in commit order: fanout keeps that order.
        let on_commit = Done::new(move |outcome: Result<Accepted, EngineError>| match outcome {
            Ok(accepted) => {
                if !accepted.duplicate {
                    event.position = Some(accepted.position);
                    events.fanout(&tenant, &event);
                    events.engine.broadcast(&Control::Event { tenant: tenant.to_string(), event: Box::new(event) });
                }
                done(Ok(Published { position: Some(accepted.position), duplicate: accepted.duplicate }))
            }
            Err(err) => done(Err(err)),
        });
        self.engine.publish(publish, on_commit);
    }

    /// Starts a subscription to an exact persistent topic made with `resuming`: answers
    /// `subscribed` with the topic's top through `reply`, replays what came after `since` (when
    /// given and still in history), then lets it go live with the events held meanwhile that
    /// come after what it has. Runs as a task of the subscriber.
    pub async fn resume(
        &self,
        tenant: &str,
        sub: &Subscription,
        topic: &TopicName,
        since: Option<Position>,
        mut reply: Reply,
    ) {
        let key = Self::topic_key(tenant, topic);
        let meta = match self.engine.meta(&key).await {
            Ok(meta) => meta,
            Err(err) => {
                let _ = reply.send(&ServerFrame::error(reply.req(), err.code(), err.to_string()));
                self.unsubscribe(tenant, sub);
                return;
            }
        };
        let covered = since.map(|since| {
            (since.epoch == meta.epoch || since.offset == 0)
                && since.offset <= meta.top
                && since.offset + 1 >= meta.first
        });
        let subscribed = |recovered| ServerFrame::Subscribed {
            req: reply.req(),
            pattern: sub.pattern.to_string(),
            position: Some(meta.position()),
            recovered,
        };
        if reply.send(&subscribed(covered.unwrap_or(true))).is_err() {
            return;
        }
        let replay = covered == Some(true);
        let mut last = match since {
            Some(since) if replay => since.offset,
            _ => meta.top,
        };
        let codec = sub.outbox.codec();
        while replay && last < meta.top {
            let chunk = match self.engine.read_after(&key, last, RESUME_CHUNK).await {
                Ok(chunk) if chunk.first().is_some_and(|m| m.offset == last + 1) => chunk,
                _ => return slow(&sub.outbox, &format!("history of {topic} no longer covers the resumed position")),
            };
            for m in chunk {
                if sub.ended.load(Ordering::Acquire) {
                    return;
                }
                last = m.offset;
                let Some(event) = stored_event(topic, meta.epoch, m) else { continue };
                if sub.accepts(&event)
                    && sub
                        .outbox
                        .push_waiting(sub.lane, codec.frame(&event.frame()), sub.outbox.cap() / 4 * 3)
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
        // Live from here: what fanout held meanwhile, minus what history already gave.
        let mut pending = lock(&sub.pending);
        if sub.ended.load(Ordering::Acquire) {
            return;
        }
        let mut wakes = Wakes::new();
        for event in pending.take().unwrap_or_default() {
            let replayed = event.position.is_some_and(|p| p.epoch == meta.epoch && p.offset <= last);
            if !replayed {
                sub.push(&event, codec.frame(&event.frame()), false, &mut wakes, None);
            }
        }
        drop(pending);
        drop(wakes);
    }

    /// Sends an event to every connection of `user` (here and, through the engine, on the
    /// other nodes), whatever they subscribed. Returns how many connections here took it, and
    /// whether the id was already seen (then nothing is sent).
    pub fn publish_to_user(
        &self,
        tenant: &str,
        user: &str,
        new: NewEvent,
        controls: &crate::control::Controls,
    ) -> (usize, bool) {
        let key = (Arc::<str>::from(tenant), format!("@{user}"), new.id.clone());
        if !lock(&self.recent).first(key, new.now_ms, self.dedupe_window_ms) {
            return (0, true);
        }
        let now_s = new.now_ms / 1000;
        let event = new.into_event();
        let control = Control::UserEvent { tenant: tenant.into(), user: user.into(), event: Box::new(event) };
        let reached = controls.apply(&control, now_s);
        self.engine.broadcast(&control);
        (reached, false)
    }

    /// An event another node published: delivered to this node's subscribers.
    pub fn apply_remote(&self, tenant: &str, event: &Event) {
        self.fanout(tenant, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked() {
        let mut tags = Tags::new();
        tags.insert("region".into(), "eu".into());
        assert!(check_tags(&tags).is_ok());
        tags.insert("bad key".into(), "x".into());
        assert!(check_tags(&tags).unwrap_err().contains("bad key"));
        let many: Tags = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_tags(&many).is_err());
        let long: Tags = [("k".to_string(), "v".repeat(257))].into();
        assert!(check_tags(&long).is_err());
    }

    #[test]
    fn a_stored_event_reads_back() {
        let topic = TopicName::parse("orders.eu").unwrap();
        let event = Event {
            topic: topic.clone(),
            position: None,
            time: 5,
            id: "e1".into(),
            tags: [("qty".to_string(), "3".to_string())].into(),
            data: Payload::from("{\"a\":1}"),
            critical: true,
        };
        let m = StoredMessage { offset: 9, time: 5, from: "server".into(), id: "e1".into(), data: store_event(&event) };
        let back = stored_event(&topic, 2, m).unwrap();
        assert_eq!(back, Event { position: Some(Position { epoch: 2, offset: 9 }), ..event });
    }

    #[test]
    fn events_cross_nodes_inside_controls() {
        let event = Event {
            topic: TopicName::parse("a.b").unwrap(),
            position: None,
            time: 1,
            id: "x".into(),
            tags: Tags::new(),
            data: Payload::from("{\"k\":[1,2]}"),
            critical: false,
        };
        let control = Control::Event { tenant: "acme".into(), event: Box::new(event) };
        let json = serde_json::to_string(&control).unwrap();
        assert_eq!(serde_json::from_str::<Control>(&json).unwrap(), control);
    }

    #[tokio::test]
    async fn batching_holds_normal_events_back_and_lets_critical_ones_and_big_batches_through() {
        use futures_util::FutureExt;
        let hub = Arc::new(Hub::new(4, 60_000));
        let history = Arc::new(crate::store::MemoryHistory::new());
        let engine = crate::engine::LocalEngine::start(Default::default(), history, hub.clone()).unwrap();
        let config = EventsConfig { batch_delay_ms: 50, batch_bytes: 2_000, ..EventsConfig::default() };
        let events = Events::new(&config, 60_000, hub, Arc::new(engine));
        let identity = crate::auth::Identity {
            user: "u".into(),
            tenant: "acme".into(),
            caps: crate::auth::Caps { join: vec!["*".into()], ..Default::default() },
            expires_at: u64::MAX,
            token_id: None,
            issued_at: None,
        };
        let outbox = Outbox::new(crate::proto::Codec::Json, 1 << 20);
        let checked = events.check(&identity, "a.*", None, None).unwrap();
        let _sub = events.subscribe(&"acme".into(), &Owner::new(1), checked, outbox.clone(), crate::outbox::CONTROL);
        let event = |id: &str, critical, bytes: usize| Event {
            topic: TopicName::parse("a.b").unwrap(),
            position: None,
            time: 1,
            id: id.into(),
            tags: Tags::new(),
            data: Payload::from(format!("\"{}\"", "x".repeat(bytes)).as_str()),
            critical,
        };
        let woken = || outbox.changed().now_or_never().is_some();
        let taken = || match outbox.take_all(64) {
            crate::outbox::Take::Frames(frames) => frames.len(),
            _ => 0,
        };
        // Normal events wait; a critical one goes at once, taking them along in one write.
        events.fanout("acme", &event("n1", false, 10));
        events.fanout("acme", &event("n2", false, 10));
        assert!(!woken(), "normal events are held back");
        events.fanout("acme", &event("c1", true, 10));
        assert!(woken(), "a critical event wakes the writer");
        assert_eq!(taken(), 3);
        // A batch that reaches batch_bytes goes at once.
        events.fanout("acme", &event("n3", false, 1_000));
        assert!(!woken());
        events.fanout("acme", &event("n4", false, 1_000));
        assert!(woken(), "batch_bytes reached");
        assert_eq!(taken(), 2);
        // Otherwise the timer wakes it after the delay.
        events.fanout("acme", &event("n5", false, 10));
        assert!(!woken());
        let batcher = events.batcher().unwrap();
        let (due, _) = batcher.due(std::time::Instant::now() + Duration::from_millis(50));
        drop(due);
        assert!(woken(), "woken once the delay passed");
        assert_eq!(taken(), 1);
    }

    #[test]
    fn ephemeral_ids_are_remembered_for_the_window() {
        let mut recent = RecentIds::default();
        let key = || (Arc::<str>::from("acme"), "t".to_string(), "id".to_string());
        assert!(recent.first(key(), 0, 100));
        assert!(!recent.first(key(), 50, 100));
        assert!(recent.first(key(), 200, 100), "forgotten after the window");
    }
}
