//! The rooms whose unread counts somebody here follows live, and their tops: what the delivery
//! tap touches on the publish path, so it is sharded by room and costs one atomic load for a
//! room nobody watches (no lock, no allocation).
//!
//! Why not a copy of every room's top: the hub already has the top of the rooms it holds and the
//! engine of every room; only a room followed by a synced user needs one kept here, because its
//! count must move with each message even when nobody on this node has joined it. A room leaves
//! when its last watcher does, so the map holds only what synced connections need. No IO.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::hub::RoomKey;
use crate::hub::presence::UserKey;
use crate::lock::lock;
use crate::proto::Position;

struct Room {
    /// The last position seen (a delivery here, or the region's meta); `None` until known.
    top: Option<Position>,
    /// The synced users following the room.
    users: HashSet<UserKey>,
    /// The top moved since the last [`Watch::take_moved`].
    moved: bool,
}

pub struct Watch {
    shards: Vec<Mutex<HashMap<RoomKey, Room>>>,
    hasher: RandomState,
    /// Rooms watched, so a relay where nobody synced skips even the shard lock.
    rooms: AtomicUsize,
}

/// Whether `new` is past `old`: later in the same epoch, or another epoch.
fn newer(old: Option<Position>, new: Position) -> bool {
    old.is_none_or(|old| old.epoch != new.epoch || new.offset > old.offset)
}

impl Watch {
    pub fn new(shards: usize) -> Watch {
        Watch {
            shards: (0..shards.max(1)).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            rooms: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &RoomKey) -> &Mutex<HashMap<RoomKey, Room>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    /// A committed message: moves the room's top if somebody watches it. Called for every
    /// message of every room.
    pub fn delivered(&self, key: &RoomKey, position: Position) {
        if self.rooms.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.set_top(key, position);
    }

    /// Moves a watched room's top to `position` if it is newer; whether it moved.
    pub fn set_top(&self, key: &RoomKey, position: Position) -> bool {
        let mut shard = lock(self.shard(key));
        let Some(room) = shard.get_mut(key) else { return false };
        if !newer(room.top, position) {
            return false;
        }
        room.top = Some(position);
        room.moved = true;
        true
    }

    /// The user follows the room live from now on.
    pub fn add(&self, key: &RoomKey, user: &UserKey) {
        let mut shard = lock(self.shard(key));
        let room = shard.entry(key.clone()).or_insert_with(|| {
            self.rooms.fetch_add(1, Ordering::Relaxed);
            Room { top: None, users: HashSet::new(), moved: false }
        });
        if !room.users.contains(user) {
            room.users.insert(user.clone());
        }
    }

    /// The user no longer follows the room live; the room goes with its last watcher.
    pub fn remove(&self, key: &RoomKey, user: &UserKey) {
        let mut shard = lock(self.shard(key));
        let Some(room) = shard.get_mut(key) else { return };
        room.users.remove(user);
        if room.users.is_empty() {
            shard.remove(key);
            self.rooms.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The room's top, if watched and known.
    pub fn top(&self, key: &RoomKey) -> Option<Position> {
        lock(self.shard(key)).get(key).and_then(|room| room.top)
    }

    pub fn watched(&self, key: &RoomKey) -> bool {
        lock(self.shard(key)).contains_key(key)
    }

    /// The rooms whose top moved since the last call, with their watchers.
    pub fn take_moved(&self) -> Vec<(RoomKey, Vec<UserKey>)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for (key, room) in lock(shard).iter_mut().filter(|(_, room)| room.moved) {
                room.moved = false;
                out.push((key.clone(), room.users.iter().cloned().collect()));
            }
        }
        out
    }

    /// Every watched room (for the region's top check).
    pub fn rooms(&self) -> Vec<RoomKey> {
        self.shards.iter().flat_map(|shard| lock(shard).keys().cloned().collect::<Vec<_>>()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RoomName;

    fn key(room: &str) -> RoomKey {
        RoomKey { tenant: "acme".into(), room: RoomName::parse(room).unwrap() }
    }

    fn user(name: &str) -> UserKey {
        UserKey { tenant: "acme".into(), user: name.into() }
    }

    #[test]
    fn only_watched_rooms_keep_a_top_and_it_never_moves_back_within_an_epoch() {
        let watch = Watch::new(4);
        let (a, b) = (key("a"), key("b"));
        watch.delivered(&a, Position { epoch: 1, offset: 3 });
        assert!(!watch.watched(&a), "nobody watches: nothing kept");
        watch.add(&a, &user("alice"));
        watch.add(&a, &user("bob"));
        watch.delivered(&a, Position { epoch: 1, offset: 3 });
        watch.delivered(&a, Position { epoch: 1, offset: 2 });
        watch.delivered(&b, Position { epoch: 1, offset: 9 });
        assert_eq!(watch.top(&a), Some(Position { epoch: 1, offset: 3 }));
        assert_eq!(watch.top(&b), None);
        let moved = watch.take_moved();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].1.len(), 2);
        assert!(watch.take_moved().is_empty(), "taken once");
        // A new epoch replaces the top even if its offset is lower.
        assert!(watch.set_top(&a, Position { epoch: 2, offset: 1 }));
        watch.remove(&a, &user("alice"));
        assert!(watch.watched(&a));
        watch.remove(&a, &user("bob"));
        assert!(!watch.watched(&a), "gone with its last watcher");
        assert_eq!(watch.rooms.load(Ordering::Relaxed), 0);
    }
}
