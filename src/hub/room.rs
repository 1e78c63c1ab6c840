//! One room on this node: the last committed position delivered here, and its members, each
//! either live (fed by fanout) or catching up (fed from history by a replay task).
//!
//! Everything happens under the room's lock, which is what makes the sequence each member sees
//! contiguous: a member is fed by fanout only while its `next` offset equals the offset being
//! delivered; when it falls behind (its outbox is too full, or the engine skipped offsets here)
//! it stops being live and a replay task reads the missed offsets from history, then switches
//! it back to live under this same lock, exactly when `next` has passed the room's top. So a
//! member never sees a gap or a duplicate, whatever the interleaving with publishes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::mailbox::MailSender;

use super::RoomKey;
use crate::outbox::{LaneId, Outbox, PushError, Reply, Wakes};
use crate::proto::{EncodeOnce, Position, ServerFrame};
use crate::store::{RoomMeta, StoredMessage};

/// Identifies a member: the connection's id (a connection joins a room at most once).
pub type SubscriberId = u64;

/// Asks a connection to start a replay task for one of its rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    pub key: RoomKey,
    pub id: SubscriberId,
}

/// Cancelled when the connection leaves the room; a replay or join task that is still running
/// for it then stops, and never adds the member back.
#[derive(Debug, Clone, Default)]
pub struct Membership(Arc<AtomicBool>);

impl Membership {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Where a member's frames for this room go.
#[derive(Clone)]
pub struct Subscriber {
    pub outbox: Arc<Outbox>,
    pub lane: LaneId,
    pub membership: Membership,
    /// Where to ask for a replay task when this member falls behind.
    pub catch_up: MailSender<CatchUp>,
}

impl Subscriber {
    /// Room messages may fill the outbox up to this; beyond it the member catches up from
    /// history instead, keeping room for answers and control frames.
    pub fn fanout_limit(&self) -> usize {
        self.outbox.cap() / 4 * 3
    }
}

struct Member {
    sub: Subscriber,
    /// The next offset this member must receive.
    next: u64,
    live: bool,
}

impl Member {
    /// Stops live fanout to this member and asks its connection for a replay from `next`.
    fn fall_behind(&mut self, key: &RoomKey, id: SubscriberId) {
        self.live = false;
        let _ = self.sub.catch_up.send(CatchUp { key: key.clone(), id });
    }
}

/// The outcome of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivered {
    /// Members the message was queued for.
    pub delivered: usize,
    /// Members that fell behind and were sent to catch up.
    pub lagging: usize,
}

/// How a join proceeds after the member was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// `joined` was queued and the member is live.
    Live { position: Position, recovered: bool },
    /// The member needs offsets from `from` on; the join task checks history covers them and
    /// sends `joined` itself.
    Replay { from: u64 },
    /// The membership was cancelled before the join ran.
    Cancelled,
}

pub struct RoomState {
    pub key: RoomKey,
    pub epoch: u64,
    /// Last offset delivered here.
    pub top: u64,
    members: HashMap<SubscriberId, Member>,
    /// Unix milliseconds of the last join, leave or delivery.
    pub last_active: u64,
}

impl RoomState {
    pub fn new(key: RoomKey, meta: RoomMeta, now_ms: u64) -> Self {
        RoomState { key, epoch: meta.epoch, top: meta.top, members: HashMap::new(), last_active: now_ms }
    }

    pub fn position(&self) -> Position {
        Position { epoch: self.epoch, offset: self.top }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn joined(&self, req: u64, recovered: bool) -> ServerFrame {
        ServerFrame::Joined { req, room: self.key.room.to_string(), position: self.position(), recovered }
    }

    /// Adds a member. `since` is the last position the client saw: its offsets after it are
    /// replayed when the epoch matches (or `since.offset` is 0: "from the start"); otherwise
    /// the member starts live at the top and `joined` says it was not recovered.
    pub fn attach(
        &mut self,
        id: SubscriberId,
        sub: Subscriber,
        reply: &mut Reply,
        since: Option<Position>,
        now_ms: u64,
    ) -> Result<Attach, PushError> {
        if sub.membership.is_cancelled() {
            return Ok(Attach::Cancelled);
        }
        self.last_active = now_ms;
        let usable = since.filter(|s| (s.epoch == self.epoch || s.offset == 0) && s.offset <= self.top);
        if let Some(since) = usable.filter(|s| s.offset < self.top) {
            let from = since.offset + 1;
            self.members.insert(id, Member { sub, next: from, live: false });
            return Ok(Attach::Replay { from });
        }
        let recovered = since.is_none() || usable.is_some();
        reply.send(&self.joined(reply.req(), recovered))?;
        self.members.insert(id, Member { sub, next: self.top + 1, live: true });
        Ok(Attach::Live { position: self.position(), recovered })
    }

    /// Queues `joined` for a member whose replay is about to start (`recovered`), or that
    /// cannot be recovered and goes live at the top.
    pub fn confirm(
        &mut self,
        id: SubscriberId,
        reply: &mut Reply,
        recovered: bool,
    ) -> Result<Option<Position>, PushError> {
        let frame = self.joined(reply.req(), recovered);
        let top = self.top;
        let Some(m) = self.members.get_mut(&id) else { return Ok(None) };
        reply.send(&frame)?;
        if !recovered {
            m.next = top + 1;
            m.live = true;
        }
        Ok(Some(self.position()))
    }

    /// The member's subscriber and next offset, while it is catching up.
    pub fn lagging(&self, id: SubscriberId) -> Option<(Subscriber, u64)> {
        self.members.get(&id).filter(|m| !m.live).map(|m| (m.sub.clone(), m.next))
    }

    /// Records that a replay queued everything up to `last`; the member goes live when that
    /// reaches the top. Returns `None` if it is live now, else the next offset to replay.
    pub fn replayed(&mut self, id: SubscriberId, last: u64) -> Option<u64> {
        let top = self.top;
        let m = self.members.get_mut(&id)?;
        m.next = m.next.max(last + 1);
        if m.next > top {
            m.live = true;
            return None;
        }
        Some(m.next)
    }

    pub fn detach(&mut self, id: SubscriberId, now_ms: u64) -> bool {
        self.last_active = now_ms;
        self.members.remove(&id).is_some()
    }

    /// Queues a frame that is not a message for every member (see `Hub::broadcast`). A member
    /// whose outbox refuses is leaving anyway.
    pub fn broadcast(&self, frame: &ServerFrame) {
        let mut encoded = EncodeOnce::new(frame);
        for m in self.members.values() {
            let _ = m.sub.outbox.push(m.sub.lane, encoded.get(m.sub.outbox.codec()));
        }
    }

    /// Fans one committed message out to the live members expecting exactly this offset. The
    /// frame is encoded at most once per codec and the bytes are shared. Writers are woken
    /// through `wakes`, once per batch.
    pub fn deliver(&mut self, epoch: u64, message: &StoredMessage, now_ms: u64, wakes: &mut Wakes) -> Delivered {
        let offset = message.offset;
        if epoch != self.epoch {
            // The engine lost this room's history and started a new epoch: members continue
            // from the new epoch's start (what this node missed of it, a shared engine's
            // pub/sub gap, comes from history) and see the new epoch in the positions.
            tracing::warn!(room = %self.key.room, old = self.epoch, new = epoch, "room epoch changed");
            self.epoch = epoch;
            self.top = 0;
            for m in self.members.values_mut() {
                m.next = 1;
            }
        }
        if offset <= self.top {
            return Delivered::default();
        }
        self.last_active = now_ms;
        self.top = offset;
        let frame = ServerFrame::Message {
            room: self.key.room.to_string(),
            position: Position { epoch, offset },
            from: message.from.clone(),
            time: message.time,
            id: message.id.clone(),
            data: message.data.clone(),
        };
        let mut encoded = EncodeOnce::new(&frame);
        let mut out = Delivered::default();
        let mut gone = Vec::new();
        for (id, m) in &mut self.members {
            if !m.live || m.next > offset {
                continue;
            }
            if m.next < offset {
                // Offsets were skipped here (the engine delivered out of order or lost some):
                // this member reads them from history.
                m.fall_behind(&self.key, *id);
                out.lagging += 1;
                continue;
            }
            let bytes = encoded.get(m.sub.outbox.codec());
            match m.sub.outbox.push_batched(m.sub.lane, bytes, m.sub.fanout_limit(), wakes) {
                Ok(()) => {
                    m.next = offset + 1;
                    out.delivered += 1;
                }
                Err(PushError::Full) => {
                    m.fall_behind(&self.key, *id);
                    out.lagging += 1;
                }
                Err(PushError::Closed | PushError::Overflow) => gone.push(*id),
            }
        }
        for id in gone {
            self.members.remove(&id);
        }
        out
    }
}
