//! Batched presence deltas, as Phoenix Presence does them: the changes of each room are
//! collected for `presence.batch_ms` and then sent to the room's members as one frame, instead
//! of one frame per change per member. A join storm into a room of N members otherwise costs N
//! frames (and N socket writes) per join, N² in all; batched it costs N frames per interval.
//!
//! Without IO: the awareness service adds changes and takes the batches when its flush timer
//! fires. Each user appears once per room and batch, with their latest entry (the highest
//! version): clients apply entries by version, so the earlier ones would be superseded anyway.

use std::collections::HashMap;

use super::RoomKey;
use crate::proto::presence::PresenceEntry;

/// One room's pending changes, in the order users first changed.
#[derive(Default)]
struct Pending {
    entries: Vec<PresenceEntry>,
    /// Where each user's entry is in `entries`.
    at: HashMap<String, usize>,
}

/// The pending presence changes of every room.
#[derive(Default)]
pub struct Batches {
    rooms: HashMap<RoomKey, Pending>,
}

impl Batches {
    /// Adds a change; true when it is the first one pending (the caller starts its timer).
    pub fn add(&mut self, room: &RoomKey, entry: PresenceEntry) -> bool {
        let first = self.rooms.is_empty();
        let pending = match self.rooms.get_mut(room) {
            Some(pending) => pending,
            None => self.rooms.entry(room.clone()).or_default(),
        };
        match pending.at.get(&entry.user) {
            Some(&i) => {
                if entry.version > pending.entries[i].version {
                    pending.entries[i] = entry;
                }
            }
            None => {
                pending.at.insert(entry.user.clone(), pending.entries.len());
                pending.entries.push(entry);
            }
        }
        first
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Takes every room's batch.
    pub fn take(&mut self) -> Vec<(RoomKey, Vec<PresenceEntry>)> {
        self.rooms.drain().map(|(room, pending)| (room, pending.entries)).collect()
    }

    /// Drops the pending changes of a room nobody here is in any more.
    pub fn forget(&mut self, room: &RoomKey) {
        self.rooms.remove(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RoomName;
    use crate::proto::presence::Status;

    fn key(room: &str) -> RoomKey {
        RoomKey { tenant: "acme".into(), room: RoomName::parse(room).unwrap() }
    }

    fn entry(user: &str, status: Status, version: u64) -> PresenceEntry {
        PresenceEntry { user: user.into(), status, custom: None, version, last_seen: 0 }
    }

    #[test]
    fn one_entry_per_user_and_room_the_latest_in_first_change_order() {
        let mut b = Batches::default();
        assert!(b.add(&key("r"), entry("bob", Status::Online, 5)), "the first change starts the timer");
        assert!(!b.add(&key("r"), entry("alice", Status::Online, 3)));
        assert!(!b.add(&key("r"), entry("bob", Status::Away, 7)));
        assert!(!b.add(&key("r"), entry("bob", Status::Busy, 6)), "an older entry does not replace a newer one");
        assert!(!b.add(&key("s"), entry("bob", Status::Away, 7)));
        let mut batches = b.take();
        batches.sort_by(|x, y| x.0.room.cmp(&y.0.room));
        assert_eq!(
            batches,
            vec![
                (key("r"), vec![entry("bob", Status::Away, 7), entry("alice", Status::Online, 3)]),
                (key("s"), vec![entry("bob", Status::Away, 7)]),
            ]
        );
        assert!(b.is_empty());
        assert!(b.add(&key("r"), entry("bob", Status::Offline, 8)), "after a take the timer starts again");
        b.forget(&key("r"));
        assert!(b.is_empty());
    }
}
