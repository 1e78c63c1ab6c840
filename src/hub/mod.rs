//! The hub: every room of every tenant, sharded by room key so unrelated rooms never contend.
//!
//! The hub is in-memory and never waits on a client: fanout only appends to outboxes. Rooms are
//! keyed by `(tenant, room)`, so tenants can use the same room names without ever seeing each
//! other. An empty room is kept for `room_idle_ttl` so offsets keep counting across short
//! quiet spells; after that it is dropped, and a later use starts a new epoch.

pub mod awareness;
pub mod last_seen;
pub mod presence;
pub mod room;
pub mod typing;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub use room::{Published, RoomState, Subscriber, SubscriberId};

use crate::metrics::HubMetrics;
use crate::outbox::PushError;
use crate::proto::{Payload, Position, RoomName};

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn new(shards: usize, room_idle_ttl_ms: u64) -> Hub {
        let shards = shards.max(1);
        Hub {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            idle_ttl_ms: room_idle_ttl_ms,
            metrics: HubMetrics::new(),
        }
    }

    fn shard(&self, key: &RoomKey) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    fn room(&self, key: &RoomKey, now_ms: u64) -> Arc<Mutex<RoomState>> {
        let mut shard = lock(self.shard(key));
        if let Some(room) = shard.get(key) {
            return room.clone();
        }
        shard
            .entry(key.clone())
            .or_insert_with(|| {
                self.metrics.rooms.increment(1.0);
                Arc::new(Mutex::new(RoomState::new(key.room.clone(), now_ms)))
            })
            .clone()
    }

    fn existing(&self, key: &RoomKey) -> Option<Arc<Mutex<RoomState>>> {
        lock(self.shard(key)).get(key).cloned()
    }

    /// Subscribes and queues the `joined` frame; returns the room's top at the join.
    pub fn join(
        &self,
        key: &RoomKey,
        id: SubscriberId,
        subscriber: Subscriber,
        req: u64,
        since: Option<Position>,
        now_ms: u64,
    ) -> Result<Position, PushError> {
        let room = self.room(key, now_ms);
        let mut state = lock(&room);
        state.join(id, subscriber, req, since, now_ms)
    }

    pub fn leave(&self, key: &RoomKey, id: SubscriberId, now_ms: u64) -> bool {
        match self.existing(key) {
            Some(room) => lock(&room).leave(id, now_ms),
            None => false,
        }
    }

    /// Assigns the next position in the room and fans the message out.
    pub fn publish(&self, key: &RoomKey, from: &str, id: &str, data: Payload, now_ms: u64) -> Published {
        let room = self.room(key, now_ms);
        let started = Instant::now();
        let published = lock(&room).publish(from, id, data, now_ms);
        self.metrics.fanout_seconds.record(started.elapsed().as_secs_f64());
        self.metrics.publishes.increment(1);
        self.metrics.deliveries.increment(published.delivered as u64);
        if !published.dropped.is_empty() {
            self.metrics.slow_consumer_drops.increment(published.dropped.len() as u64);
        }
        published
    }

    /// Drops rooms that have had no subscriber and no activity for the idle TTL.
    /// Returns how many were dropped.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let mut dropped = 0;
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.retain(|_, room| {
                let state = lock(room);
                let keep = !state.subscribers.is_empty() || now_ms.saturating_sub(state.last_active) < self.idle_ttl_ms;
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
    use crate::outbox::{CONTROL, Outbox, Take};
    use crate::proto::{Codec, ServerFrame};

    fn key(tenant: &str, room: &str) -> RoomKey {
        RoomKey { tenant: tenant.into(), room: RoomName::parse(room).unwrap() }
    }

    fn sub(codec: Codec, cap: usize) -> (Arc<Outbox>, Subscriber) {
        let outbox = Outbox::new(codec, cap);
        (outbox.clone(), Subscriber { outbox, lane: CONTROL })
    }

    fn frames(outbox: &Outbox) -> Vec<ServerFrame> {
        match outbox.take_all(1000) {
            Take::Frames(f) => f.iter().map(|b| outbox.codec().decode(&b.body()).unwrap()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn offsets_start_at_one_and_are_contiguous() {
        let hub = Hub::new(4, 1000);
        let k = key("acme", "chat:lobby");
        let p: Vec<u64> =
            (0..5).map(|i| hub.publish(&k, "alice", &format!("m{i}"), Payload::from("1"), 0).position.offset).collect();
        assert_eq!(p, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn tenants_are_isolated() {
        let hub = Hub::new(4, 1000);
        let (acme, s1) = sub(Codec::Json, 10_000);
        let (globex, s2) = sub(Codec::Json, 10_000);
        hub.join(&key("acme", "chat:lobby"), 1, s1, 1, None, 0).unwrap();
        hub.join(&key("globex", "chat:lobby"), 2, s2, 1, None, 0).unwrap();
        hub.publish(&key("acme", "chat:lobby"), "alice", "x", Payload::from("1"), 0);
        assert_eq!(frames(&acme).len(), 2, "joined + message");
        assert_eq!(frames(&globex).len(), 1, "joined only");
    }

    #[test]
    fn joined_then_messages_from_top_plus_one_in_both_codecs() {
        let hub = Hub::new(4, 1000);
        let k = key("acme", "r");
        hub.publish(&k, "a", "m1", Payload::from("1"), 0);
        let (json, s1) = sub(Codec::Json, 10_000);
        let (pc, s2) = sub(Codec::Postcard, 10_000);
        hub.join(&k, 1, s1, 7, None, 0).unwrap();
        hub.join(&k, 2, s2, 8, None, 0).unwrap();
        hub.publish(&k, "a", "m2", Payload::from("2"), 5);
        for outbox in [json, pc] {
            let f = frames(&outbox);
            assert!(matches!(&f[0], ServerFrame::Joined { position, recovered: true, .. } if position.offset == 1));
            assert!(
                matches!(&f[1], ServerFrame::Message { position, id, time: 5, .. } if position.offset == 2 && id == "m2")
            );
        }
    }

    #[test]
    fn slow_subscriber_is_dropped_others_keep_receiving() {
        let hub = Hub::new(1, 1000);
        let k = key("acme", "r");
        let (slow, s1) = sub(Codec::Json, 300);
        let (fast, s2) = sub(Codec::Json, 1 << 20);
        hub.join(&k, 1, s1, 1, None, 0).unwrap();
        hub.join(&k, 2, s2, 1, None, 0).unwrap();
        let mut dropped = vec![];
        for i in 0..20 {
            dropped.extend(hub.publish(&k, "a", &format!("{i}"), Payload::from("\"0123456789\""), 0).dropped);
            let _ = frames(&fast);
        }
        assert_eq!(dropped, vec![1]);
        assert_eq!(slow.closing(), Some(crate::outbox::CloseReason::Error(crate::proto::ErrorCode::SLOW_CONSUMER)));
        assert!(slow.queued_bytes() == 0);
        assert_eq!(hub.publish(&k, "a", "last", Payload::from("1"), 0).delivered, 1);
    }

    #[test]
    fn recovered_only_when_nothing_was_missed() {
        let hub = Hub::new(1, 1000);
        let k = key("acme", "r");
        let top = hub.publish(&k, "a", "1", Payload::from("1"), 0).position;
        let (ob, s) = sub(Codec::Json, 10_000);
        hub.join(&k, 1, s.clone(), 1, Some(top), 0).unwrap();
        hub.leave(&k, 1, 0);
        hub.join(&k, 1, s, 2, Some(Position { epoch: top.epoch, offset: 0 }), 0).unwrap();
        let f = frames(&ob);
        assert!(matches!(f[0], ServerFrame::Joined { recovered: true, .. }));
        assert!(matches!(f[1], ServerFrame::Joined { recovered: false, .. }));
    }

    #[test]
    fn idle_empty_rooms_are_swept_and_restart_with_a_new_epoch() {
        let hub = Hub::new(2, 1000);
        let k = key("acme", "r");
        let first = hub.publish(&k, "a", "1", Payload::from("1"), 0).position;
        assert_eq!(hub.sweep(500), 0);
        assert_eq!(hub.sweep(1000), 1);
        let again = hub.publish(&k, "a", "2", Payload::from("1"), 1001).position;
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch);
    }
}
