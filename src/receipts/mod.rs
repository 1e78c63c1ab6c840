//! Read marks, unread counts and receipts (docs/receipts.md).
//!
//! Why this shape: the relay already orders every room into positions, so "read" is one number
//! per member and room (a mark that only moves forward), "delivered" is the highest position a
//! member's device confirmed (`cursor`), and an unread count is the room's top minus the mark:
//! derived, never incremented, so concurrent publishes and reads cannot make it drift. Marks are
//! per user, not per device, which is what syncs a badge across devices. Receipts go out per
//! room at most once per `receipts.interval_ms` ([`aggregate`]), which bounds a read storm.
//!
//! State: the store ([`store::ReceiptStore`]: the node's redb, or the region's Redis in
//! [`redis`]) is the truth. This service caches the marks of rooms in use here (a member
//! connected, a synced follower, a write in flight; others are dropped), and for each user with
//! a synced connection here, that user's marks and unread mentions per room (so a count costs
//! no store read). Tops are not copied: the hub has them for the rooms it holds, the engine for
//! every room, and [`watch`] keeps one only for the rooms synced users follow, which is all the
//! delivery tap touches on the publish path. In a Redis region, every durable change also goes
//! to the other nodes ([`region`]), and the tops of watched rooms nobody joined here are read
//! from the region once per interval.

pub mod aggregate;
pub mod redis;
pub mod region;
pub mod store;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ReceiptsConfig;
use crate::engine::Engine;
use crate::hub::presence::UserKey;
use crate::hub::{Hub, RoomKey};
use crate::outbox::{CONTROL, Outbox, Reply};
use crate::proto::{
    EncodeOnce, ErrorCode, MemberReceipt, Position, ReadMark, ReceiptEvent, RoomName, RoomUnread, ServerFrame,
};
use aggregate::Aggregator;
use region::Change;
use store::{Mark, Op, ReceiptStore, merged};
use watch::Watch;

/// Most user ids in a mention list, and their length.
pub const MAX_USER_ID_BYTES: usize = 256;

/// How often rooms nobody here needs are dropped from the cache (ms).
const SWEEP_EVERY_MS: u64 = 10_000;

/// Shards of the watched rooms (the publish path's only lock).
const WATCH_SHARDS: usize = 64;

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

/// A followed room of a user synced here.
struct Entry {
    mark: Option<Mark>,
    /// Offsets that mention the user after the mark.
    mentions: BTreeSet<u64>,
    /// What the user's devices were last sent.
    sent: Option<RoomUnread>,
}

impl Entry {
    fn unread(&self, room: &RoomName, top: Position) -> RoomUnread {
        let read = self.mark.filter(|m| m.epoch == top.epoch).map_or(0, |m| m.read);
        let mentions = self.mentions.range(read.saturating_add(1)..).count() as u64;
        unread_of(room, self.mark, top, mentions)
    }

    /// Takes a newer mark; mentions up to it are read.
    fn marked(&mut self, mark: Mark) {
        let mark = merged(self.mark, mark);
        self.mark = Some(mark);
        self.mentions.retain(|offset| *offset > mark.read);
    }
}

struct State {
    /// Members' marks by room (cache of the store).
    rooms: HashMap<RoomKey, BTreeMap<String, Mark>>,
    /// Whether a user shares reads (cache of the store, for every member of a cached room; an
    /// unknown user counts as not sharing until read).
    share: HashMap<UserKey, bool>,
    /// Synced connections by user.
    devices: HashMap<UserKey, Vec<Device>>,
    /// The followed rooms of users with a synced connection here.
    unread: HashMap<UserKey, HashMap<RoomName, Entry>>,
    /// Unread entries to recompute and send at the next tick.
    dirty: HashMap<UserKey, HashSet<RoomName>>,
    /// Rooms whose members moved, released per interval.
    moved: Aggregator<RoomKey>,
    /// Watched rooms whose top is unknown, and rooms to cache for their receipts (read by `run`).
    need_top: HashSet<RoomKey>,
    need_load: HashSet<RoomKey>,
    /// Members of cached rooms whose privacy setting is unknown (they count as not sharing).
    need_share: HashSet<UserKey>,
    /// When new messages were last counted (at most once per interval).
    last_counted: u64,
    last_sweep: u64,
}

pub struct Receipts {
    config: ReceiptsConfig,
    /// `limits.max_frame_bytes`: a `sync` answer is split into frames of at most this.
    max_frame_bytes: usize,
    store: Arc<dyn ReceiptStore>,
    engine: Arc<dyn Engine>,
    hub: Arc<Hub>,
    state: Arc<Mutex<State>>,
    watch: Watch,
    /// Writes queued and not yet durable, per room (its cache stays until they are).
    writing: Arc<Mutex<HashMap<RoomKey, usize>>>,
    /// The region's receipts channel (a Redis engine): changes out, and in.
    region: Option<mpsc::UnboundedSender<String>>,
    inbound: Mutex<Option<mpsc::UnboundedReceiver<(String, String)>>>,
    me: Weak<Receipts>,
    runtime: Option<tokio::runtime::Handle>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Receipts {
    pub fn new(
        config: &ReceiptsConfig,
        max_frame_bytes: u32,
        store: Arc<dyn ReceiptStore>,
        engine: Arc<dyn Engine>,
        hub: Arc<Hub>,
    ) -> Arc<Receipts> {
        let state = State {
            rooms: HashMap::new(),
            share: HashMap::new(),
            devices: HashMap::new(),
            unread: HashMap::new(),
            dirty: HashMap::new(),
            moved: Aggregator::new(config.interval_ms),
            need_top: HashSet::new(),
            need_load: HashSet::new(),
            need_share: HashSet::new(),
            last_counted: 0,
            last_sweep: 0,
        };
        let link = engine.share_receipts();
        let (region, inbound) = match link {
            Some(link) => (Some(link.out), Some(link.inbound)),
            None => (None, None),
        };
        Arc::new_cyclic(|me| Receipts {
            config: config.clone(),
            max_frame_bytes: max_frame_bytes as usize,
            store,
            engine,
            hub,
            state: Arc::new(Mutex::new(state)),
            watch: Watch::new(WATCH_SHARDS),
            writing: Arc::default(),
            region,
            inbound: Mutex::new(inbound),
            me: me.clone(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    /// Sends the aggregated updates every tick, applies the other nodes' changes and reads what
    /// the ticks found missing, until `stop`; then waits for its own tasks.
    pub async fn run(self: Arc<Self>, now: fn() -> u64, stop: CancellationToken) {
        if let Some(inbound) = lock(&self.inbound).take() {
            self.tasks.spawn(self.clone().listen(inbound, self.stop.clone()));
        }
        let period = std::time::Duration::from_millis((self.config.interval_ms / 4).max(10));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pulled = 0;
        while stop.run_until_cancelled(ticker.tick()).await.is_some() {
            let now_ms = now();
            self.tick(now_ms);
            let pull = self.region.is_some() && now_ms >= pulled + self.config.interval_ms;
            if pull {
                pulled = now_ms;
            }
            self.fetch(pull).await;
        }
        self.stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.tasks.wait()).await;
        // Marks held back for a paced commit are made durable before the relay exits.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), store::settled(&*self.store)).await;
    }

    /// Applies the other nodes' changes as they come.
    async fn listen(self: Arc<Self>, mut inbound: mpsc::UnboundedReceiver<(String, String)>, stop: CancellationToken) {
        while let Some((node, text)) = stop.run_until_cancelled(inbound.recv()).await.flatten() {
            match serde_json::from_str::<Change>(&text) {
                Ok(change) => self.apply(change),
                Err(err) => tracing::warn!(%err, node, "undecodable receipts change from another node"),
            }
        }
    }

    /// Reads what the last tick found missing: tops of watched rooms (and, in a region, the tops
    /// of every watched room nobody joined here), and rooms to cache for their receipts.
    async fn fetch(&self, region_tops: bool) {
        let (mut tops, load, share) = {
            let mut state = lock(&self.state);
            let tops: Vec<RoomKey> = state.need_top.drain().collect();
            (tops, state.need_load.drain().collect::<Vec<_>>(), state.need_share.drain().collect::<Vec<_>>())
        };
        if !share.is_empty() {
            let found = self.store.share_read(&share).await;
            let mut state = lock(&self.state);
            match found {
                Ok(found) => {
                    for (user, share_read) in share.iter().zip(found) {
                        if !state.share.contains_key(user) {
                            self.shares(&mut state, user, share_read);
                        }
                    }
                }
                // Still hidden; asked again at the next tick.
                Err(_) => state.need_share.extend(share),
            }
        }
        if region_tops {
            // Rooms held here get every message from the engine; the others are read.
            let queued: HashSet<RoomKey> = tops.iter().cloned().collect();
            tops.extend(self.watch.rooms().into_iter().filter(|key| !self.hub.has_room(key) && !queued.contains(key)));
        }
        if !tops.is_empty() {
            let found = self.engine.tops(tops.clone()).await;
            for (key, top) in tops.iter().zip(found) {
                if let Some(top) = top {
                    self.watch.set_top(key, top);
                }
            }
        }
        for key in load {
            let _ = self.load(&key).await;
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

    /// A committed message (called by the hub for every delivery, on every engine): only a
    /// watched room's top moves; nothing else is touched.
    pub fn delivered_message(&self, key: &RoomKey, position: Position) {
        self.watch.delivered(key, position);
    }

    /// The room's top as known here without IO: watched, or held by the hub.
    fn top_here(&self, key: &RoomKey) -> Option<Position> {
        self.watch.top(key).or_else(|| self.hub.position(key))
    }

    /// Caches the room's marks and its members' privacy settings, unless cached.
    async fn load(&self, key: &RoomKey) -> Result<(), crate::store::StoreError> {
        if lock(&self.state).rooms.contains_key(key) {
            return Ok(());
        }
        let marks = self.store.room(key).await?;
        let unknown: Vec<UserKey> = {
            let state = lock(&self.state);
            marks
                .keys()
                .map(|user| UserKey { tenant: key.tenant.clone(), user: user.as_str().into() })
                .filter(|user| !state.share.contains_key(user))
                .collect()
        };
        let shares = self.store.share_read(&unknown).await?;
        let mut state = lock(&self.state);
        for (user, share) in unknown.into_iter().zip(shares) {
            state.share.entry(user).or_insert(share);
        }
        // A change applied meanwhile is newer than the read.
        let cached = state.rooms.entry(key.clone()).or_default();
        for (user, mark) in marks {
            let old = cached.get(&user).copied();
            cached.insert(user, merged(Some(mark), old.unwrap_or(mark)));
        }
        Ok(())
    }

    /// Runs `f` once the room's marks are cached: now if they are, else after reading them (a
    /// task on the runtime; marks only move forward, so the order of such updates is free).
    fn with_room(&self, key: &RoomKey, f: impl FnOnce(&Receipts, &mut State) + Send + 'static) {
        let mut state = lock(&self.state);
        if state.rooms.contains_key(key) {
            f(self, &mut state);
            return;
        }
        drop(state);
        let (Some(me), Some(runtime)) = (self.me.upgrade(), self.runtime.as_ref()) else { return };
        let (key, stop) = (key.clone(), self.stop.clone());
        self.tasks.spawn_on(
            async move {
                let loaded = stop.run_until_cancelled(me.load(&key)).await;
                if let Some(Ok(())) = loaded {
                    let mut state = lock(&me.state);
                    if state.rooms.contains_key(&key) {
                        f(&me, &mut state);
                    }
                }
            },
            runtime,
        );
    }

    /// The user joined the room (on any device): they follow it from the join's position on,
    /// unless they already did.
    pub async fn follow(&self, key: &RoomKey, user: &str, joined: Position) {
        let who = UserKey { tenant: key.tenant.clone(), user: user.into() };
        if self.load(key).await.is_err() {
            return;
        }
        if !lock(&self.state).share.contains_key(&who)
            && let Ok(share) = self.store.share_read(std::slice::from_ref(&who)).await
        {
            lock(&self.state).share.entry(who.clone()).or_insert(share.first().copied().unwrap_or(true));
        }
        let mut state = lock(&self.state);
        let Some(members) = state.rooms.get_mut(key) else { return };
        if members.get(user).is_some_and(|m| m.epoch == joined.epoch) {
            return;
        }
        let mark = Mark { epoch: joined.epoch, read: joined.offset, delivered: joined.offset };
        members.insert(user.to_owned(), mark);
        state.moved.note(key, user);
        self.watch_new(&mut state, &who, key, mark, Some(joined));
        self.write(&mut state, vec![Op::Mark { room: key.clone(), user: user.to_owned(), mark }], None);
    }

    /// A room the user now follows becomes live for their synced devices here, if any.
    fn watch_new(&self, state: &mut State, user: &UserKey, key: &RoomKey, mark: Mark, top: Option<Position>) {
        if !state.devices.contains_key(user) {
            return;
        }
        self.watch.add(key, user);
        if let Some(top) = top {
            self.watch.set_top(key, top);
        }
        let rooms = state.unread.entry(user.clone()).or_default();
        rooms
            .entry(key.room.clone())
            .or_insert(Entry { mark: None, mentions: BTreeSet::new(), sent: None })
            .marked(mark);
        state.dirty.entry(user.clone()).or_default().insert(key.room.clone());
    }

    /// The user left the room for good.
    pub fn unfollow(&self, key: &RoomKey, user: &str) {
        let who = UserKey { tenant: key.tenant.clone(), user: user.into() };
        let mut state = lock(&self.state);
        self.forget(&mut state, key, &who);
        self.write(&mut state, vec![Op::Unfollow { room: key.clone(), user: user.to_owned() }], None);
    }

    /// Drops what is cached of the user in the room (they left it).
    fn forget(&self, state: &mut State, key: &RoomKey, user: &UserKey) {
        if let Some(members) = state.rooms.get_mut(key) {
            members.remove(&*user.user);
        }
        if let Some(rooms) = state.unread.get_mut(user)
            && rooms.remove(&key.room).is_some()
        {
            self.watch.remove(key, user);
            let (total, mentions) = totals(rooms);
            let frame = ServerFrame::Receipts {
                req: 0,
                event: ReceiptEvent::Unread { full: false, rooms: Vec::new(), total, mentions },
            };
            send_to(state, user, &frame);
        }
    }

    /// A device of the user confirmed having the room up to `position` (`cursor`).
    pub fn confirmed(&self, key: &RoomKey, user: &str, position: Position) {
        let top = self.top_here(key);
        let (room, user) = (key.clone(), user.to_owned());
        self.with_room(key, move |this, state| {
            let Some(mark) = state.rooms.get_mut(&room).and_then(|m| m.get_mut(&user)) else { return };
            let offset =
                top.filter(|t| t.epoch == position.epoch).map_or(position.offset, |t| position.offset.min(t.offset));
            if mark.epoch != position.epoch || offset <= mark.delivered {
                return;
            }
            mark.delivered = offset;
            let mark = *mark;
            state.moved.note(&room, &user);
            this.write(state, vec![Op::Mark { room: room.clone(), user, mark }], None);
        });
    }

    /// The user's own message is stored at `position`: it marks the room read up to it, and
    /// counts as a mention for each followed member in `mentions`.
    pub fn published(&self, key: &RoomKey, user: &str, position: Position, mentions: &[String]) {
        let who = UserKey { tenant: key.tenant.clone(), user: user.into() };
        let (room, mentions) = (key.clone(), mentions.to_vec());
        self.with_room(key, move |this, state| {
            let mut ops = Vec::new();
            this.advance(state, &room, &who, position, &mut ops);
            let Some(members) = state.rooms.get(&room) else { return };
            let mentioned: Vec<String> = mentions
                .into_iter()
                .filter(|m| *m != *who.user && members.get(m.as_str()).is_some_and(|mark| mark.read < position.offset))
                .collect();
            for m in mentioned {
                let user = UserKey { tenant: room.tenant.clone(), user: m.as_str().into() };
                this.mentioned(state, &room, &user, position.offset);
                ops.push(Op::Mention { room: room.clone(), user: m, offset: position.offset });
            }
            this.write(state, ops, None);
        });
    }

    /// The user was mentioned at `offset`: their synced devices here count it.
    fn mentioned(&self, state: &mut State, key: &RoomKey, user: &UserKey, offset: u64) {
        if let Some(entry) = state.unread.get_mut(user).and_then(|rooms| rooms.get_mut(&key.room))
            && entry.mark.is_none_or(|m| m.read < offset)
        {
            entry.mentions.insert(offset);
            state.dirty.entry(user.clone()).or_default().insert(key.room.clone());
        }
    }

    /// Moves the user's mark in `key` up to `position` (same epoch, forward only), queuing the
    /// store ops; the user's devices get the new count at once.
    fn advance(&self, state: &mut State, key: &RoomKey, user: &UserKey, position: Position, ops: &mut Vec<Op>) {
        let Some(mark) = state.rooms.get_mut(key).and_then(|m| m.get_mut(&*user.user)) else { return };
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
        state.moved.note(key, &user.user);
        self.mark_changed(state, key, user, mark);
    }

    /// The user's mark moved (here or on another node): their synced devices here get the new
    /// count at once.
    fn mark_changed(&self, state: &mut State, key: &RoomKey, user: &UserKey, mark: Mark) {
        let Some(entry) = state.unread.get_mut(user).and_then(|rooms| rooms.get_mut(&key.room)) else { return };
        entry.marked(mark);
        let read = Position { epoch: mark.epoch, offset: mark.read };
        let top = match self.top_here(key) {
            Some(top) if top.epoch == read.epoch => top.max(read),
            Some(top) => top,
            None => read,
        };
        let unread = entry.unread(&key.room, top);
        if entry.sent.as_ref() != Some(&unread) {
            entry.sent = Some(unread.clone());
            self.send_unread(state, user, vec![unread]);
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
            self.load(&key).await.map_err(|e| (ErrorCode::STORE_UNAVAILABLE, e.to_string()))?;
            let follows = lock(&self.state).rooms.get(&key).is_some_and(|m| m.contains_key(&*user.user));
            if !follows {
                return Err((ErrorCode::NOT_FOLLOWING, format!("{room} is not followed by this user")));
            }
            let beyond = |top: Position| position.epoch != top.epoch || position.offset > top.offset;
            let mut top = self.top_here(&key);
            // What is known here may lag (another node's message): the engine has the last word.
            if top.is_none_or(beyond) {
                let meta = self.engine.meta(&key).await.map_err(|e| (e.code(), e.to_string()))?;
                top = Some(meta.position());
                self.watch.set_top(&key, meta.position());
            }
            if let Some(top) = top.filter(|top| beyond(*top)) {
                let message =
                    format!("{room} is at {}:{}, the mark is beyond it or of another epoch", top.epoch, top.offset);
                return Err((ErrorCode::BAD_MARK, message));
            }
            out.push((key, position));
        }
        // Checked rooms stay cached until applied (a sweep waits for writes, not for this).
        for (key, _) in &out {
            self.load(key).await.map_err(|e| (ErrorCode::STORE_UNAVAILABLE, e.to_string()))?;
        }
        Ok(out)
    }

    /// A `sync` action: this connection gets the counts of every followed room now and the
    /// changes from then on.
    pub async fn sync(&self, user: UserKey, device: u64, outbox: Arc<Outbox>, mut reply: Reply) {
        let answer_to = outbox.clone();
        let req = reply.req();
        let failed = |mut reply: Reply, e: crate::store::StoreError| {
            let _ = reply.send(&ServerFrame::error(req, ErrorCode::STORE_UNAVAILABLE, e.to_string()));
        };
        // Follows and mentions queued before this `sync` are in the store when it reads.
        store::settled(&*self.store).await;
        let rooms = match self.store.follows(&user).await {
            Ok(rooms) => rooms,
            Err(e) => return failed(reply, e),
        };
        let keys: Vec<RoomKey> =
            rooms.iter().map(|room| RoomKey { tenant: user.tenant.clone(), room: room.clone() }).collect();
        let marks = match self.store.marks(&user, &rooms).await {
            Ok(marks) => marks,
            Err(e) => return failed(reply, e),
        };
        let after: Vec<(RoomName, u64)> =
            rooms.iter().zip(&marks).map(|(room, mark)| (room.clone(), mark.map_or(0, |m| m.read))).collect();
        let mentions = match self.store.mentions(&user, &after).await {
            Ok(mentions) => mentions,
            Err(e) => return failed(reply, e),
        };
        {
            // Watch before the tops are read: a message from here on marks the room dirty.
            let mut state = lock(&self.state);
            let devices = state.devices.entry(user.clone()).or_default();
            devices.retain(|d| d.id != device);
            devices.push(Device { id: device, outbox });
            for key in &keys {
                self.watch.add(key, &user);
            }
        }
        let mut tops: Vec<Option<Position>> = keys.iter().map(|key| self.top_here(key)).collect();
        let missing: Vec<RoomKey> =
            keys.iter().zip(&tops).filter(|(_, top)| top.is_none()).map(|(k, _)| k.clone()).collect();
        if !missing.is_empty() {
            let mut found = self.engine.tops(missing).await.into_iter();
            for (key, top) in keys.iter().zip(tops.iter_mut()).filter(|(_, top)| top.is_none()) {
                *top = found.next().flatten();
                if let Some(top) = *top {
                    self.watch.set_top(key, top);
                }
            }
        }
        let mut state = lock(&self.state);
        if !state.devices.get(&user).is_some_and(|d| d.iter().any(|d| d.id == device)) {
            // Gone meanwhile: undo the watch unless another device keeps it.
            if !state.devices.contains_key(&user) {
                for key in &keys {
                    self.watch.remove(key, &user);
                }
            }
            return;
        }
        let mut entries = HashMap::with_capacity(rooms.len());
        let mut listed = Vec::with_capacity(rooms.len());
        for (((key, mark), mentions), top) in keys.into_iter().zip(marks).zip(mentions).zip(tops) {
            let Some(top) = top else { continue };
            let cached = state.rooms.get(&key).and_then(|m| m.get(&*user.user)).copied();
            let mark = match (mark, cached) {
                (Some(stored), cached) => Some(merged(cached, stored)),
                (None, cached) => cached,
            };
            let mut entry = Entry { mark, mentions: mentions.into_iter().collect(), sent: None };
            let unread = entry.unread(&key.room, top);
            entry.sent = Some(unread.clone());
            listed.push(unread);
            entries.insert(key.room, entry);
        }
        let (total, mentions) = totals(&entries);
        let mut pages = pages(listed, self.max_frame_bytes).into_iter();
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
    pub async fn status(&self, user: &UserKey, room: &RoomName) -> Result<ReceiptEvent, Refusal> {
        let key = RoomKey { tenant: user.tenant.clone(), room: room.clone() };
        self.load(&key).await.map_err(|e| (ErrorCode::STORE_UNAVAILABLE, e.to_string()))?;
        let top = match self.top_here(&key) {
            Some(top) => Some(top),
            None => self.engine.meta(&key).await.ok().map(|meta| meta.position()),
        };
        let state = lock(&self.state);
        let members = state.rooms.get(&key);
        let Some(own) = members.and_then(|m| m.get(&*user.user)) else {
            return Err((ErrorCode::NOT_FOLLOWING, format!("{room} is not followed by this user")));
        };
        let epoch = top.map_or(own.epoch, |t| t.epoch);
        let all: Vec<String> = members.map(|m| m.keys().cloned().collect()).unwrap_or_default();
        Ok(self.receipts_event(&state, &key, epoch, &all))
    }

    /// A `privacy` action.
    pub fn set_share_read(&self, user: &UserKey, share_read: bool, reply: Reply) {
        let mut state = lock(&self.state);
        self.shares(&mut state, user, share_read);
        self.write(&mut state, vec![Op::Prefs { user: user.clone(), share_read }], Some(answer_when_durable(reply)));
    }

    /// The user's privacy setting is now `share_read`: members of the cached rooms they follow
    /// see the change at their next update.
    fn shares(&self, state: &mut State, user: &UserKey, share_read: bool) {
        state.share.insert(user.clone(), share_read);
        let State { rooms, moved, .. } = state;
        for (key, members) in rooms.iter().filter(|(key, _)| key.tenant == user.tenant) {
            if members.contains_key(&*user.user) {
                moved.note(key, &user.user);
            }
        }
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
                self.watch.remove(&RoomKey { tenant: user.tenant.clone(), room }, user);
            }
        }
    }

    /// Another node's durable change: the cache takes it (marks merge, never move back) and this
    /// node's synced devices see it as if it happened here.
    fn apply(&self, change: Change) {
        let Some((key, user)) = change.subject() else { return };
        let mut state = lock(&self.state);
        match (&change, key) {
            (Change::Mark { .. }, Some(key)) => {
                let Some(mark) = change.mark() else { return };
                let cached = state.rooms.contains_key(&key);
                if let Some(members) = state.rooms.get_mut(&key) {
                    let old = members.get(&*user.user).copied();
                    members.insert(user.user.to_string(), merged(old, mark));
                }
                if cached && !state.share.contains_key(&user) {
                    // A member new here: hidden until their setting is read.
                    state.need_share.insert(user.clone());
                }
                if cached || self.watch.watched(&key) {
                    state.moved.note(&key, &user.user);
                }
                let followed_here = state.unread.get(&user).is_some_and(|rooms| rooms.contains_key(&key.room));
                if followed_here {
                    self.mark_changed(&mut state, &key, &user, mark);
                } else {
                    self.watch_new(&mut state, &user, &key, mark, None);
                }
            }
            (Change::Unfollow { .. }, Some(key)) => self.forget(&mut state, &key, &user),
            (Change::Mention { offset, .. }, Some(key)) => self.mentioned(&mut state, &key, &user, *offset),
            (Change::Prefs { share_read, .. }, _) => self.shares(&mut state, &user, *share_read),
            _ => {}
        }
    }

    /// Sends what changed: unread entries of synced users, receipts of rooms whose members moved.
    pub fn tick(&self, now_ms: u64) {
        let mut state = lock(&self.state);
        // New messages count at most once per interval, however many arrive.
        if now_ms >= state.last_counted.saturating_add(self.config.interval_ms) {
            state.last_counted = now_ms;
            for (key, users) in self.watch.take_moved() {
                for user in users {
                    state.dirty.entry(user).or_default().insert(key.room.clone());
                }
            }
        }
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
                let Some(top) = self.top_here(&key) else {
                    state.need_top.insert(key);
                    continue;
                };
                let Some(entry) = state.unread.get_mut(&user).and_then(|rooms| rooms.get_mut(&key.room)) else {
                    continue;
                };
                let unread = entry.unread(&key.room, top);
                if entry.sent.as_ref() != Some(&unread) {
                    entry.sent = Some(unread.clone());
                    changed.push(unread);
                }
            }
            if !changed.is_empty() {
                self.send_unread(&state, &user, changed);
            }
        }
        let due = state.moved.due(now_ms);
        for (key, users) in due {
            let Some(members) = state.rooms.get(&key) else {
                // Not cached (a change from another node): read, and sent at the next release.
                for user in &users {
                    state.moved.note(&key, user);
                }
                state.need_load.insert(key);
                continue;
            };
            let top = self.top_here(&key).map(|t| t.epoch);
            let Some(epoch) = top.or_else(|| members.values().map(|mark| mark.epoch).max()) else { continue };
            let event = self.receipts_event(&state, &key, epoch, &users);
            let frame = ServerFrame::Receipts { req: 0, event };
            let mut encoded = EncodeOnce::new(&frame);
            // To the synced connections of every member (opt-in: `sync`), encoded once.
            for member in state.rooms.get(&key).into_iter().flat_map(|m| m.keys()) {
                let who = UserKey { tenant: key.tenant.clone(), user: member.as_str().into() };
                for device in state.devices.get(&who).into_iter().flatten() {
                    let _ = device.outbox.push(CONTROL, encoded.get(device.outbox.codec()));
                }
            }
        }
        if now_ms >= state.last_sweep + SWEEP_EVERY_MS {
            state.last_sweep = now_ms;
            self.sweep(&mut state);
        }
    }

    /// Drops cached rooms nobody here needs (no member connected, no synced follower, no write
    /// in flight, no update pending) and the privacy settings of users in none of the others.
    fn sweep(&self, state: &mut State) {
        let writing = lock(&self.writing);
        let State { rooms, moved, share, devices, .. } = state;
        rooms.retain(|key, _| {
            writing.contains_key(key) || moved.holds(key) || self.watch.watched(key) || self.hub.has_room(key)
        });
        let members: HashSet<(&str, &str)> =
            rooms.iter().flat_map(|(key, m)| m.keys().map(|user| (&*key.tenant, user.as_str()))).collect();
        share.retain(|user, _| devices.contains_key(user) || members.contains(&(&*user.tenant, &*user.user)));
    }

    /// A room's `receipts` event listing `users` (when the room is small enough).
    fn receipts_event(&self, state: &State, key: &RoomKey, epoch: u64, users: &[String]) -> ReceiptEvent {
        let empty = BTreeMap::new();
        let members = state.rooms.get(key).unwrap_or(&empty);
        // Unknown settings count as not shared: privacy never depends on a read having come back.
        let share = |user: &str| -> bool {
            let who = UserKey { tenant: key.tenant.clone(), user: user.into() };
            state.share.get(&who).copied().unwrap_or(false)
        };
        let in_epoch = |m: &Mark| if m.epoch == epoch { *m } else { Mark { epoch, read: 0, delivered: 0 } };
        let mut delivered_all = u64::MAX;
        let mut read_all = u64::MAX;
        for (user, mark) in members {
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
        let (total, mentions) = state.unread.get(user).map(totals).unwrap_or_default();
        let frame =
            ServerFrame::Receipts { req: 0, event: ReceiptEvent::Unread { full: false, rooms, total, mentions } };
        send_to(state, user, &frame);
    }

    /// Queues store ops (under the state lock, so they commit in the order the cache changed).
    /// Once durable, a region's other nodes are told. Ops with a `done` (someone waits) commit
    /// at once; the others may share a paced commit (`receipts.commit_interval_ms`).
    fn write(&self, _state: &mut State, ops: Vec<Op>, done: Option<store::DoneFn>) {
        if ops.is_empty() {
            if let Some(done) = done {
                done(Ok(()));
            }
            return;
        }
        let rooms: Vec<RoomKey> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Mark { room, .. } | Op::Unfollow { room, .. } => Some(room.clone()),
                _ => None,
            })
            .collect();
        {
            let mut writing = lock(&self.writing);
            for room in &rooms {
                *writing.entry(room.clone()).or_default() += 1;
            }
        }
        let changes: Vec<String> = match &self.region {
            Some(_) => ops.iter().filter_map(Change::of).filter_map(|c| serde_json::to_string(&c).ok()).collect(),
            None => Vec::new(),
        };
        let (writing, region) = (self.writing.clone(), self.region.clone());
        let awaited = done.is_some();
        let written: store::DoneFn = Box::new(move |result| {
            {
                let mut writing = lock(&writing);
                for room in rooms {
                    if let Some(n) = writing.get_mut(&room) {
                        *n -= 1;
                        if *n == 0 {
                            writing.remove(&room);
                        }
                    }
                }
            }
            if let (Ok(()), Some(region)) = (&result, region) {
                for change in changes {
                    let _ = region.send(change);
                }
            }
            if let Some(done) = done {
                done(result);
            }
        });
        if awaited {
            self.store.write(ops, Some(written));
        } else {
            self.store.write_unawaited(ops, Some(written));
        }
    }
}

/// Queues a frame for every synced connection of the user, encoded once.
fn send_to(state: &State, user: &UserKey, frame: &ServerFrame) {
    let Some(devices) = state.devices.get(user) else { return };
    let mut encoded = EncodeOnce::new(frame);
    for device in devices {
        // A closing outbox needs nothing more.
        let _ = device.outbox.push(CONTROL, encoded.get(device.outbox.codec()));
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

fn totals(rooms: &HashMap<RoomName, Entry>) -> (u64, u64) {
    rooms.values().filter_map(|e| e.sent.as_ref()).fold((0, 0), |(t, m), r| (t + r.unread, m + r.mentions))
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
