//! The presence and typing service: the pure logic of [`super::presence`] and
//! [`super::typing`] behind one lock, wired to the outboxes of the devices in each room.
//!
//! It keeps its own registry of which device (connection) joined which room on which lane,
//! apart from the rooms' message subscribers, so that the message path and this one can change
//! independently. Updates go into each device's lossy datagram queue (latest wins per key:
//! presence per room and user, typing and refresh per room), which leaves as QUIC datagrams or,
//! on WebSocket, interleaved and coalesced on the socket. Snapshots go on the room's lane,
//! reliably. Frames are encoded once per codec per change and shared by every recipient.
//!
//! Convergence under loss: every `refresh_ms` each member gets a `presence_refresh` (count and
//! digest of the room's present members); a client whose view disagrees asks `presence_sync`
//! and gets a reliable snapshot. Typing views are whole, versioned, and expire on the client
//! after `ttl_ms` without a newer one, so a lost update is healed by the next one or by time.
//!
//! Batching (`presence.batch_ms` > 0): presence entries are not fanned out one by one but
//! collected per room ([`super::presence_batch`]) and sent by [`Awareness::run_batches`], one
//! timer task for the relay, as one `presence_batch` per room per interval (a lone change as a
//! `presence` frame); the interval grows with the room's size (up to `presence.max_batch_ms`).
//! Quiet rooms (`presence.quiet_rooms`) announce no member at all: their snapshots are empty
//! and their refreshes carry the member count with digest 0. Rooms above
//! `presence.list_max_members` users are counted the same way ([`super::presence_size`]); when
//! a room switches, its members get a snapshot (empty, or the list) and a refresh at once.
//!
//! One lock for the whole relay keeps the logic simple; a change touches a user's rooms and
//! their members, which is bounded by the rooms-per-connection limit. Shard it by tenant when
//! profiles say so.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use super::RoomKey;
use super::last_seen::{UserRecord, UserRecords};
use super::presence::{Change, DeviceId, Presence, UserKey};
use super::presence_batch::{Batches, interval_ms};
use super::presence_size;
use super::remote::{LocalPresence, OtherNodes, RemotePresence, node_device};
use super::typing::{Typing, TypingView};
use crate::config::PresenceConfig;
use crate::outbox::{DatagramKey, LaneId, Outbox, PushError};
use crate::proto::presence::{MAX_CUSTOM_STATUS_LEN, PresenceEntry, Status};
use crate::proto::{EncodeOnce, RoomName, ServerFrame};

/// Datagram queue kinds of this service (the session's `pong` is kind 1).
pub const KIND_PRESENCE: u8 = 2;
pub const KIND_TYPING: u8 = 3;
pub const KIND_REFRESH: u8 = 4;
/// `presence_batch` frames; each has a key of its own (a batch never supersedes another).
pub const KIND_BATCH: u8 = 5;
/// Most entries in one `presence_batch` frame; a bigger batch goes as several.
pub const MAX_BATCH_ENTRIES: usize = 100;

/// Presence frames queued, by `kind` (`presence`, `presence_batch`, `typing`, `refresh`,
/// `snapshot`).
pub const UPDATES_TOTAL: &str = "edgerelay_presence_updates_total";
/// Presence and typing requests ignored, by `reason` (`rate_limited`, `not_joined`, `hidden`).
pub const IGNORED_TOTAL: &str = "edgerelay_presence_ignored_total";
/// Users with a connected device (gauge).
pub const USERS: &str = "edgerelay_presence_users";

/// A room's counts for the admin view ([`Awareness::rooms_here`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoomCount {
    pub tenant: String,
    pub room: String,
    /// Present users on every node (quiet rooms and hidden users as `presence_refresh` counts).
    pub members: u32,
    /// Connections on this node that joined it.
    pub connections_here: usize,
}

/// One device's outbox and the lanes of the rooms it joined.
struct Link {
    user: UserKey,
    outbox: Arc<Outbox>,
    rooms: HashMap<RoomName, LaneId>,
}

struct State {
    presence: Presence,
    typing: Typing,
    links: HashMap<DeviceId, Link>,
    room_devices: HashMap<RoomKey, HashSet<DeviceId>>,
    next_refresh: u64,
    /// Other nodes' members (shared engine); empty on a single node.
    remote: RemotePresence,
    /// Where this node's changes go to the others (shared engine).
    share: Option<tokio::sync::mpsc::UnboundedSender<LocalPresence>>,
    /// Changes waiting for the next batch (only with `batch_ms` > 0).
    batches: Batches,
    batching: bool,
    /// Numbers the batches' datagram keys.
    batch_seq: u64,
    /// Wakes [`Awareness::run_batches`] when a first change is pending.
    batch_ready: Arc<tokio::sync::Notify>,
    /// `presence.quiet_rooms`.
    quiet: Vec<String>,
    /// `presence.batch_ms` and `presence.max_batch_ms`: a room's interval grows between them.
    batch_ms: u64,
    max_batch_ms: u64,
    /// `presence.list_max_members` (0: no limit).
    list_max: usize,
    /// Rooms counted but not listed because of their size (hysteresis in `presence_size`).
    counted: HashSet<RoomKey>,
}

pub struct Awareness {
    state: Mutex<State>,
    records: Arc<dyn UserRecords>,
    refresh_ms: u64,
    batch_ms: u64,
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl Awareness {
    pub fn new(config: &PresenceConfig, records: Arc<dyn UserRecords>) -> Self {
        Awareness {
            state: Mutex::new(State {
                presence: Presence::new(config.idle_after_ms).with_leave_grace(config.leave_grace_ms),
                typing: Typing::new(config.typing_ttl_ms),
                links: HashMap::new(),
                room_devices: HashMap::new(),
                next_refresh: 0,
                remote: RemotePresence::default(),
                share: None,
                batches: Batches::default(),
                batching: config.batch_ms > 0,
                batch_seq: 0,
                batch_ready: Arc::new(tokio::sync::Notify::new()),
                quiet: config.quiet_rooms.clone(),
                batch_ms: config.batch_ms,
                max_batch_ms: config.max_batch_ms,
                list_max: config.list_max_members as usize,
                counted: HashSet::new(),
            }),
            records,
            refresh_ms: config.refresh_ms,
            batch_ms: config.batch_ms,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        super::lock(&self.state)
    }

    /// An authenticated connection of `user`.
    pub fn connect(&self, user: UserKey, device: DeviceId, outbox: Arc<Outbox>, now_ms: u64) {
        let record = self.records.get(&user).unwrap_or_default();
        let mut state = self.lock();
        let changes = state.presence.connect(&user, device, record, now_ms);
        state.links.insert(device, Link { user, outbox, rooms: HashMap::new() });
        metrics::gauge!(USERS).set(state.presence.users() as f64);
        state.fan_presence(changes, now_ms);
    }

    /// The connection ended; its rooms are left, its typing ends.
    pub fn disconnect(&self, device: DeviceId, now_ms: u64) {
        let mut state = self.lock();
        let Some(link) = state.links.remove(&device) else { return };
        for room in link.rooms.keys() {
            let key = RoomKey { tenant: link.user.tenant.clone(), room: room.clone() };
            state.leave_room(&key, &link.user, device, now_ms);
        }
        let (changes, record) = state.presence.disconnect(&link.user, device, now_ms);
        metrics::gauge!(USERS).set(state.presence.users() as f64);
        state.fan_presence(changes, now_ms);
        drop(state);
        self.remember(record.map(|record| (link.user, record)));
    }

    /// The device joined a room on `lane`: queues the room's presence snapshot on that lane
    /// (after `joined`), the room's typing view, and tells the members.
    pub fn join(&self, room: &RoomKey, device: DeviceId, lane: LaneId, now_ms: u64) -> Result<(), PushError> {
        let mut state = self.lock();
        let Some(link) = state.links.get_mut(&device) else { return Ok(()) };
        link.rooms.insert(room.room.clone(), lane);
        let user = link.user.clone();
        // The others learn of the joiner first; the joiner is added to the room's devices only
        // then, so its own change reaches it in the snapshot, which comes right after `joined`.
        let changes = state.presence.join(room, &user, device, now_ms);
        state.fan_presence(changes, now_ms);
        state.room_devices.entry(room.clone()).or_default().insert(device);
        // The room's size decides what the snapshot lists (its first device here included).
        state.stays_listed(room);
        state.send_snapshot(room, device, 0)?;
        let view = state.typing.view(room);
        if view.total > 0
            && let Some(link) = state.links.get(&device)
        {
            let (key, frame) = state.typing_update(room, &view);
            link.outbox.push_datagram(key, link.outbox.codec().frame(&frame))?;
        }
        Ok(())
    }

    /// The device left a room.
    pub fn leave(&self, room: &RoomKey, device: DeviceId, now_ms: u64) {
        let mut state = self.lock();
        let Some(link) = state.links.get_mut(&device) else { return };
        if link.rooms.remove(&room.room).is_none() {
            return;
        }
        let user = link.user.clone();
        state.leave_room(room, &user, device, now_ms);
        let changes = state.presence.leave(room, &user, device, now_ms);
        state.fan_presence(changes, now_ms);
    }

    pub fn set_status(&self, device: DeviceId, status: Status, custom: Option<String>, now_ms: u64) {
        let custom = custom.map(|c| truncate(c, MAX_CUSTOM_STATUS_LEN));
        let mut state = self.lock();
        let Some(user) = state.links.get(&device).map(|l| l.user.clone()) else { return };
        let changes = state.presence.set_status(&user, device, status, custom, now_ms);
        state.fan_presence(changes, now_ms);
    }

    pub fn activity(&self, device: DeviceId, now_ms: u64) {
        let mut state = self.lock();
        let Some(user) = state.links.get(&device).map(|l| l.user.clone()) else { return };
        let changes = state.presence.activity(&user, device, now_ms);
        state.fan_presence(changes, now_ms);
    }

    /// Typing started or stopped on the device in a room it joined (else ignored).
    pub fn typing(&self, room: &RoomName, device: DeviceId, typing: bool, now_ms: u64) {
        let mut state = self.lock();
        let Some(link) = state.links.get(&device).filter(|l| l.rooms.contains_key(room)) else {
            return ignored("not_joined");
        };
        let user = link.user.clone();
        let key = RoomKey { tenant: user.tenant.clone(), room: room.clone() };
        let changes = state.presence.activity(&user, device, now_ms);
        state.fan_presence(changes, now_ms);
        if !typing {
            state.stop_typing(&key, &user, device, now_ms);
        } else if state.presence.hides_typing(&user) {
            ignored("hidden");
        } else {
            let view = state.typing.start(&key, &user.user, device, now_ms);
            state.fan_typing(&key, &view);
            state.share_typing(&key, &user.user, true);
        }
    }

    /// The user's privacy setting; remembered across connections and restarts.
    pub fn privacy(&self, device: DeviceId, hide_presence: bool, hide_typing: bool, now_ms: u64) {
        let mut state = self.lock();
        let Some(link) = state.links.get(&device) else { return };
        let user = link.user.clone();
        let rooms: Vec<RoomName> = link.rooms.keys().cloned().collect();
        let changes = state.presence.set_privacy(&user, hide_presence, hide_typing, now_ms);
        state.fan_presence(changes, now_ms);
        if state.presence.hides_typing(&user) {
            // End the user's typing everywhere this device is (other devices follow on their
            // next start, which is refused).
            for room in rooms {
                state.stop_typing(&RoomKey { tenant: user.tenant.clone(), room }, &user, device, now_ms);
            }
        }
        let record = state.presence.record(&user);
        drop(state);
        if let Some(record) = record {
            self.records.put(&user, record);
        }
    }

    /// Queues the room's snapshot again, answering `presence_sync`. False when the device did
    /// not join the room.
    pub fn sync(&self, room: &RoomName, device: DeviceId, req: u64) -> Result<bool, PushError> {
        let state = self.lock();
        let Some(link) = state.links.get(&device).filter(|l| l.rooms.contains_key(room)) else { return Ok(false) };
        let key = RoomKey { tenant: link.user.tenant.clone(), room: room.clone() };
        state.send_snapshot(&key, device, req)?;
        Ok(true)
    }

    /// Sends this node's presence changes to other nodes from now on (shared engine).
    pub fn share(&self, local: tokio::sync::mpsc::UnboundedSender<LocalPresence>) {
        self.lock().share = Some(local);
    }

    /// Every room with members here and their entries, for other nodes.
    pub fn local_rooms(&self) -> Vec<(RoomKey, Vec<PresenceEntry>)> {
        let state = self.lock();
        state.presence.rooms().map(|room| (room.clone(), state.presence.snapshot(room))).collect()
    }

    /// What other nodes say: merged into the rooms' views, and the changes told to members here.
    pub fn apply_remote(&self, others: OtherNodes, now_ms: u64) {
        let mut state = self.lock();
        match others {
            OtherNodes::Set { room, remote } => {
                let user: Arc<str> = remote.entry.user.as_str().into();
                let seen = remote.entry.version;
                if state.remote.set(&room, remote) {
                    state.fan_merged(&room, &user, seen, now_ms);
                }
            }
            OtherNodes::Replace { room, entries } => {
                for user in state.remote.replace(&room, entries) {
                    state.fan_merged(&room, &user, 0, now_ms);
                }
            }
            OtherNodes::Typing { room, node, user, typing } => {
                let device = node_device(&node);
                if typing {
                    let view = state.typing.start(&room, &user, device, now_ms);
                    state.fan_typing(&room, &view);
                } else if let Some(view) = state.typing.stop(&room, &user, device, now_ms) {
                    state.fan_typing(&room, &view);
                }
            }
        }
    }

    /// Applies the passing of time: idle devices, expired typing, periodic refreshes. Call it
    /// a few times per second, and [`Awareness::flush`] after it.
    pub fn tick(&self, now_ms: u64) {
        let mut state = self.lock();
        let (changes, gone) = state.presence.tick(now_ms);
        state.fan_presence(changes, now_ms);
        for (room, user) in state.remote.expire(now_ms) {
            state.fan_merged(&room, &user, 0, now_ms);
        }
        for (room, view) in state.typing.expire(now_ms) {
            state.fan_typing(&room, &view);
        }
        if now_ms >= state.next_refresh {
            state.next_refresh = now_ms + self.refresh_ms;
            // The refresh describes the rooms with every change applied: send those first.
            state.flush_batches();
            state.send_refreshes();
        }
        drop(state);
        self.remember(gone);
    }

    /// The batch timer (one task for the relay, with `presence.batch_ms` > 0): sleeps until
    /// the earliest room's batch is due (woken when a room gets its first pending change) and
    /// sends the batches that are due. Sends what is left when stopped.
    pub async fn run_batches(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.batch_ms == 0 {
            return;
        }
        let ready = self.lock().batch_ready.clone();
        loop {
            let next = self.lock().batches.next_due();
            let wait = match next {
                Some(due) => std::time::Duration::from_millis(due.saturating_sub(crate::connection::unix_ms())),
                None => std::time::Duration::from_secs(3600),
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ready.notified() => continue,
                _ = tokio::time::sleep(wait), if next.is_some() => {}
            }
            self.lock().flush_due(crate::connection::unix_ms());
        }
        self.lock().flush_batches();
    }

    /// Sends the pending batches now (tests; the timer task does it otherwise).
    pub fn flush_batches(&self) {
        self.lock().flush_batches();
    }

    /// Keeps the records of users who are gone, for the next [`Awareness::flush`].
    fn remember(&self, gone: impl IntoIterator<Item = (UserKey, UserRecord)>) {
        for (user, record) in gone {
            self.records.put(&user, record);
        }
    }

    /// Ends the leave grace of every disconnected device now, so that their users' records are
    /// saved by the last [`Awareness::flush`] (the relay is stopping).
    pub fn depart_lingering(&self, now_ms: u64) {
        let mut state = self.lock();
        let (changes, gone) = state.presence.depart_lingering(now_ms);
        state.fan_presence(changes, now_ms);
        drop(state);
        self.remember(gone);
    }

    /// Saves changed user records (one durable commit). Blocking: call it off the async threads.
    pub fn flush(&self) {
        if let Err(err) = self.records.flush() {
            tracing::warn!(%err, "saving user records failed");
        }
    }

    /// Every room with a connection here (of `tenant` when given): its member count on every
    /// node, as members' `presence_refresh` says, and how many connections here joined it
    /// (the admin view).
    pub fn rooms_here(&self, tenant: Option<&str>) -> Vec<RoomCount> {
        let state = self.lock();
        state
            .room_devices
            .iter()
            .filter(|(key, _)| tenant.is_none_or(|t| &*key.tenant == t))
            .map(|(key, devices)| RoomCount {
                tenant: key.tenant.to_string(),
                room: key.room.to_string(),
                members: state.summary(key).0,
                connections_here: devices.len(),
            })
            .collect()
    }

    /// The rooms a connection joined (the admin view).
    pub fn device_rooms(&self, device: DeviceId) -> Vec<String> {
        let state = self.lock();
        let mut rooms: Vec<String> =
            state.links.get(&device).map(|link| link.rooms.keys().map(|r| r.to_string()).collect()).unwrap_or_default();
        rooms.sort();
        rooms
    }

    /// A room's present members (HTTP API), on every node.
    pub fn room(&self, room: &RoomKey) -> Vec<PresenceEntry> {
        self.lock().view(room)
    }

    /// A user's status as others see it (HTTP API): live when connected, otherwise offline
    /// with the remembered last-seen time (0 when never seen).
    pub fn user(&self, user: &UserKey) -> PresenceEntry {
        if let Some(entry) = self.lock().presence.status(user) {
            return entry;
        }
        let record = self.records.get(user).unwrap_or_default();
        PresenceEntry {
            user: user.user.to_string(),
            status: Status::Offline,
            custom: None,
            version: 0,
            last_seen: record.last_seen,
        }
    }
}

fn ignored(reason: &'static str) {
    metrics::counter!(IGNORED_TOTAL, "reason" => reason).increment(1);
}

/// Counts a presence or typing request dropped by the caller's rate limit.
pub fn rate_limited() {
    ignored("rate_limited");
}

impl State {
    /// The device is no longer in `room`: it gets no more of the room's updates, and its
    /// typing there ends.
    fn leave_room(&mut self, room: &RoomKey, user: &UserKey, device: DeviceId, now_ms: u64) {
        if let Some(devices) = self.room_devices.get_mut(room) {
            devices.remove(&device);
            if devices.is_empty() {
                self.room_devices.remove(room);
                self.batches.forget(room);
                self.counted.remove(room);
            }
        }
        self.stop_typing(room, user, device, now_ms);
    }

    /// Ends the device's typing in `room`; the members hear of it when the user no longer
    /// types there on any device.
    fn stop_typing(&mut self, room: &RoomKey, user: &UserKey, device: DeviceId, now_ms: u64) {
        if let Some(view) = self.typing.stop(room, &user.user, device, now_ms) {
            self.fan_typing(room, &view);
            self.share_typing(room, &user.user, false);
        }
    }

    /// Tells other nodes (shared engine) that a user types here, or no longer does.
    fn share_typing(&self, room: &RoomKey, user: &str, typing: bool) {
        if let Some(share) = &self.share {
            let _ = share.send(LocalPresence::Typing { room: room.clone(), user: user.to_owned(), typing });
        }
    }

    /// Queues `frame` in the datagram queue of every device in `room`.
    fn fan(&self, room: &RoomKey, key: DatagramKey, frame: &ServerFrame, kind: &'static str) {
        let Some(devices) = self.room_devices.get(room) else { return };
        let mut encoded = EncodeOnce::new(frame);
        let mut sent = 0u64;
        for device in devices {
            if let Some(link) = self.links.get(device) {
                // A closing connection refuses; it is about to leave anyway.
                if link.outbox.push_datagram(key.clone(), encoded.get(link.outbox.codec())).is_ok() {
                    sent += 1;
                }
            }
        }
        metrics::counter!(UPDATES_TOTAL, "kind" => kind).increment(sent);
    }

    /// Tells members the local changes, and other nodes too (shared engine). A user other
    /// nodes also list is shown merged (see [`Self::fan_merged`]).
    fn fan_presence(&mut self, changes: Vec<Change>, now_ms: u64) {
        for Change { room, entry } in changes {
            if let Some(share) = &self.share {
                let _ = share.send(LocalPresence::Changed { room: room.clone(), entry: entry.clone() });
            }
            if self.remote.knows(&room, &entry.user) {
                let user: Arc<str> = entry.user.as_str().into();
                self.fan_merged(&room, &user, entry.version, now_ms);
                continue;
            }
            self.fan_entry(&room, entry, now_ms);
        }
    }

    /// Tells a room's members one entry: at once, or in the room's next batch. Quiet rooms
    /// and rooms counted for their size announce nothing.
    fn fan_entry(&mut self, room: &RoomKey, entry: PresenceEntry, now_ms: u64) {
        if self.is_quiet(room) || !self.stays_listed(room) {
            return;
        }
        if !self.batching {
            return self.send_entry(room, entry);
        }
        if !self.room_devices.contains_key(room) {
            return;
        }
        let due = now_ms + interval_ms(self.members(room), self.batch_ms, self.max_batch_ms);
        if self.batches.add(room, entry, due) {
            self.batch_ready.notify_one();
        }
    }

    /// Users in a room, here and on other nodes (a user on two nodes counts twice).
    fn members(&self, room: &RoomKey) -> usize {
        let remote = if self.remote.has_room(room) { self.remote.users(room).count() } else { 0 };
        self.presence.members(room) + remote
    }

    /// Whether the room was listed and still is, given its size now. When it switches, its
    /// members here get the room anew: a snapshot (empty when counted) and a refresh.
    fn stays_listed(&mut self, room: &RoomKey) -> bool {
        if !self.room_devices.contains_key(room) {
            // Nobody here to tell; the first join here decides.
            return false;
        }
        let was = !self.counted.contains(room);
        let listed = presence_size::listed(was, self.members(room), self.list_max);
        if listed == was {
            return listed;
        }
        if listed {
            self.counted.remove(room);
        } else {
            self.counted.insert(room.clone());
            self.batches.forget(room);
        }
        for &device in self.room_devices.get(room).into_iter().flatten() {
            // A connection whose lane is full or closing is healed by the next refresh.
            let _ = self.send_snapshot(room, device, 0);
        }
        self.send_refresh(room);
        false
    }

    fn send_entry(&self, room: &RoomKey, entry: PresenceEntry) {
        let key = DatagramKey::new(KIND_PRESENCE, format!("{}\0{}", room.room, entry.user));
        let frame = ServerFrame::Presence { room: room.room.to_string(), entry };
        self.fan(room, key, &frame, "presence");
    }

    /// Sends every room's pending changes: one `presence_batch` per [`MAX_BATCH_ENTRIES`]
    /// entries, or a `presence` frame for a lone change.
    fn flush_batches(&mut self) {
        let all = self.batches.take();
        self.send_batches(all);
    }

    /// Sends the batches due at `now_ms`.
    fn flush_due(&mut self, now_ms: u64) {
        let due = self.batches.take_due(now_ms);
        self.send_batches(due);
    }

    fn send_batches(&mut self, batches: Vec<(RoomKey, Vec<PresenceEntry>)>) {
        for (room, mut entries) in batches {
            if entries.len() == 1 {
                if let Some(entry) = entries.pop() {
                    self.send_entry(&room, entry);
                }
                continue;
            }
            for part in entries.chunks(MAX_BATCH_ENTRIES) {
                self.batch_seq += 1;
                let key = DatagramKey::new(KIND_BATCH, format!("{}\0{}", room.room, self.batch_seq));
                let frame = ServerFrame::PresenceBatch { room: room.room.to_string(), entries: part.to_vec() };
                self.fan(&room, key, &frame, "presence_batch");
            }
        }
    }

    /// Whether the room is quiet (`presence.quiet_rooms`).
    fn is_quiet(&self, room: &RoomKey) -> bool {
        self.quiet.iter().any(|pattern| crate::auth::pattern_matches(pattern, room.room.as_str(), ""))
    }

    /// Whether the room's members are counted, not listed: quiet, or too big.
    fn counted_only(&self, room: &RoomKey) -> bool {
        self.counted.contains(room) || self.is_quiet(room)
    }

    /// A user's entry merged over this node and the others (the most recent one; offline when
    /// nobody lists them), with a reissued version above any `seen` or shown before.
    fn fan_merged(&mut self, room: &RoomKey, user: &Arc<str>, seen: u64, now_ms: u64) {
        let local = self.presence.member_entry(room, user);
        let remote = self.remote.best(room, user).cloned();
        let mut entry = match (local, remote) {
            (Some(a), Some(b)) => {
                if b.version > a.version {
                    b
                } else {
                    a
                }
            }
            (Some(entry), None) | (None, Some(entry)) => entry,
            (None, None) => PresenceEntry {
                user: user.to_string(),
                status: Status::Offline,
                custom: None,
                version: 0,
                last_seen: now_ms,
            },
        };
        entry.version = self.remote.reissue(room, user, seen.max(entry.version), now_ms);
        self.remote.forget_idle(room, user);
        self.fan_entry(room, entry, now_ms);
    }

    /// A room's present members here and on other nodes, sorted by user.
    fn view(&self, room: &RoomKey) -> Vec<PresenceEntry> {
        let local = self.presence.snapshot(room);
        if !self.remote.has_room(room) {
            return local;
        }
        let mut merged: HashMap<String, PresenceEntry> = local.into_iter().map(|e| (e.user.clone(), e)).collect();
        for entry in self.remote.users(room) {
            match merged.get(&entry.user) {
                Some(known) if known.version >= entry.version => {}
                _ => {
                    merged.insert(entry.user.clone(), entry.clone());
                }
            }
        }
        let mut entries: Vec<PresenceEntry> = merged.into_values().collect();
        entries.sort_by(|a, b| a.user.cmp(&b.user));
        entries
    }

    /// A room's typing view as a datagram: its queue key and frame.
    fn typing_update(&self, room: &RoomKey, view: &TypingView) -> (DatagramKey, ServerFrame) {
        let frame = ServerFrame::Typing {
            room: room.room.to_string(),
            users: view.names.clone(),
            others: view.total.saturating_sub(view.names.len() as u32),
            version: view.version,
            ttl_ms: u32::try_from(self.typing.ttl_ms()).unwrap_or(u32::MAX),
        };
        (DatagramKey::new(KIND_TYPING, room.room.as_str()), frame)
    }

    fn fan_typing(&self, room: &RoomKey, view: &TypingView) {
        let (key, frame) = self.typing_update(room, view);
        self.fan(room, key, &frame, "typing");
    }

    /// A room's member count and digest on every node, as `presence_refresh` carries them.
    fn summary(&self, room: &RoomKey) -> (u32, u64) {
        if self.remote.has_room(room) {
            let view = self.view(room);
            (view.len() as u32, crate::proto::presence::digest(&view))
        } else {
            self.presence.summary(room)
        }
    }

    fn send_refreshes(&self) {
        for room in self.room_devices.keys() {
            self.send_refresh(room);
        }
    }

    fn send_refresh(&self, room: &RoomKey) {
        let (count, digest) = self.summary(room);
        // A counted room's members are not listed: digest 0 tells clients so.
        let digest = if self.counted_only(room) { 0 } else { digest };
        let frame = ServerFrame::PresenceRefresh { room: room.room.to_string(), count, digest };
        self.fan(room, DatagramKey::new(KIND_REFRESH, room.room.as_str()), &frame, "refresh");
    }

    /// Queues a room's snapshot on the device's lane for that room.
    fn send_snapshot(&self, room: &RoomKey, device: DeviceId, req: u64) -> Result<(), PushError> {
        let Some(link) = self.links.get(&device) else { return Ok(()) };
        let Some(&lane) = link.rooms.get(&room.room) else { return Ok(()) };
        let users = if self.counted_only(room) { Vec::new() } else { self.view(room) };
        let frame = ServerFrame::PresenceSnapshot { req, room: room.room.to_string(), users };
        metrics::counter!(UPDATES_TOTAL, "kind" => "snapshot").increment(1);
        link.outbox.send(lane, &frame)
    }
}
