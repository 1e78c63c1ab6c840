//! The hub: every room of every tenant that has members on this node, sharded by room key so
//! unrelated rooms never contend.
//!
//! The hub holds no history and assigns no offsets; the engine (`crate::engine`) does, and
//! delivers each committed message here with [`Hub::deliver`]. The hub never waits on a client:
//! fanout only appends to outboxes, and a member that cannot keep up is switched to replay from
//! history (`replay`). Rooms are keyed by `(tenant, room)`, so tenants can use the same room
//! names without ever seeing each other. A room without members is dropped after
//! `room_idle_ttl`; nothing is lost with it, the engine has the log.

pub mod awareness;
pub mod last_seen;
pub mod presence;
pub mod presence_batch;
pub mod presence_size;
pub mod remote;
pub mod replay;
pub mod room;
pub mod typing;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;

pub use room::{Attach, CatchUp, Delivered, Membership, RoomState, Subscriber, SubscriberId};

use crate::metrics::HubMetrics;
use crate::outbox::{PushError, Reply, Wakes};
use crate::proto::{Position, RoomName, ServerFrame};
use crate::store::{RoomMeta, StoredMessage};

/// A room's identity inside the relay: tenant plus room name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomKey {
    pub tenant: Arc<str>,
    pub room: RoomName,
}

type Shard = Mutex<HashMap<RoomKey, Arc<Mutex<RoomState>>>>;

pub struct Hub {
    shards: Vec<Shard>,
    hasher: RandomState,
    idle_ttl_ms: u64,
    metrics: HubMetrics,
    /// Where big fanouts' wake-ups run (see [`Hub::wake`]); `None` when made outside a runtime.
    runtime: Option<tokio::runtime::Handle>,
    fanout: TaskTracker,
    /// Told of every committed message, present room or not (read receipts and unread counts).
    tap: std::sync::OnceLock<DeliveryTap>,
}

/// What [`Hub::set_tap`] installs: called with each committed message's room and position.
pub type DeliveryTap = Arc<dyn Fn(&RoomKey, Position) + Send + Sync>;

/// Subscribers per fanout task. With direct writes (WebSocket) waking a subscriber is writing to
/// its socket, a system call; parts of this size let every runtime thread take a share.
const FANOUT_PART: usize = 64;

use crate::lock::lock;

thread_local! {
    /// The wake-ups held by [`Hub::gathering`] on this thread, while it runs.
    static GATHERED: std::cell::RefCell<Option<Wakes>> = const { std::cell::RefCell::new(None) };
}

/// Puts back what was gathered before [`Hub::gathering`] (nested calls), also on a panic; held
/// wake-ups left behind are woken as they are dropped, never lost.
struct Gathering(Option<Wakes>);

impl Drop for Gathering {
    fn drop(&mut self) {
        let outer = self.0.take();
        drop(GATHERED.with(|held| held.replace(outer)));
    }
}

impl Hub {
    pub fn new(shards: usize, room_idle_ttl_ms: u64) -> Hub {
        let shards = shards.max(1);
        Hub {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            idle_ttl_ms: room_idle_ttl_ms,
            metrics: HubMetrics::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            fanout: TaskTracker::new(),
            tap: std::sync::OnceLock::new(),
        }
    }

    /// Wakes a batch's writers; with direct writes, that is writing to their sockets. Off the
    /// runtime (the store's writer thread), or for more than one part, the wake-ups run on the
    /// runtime's threads in parts of [`FANOUT_PART`]: the caller goes back to its work and a big
    /// fanout is shared by every core instead of waiting on one. A small batch on the runtime is
    /// woken here, which costs less than a task.
    ///
    /// Inside [`Hub::gathering`] on this thread, the wake-ups are held for the caller instead.
    pub fn wake(&self, wakes: Wakes) {
        let Some(wakes) = GATHERED.with(|held| match held.borrow_mut().as_mut() {
            Some(held) => {
                held.append(wakes);
                None
            }
            None => Some(wakes),
        }) else {
            return;
        };
        let on_runtime = tokio::runtime::Handle::try_current().is_ok();
        let Some(runtime) = self.runtime.as_ref().filter(|_| !on_runtime || wakes.len() > FANOUT_PART) else {
            return;
        };
        for part in wakes.split(FANOUT_PART) {
            self.fanout.spawn_on(async move { drop(part) }, runtime);
        }
    }

    /// Runs `f` and adds to `wakes` the wake-ups [`Hub::wake`] was given on this thread
    /// meanwhile, instead of waking them at once. The engine runs a commit batch's completions
    /// (a committed event's fanout among them) inside it, so each writer is woken once per batch
    /// and writes the batch at once, as for room messages.
    pub fn gathering<R>(wakes: &mut Wakes, f: impl FnOnce() -> R) -> R {
        let restore = Gathering(GATHERED.with(|held| held.replace(Some(Wakes::new()))));
        let result = f();
        if let Some(held) = GATHERED.with(|held| held.take()) {
            wakes.append(held);
        }
        drop(restore);
        result
    }

    /// Waits (at most `deadline`) for the fanout tasks [`Hub::wake`] started; for shutdown.
    pub async fn finish_fanout(&self, deadline: Duration) {
        self.fanout.close();
        let _ = tokio::time::timeout(deadline, self.fanout.wait()).await;
    }

    fn shard(&self, key: &RoomKey) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    fn existing(&self, key: &RoomKey) -> Option<Arc<Mutex<RoomState>>> {
        lock(self.shard(key)).get(key).cloned()
    }

    /// Whether the room is present on this node.
    pub fn has_room(&self, key: &RoomKey) -> bool {
        self.existing(key).is_some()
    }

    /// Makes the room present, starting from the engine's `meta` if it was not.
    pub fn ensure_room(&self, key: &RoomKey, meta: RoomMeta, now_ms: u64) {
        lock(self.shard(key)).entry(key.clone()).or_insert_with(|| {
            self.metrics.rooms.increment(1.0);
            Arc::new(Mutex::new(RoomState::new(key.clone(), meta, now_ms)))
        });
    }

    /// The room's last delivered position here, if present.
    pub fn position(&self, key: &RoomKey) -> Option<Position> {
        self.existing(key).map(|room| lock(&room).position())
    }

    /// Adds a member to a present room (see [`RoomState::attach`]). A room swept in between
    /// counts as cancelled: the join task re-creates it.
    pub fn attach(
        &self,
        key: &RoomKey,
        id: SubscriberId,
        subscriber: Subscriber,
        reply: &mut Reply,
        since: Option<Position>,
        now_ms: u64,
    ) -> Result<Option<Attach>, PushError> {
        match self.existing(key) {
            Some(room) => lock(&room).attach(id, subscriber, reply, since, now_ms).map(Some),
            None => Ok(None),
        }
    }

    /// See [`RoomState::confirm`].
    pub fn confirm(
        &self,
        key: &RoomKey,
        id: SubscriberId,
        reply: &mut Reply,
        recovered: bool,
    ) -> Result<Option<Position>, PushError> {
        match self.existing(key) {
            Some(room) => lock(&room).confirm(id, reply, recovered),
            None => Ok(None),
        }
    }

    /// See [`RoomState::lagging`].
    pub fn lagging(&self, key: &RoomKey, id: SubscriberId) -> Option<(Subscriber, u64, u64)> {
        let room = self.existing(key)?;
        let state = lock(&room);
        state.lagging(id).map(|(sub, next)| (sub, next, state.epoch))
    }

    /// See [`RoomState::replayed`].
    pub fn replayed(&self, key: &RoomKey, id: SubscriberId, last: u64) -> Option<u64> {
        let room = self.existing(key)?;
        lock(&room).replayed(id, last)
    }

    pub fn leave(&self, key: &RoomKey, id: SubscriberId, now_ms: u64) -> bool {
        match self.existing(key) {
            Some(room) => lock(&room).detach(id, now_ms),
            None => false,
        }
    }

    /// Sends a frame that is not a message (a call's `tracks` or `speakers`) to every member of
    /// the room on this node, on the room's lane, encoded once per codec.
    pub fn broadcast(&self, key: &RoomKey, frame: &ServerFrame) {
        if let Some(room) = self.existing(key) {
            lock(&room).broadcast(frame);
        }
    }

    /// Fans a committed message out to the room's members here, if the room is present, and
    /// wakes their writers.
    pub fn deliver(&self, key: &RoomKey, epoch: u64, message: &StoredMessage) -> Delivered {
        let mut wakes = Wakes::new();
        let delivered = self.deliver_batched(key, epoch, message, &mut wakes);
        self.wake(wakes);
        delivered
    }

    /// [`Hub::deliver`] for one message of a batch: the writers are woken when `wakes` is (by
    /// [`Hub::wake`]), after the last message of the batch, so each writes the batch at once.
    pub fn deliver_batched(&self, key: &RoomKey, epoch: u64, message: &StoredMessage, wakes: &mut Wakes) -> Delivered {
        if let Some(tap) = self.tap.get() {
            tap(key, Position { epoch, offset: message.offset });
        }
        let Some(room) = self.existing(key) else { return Delivered::default() };
        let started = Instant::now();
        let delivered = lock(&room).deliver(epoch, message, crate::connection::unix_ms(), wakes);
        self.metrics.fanout_seconds.record(started.elapsed().as_secs_f64());
        self.metrics.publishes.increment(1);
        self.metrics.deliveries.increment(delivered.delivered as u64);
        if delivered.lagging > 0 {
            self.metrics.catch_ups.increment(delivered.lagging as u64);
        }
        delivered
    }

    /// Installs the delivery tap (once; a second call is ignored).
    pub fn set_tap(&self, tap: DeliveryTap) {
        let _ = self.tap.set(tap);
    }

    /// Drops rooms that have had no member and no activity for the idle TTL.
    /// Returns how many were dropped.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let mut dropped = 0;
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.retain(|_, room| {
                let state = lock(room);
                let keep = !state.is_empty() || now_ms.saturating_sub(state.last_active) < self.idle_ttl_ms;
                if !keep {
                    dropped += 1;
                }
                keep
            });
        }
        self.metrics.rooms.decrement(dropped as f64);
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{Mailbox, mailbox};
    use crate::outbox::{CONTROL, Outbox, Take};
    use crate::proto::{Codec, Payload};

    /// What a commit batch's completions fan out is woken with the batch, once, not at once.
    #[test]
    fn wake_ups_given_while_gathering_are_held_for_the_batch() {
        use futures_util::FutureExt;
        let hub = Hub::new(1, 60_000);
        let outbox = Outbox::new(Codec::Json, 1 << 20);
        let push = |wakes: &mut Wakes| {
            let frame = Codec::Json.frame(&ServerFrame::error(0, crate::proto::ErrorCode::SLOW_CONSUMER, "x"));
            outbox.push_batched(CONTROL, frame, usize::MAX, wakes).unwrap();
        };
        let woken = || outbox.changed().now_or_never().is_some();
        let mut batch = Wakes::new();
        Hub::gathering(&mut batch, || {
            for _ in 0..3 {
                let mut wakes = Wakes::new();
                push(&mut wakes);
                hub.wake(wakes);
            }
            assert!(!woken(), "held while gathering");
        });
        assert_eq!(batch.len(), 1, "one wake-up for the three frames");
        assert!(!woken());
        drop(batch);
        assert!(woken());
        assert!(matches!(outbox.take_all(64), Take::Frames(frames) if frames.len() == 3));
        // Outside a batch, at once.
        let mut wakes = Wakes::new();
        push(&mut wakes);
        hub.wake(wakes);
        assert!(woken());
    }

    fn key(tenant: &str, room: &str) -> RoomKey {
        RoomKey { tenant: tenant.into(), room: RoomName::parse(room).unwrap() }
    }

    fn sub(codec: Codec, cap: usize) -> (Arc<Outbox>, Subscriber, Mailbox<CatchUp>) {
        let outbox = Outbox::new(codec, cap);
        let (tx, rx) = mailbox();
        (outbox.clone(), Subscriber { outbox, lane: CONTROL, membership: Membership::default(), catch_up: tx }, rx)
    }

    fn msg(offset: u64) -> StoredMessage {
        StoredMessage {
            offset,
            time: 5,
            from: "a".into(),
            id: format!("m{offset}"),
            data: Payload::from("\"0123456789\""),
        }
    }

    fn frames(outbox: &Outbox) -> Vec<ServerFrame> {
        match outbox.take_all(1000) {
            Take::Frames(f) => f.iter().map(|b| outbox.codec().decode(&b.body()).unwrap()).collect(),
            _ => vec![],
        }
    }

    fn hub_with(k: &RoomKey, epoch: u64, top: u64) -> Hub {
        let hub = Hub::new(4, 1000);
        hub.ensure_room(k, RoomMeta { epoch, first: 1, top }, 0);
        hub
    }

    #[tokio::test]
    async fn a_fanout_from_off_the_runtime_is_woken_by_runtime_tasks() {
        use futures_util::FutureExt;
        let k = key("acme", "big");
        let hub = Arc::new(hub_with(&k, 1, 0));
        let members: Vec<_> = (0..150)
            .map(|id| {
                let (outbox, s, rx) = sub(Codec::Json, 10_000);
                hub.attach(&k, id, s.clone(), &mut s.outbox.reserve(s.lane, 1), None, 0).unwrap();
                frames(&outbox);
                let _ = outbox.changed().now_or_never();
                (outbox, rx)
            })
            .collect();
        // As the store's writer thread does: deliver from a thread outside the runtime.
        let (h, room) = (hub.clone(), k.clone());
        std::thread::spawn(move || h.deliver(&room, 1, &msg(1))).join().unwrap();
        assert!(members.iter().all(|(o, _)| o.changed().now_or_never().is_none()), "nobody woken on that thread");
        hub.finish_fanout(Duration::from_secs(5)).await;
        assert!(members.iter().all(|(o, _)| o.changed().now_or_never().is_some()), "everyone woken by the tasks");
        assert!(members.iter().all(|(o, _)| frames(o).len() == 1));
    }

    #[test]
    fn tenants_are_isolated() {
        let (a, b) = (key("acme", "chat:lobby"), key("globex", "chat:lobby"));
        let hub = hub_with(&a, 1, 0);
        hub.ensure_room(&b, RoomMeta::empty(2), 0);
        let (acme, s1, _r1) = sub(Codec::Json, 10_000);
        let (globex, s2, _r2) = sub(Codec::Json, 10_000);
        hub.attach(&a, 1, s1.clone(), &mut s1.outbox.reserve(s1.lane, 1), None, 0).unwrap();
        hub.attach(&b, 2, s2.clone(), &mut s2.outbox.reserve(s2.lane, 1), None, 0).unwrap();
        assert_eq!(hub.deliver(&a, 1, &msg(1)).delivered, 1);
        assert_eq!(frames(&acme).len(), 2, "joined + message");
        assert_eq!(frames(&globex).len(), 1, "joined only");
    }

    #[test]
    fn joined_then_messages_after_top_in_both_codecs() {
        let k = key("acme", "r");
        let hub = hub_with(&k, 3, 1);
        let (json, s1, _r1) = sub(Codec::Json, 10_000);
        let (pc, s2, _r2) = sub(Codec::Postcard, 10_000);
        hub.attach(&k, 1, s1.clone(), &mut s1.outbox.reserve(s1.lane, 7), None, 0).unwrap();
        hub.attach(&k, 2, s2.clone(), &mut s2.outbox.reserve(s2.lane, 8), None, 0).unwrap();
        hub.deliver(&k, 3, &msg(2));
        hub.deliver(&k, 3, &msg(2));
        for outbox in [json, pc] {
            let f = frames(&outbox);
            assert_eq!(f.len(), 2, "a repeated delivery is ignored: {f:?}");
            assert!(matches!(&f[0], ServerFrame::Joined { position, recovered: true, .. } if position.offset == 1));
            assert!(
                matches!(&f[1], ServerFrame::Message { position, id, time: 5, .. } if position.offset == 2 && id == "m2")
            );
        }
    }

    #[test]
    fn a_member_that_cannot_keep_up_is_sent_to_catch_up_not_dropped() {
        let k = key("acme", "r");
        let hub = hub_with(&k, 1, 0);
        let (slow, s1, mut lag) = sub(Codec::Json, 400);
        let (fast, s2, _r2) = sub(Codec::Json, 1 << 20);
        hub.attach(&k, 1, s1.clone(), &mut s1.outbox.reserve(s1.lane, 1), None, 0).unwrap();
        hub.attach(&k, 2, s2.clone(), &mut s2.outbox.reserve(s2.lane, 1), None, 0).unwrap();
        let mut lagging = 0;
        for i in 1..=20 {
            lagging += hub.deliver(&k, 1, &msg(i)).lagging;
            let _ = frames(&fast);
        }
        assert_eq!(lagging, 1, "switched to catch-up once, then skipped");
        assert_eq!(lag.try_recv().unwrap(), CatchUp { key: k.clone(), id: 1 });
        assert_eq!(slow.closing(), None, "the connection stays open");
        let (_, next, epoch) = hub.lagging(&k, 1).unwrap();
        let got = frames(&slow).len() as u64 - 1;
        assert_eq!((next, epoch), (got + 1, 1), "resumes right after what it got");
        assert_eq!(hub.replayed(&k, 1, 19), Some(20), "not live until past the top");
        assert_eq!(hub.replayed(&k, 1, 20), None, "live again");
        assert_eq!(hub.deliver(&k, 1, &msg(21)).delivered, 2);
    }

    #[test]
    fn skipped_offsets_send_live_members_to_catch_up() {
        let k = key("acme", "r");
        let hub = hub_with(&k, 1, 3);
        let (_ob, s, mut lag) = sub(Codec::Json, 10_000);
        hub.attach(&k, 1, s.clone(), &mut s.outbox.reserve(s.lane, 1), None, 0).unwrap();
        let d = hub.deliver(&k, 1, &msg(6));
        assert_eq!((d.delivered, d.lagging), (0, 1));
        assert!(lag.try_recv().is_ok());
        assert_eq!(hub.lagging(&k, 1).map(|l| l.1), Some(4));
    }

    #[test]
    fn a_new_epoch_starts_members_from_its_beginning() {
        let k = key("acme", "r");
        let hub = hub_with(&k, 1, 0);
        let (ob, s, mut lag) = sub(Codec::Json, 10_000);
        hub.attach(&k, 1, s.clone(), &mut s.outbox.reserve(s.lane, 1), None, 0).unwrap();
        hub.deliver(&k, 1, &msg(1));
        hub.deliver(&k, 1, &msg(2));
        // The engine lost the room; this node's first message of the new epoch is its third.
        let d = hub.deliver(&k, 2, &msg(3));
        assert_eq!((d.delivered, d.lagging), (0, 1), "offsets 1 and 2 of epoch 2 come from history");
        assert!(lag.try_recv().is_ok());
        assert_eq!(hub.lagging(&k, 1).map(|l| (l.1, l.2)), Some((1, 2)));
        let f = frames(&ob);
        assert_eq!(f.len(), 3, "joined and epoch 1's two messages: {f:?}");
        assert_eq!(hub.position(&k), Some(Position { epoch: 2, offset: 3 }));
    }

    #[test]
    fn since_decides_replay_or_not_recovered() {
        let k = key("acme", "r");
        let hub = hub_with(&k, 9, 5);
        let attach = |id, since| {
            let (ob, s, _r) = sub(Codec::Json, 10_000);
            let a = hub.attach(&k, id, s.clone(), &mut s.outbox.reserve(s.lane, 1), since, 0).unwrap().unwrap();
            (a, frames(&ob))
        };
        let p = |epoch, offset| Some(Position { epoch, offset });
        assert_eq!(attach(1, p(9, 5)).0, Attach::Live { position: p(9, 5).unwrap(), recovered: true });
        assert_eq!(attach(2, p(9, 2)).0, Attach::Replay { from: 3 });
        assert_eq!(attach(3, p(1, 0)).0, Attach::Replay { from: 1 }, "offset 0 means from the start");
        let (a, f) = attach(4, p(8, 2));
        assert_eq!(a, Attach::Live { position: p(9, 5).unwrap(), recovered: false }, "another epoch");
        assert!(matches!(f[0], ServerFrame::Joined { recovered: false, .. }));
        assert_eq!(attach(5, p(9, 7)).0, Attach::Live { position: p(9, 5).unwrap(), recovered: false }, "ahead");
        assert_eq!(
            hub.confirm(&k, 2, &mut Outbox::new(Codec::Json, 1000).reserve(CONTROL, 1), false).unwrap(),
            p(9, 5)
        );
        assert_eq!(hub.lagging(&k, 2).map(|l| l.1), None, "not recovered: live at the top");
    }

    #[test]
    fn cancelled_membership_is_never_added() {
        let k = key("acme", "r");
        let hub = hub_with(&k, 1, 0);
        let (ob, s, _r) = sub(Codec::Json, 10_000);
        s.membership.cancel();
        assert_eq!(
            hub.attach(&k, 1, s.clone(), &mut s.outbox.reserve(s.lane, 1), None, 0).unwrap(),
            Some(Attach::Cancelled)
        );
        assert_eq!(hub.deliver(&k, 1, &msg(1)).delivered, 0);
        assert!(frames(&ob).is_empty());
    }

    #[test]
    fn idle_empty_rooms_are_swept() {
        let k = key("acme", "r");
        let hub = hub_with(&k, 1, 0);
        let (_ob, s, _r) = sub(Codec::Json, 10_000);
        hub.attach(&k, 1, s.clone(), &mut s.outbox.reserve(s.lane, 1), None, 0).unwrap();
        assert_eq!(hub.sweep(5000), 0, "a room with members stays");
        hub.leave(&k, 1, 100);
        assert_eq!(hub.sweep(500), 0);
        assert_eq!(hub.sweep(1100), 1);
        assert!(!hub.has_room(&k));
    }
}
