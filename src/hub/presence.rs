//! Who is here and how they are, per user across all their devices, without IO: every
//! operation takes `now_ms` and returns the [`Change`]s to send to room members; the caller
//! (the hub) encodes and queues them. Tests drive it with plain numbers.
//!
//! The model:
//! - A **device** is one connection of a user. It reports activity (any frame the session
//!   counts as activity: status, typing, joins); it is idle once `idle_after_ms` passed since.
//! - A user's **chosen status** (online, away, busy, or offline meaning "appear offline") and
//!   custom text belong to the user, not the device: the latest set from any device wins. It
//!   lasts while the user has a device connected and resets to online after the last one goes.
//! - What others see (**shown**): offline when no device is connected, the user hides their
//!   presence, or chose offline; busy and away as chosen; online when chosen and at least one
//!   device is active, away when all are idle. So a user is online when any device is.
//! - A user is a **member** of a room while any of their devices joined it; members see each
//!   other. Leaving (the last device leaves) shows the user as offline in that room.
//! - Each user has a **version** that grows on every change anyone could see, including
//!   membership changes (see `proto::presence` for how clients use it).
//! - **Last seen** is the time the user was last shown as anything but offline; it is updated
//!   when they go offline (disconnect, invisible, hidden), so hiding never leaks activity.
//! - **Leave grace**: with `leave_grace_ms` > 0 a device that disconnects lingers that long, still
//!   counted in its rooms, before it is removed. A client that reconnects within the grace (a
//!   network blip, a reconnect storm) therefore changes nothing others see: no offline and
//!   online again for every member of every room. An explicit `leave` is never delayed.
//!
//! Everything is keyed by tenant: users of two tenants never meet, even with the same id.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::RoomKey;
use super::last_seen::UserRecord;
use crate::proto::RoomName;
use crate::proto::presence::{PresenceEntry, Status, digest};

/// One connection of a user; unique within the relay.
pub type DeviceId = u64;

/// A user within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserKey {
    pub tenant: Arc<str>,
    pub user: Arc<str>,
}

impl UserKey {
    pub fn new(tenant: &str, user: &str) -> Self {
        UserKey { tenant: tenant.into(), user: user.into() }
    }
}

/// A presence entry to send to the members of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub room: RoomKey,
    pub entry: PresenceEntry,
}

/// The next version after `prev`: clock-based so that versions keep growing across restarts.
pub fn next_version(prev: u64, now_ms: u64) -> u64 {
    prev.saturating_add(1).max(now_ms)
}

struct Device {
    last_active: u64,
    rooms: HashSet<RoomName>,
    /// When the connection ended, while it lingers for the leave grace.
    gone_at: Option<u64>,
}

/// A user's devices. There are few (a phone, a laptop), so a list searched in order holds them
/// in a quarter of the memory of a map, whose first allocation has room for four.
#[derive(Default)]
struct Devices(Vec<(DeviceId, Device)>);

impl Devices {
    fn get(&self, id: &DeviceId) -> Option<&Device> {
        self.0.iter().find(|(d, _)| d == id).map(|(_, device)| device)
    }

    fn get_mut(&mut self, id: &DeviceId) -> Option<&mut Device> {
        self.0.iter_mut().find(|(d, _)| d == id).map(|(_, device)| device)
    }

    fn insert(&mut self, id: DeviceId, device: Device) {
        match self.get_mut(&id) {
            Some(existing) => *existing = device,
            None => {
                self.0.reserve_exact(1);
                self.0.push((id, device));
            }
        }
    }

    fn remove(&mut self, id: &DeviceId) -> Option<Device> {
        let at = self.0.iter().position(|(d, _)| d == id)?;
        Some(self.0.swap_remove(at).1)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &Device> {
        self.0.iter().map(|(_, device)| device)
    }

    fn iter(&self) -> impl Iterator<Item = (&DeviceId, &Device)> {
        self.0.iter().map(|(id, device)| (id, device))
    }
}

struct UserState {
    devices: Devices,
    chosen: Status,
    custom: Option<String>,
    hide_presence: bool,
    hide_typing: bool,
    /// What others see now.
    shown: Status,
    shown_custom: Option<String>,
    version: u64,
    last_seen: u64,
}

impl UserState {
    fn new(prev_version: u64, now_ms: u64, record: UserRecord) -> Self {
        UserState {
            devices: Devices::default(),
            chosen: Status::Online,
            custom: None,
            hide_presence: record.hide_presence,
            hide_typing: record.hide_typing,
            shown: Status::Offline,
            shown_custom: None,
            version: next_version(prev_version, now_ms),
            last_seen: record.last_seen,
        }
    }

    /// The status others should see at `now_ms` (custom text is shown unless offline).
    fn compute(&self, idle_after_ms: u64, now_ms: u64) -> Status {
        if self.devices.is_empty() || self.hide_presence || self.chosen == Status::Offline {
            return Status::Offline;
        }
        match self.chosen {
            Status::Online => {
                let active = self.devices.values().any(|d| now_ms.saturating_sub(d.last_active) < idle_after_ms);
                if active { Status::Online } else { Status::Away }
            }
            other => other,
        }
    }

    fn record(&self) -> UserRecord {
        UserRecord { last_seen: self.last_seen, hide_presence: self.hide_presence, hide_typing: self.hide_typing }
    }

    fn entry(&self, user: &str) -> PresenceEntry {
        PresenceEntry {
            user: user.to_owned(),
            status: self.shown,
            custom: self.shown_custom.clone(),
            version: self.version,
            last_seen: self.last_seen,
        }
    }

    fn rooms(&self) -> HashSet<&RoomName> {
        self.devices.values().flat_map(|d| d.rooms.iter()).collect()
    }
}

/// The presence state of every user and room of a relay.
pub struct Presence {
    /// A device with no activity for this long is idle.
    idle_after_ms: u64,
    /// How long a disconnected device lingers (0: it is removed at once).
    leave_grace_ms: u64,
    users: HashMap<UserKey, UserState>,
    /// Members of each room: user → how many of their devices joined it.
    rooms: HashMap<RoomKey, HashMap<Arc<str>, u32>>,
    /// Last versions of users who went away, kept until the clock passes them (so a user who
    /// comes back within the same milliseconds still gets a higher version).
    retired: HashMap<UserKey, u64>,
}

impl Presence {
    pub fn new(idle_after_ms: u64) -> Self {
        Presence {
            idle_after_ms,
            leave_grace_ms: 0,
            users: HashMap::new(),
            rooms: HashMap::new(),
            retired: HashMap::new(),
        }
    }

    /// Disconnected devices linger this long (see the module docs).
    pub fn with_leave_grace(mut self, leave_grace_ms: u64) -> Self {
        self.leave_grace_ms = leave_grace_ms;
        self
    }

    /// A device of `user` connected. `record` is what the store remembers of the user (last
    /// seen, privacy), used when no other device of theirs is connected.
    pub fn connect(&mut self, user: &UserKey, device: DeviceId, record: UserRecord, now_ms: u64) -> Vec<Change> {
        let retired = self.retired.remove(user).unwrap_or(0);
        let state = self.users.entry(user.clone()).or_insert_with(|| UserState::new(retired, now_ms, record));
        state.devices.insert(device, Device { last_active: now_ms, rooms: HashSet::new(), gone_at: None });
        self.recompute(user, now_ms)
    }

    /// A device went away (closed, failed, killed). Returns the changes and, when it was the
    /// user's last device, the user's record to remember. With a leave grace the device only
    /// starts lingering: [`Presence::tick`] removes it once the grace has passed.
    pub fn disconnect(&mut self, user: &UserKey, device: DeviceId, now_ms: u64) -> (Vec<Change>, Option<UserRecord>) {
        if self.leave_grace_ms > 0 {
            if let Some(d) = self.users.get_mut(user).and_then(|s| s.devices.get_mut(&device)) {
                d.gone_at.get_or_insert(now_ms);
            }
            return (Vec::new(), None);
        }
        self.remove_device(user, device, now_ms)
    }

    /// Removes a device: it leaves its rooms, and the user goes when it was their last.
    fn remove_device(&mut self, user: &UserKey, device: DeviceId, now_ms: u64) -> (Vec<Change>, Option<UserRecord>) {
        let rooms: Vec<RoomName> = match self.users.get(user).and_then(|s| s.devices.get(&device)) {
            Some(d) => d.rooms.iter().cloned().collect(),
            None => return (Vec::new(), None),
        };
        let mut changes = Vec::new();
        for room in rooms {
            changes.extend(self.leave(&RoomKey { tenant: user.tenant.clone(), room }, user, device, now_ms));
        }
        if let Some(state) = self.users.get_mut(user) {
            state.devices.remove(&device);
        }
        changes.extend(self.recompute(user, now_ms));
        let gone = self.users.get(user).is_some_and(|s| s.devices.is_empty());
        let last_seen = if gone {
            self.users.remove(user).map(|s| {
                self.retired.insert(user.clone(), s.version);
                s.record()
            })
        } else {
            None
        };
        (changes, last_seen)
    }

    /// A device joined a room (its tenant is the user's).
    pub fn join(&mut self, room: &RoomKey, user: &UserKey, device: DeviceId, now_ms: u64) -> Vec<Change> {
        let Some(state) = self.users.get_mut(user) else { return Vec::new() };
        let Some(d) = state.devices.get_mut(&device) else { return Vec::new() };
        if !d.rooms.insert(room.room.clone()) {
            return Vec::new();
        }
        d.last_active = now_ms;
        let count = self.rooms.entry(room.clone()).or_default().entry(user.user.clone()).or_insert(0);
        *count += 1;
        let mut changes = Vec::new();
        if *count == 1 {
            // A new member: a new version, so that members who saw them leave accept it.
            state.version = next_version(state.version, now_ms);
            if state.shown != Status::Offline {
                changes.push(Change { room: room.clone(), entry: state.entry(&user.user) });
            }
        }
        changes.extend(self.recompute(user, now_ms));
        changes
    }

    /// A device left a room.
    pub fn leave(&mut self, room: &RoomKey, user: &UserKey, device: DeviceId, now_ms: u64) -> Vec<Change> {
        let Some(state) = self.users.get_mut(user) else { return Vec::new() };
        if !state.devices.get_mut(&device).is_some_and(|d| d.rooms.remove(&room.room)) {
            return Vec::new();
        }
        let Some(members) = self.rooms.get_mut(room) else { return Vec::new() };
        let Some(count) = members.get_mut(&user.user) else { return Vec::new() };
        *count -= 1;
        if *count > 0 {
            return Vec::new();
        }
        members.remove(&user.user);
        if members.is_empty() {
            self.rooms.remove(room);
        }
        state.version = next_version(state.version, now_ms);
        if state.shown == Status::Offline {
            return Vec::new();
        }
        let entry = PresenceEntry {
            user: user.user.to_string(),
            status: Status::Offline,
            custom: None,
            version: state.version,
            last_seen: now_ms,
        };
        vec![Change { room: room.clone(), entry }]
    }

    /// The user chose a status (and custom text) from one of their devices.
    pub fn set_status(
        &mut self,
        user: &UserKey,
        device: DeviceId,
        status: Status,
        custom: Option<String>,
        now_ms: u64,
    ) -> Vec<Change> {
        let Some(state) = self.users.get_mut(user) else { return Vec::new() };
        state.chosen = status;
        state.custom = custom.filter(|c| !c.is_empty());
        self.activity(user, device, now_ms)
    }

    /// The device reports activity: it is no longer idle.
    pub fn activity(&mut self, user: &UserKey, device: DeviceId, now_ms: u64) -> Vec<Change> {
        let Some(d) = self.users.get_mut(user).and_then(|s| s.devices.get_mut(&device)) else { return Vec::new() };
        d.last_active = d.last_active.max(now_ms);
        self.recompute(user, now_ms)
    }

    /// The user's privacy setting: hide their presence (shown offline) and/or their typing.
    pub fn set_privacy(&mut self, user: &UserKey, hide_presence: bool, hide_typing: bool, now_ms: u64) -> Vec<Change> {
        let Some(state) = self.users.get_mut(user) else { return Vec::new() };
        state.hide_presence = hide_presence;
        state.hide_typing = hide_typing;
        self.recompute(user, now_ms)
    }

    /// The user's record as it should be remembered now, if they are connected.
    pub fn record(&self, user: &UserKey) -> Option<UserRecord> {
        self.users.get(user).map(UserState::record)
    }

    /// Whether the user's typing must not be shown: they hide it, hide their presence, or
    /// appear offline (typing would give them away).
    pub fn hides_typing(&self, user: &UserKey) -> bool {
        self.users.get(user).is_none_or(|s| s.hide_typing || s.hide_presence || s.chosen == Status::Offline)
    }

    /// Applies the passing of time: devices going idle, lingering devices whose leave grace
    /// has passed removed. Call it periodically. Returns the changes and the records of users
    /// who are gone.
    pub fn tick(&mut self, now_ms: u64) -> (Vec<Change>, Vec<(UserKey, UserRecord)>) {
        self.retired.retain(|_, version| *version >= now_ms);
        let grace = self.leave_grace_ms;
        let (mut changes, records) = self.remove_lingering(|gone_at| now_ms >= gone_at.saturating_add(grace), now_ms);
        let idle = self.idle_after_ms;
        changes.extend(self.users.iter_mut().flat_map(|(user, state)| state.recompute(user, idle, now_ms)));
        (changes, records)
    }

    /// Removes every lingering device now, whatever its grace (the relay is stopping).
    pub fn depart_lingering(&mut self, now_ms: u64) -> (Vec<Change>, Vec<(UserKey, UserRecord)>) {
        self.remove_lingering(|_| true, now_ms)
    }

    fn remove_lingering(
        &mut self,
        due: impl Fn(u64) -> bool,
        now_ms: u64,
    ) -> (Vec<Change>, Vec<(UserKey, UserRecord)>) {
        let lapsed: Vec<(UserKey, DeviceId)> = self
            .users
            .iter()
            .flat_map(|(user, state)| {
                state.devices.iter().filter(|(_, d)| d.gone_at.is_some_and(&due)).map(|(id, _)| (user.clone(), *id))
            })
            .collect();
        let mut changes = Vec::new();
        let mut records = Vec::new();
        for (user, device) in lapsed {
            let (more, record) = self.remove_device(&user, device, now_ms);
            changes.extend(more);
            records.extend(record.map(|r| (user, r)));
        }
        (changes, records)
    }

    /// The present (not offline) members of a room, in no particular order.
    fn present<'a>(&'a self, room: &'a RoomKey) -> impl Iterator<Item = PresenceEntry> + 'a {
        self.rooms.get(room).into_iter().flat_map(HashMap::keys).filter_map(move |user| {
            let key = UserKey { tenant: room.tenant.clone(), user: user.clone() };
            self.users.get(&key).filter(|s| s.shown != Status::Offline).map(|s| s.entry(user))
        })
    }

    /// The present members of a room, sorted by user: a room's snapshot.
    pub fn snapshot(&self, room: &RoomKey) -> Vec<PresenceEntry> {
        let mut entries: Vec<PresenceEntry> = self.present(room).collect();
        entries.sort_by(|a, b| a.user.cmp(&b.user));
        entries
    }

    /// The compact form of a room's snapshot: how many are present, and their digest. Runs for
    /// every room on every refresh; the digest does not depend on order, so nothing is sorted.
    pub fn summary(&self, room: &RoomKey) -> (u32, u64) {
        let entries: Vec<PresenceEntry> = self.present(room).collect();
        (entries.len() as u32, digest(&entries))
    }

    /// How many users joined a room here (hidden and idle ones too).
    pub fn members(&self, room: &RoomKey) -> usize {
        self.rooms.get(room).map_or(0, HashMap::len)
    }

    /// A user's entry in a room, if they are a present (not offline) member of it here.
    pub fn member_entry(&self, room: &RoomKey, user: &str) -> Option<PresenceEntry> {
        self.rooms.get(room)?.get(user)?;
        let key = UserKey { tenant: room.tenant.clone(), user: user.into() };
        self.users.get(&key).filter(|s| s.shown != Status::Offline).map(|s| s.entry(user))
    }

    /// Rooms with members here.
    pub fn rooms(&self) -> impl Iterator<Item = &RoomKey> {
        self.rooms.keys()
    }

    /// Users with a connected device.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// The user's presence as anyone sees it, if they are connected to this relay.
    pub fn status(&self, user: &UserKey) -> Option<PresenceEntry> {
        self.users.get(user).map(|s| s.entry(&user.user))
    }

    /// Recomputes what others see of `user`; on a change, bumps the version and returns the
    /// entry for each of their rooms.
    fn recompute(&mut self, user: &UserKey, now_ms: u64) -> Vec<Change> {
        let idle = self.idle_after_ms;
        self.users.get_mut(user).map(|state| state.recompute(user, idle, now_ms)).unwrap_or_default()
    }
}

impl UserState {
    /// See [`Presence::recompute`].
    fn recompute(&mut self, user: &UserKey, idle_after_ms: u64, now_ms: u64) -> Vec<Change> {
        // Runs for every user on every tick: compare before allocating anything.
        let status = self.compute(idle_after_ms, now_ms);
        let custom = if status == Status::Offline { None } else { self.custom.as_ref() };
        if status == self.shown && custom == self.shown_custom.as_ref() {
            return Vec::new();
        }
        let custom = custom.cloned();
        if self.shown != Status::Offline {
            self.last_seen = now_ms;
        }
        self.shown = status;
        self.shown_custom = custom;
        self.version = next_version(self.version, now_ms);
        let entry = self.entry(&user.user);
        self.rooms()
            .into_iter()
            .map(|room| Change {
                room: RoomKey { tenant: user.tenant.clone(), room: room.clone() },
                entry: entry.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: u64 = 60_000;

    fn presence() -> Presence {
        Presence::new(IDLE)
    }

    fn room(tenant: &str, name: &str) -> RoomKey {
        RoomKey { tenant: tenant.into(), room: RoomName::parse(name).unwrap() }
    }

    fn statuses(changes: &[Change]) -> Vec<(&str, &str, Status)> {
        changes.iter().map(|c| (c.room.room.as_str(), c.entry.user.as_str(), c.entry.status)).collect()
    }

    fn shown(p: &Presence, r: &RoomKey) -> Vec<(String, Status)> {
        p.snapshot(r).into_iter().map(|e| (e.user, e.status)).collect()
    }

    #[test]
    fn a_user_is_online_while_any_device_is_and_leaves_with_the_last() {
        let mut p = presence();
        let alice = UserKey::new("acme", "alice");
        let lobby = room("acme", "lobby");
        p.connect(&alice, 1, UserRecord::default(), 1_000);
        assert_eq!(statuses(&p.join(&lobby, &alice, 1, 1_000)), vec![("lobby", "alice", Status::Online)]);
        p.connect(&alice, 2, UserRecord::default(), 2_000);
        assert!(p.join(&lobby, &alice, 2, 2_000).is_empty(), "a second device changes nothing visible");
        let (changes, last_seen) = p.disconnect(&alice, 1, 3_000);
        assert!(changes.is_empty() && last_seen.is_none(), "still online on device 2");
        assert!(!p.hides_typing(&alice));
        p.set_status(&alice, 2, Status::Offline, None, 3_500);
        assert!(p.hides_typing(&alice), "appearing offline hides typing too");
        p.set_status(&alice, 2, Status::Online, None, 3_500);
        assert_eq!(shown(&p, &lobby), vec![("alice".to_owned(), Status::Online)]);
        let (changes, last_seen) = p.disconnect(&alice, 2, 4_000);
        assert_eq!(statuses(&changes), vec![("lobby", "alice", Status::Offline)]);
        assert_eq!(last_seen.map(|r| r.last_seen), Some(4_000));
        assert!(shown(&p, &lobby).is_empty());
        assert!(p.status(&alice).is_none());
    }

    #[test]
    fn with_a_leave_grace_a_reconnect_within_it_changes_nothing_others_see() {
        const GRACE: u64 = 5_000;
        let mut p = presence().with_leave_grace(GRACE);
        let (r, alice, bob) = (room("acme", "lobby"), UserKey::new("acme", "alice"), UserKey::new("acme", "bob"));
        p.connect(&alice, 1, UserRecord::default(), 0);
        p.connect(&bob, 2, UserRecord::default(), 0);
        p.join(&r, &alice, 1, 0);
        p.join(&r, &bob, 2, 0);
        // Alice's connection drops and a new one rejoins within the grace: nothing to send.
        assert_eq!(p.disconnect(&alice, 1, 1_000), (Vec::new(), None));
        assert!(p.connect(&alice, 3, UserRecord::default(), 2_000).is_empty());
        assert!(p.join(&r, &alice, 3, 2_000).is_empty(), "already a member through the lingering device");
        assert!(p.tick(1_000 + GRACE).0.is_empty(), "the old device goes without a change");
        assert_eq!(shown(&p, &r), vec![("alice".into(), Status::Online), ("bob".into(), Status::Online)]);
        // Bob's drops for good: he lingers until the grace ends, then leaves and is recorded.
        assert_eq!(p.disconnect(&bob, 2, 10_000), (Vec::new(), None));
        assert_eq!(p.tick(10_000 + GRACE - 1).0, Vec::new());
        assert_eq!(shown(&p, &r).len(), 2, "bob is still listed during the grace");
        let (changes, records) = p.tick(10_000 + GRACE);
        assert_eq!(statuses(&changes), vec![("lobby", "bob", Status::Offline)]);
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].0.user.as_ref(), records[0].1.last_seen), ("bob", 10_000 + GRACE));
        assert_eq!(shown(&p, &r), vec![("alice".into(), Status::Online)]);
        // An explicit leave is never delayed; a stopping relay ends every grace at once.
        assert_eq!(statuses(&p.leave(&r, &alice, 3, 20_000)), vec![("lobby", "alice", Status::Offline)]);
        p.disconnect(&alice, 3, 20_000);
        assert_eq!(p.depart_lingering(20_001).1.len(), 1);
        assert_eq!(p.users(), 0);
    }

    #[test]
    fn idle_devices_turn_the_user_away_and_activity_brings_them_back() {
        let mut p = presence();
        let bob = UserKey::new("acme", "bob");
        let lobby = room("acme", "lobby");
        p.connect(&bob, 1, UserRecord::default(), 0);
        p.connect(&bob, 2, UserRecord::default(), 0);
        p.join(&lobby, &bob, 1, 0);
        p.activity(&bob, 2, 30_000);
        assert!(p.tick(IDLE).0.is_empty(), "device 2 was active 30 s ago");
        assert_eq!(statuses(&p.tick(30_000 + IDLE).0), vec![("lobby", "bob", Status::Away)]);
        assert!(p.tick(30_000 + IDLE + 1).0.is_empty(), "away is announced once");
        assert_eq!(statuses(&p.activity(&bob, 1, 100_000)), vec![("lobby", "bob", Status::Online)]);
    }

    #[test]
    fn chosen_status_and_custom_text_apply_across_devices_and_offline_hides() {
        let mut p = presence();
        let carol = UserKey::new("acme", "carol");
        let lobby = room("acme", "lobby");
        p.connect(&carol, 1, UserRecord::default(), 0);
        p.connect(&carol, 2, UserRecord::default(), 0);
        p.join(&lobby, &carol, 1, 0);
        let changes = p.set_status(&carol, 2, Status::Busy, Some("in a call".into()), 10);
        assert_eq!(changes[0].entry.custom.as_deref(), Some("in a call"));
        assert_eq!(statuses(&changes), vec![("lobby", "carol", Status::Busy)]);
        assert!(p.tick(10 * IDLE).0.is_empty(), "busy stays busy when idle");
        let changes = p.set_status(&carol, 1, Status::Offline, Some("secret".into()), 20 * IDLE);
        assert_eq!(statuses(&changes), vec![("lobby", "carol", Status::Offline)]);
        assert_eq!(changes[0].entry.custom, None, "custom text is never shown while offline");
        assert!(shown(&p, &lobby).is_empty());
        // Appearing offline records last seen then, and a later disconnect does not move it.
        assert_eq!(p.disconnect(&carol, 1, 30 * IDLE).1, None);
        assert_eq!(p.disconnect(&carol, 2, 40 * IDLE).1.map(|r| r.last_seen), Some(20 * IDLE));
    }

    #[test]
    fn versions_only_grow_even_across_leave_and_rejoin() {
        let mut p = presence();
        let dave = UserKey::new("acme", "dave");
        let lobby = room("acme", "lobby");
        p.connect(&dave, 1, UserRecord::default(), 5);
        let mut versions = vec![p.join(&lobby, &dave, 1, 5)[0].entry.version];
        versions.push(p.set_status(&dave, 1, Status::Away, None, 5)[0].entry.version);
        versions.push(p.leave(&lobby, &dave, 1, 5)[0].entry.version);
        versions.push(p.join(&lobby, &dave, 1, 5)[0].entry.version);
        versions.push(p.disconnect(&dave, 1, 6).0[0].entry.version);
        p.connect(&dave, 2, UserRecord::default(), 6);
        versions.push(p.join(&lobby, &dave, 2, 6)[0].entry.version);
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {versions:?}");
    }

    #[test]
    fn privacy_hides_presence_and_typing() {
        let mut p = presence();
        let erin = UserKey::new("acme", "erin");
        let lobby = room("acme", "lobby");
        p.connect(&erin, 1, UserRecord::default(), 0);
        p.join(&lobby, &erin, 1, 0);
        assert!(!p.hides_typing(&erin));
        assert_eq!(statuses(&p.set_privacy(&erin, true, true, 1)), vec![("lobby", "erin", Status::Offline)]);
        assert!(p.hides_typing(&erin));
        assert!(p.activity(&erin, 1, 2).is_empty(), "hidden users send no updates");
        assert_eq!(statuses(&p.set_privacy(&erin, false, true, 3)), vec![("lobby", "erin", Status::Online)]);
        assert!(p.hides_typing(&erin));
    }

    #[test]
    fn tenants_never_see_each_other() {
        let mut p = presence();
        let (a, b) = (UserKey::new("acme", "sam"), UserKey::new("globex", "sam"));
        let (ra, rb) = (room("acme", "lobby"), room("globex", "lobby"));
        p.connect(&a, 1, UserRecord::default(), 0);
        p.connect(&b, 2, UserRecord::default(), 0);
        p.join(&ra, &a, 1, 0);
        p.join(&rb, &b, 2, 0);
        let changes = p.set_status(&a, 1, Status::Busy, None, 1);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].room, ra);
        assert_eq!(shown(&p, &rb), vec![("sam".to_owned(), Status::Online)]);
        assert_eq!(p.disconnect(&a, 1, 2).0.iter().map(|c| c.room.clone()).collect::<Vec<_>>(), vec![ra]);
        assert_eq!(p.status(&b).map(|e| e.status), Some(Status::Online));
    }

    #[test]
    fn summary_matches_what_a_client_computes_from_the_snapshot() {
        let mut p = presence();
        let lobby = room("acme", "lobby");
        for (i, name) in ["u1", "u2", "u3"].iter().enumerate() {
            let u = UserKey::new("acme", name);
            p.connect(&u, i as u64, UserRecord::default(), 0);
            p.join(&lobby, &u, i as u64, 0);
        }
        p.set_status(&UserKey::new("acme", "u2"), 1, Status::Offline, None, 1);
        let snapshot = p.snapshot(&lobby);
        assert_eq!(p.summary(&lobby), (2, digest(&snapshot)));
    }
}
