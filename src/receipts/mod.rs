//! Read marks, unread counts and receipts (docs/receipts.md).
//!
//! Why this shape: the relay already orders every room into positions, so "read" is one number
//! per member and room (a mark that only moves forward), "delivered" is the highest position a
//! member's device confirmed (`cursor`), and an unread count is the room's top minus the mark:
//! derived, never incremented, so concurrent publishes and reads cannot make it drift. Marks are
//! per user, not per device, which is what syncs a badge across devices. Receipts go out per
//! room at most once per `receipts.interval_ms` ([`aggregate`]), which bounds a read storm.
//!
//! State: the store ([`store`]) is the truth; this service caches the marks of rooms it
//! touched, the tops it saw delivered (a tap on the hub, so every engine feeds it), and for each
//! user with a synced connection here, that user's unread entries (so a total costs a sum, not a
//! store read per room). Everything here is per node: across a Redis region the marks live in
//! each node's embedded store (not yet shared; see docs/decisions.md).

pub mod aggregate;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::config::ReceiptsConfig;
use crate::engine::Engine;
use crate::hub::RoomKey;
use crate::hub::presence::UserKey;
use crate::outbox::{CONTROL, Outbox, Reply};
use crate::proto::{
    EncodeOnce, ErrorCode, MemberReceipt, Position, ReadMark, ReceiptEvent, RoomName, RoomUnread, ServerFrame,
};
use aggregate::Aggregator;
use store::{Mark, Op, ReceiptStore};

/// Most user ids in a mention list, and their length.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Cached rooms above which the marks cache is dropped (when no write is in flight).
const MAX_CACHED_ROOMS: usize = 50_000;

type Refusal = (ErrorCode, String);

use crate::lock::lock;

/// A room's unread state for a member, from the mark, the room's top and the mentions after the
/// mark. A mark of an older epoch counts every message of the current one.
pub fn unread_of(room: &RoomName, mark: Option<Mark>, top: Position, mentions: u64) -> RoomUnread {
    let read = match mark {
        Some(m) if m.epoch == top.epoch => m.read.min(top.offset),
        _ => 0,
    };
    RoomUnread {
        room: room.to_string(),
        read: Position { epoch: top.epoch, offset: read },
        top,
        unread: top.offset - read,
        mentions,
    }
}

/// A connection that asked for `sync`: it gets `unread` updates for its user and `receipts`
/// updates for the rooms its user follows. Nothing is sent unasked, so clients that do not know
/// the `receipts` frame never see one.
struct Device {
    id: u64,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct State {
    /// Members' marks by room (cache of the store).
    rooms: HashMap<RoomKey, BTreeMap<String, Mark>>,
    /// Whether a user shares reads (cache of the store).
    share: HashMap<UserKey, bool>,
    /// The last position delivered in each room seen here.
    tops: HashMap<RoomKey, Position>,
    /// Synced connections by user.
    devices: HashMap<UserKey, Vec<Device>>,
    /// Unread entries of users with a synced connection here.
    unread: HashMap<UserKey, HashMap<RoomName, RoomUnread>>,
    /// The synced users following each room.
    watchers: HashMap<RoomKey, HashSet<UserKey>>,
    /// Unread entries to recompute and send at the next tick.
    dirty: HashMap<UserKey, HashSet<RoomName>>,
    /// Rooms whose members moved, released per interval.
    moved: Option<Aggregator<RoomKey>>,
}

pub struct Receipts {
    config: ReceiptsConfig,
    /// `limits.max_frame_bytes`: a `sync` answer is split into frames of at most this.
    max_frame_bytes: usize,
    store: ReceiptStore,
    engine: Arc<dyn Engine>,
    state: Arc<Mutex<State>>,
    /// Writes queued and not yet durable (the marks cache may only be dropped when none is).
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receipts {
    pub fn new(
        config: &ReceiptsConfig,
        max_frame_bytes: u32,
        store: ReceiptStore,
        engine: Arc<dyn Engine>,
    ) -> Arc<Receipts> {
        let state = State { moved: Some(Aggregator::new(config.interval_ms)), ..State::default() };
        let in_flight = Arc::default();
        Arc::new(Receipts {
            config: config.clone(),
            max_frame_bytes: max_frame_bytes as usize,
            store,
            engine,
            state: Arc::new(Mutex::new(state)),
            in_flight,
        })
    }

    /// Sends the aggregated updates every tick until `stop`.
    pub async fn run(self: Arc<Self>, now: fn() -> u64, stop: CancellationToken) {
        let period = std::time::Duration::from_millis((self.config.interval_ms / 4).max(10));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while stop.run_until_cancelled(ticker.tick()).await.is_some() {
            self.tick(now());
        }
    }

    /// `receipts` frames per second per connection, and burst.
    pub fn rate(&self) -> (u32, u32) {
        (self.config.rate, self.config.burst)
    }

    /// Users one `publish_mentions` may name.
    pub fn max_mentions(&self) -> usize {
        self.config.max_mentions as usize
    }

    /// A committed message (called by the hub for every delivery, on every engine).
    pub fn delivered_message(&self, key: &RoomKey, position: Position) {
        let mut state = lock(&self.state);
        // On the publish path: no key clone (an allocation) once the room is known.
        match state.tops.get_mut(key) {
            Some(top) => *top = position,
            None => {
                state.tops.insert(key.clone(), position);
            }
        }
        let State { watchers, dirty, .. } = &mut *state;
        for user in watchers.get(key).into_iter().flatten() {
            dirty.entry(user.clone()).or_default().insert(key.room.clone());
        }
    }

    /// The user joined the room (on any device): they follow it from the join's position on,
    /// unless they already did.
    pub fn follow(&self, key: &RoomKey, user: &str, joined: Position) {
        let mut state = lock(&self.state);
        let Ok(members) = self.members(&mut state, key) else { return };
        if members.get(user).is_some_and(|m| m.epoch == joined.epoch) {
            return;
        }
        let mark = Mark { epoch: joined.epoch, read: joined.offset, delivered: joined.offset };
        members.insert(user.to_owned(), mark);
        // The join's position is the top unless a delivery since told a newer one.
        state.tops.entry(key.clone()).or_insert(joined);
        if let Some(moved) = &mut state.moved {
            moved.note(key, user);
        }
        let who = UserKey { tenant: key.tenant.clone(), user: user.into() };
        self.watch(&mut state, &who, key);
        self.write(&mut state, vec![Op::Mark { room: key.clone(), user: user.to_owned(), mark }], None);
    }

    /// The user left the room for good.
    pub fn unfollow(&self, key: &RoomKey, user: &str) {
        let mut state = lock(&self.state);
        if let Ok(members) = self.members(&mut state, key) {
            members.remove(user);
        }
        let who = UserKey { tenant: key.tenant.clone(), user: user.into() };
        if let Some(watchers) = state.watchers.get_mut(key) {
            watchers.remove(&who);
        }
        if let Some(rooms) = state.unread.get_mut(&who) {
            rooms.remove(&key.room);
        }
        self.write(&mut state, vec![Op::Unfollow { room: key.clone(), user: user.to_owned() }], None);
    }

    /// A device of the user confirmed having the room up to `position` (`cursor`).
    pub fn confirmed(&self, key: &RoomKey, user: &str, position: Position) {
        let mut state = lock(&self.state);
        let top = state.tops.get(key).copied();
        let Ok(members) = self.members(&mut state, key) else { return };
        let Some(mark) = members.get_mut(user) else { return };
        let offset =
            top.filter(|t| t.epoch == position.epoch).map_or(position.offset, |t| position.offset.min(t.offset));
        if mark.epoch != position.epoch || offset <= mark.delivered {
            return;
        }
        mark.delivered = offset;
        let mark = *mark;
        if let Some(moved) = &mut state.moved {
            moved.note(key, user);
        }
        self.write(&mut state, vec![Op::Mark { room: key.clone(), user: user.to_owned(), mark }], None);
    }

    /// The user's own message is stored at `position`: it marks the room read up to it, and
    /// counts as a mention for each followed member in `mentions`.
    pub fn published(&self, key: &RoomKey, user: &str, position: Position, mentions: &[String]) {
        let mut state = lock(&self.state);
        let who = UserKey { tenant: key.tenant.clone(), user: user.into() };
        let mut ops = Vec::new();
        self.advance(&mut state, key, &who, position, &mut ops);
        let Ok(members) = self.members(&mut state, key) else { return };
        let mentioned: Vec<String> = mentions
            .iter()
            .filter(|m| m.as_str() != user && members.get(m.as_str()).is_some_and(|mark| mark.read < position.offset))
            .cloned()
            .collect();
        let mut recount = Vec::with_capacity(mentioned.len());
        for m in mentioned {
            recount.push(UserKey { tenant: key.tenant.clone(), user: m.as_str().into() });
            ops.push(Op::Mention { room: key.clone(), user: m, offset: position.offset });
        }
        // Counts read mentions from the store: recount once the new ones are committed.
        let (shared, room) = (self.state.clone(), key.room.clone());
        let recount = Box::new(move |result: Result<(), crate::store::StoreError>| {
            // Only the writer thread runs this with `Ok`, never under the state lock.
            if result.is_ok() && !recount.is_empty() {
                let mut state = lock(&shared);
                for user in recount {
                    state.dirty.entry(user).or_default().insert(room.clone());
                }
            }
        });
        self.write(&mut state, ops, Some(recount));
    }

    /// Moves the user's mark in `key` up to `position` (same epoch, forward only), queuing the
    /// store ops; the user's devices get the new count at once.
    fn advance(&self, state: &mut State, key: &RoomKey, user: &UserKey, position: Position, ops: &mut Vec<Op>) {
        let Ok(members) = self.members(state, key) else { return };
        let Some(mark) = members.get_mut(&*user.user) else { return };
        if mark.epoch != position.epoch {
            *mark = Mark { epoch: position.epoch, read: 0, delivered: 0 };
        }
        if position.offset <= mark.read {
            return;
        }
        mark.read = position.offset;
        mark.delivered = mark.delivered.max(position.offset);
        let mark = *mark;
        ops.push(Op::Mark { room: key.clone(), user: user.user.to_string(), mark });
        ops.push(Op::MentionsRead { room: key.clone(), user: user.user.to_string(), upto: position.offset });
        if let Some(moved) = &mut state.moved {
            moved.note(key, &user.user);
        }
        let top = state.tops.get(key).copied().unwrap_or(position).max(position);
        if let Some(rooms) = state.unread.get_mut(user) {
            // Mentions up to the mark are read; the ones after it stay counted.
            let mentions = self.store.mentions(user, &key.room, mark.read).unwrap_or(0);
            rooms.insert(key.room.clone(), unread_of(&key.room, Some(mark), top, mentions));
            let entry = rooms[&key.room].clone();
            self.send_unread(state, user, vec![entry]);
        }
    }

    /// A `read` action: every mark is checked first (followed room, current epoch, not beyond
    /// the top), then applied; `reply` gets `ok` once durable.
    pub async fn read(&self, user: UserKey, marks: Vec<ReadMark>, mut reply: Reply) {
        let req = reply.req();
        let checked = match self.check_marks(&user, marks).await {
            Ok(checked) => checked,
            Err((code, message)) => {
                let _ = reply.send(&ServerFrame::error(req, code, message));
                return;
            }
        };
        let mut state = lock(&self.state);
        let mut ops = Vec::new();
        for (key, position) in checked {
            self.advance(&mut state, &key, &user, position, &mut ops);
        }
        self.write(&mut state, ops, Some(answer_when_durable(reply)));
    }

    async fn check_marks(&self, user: &UserKey, marks: Vec<ReadMark>) -> Result<Vec<(RoomKey, Position)>, Refusal> {
        let max = self.config.max_marks as usize;
        if marks.is_empty() || marks.len() > max {
            return Err((ErrorCode::TOO_MANY_MARKS, format!("a read takes 1-{max} marks")));
        }
        let mut out: Vec<(RoomKey, Position)> = Vec::with_capacity(marks.len());
        for ReadMark { room, position } in marks {
            let name = RoomName::parse(&room).map_err(|code| (code, format!("invalid room name {room:?}")))?;
            let key = RoomKey { tenant: user.tenant.clone(), room: name };
            if out.iter().any(|(k, _)| *k == key) {
                return Err((ErrorCode::TOO_MANY_MARKS, format!("{room} is marked twice")));
            }
            if !self.follows(&key, user) {
                return Err((ErrorCode::NOT_FOLLOWING, format!("{room} is not followed by this user")));
            }
            let top = self.top(&key).await?;
            if position.epoch != top.epoch || position.offset > top.offset {
                let message =
                    format!("{room} is at {}:{}, the mark is beyond it or of another epoch", top.epoch, top.offset);
                return Err((ErrorCode::BAD_MARK, message));
            }
            out.push((key, position));
        }
        Ok(out)
    }

    fn follows(&self, key: &RoomKey, user: &UserKey) -> bool {
        let mut state = lock(&self.state);
        self.members(&mut state, key).is_ok_and(|m| m.contains_key(&*user.user))
    }

    /// The room's top: the last delivery seen here, or the engine's meta.
    async fn top(&self, key: &RoomKey) -> Result<Position, Refusal> {
        if let Some(top) = lock(&self.state).tops.get(key) {
            return Ok(*top);
        }
        let meta = self.engine.meta(key).await.map_err(|e| (e.code(), e.to_string()))?;
        let mut state = lock(&self.state);
        // A delivery meanwhile is newer than the meta read.
        Ok(*state.tops.entry(key.clone()).or_insert(meta.position()))
    }

    /// A `sync` action: this connection gets the counts of every followed room now and the
    /// changes from then on.
    pub async fn sync(&self, user: UserKey, device: u64, outbox: Arc<Outbox>, mut reply: Reply) {
        let answer_to = outbox.clone();
        let req = reply.req();
        // Follows and mentions queued before this `sync` are in the store when it reads.
        self.store.settled().await;
        let rooms = match self.store.follows(&user) {
            Ok(rooms) => rooms,
            Err(e) => {
                let _ = reply.send(&ServerFrame::error(req, ErrorCode::STORE_UNAVAILABLE, e.to_string()));
                return;
            }
        };
        {
            // Watch first: a message from here on marks the room dirty, whatever is read below.
            let mut state = lock(&self.state);
            let devices = state.devices.entry(user.clone()).or_default();
            devices.retain(|d| d.id != device);
            devices.push(Device { id: device, outbox });
            for room in &rooms {
                let key = RoomKey { tenant: user.tenant.clone(), room: room.clone() };
                state.watchers.entry(key).or_default().insert(user.clone());
            }
        }
        let mut entries = HashMap::with_capacity(rooms.len());
        for room in rooms {
            let key = RoomKey { tenant: user.tenant.clone(), room };
            let Ok(top) = self.top(&key).await else { continue };
            let mut state = lock(&self.state);
            let mark = self.members(&mut state, &key).ok().and_then(|m| m.get(&*user.user).copied());
            let mentions = mark.map_or(0, |m| self.store.mentions(&user, &key.room, m.read).unwrap_or(0));
            entries.insert(key.room.clone(), unread_of(&key.room, mark, top, mentions));
        }
        let mut state = lock(&self.state);
        let (total, mentions) = totals(&entries);
        let mut pages = pages(entries.values().cloned().collect(), self.max_frame_bytes).into_iter();
        state.unread.insert(user, entries);
        let first = pages.next().unwrap_or_default();
        let _ = reply.send(&ServerFrame::Receipts {
            req,
            event: ReceiptEvent::Unread { full: true, rooms: first, total, mentions },
        });
        // What did not fit follows at once, as updates (under the lock: before any other update).
        for rooms in pages {
            let frame =
                ServerFrame::Receipts { req: 0, event: ReceiptEvent::Unread { full: false, rooms, total, mentions } };
            let _ = answer_to.send(CONTROL, &frame);
        }
    }

    /// A `status` action: the room's receipts now.
    pub fn status(&self, user: &UserKey, room: &RoomName) -> Result<ReceiptEvent, Refusal> {
        let key = RoomKey { tenant: user.tenant.clone(), room: room.clone() };
        let mut state = lock(&self.state);
        let top = state.tops.get(&key).copied();
        let members = self.members(&mut state, &key).map_err(|e| (ErrorCode::STORE_UNAVAILABLE, e.to_string()))?;
        let Some(own) = members.get(&*user.user) else {
            return Err((ErrorCode::NOT_FOLLOWING, format!("{room} is not followed by this user")));
        };
        let epoch = top.map_or(own.epoch, |t| t.epoch);
        let all: Vec<String> = members.keys().cloned().collect();
        Ok(self.receipts_event(&mut state, &key, epoch, &all))
    }

    /// A `privacy` action.
    pub fn set_share_read(&self, user: &UserKey, share_read: bool, reply: Reply) {
        let mut state = lock(&self.state);
        state.share.insert(user.clone(), share_read);
        // Members of the user's rooms see the change at their next update.
        if let (Ok(rooms), Some(moved)) = (self.store.follows(user), &mut state.moved) {
            for room in rooms {
                moved.note(&RoomKey { tenant: user.tenant.clone(), room }, &user.user);
            }
        }
        self.write(&mut state, vec![Op::Prefs { user: user.clone(), share_read }], Some(answer_when_durable(reply)));
    }

    /// The connection ended: it gets no more updates.
    pub fn disconnect(&self, user: &UserKey, device: u64) {
        let mut state = lock(&self.state);
        let Some(devices) = state.devices.get_mut(user) else { return };
        devices.retain(|d| d.id != device);
        if !devices.is_empty() {
            return;
        }
        state.devices.remove(user);
        state.dirty.remove(user);
        if let Some(rooms) = state.unread.remove(user) {
            for room in rooms.into_keys() {
                let key = RoomKey { tenant: user.tenant.clone(), room };
                if let Some(watchers) = state.watchers.get_mut(&key) {
                    watchers.remove(user);
                    if watchers.is_empty() {
                        state.watchers.remove(&key);
                    }
                }
            }
        }
    }

    /// Sends what changed: unread entries of synced users, receipts of rooms whose members moved.
    pub fn tick(&self, now_ms: u64) {
        let mut state = lock(&self.state);
        for (user, rooms) in std::mem::take(&mut state.dirty) {
            if !state.unread.contains_key(&user) {
                // Its `sync` is still reading: these rooms wait for the next tick.
                if state.devices.contains_key(&user) {
                    state.dirty.insert(user, rooms);
                }
                continue;
            }
            let mut changed = Vec::with_capacity(rooms.len());
            for room in rooms {
                let key = RoomKey { tenant: user.tenant.clone(), room };
                let Some(top) = state.tops.get(&key).copied() else { continue };
                let mark = self.members(&mut state, &key).ok().and_then(|m| m.get(&*user.user).copied());
                let Some(mark) = mark else { continue };
                let mentions = self.store.mentions(&user, &key.room, mark.read).unwrap_or(0);
                let entry = unread_of(&key.room, Some(mark), top, mentions);
                let Some(rooms) = state.unread.get_mut(&user) else { continue };
                if rooms.get(&key.room) != Some(&entry) {
                    rooms.insert(key.room.clone(), entry.clone());
                    changed.push(entry);
                }
            }
            if !changed.is_empty() {
                self.send_unread(&state, &user, changed);
            }
        }
        let due = state.moved.as_mut().map(|m| m.due(now_ms)).unwrap_or_default();
        for (key, users) in due {
            let epoch = state.tops.get(&key).map(|t| t.epoch);
            let Some(epoch) = epoch
                .or_else(|| self.members(&mut state, &key).ok().and_then(|m| m.values().map(|mark| mark.epoch).max()))
            else {
                continue;
            };
            let event = self.receipts_event(&mut state, &key, epoch, &users);
            let frame = ServerFrame::Receipts { req: 0, event };
            let mut encoded = EncodeOnce::new(&frame);
            // To the synced connections of every member (opt-in: `sync`), encoded once.
            let members = state.rooms.get(&key).map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
            for member in members {
                let who = UserKey { tenant: key.tenant.clone(), user: member.as_str().into() };
                for device in state.devices.get(&who).into_iter().flatten() {
                    let _ = device.outbox.push(CONTROL, encoded.get(device.outbox.codec()));
                }
            }
        }
        if state.rooms.len() > MAX_CACHED_ROOMS && self.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            state.rooms.clear();
        }
    }

    /// A room's `receipts` event listing `users` (when the room is small enough).
    fn receipts_event(&self, state: &mut State, key: &RoomKey, epoch: u64, users: &[String]) -> ReceiptEvent {
        let tenant = key.tenant.clone();
        let members = self.members(state, key).map(|m| m.clone()).unwrap_or_default();
        let mut share = |user: &str| -> bool {
            let who = UserKey { tenant: tenant.clone(), user: user.into() };
            *state.share.entry(who.clone()).or_insert_with(|| self.store.share_read(&who).unwrap_or(true))
        };
        let in_epoch = |m: &Mark| if m.epoch == epoch { *m } else { Mark { epoch, read: 0, delivered: 0 } };
        let mut delivered_all = u64::MAX;
        let mut read_all = u64::MAX;
        for (user, mark) in &members {
            let mark = in_epoch(mark);
            delivered_all = delivered_all.min(mark.delivered.max(mark.read));
            if share(user) {
                read_all = read_all.min(mark.read);
            }
        }
        let detailed = members.len() <= self.config.max_detailed_members as usize;
        let listed = if detailed {
            users
                .iter()
                .filter_map(|user| {
                    let mark = in_epoch(members.get(user)?);
                    Some(MemberReceipt {
                        user: user.clone(),
                        delivered: mark.delivered.max(mark.read),
                        read: share(user).then_some(mark.read),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        ReceiptEvent::Receipts {
            room: key.room.to_string(),
            epoch,
            delivered_all: if members.is_empty() { 0 } else { delivered_all },
            read_all: if read_all == u64::MAX { 0 } else { read_all },
            count: members.len() as u32,
            members: listed,
        }
    }

    /// Queues an `unread` update for every synced connection of the user.
    fn send_unread(&self, state: &State, user: &UserKey, rooms: Vec<RoomUnread>) {
        let Some(devices) = state.devices.get(user) else { return };
        let (total, mentions) = state.unread.get(user).map(totals).unwrap_or_default();
        let frame =
            ServerFrame::Receipts { req: 0, event: ReceiptEvent::Unread { full: false, rooms, total, mentions } };
        let mut encoded = EncodeOnce::new(&frame);
        for device in devices {
            // A closing outbox needs nothing more.
            let _ = device.outbox.push(CONTROL, encoded.get(device.outbox.codec()));
        }
    }

    /// Makes a followed room's entry live for the user's synced devices, if they have any.
    fn watch(&self, state: &mut State, user: &UserKey, key: &RoomKey) {
        if state.devices.contains_key(user) {
            state.watchers.entry(key.clone()).or_default().insert(user.clone());
            state.dirty.entry(user.clone()).or_default().insert(key.room.clone());
        }
    }

    /// The room's members' marks, loaded from the store on first use.
    fn members<'a>(
        &self,
        state: &'a mut State,
        key: &RoomKey,
    ) -> Result<&'a mut BTreeMap<String, Mark>, crate::store::StoreError> {
        if !state.rooms.contains_key(key) {
            let loaded = self.store.room(key)?;
            state.rooms.insert(key.clone(), loaded);
        }
        Ok(state.rooms.get_mut(key).expect("inserted above"))
    }

    /// Queues store ops (under the state lock, so they commit in the order the cache changed).
    fn write(&self, _state: &mut State, ops: Vec<Op>, done: Option<store::DoneFn>) {
        if ops.is_empty() {
            if let Some(done) = done {
                done(Ok(()));
            }
            return;
        }
        use std::sync::atomic::Ordering;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let in_flight = self.in_flight.clone();
        self.store.write(
            ops,
            Some(Box::new(move |result| {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if let Some(done) = done {
                    done(result);
                }
            })),
        );
    }
}

/// Answers `ok` (or `store_unavailable`) once a write is durable.
fn answer_when_durable(mut reply: Reply) -> store::DoneFn {
    Box::new(move |result| {
        let req = reply.req();
        let frame = match result {
            Ok(()) => ServerFrame::Receipts { req, event: ReceiptEvent::Ok {} },
            Err(e) => ServerFrame::error(req, ErrorCode::STORE_UNAVAILABLE, e.to_string()),
        };
        let _ = reply.send(&frame);
    })
}

/// Splits unread entries into pages whose frames stay within `max_frame_bytes` in either codec
/// (JSON is the larger).
fn pages(rooms: Vec<RoomUnread>, max_frame_bytes: usize) -> Vec<Vec<RoomUnread>> {
    let budget = max_frame_bytes.saturating_sub(256);
    let mut out: Vec<Vec<RoomUnread>> = vec![Vec::new()];
    let mut used = 0;
    for room in rooms {
        let size = crate::proto::Codec::Json.encode(&room).len() + 1;
        if used + size > budget && out.last().is_some_and(|page| !page.is_empty()) {
            out.push(Vec::new());
            used = 0;
        }
        used += size;
        out.last_mut().expect("never empty").push(room);
    }
    out
}

fn totals(rooms: &HashMap<RoomName, RoomUnread>) -> (u64, u64) {
    rooms.values().fold((0, 0), |(t, m), r| (t + r.unread, m + r.mentions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_is_the_top_minus_the_mark_within_an_epoch() {
        let room = RoomName::parse("r").unwrap();
        let top = Position { epoch: 7, offset: 10 };
        let mark = Mark { epoch: 7, read: 4, delivered: 6 };
        assert_eq!(unread_of(&room, Some(mark), top, 2).unread, 6);
        // A mark of a lost epoch counts everything of the new one.
        let old = Mark { epoch: 6, read: 40, delivered: 40 };
        let u = unread_of(&room, Some(old), top, 0);
        assert_eq!((u.unread, u.read), (10, Position { epoch: 7, offset: 0 }));
        // A mark ahead of a stale top never underflows.
        let ahead = Mark { epoch: 7, read: 12, delivered: 12 };
        assert_eq!(unread_of(&room, Some(ahead), top, 0).unread, 0);
    }

    #[test]
    fn a_sync_answer_is_split_into_frames_within_the_limit() {
        let top = Position { epoch: 7, offset: 10 };
        let rooms: Vec<RoomUnread> =
            (0..2_000).map(|i| unread_of(&RoomName::parse(&format!("chat:room-{i}")).unwrap(), None, top, 0)).collect();
        let split = pages(rooms.clone(), 65_536);
        assert!(split.len() > 1);
        assert_eq!(split.concat(), rooms, "every room once, in order");
        for page in split {
            let frame = ServerFrame::Receipts {
                req: u64::MAX,
                event: ReceiptEvent::Unread { full: true, rooms: page, total: u64::MAX, mentions: u64::MAX },
            };
            assert!(crate::proto::Codec::Json.encode(&frame).len() <= 65_536);
        }
        assert_eq!(pages(Vec::new(), 65_536), vec![Vec::<RoomUnread>::new()]);
    }
}
