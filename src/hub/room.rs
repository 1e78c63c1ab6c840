//! One room: its log position, its subscribers, and the fanout that keeps every subscriber's
//! view in the same order.
//!
//! Offset assignment and fanout happen under the room's lock, so every subscriber receives the
//! room's messages in offset order, and a join is placed exactly between two offsets: the
//! `joined` frame (carrying the top at that instant) is queued under the same lock, so the
//! client's first message after it is top + 1. No gap, no duplicate.

use std::collections::HashMap;
use std::sync::Arc;

use crate::outbox::{LaneId, Outbox, PushError};
use crate::proto::{Payload, Position, RoomName, ServerFrame, WireFrame};

/// Identifies a subscriber: the connection's id (a connection joins a room at most once).
pub type SubscriberId = u64;

/// Where a subscriber's frames for this room go.
#[derive(Clone)]
pub struct Subscriber {
    pub outbox: Arc<Outbox>,
    pub lane: LaneId,
}

/// The outcome of one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub position: Position,
    /// Subscribers the message was queued for.
    pub delivered: usize,
    /// Subscribers whose outbox overflowed; they were removed from the room.
    pub dropped: Vec<SubscriberId>,
}

pub struct RoomState {
    pub name: RoomName,
    pub epoch: u64,
    pub top: u64,
    pub subscribers: HashMap<SubscriberId, Subscriber>,
    /// Unix milliseconds of the last join, leave or publish.
    pub last_active: u64,
}

/// A new epoch: random, non-zero, below 2^53 (exact in JavaScript numbers).
pub fn new_epoch() -> u64 {
    (rand::random::<u64>() >> 11).max(1)
}

impl RoomState {
    pub fn new(name: RoomName, now_ms: u64) -> Self {
        RoomState { name, epoch: new_epoch(), top: 0, subscribers: HashMap::new(), last_active: now_ms }
    }

    pub fn position(&self) -> Position {
        Position { epoch: self.epoch, offset: self.top }
    }

    /// Adds a subscriber and queues its `joined` frame, atomically with respect to publishes.
    /// `since` is the client's last seen position; without history in the hub, nothing was
    /// missed only when it equals the current top.
    pub fn join(
        &mut self,
        id: SubscriberId,
        subscriber: Subscriber,
        req: u64,
        since: Option<Position>,
        now_ms: u64,
    ) -> Result<Position, PushError> {
        let position = self.position();
        let recovered = since.is_none_or(|s| s == position);
        let joined = ServerFrame::Joined { req, room: self.name.to_string(), position, recovered };
        subscriber.outbox.push(subscriber.lane, subscriber.outbox.codec().frame(&joined))?;
        self.subscribers.insert(id, subscriber);
        self.last_active = now_ms;
        Ok(position)
    }

    pub fn leave(&mut self, id: SubscriberId, now_ms: u64) -> bool {
        self.last_active = now_ms;
        self.subscribers.remove(&id).is_some()
    }

    /// Assigns the next offset and queues the message for every subscriber. The frame is
    /// encoded at most once per codec and the bytes are shared.
    pub fn publish(&mut self, from: &str, id: &str, data: Payload, now_ms: u64) -> Published {
        self.top += 1;
        self.last_active = now_ms;
        let position = self.position();
        let frame = ServerFrame::Message {
            room: self.name.to_string(),
            position,
            from: from.to_owned(),
            time: now_ms,
            id: id.to_owned(),
            data,
        };
        let mut encoded: [Option<WireFrame>; 2] = [None, None];
        let mut dropped = Vec::new();
        let mut delivered = 0;
        for (sid, sub) in &self.subscribers {
            let codec = sub.outbox.codec();
            let bytes = encoded[codec.index()].get_or_insert_with(|| codec.frame(&frame)).clone();
            match sub.outbox.push(sub.lane, bytes) {
                Ok(()) => delivered += 1,
                Err(_) => dropped.push(*sid),
            }
        }
        for sid in &dropped {
            self.subscribers.remove(sid);
        }
        Published { position, delivered, dropped }
    }
}
