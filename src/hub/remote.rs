//! Other relays' presence, with a shared engine (Redis): what each other node last said of its
//! members of the rooms this node holds, each entry until it lapses. Without IO: times are
//! passed in, and the awareness service merges this with its own [`super::presence`].
//!
//! The room's view is the union over nodes; a user with devices on several nodes shows their
//! most recent entry (highest version). A node that stops refreshing its entries (it died) drops
//! out when they lapse. Versions shown for a user whose entry comes from several places are
//! reissued here, growing per room and user, so clients that order by version never ignore a
//! merged change.

use std::collections::HashMap;
use std::sync::Arc;

use super::RoomKey;
use super::presence::next_version;
use crate::proto::presence::{PresenceEntry, Status};

/// Another node's entry for one user in one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    pub node: Arc<str>,
    pub entry: PresenceEntry,
    /// Unix ms after which it no longer counts.
    pub expires: u64,
}

/// What this node tells the others, through the shared engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalPresence {
    /// A user's entry in a room changed here (offline: no longer present here).
    Changed { room: RoomKey, entry: PresenceEntry },
    /// Every room with members here and their entries: the periodic refresh that keeps them
    /// from lapsing.
    All(Vec<(RoomKey, Vec<PresenceEntry>)>),
    /// A user started (again) or stopped typing in a room here.
    Typing { room: RoomKey, user: String, typing: bool },
}

/// What the other nodes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtherNodes {
    /// One node's entry for one user changed.
    Set { room: RoomKey, remote: RemoteEntry },
    /// Everything the other nodes hold for a room (a periodic read of the shared state).
    Replace { room: RoomKey, entries: Vec<RemoteEntry> },
    /// A user started (again) or stopped typing on another node. It counts like one more
    /// device of theirs, and expires by the same TTL unless started again.
    Typing { room: RoomKey, node: Arc<str>, user: String, typing: bool },
}

/// The stand-in device id of another node's typists (connection ids of this node are small
/// counters, so the top bit keeps them apart).
pub fn node_device(node: &str) -> super::presence::DeviceId {
    (1 << 63) | (node_hash(node) >> 1)
}

/// A hash of a node's name that every node computes alike (fixed keys, unlike `RandomState`).
pub fn node_hash(node: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(node)
}

/// The two directions between the awareness service and a shared engine.
pub struct PresenceLink {
    pub local: tokio::sync::mpsc::UnboundedSender<LocalPresence>,
    pub others: tokio::sync::mpsc::UnboundedReceiver<OtherNodes>,
}

/// Each node's entry for one user, and when it lapses.
type NodeEntries = HashMap<Arc<str>, (PresenceEntry, u64)>;

#[derive(Default)]
struct RemoteUser {
    nodes: NodeEntries,
    /// The last version shown here for this user in this room.
    shown_version: u64,
}

#[derive(Default)]
pub struct RemotePresence {
    rooms: HashMap<RoomKey, HashMap<Arc<str>, RemoteUser>>,
}

impl RemotePresence {
    /// Whether another node has said anything of `user` in `room` (still in force).
    pub fn knows(&self, room: &RoomKey, user: &str) -> bool {
        self.rooms.get(room).is_some_and(|users| users.contains_key(user))
    }

    /// Whether another node has members in `room`.
    pub fn has_room(&self, room: &RoomKey) -> bool {
        self.rooms.contains_key(room)
    }

    /// Records what `node` says now of a user in `room`; an offline entry removes it. Returns
    /// whether the user's remote entries changed.
    pub fn set(&mut self, room: &RoomKey, remote: RemoteEntry) -> bool {
        let user: Arc<str> = remote.entry.user.as_str().into();
        let users = self.rooms.entry(room.clone()).or_default();
        let changed = if remote.entry.status == Status::Offline {
            users.get_mut(&user).and_then(|u| u.nodes.remove(&remote.node)).is_some()
        } else {
            let known = users.entry(user.clone()).or_default();
            let previous = known.nodes.insert(remote.node.clone(), (remote.entry.clone(), remote.expires));
            previous.is_none_or(|(entry, _)| entry != remote.entry)
        };
        self.tidy(room);
        changed
    }

    /// Replaces everything other nodes said of `room` with `entries` (a fresh read of the
    /// shared state). Returns the users whose remote entries changed.
    pub fn replace(&mut self, room: &RoomKey, entries: Vec<RemoteEntry>) -> Vec<Arc<str>> {
        let mut fresh: HashMap<Arc<str>, NodeEntries> = HashMap::new();
        for remote in entries.into_iter().filter(|r| r.entry.status != Status::Offline) {
            let user: Arc<str> = remote.entry.user.as_str().into();
            fresh.entry(user).or_default().insert(remote.node, (remote.entry, remote.expires));
        }
        let users = self.rooms.entry(room.clone()).or_default();
        let mut changed: Vec<Arc<str>> = Vec::new();
        for (user, known) in users.iter_mut() {
            let nodes = fresh.remove(user).unwrap_or_default();
            if !same_entries(&known.nodes, &nodes) {
                changed.push(user.clone());
            }
            known.nodes = nodes;
        }
        for (user, nodes) in fresh {
            changed.push(user.clone());
            users.insert(user, RemoteUser { nodes, shown_version: 0 });
        }
        self.tidy(room);
        changed
    }

    /// Drops lapsed entries; returns the rooms and users whose entries changed.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(RoomKey, Arc<str>)> {
        let mut changed = Vec::new();
        for (room, users) in &mut self.rooms {
            for (user, known) in users.iter_mut() {
                let before = known.nodes.len();
                known.nodes.retain(|_, (_, expires)| *expires > now_ms);
                if known.nodes.len() != before {
                    changed.push((room.clone(), user.clone()));
                }
            }
        }
        for (room, _) in &changed {
            self.tidy(room);
        }
        changed
    }

    /// The most recent entry other nodes hold for `user` in `room`.
    pub fn best(&self, room: &RoomKey, user: &str) -> Option<&PresenceEntry> {
        let known = self.rooms.get(room)?.get(user)?;
        known.nodes.values().map(|(entry, _)| entry).max_by_key(|e| e.version)
    }

    /// Every user other nodes list in `room`, with their most recent entry.
    pub fn users<'a>(&'a self, room: &RoomKey) -> impl Iterator<Item = &'a PresenceEntry> + 'a {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(HashMap::values)
            .filter_map(|known| known.nodes.values().map(|(entry, _)| entry).max_by_key(|e| e.version))
    }

    /// The version to show a merged change of `user` in `room` with: above every version shown
    /// or seen for them here.
    pub fn reissue(&mut self, room: &RoomKey, user: &str, seen: u64, now_ms: u64) -> u64 {
        let Some(known) = self.rooms.get_mut(room).and_then(|users| users.get_mut(user)) else { return seen };
        known.shown_version = next_version(known.shown_version.max(seen), now_ms);
        known.shown_version
    }

    /// Forgets users nobody else lists any more, once their last merged change went out.
    pub fn forget_idle(&mut self, room: &RoomKey, user: &str) {
        if let Some(users) = self.rooms.get_mut(room) {
            if users.get(user).is_some_and(|u| u.nodes.is_empty()) {
                users.remove(user);
            }
            if users.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Drops a room nobody is listed in any more. A user whose last node left is kept until
    /// [`Self::forget_idle`], so the offline change still gets a reissued version.
    fn tidy(&mut self, room: &RoomKey) {
        if self.rooms.get(room).is_some_and(HashMap::is_empty) {
            self.rooms.remove(room);
        }
    }
}

fn same_entries(a: &NodeEntries, b: &NodeEntries) -> bool {
    a.len() == b.len() && a.iter().all(|(node, (entry, _))| b.get(node).is_some_and(|(other, _)| other == entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RoomName;

    fn room() -> RoomKey {
        RoomKey { tenant: "acme".into(), room: RoomName::parse("r").unwrap() }
    }

    fn remote(node: &str, user: &str, status: Status, version: u64, expires: u64) -> RemoteEntry {
        let entry = PresenceEntry { user: user.into(), status, custom: None, version, last_seen: 0 };
        RemoteEntry { node: node.into(), entry, expires }
    }

    #[test]
    fn the_most_recent_entry_of_any_node_wins_and_offline_removes() {
        let mut r = RemotePresence::default();
        assert!(r.set(&room(), remote("a", "u", Status::Online, 10, 1000)));
        assert!(r.set(&room(), remote("b", "u", Status::Busy, 20, 1000)));
        assert!(!r.set(&room(), remote("b", "u", Status::Busy, 20, 2000)), "a refresh is no change");
        assert_eq!(r.best(&room(), "u").map(|e| e.status), Some(Status::Busy));
        assert!(r.set(&room(), remote("b", "u", Status::Offline, 30, 0)));
        assert_eq!(r.best(&room(), "u").map(|e| e.status), Some(Status::Online), "still on node a");
        assert_eq!(r.users(&room()).count(), 1);
    }

    #[test]
    fn lapsed_entries_drop_out_and_replace_reports_what_changed() {
        let mut r = RemotePresence::default();
        r.set(&room(), remote("a", "u", Status::Online, 10, 1000));
        r.set(&room(), remote("a", "v", Status::Online, 10, 5000));
        assert_eq!(r.expire(999), vec![]);
        assert_eq!(r.expire(1000), vec![(room(), Arc::from("u"))]);
        assert!(r.best(&room(), "u").is_none());
        let changed = r.replace(
            &room(),
            vec![remote("a", "v", Status::Online, 10, 6000), remote("c", "w", Status::Away, 3, 6000)],
        );
        assert_eq!(changed, vec![Arc::from("w")], "v is unchanged; w is new");
        let mut changed = r.replace(&room(), vec![]);
        changed.sort();
        assert_eq!(changed, vec![Arc::from("v"), Arc::from("w")]);
        assert_eq!(r.users(&room()).count(), 0);
    }

    #[test]
    fn reissued_versions_keep_growing() {
        let mut r = RemotePresence::default();
        r.set(&room(), remote("a", "u", Status::Online, 50, 1000));
        let first = r.reissue(&room(), "u", 50, 10);
        let second = r.reissue(&room(), "u", 40, 10);
        assert!(first > 50 && second > first);
        assert_eq!(r.reissue(&room(), "nobody", 7, 10), 7);
    }
}
