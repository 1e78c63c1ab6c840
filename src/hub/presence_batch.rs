//! Batched presence deltas, as Phoenix Presence does them: the changes of each room are
//! collected for `presence.batch_ms` and then sent to the room's members as one frame, instead
//! of one frame per change per member. A join storm into a room of N members otherwise costs N
//! frames (and N socket writes) per join, N² in all; batched it costs N frames per interval.
//!
//! Each room's batch is due its own interval after its first change: the interval grows with
//! the room's size ([`interval_ms`]), so a room of 10 hears of a change within `batch_ms` while
//! a room of 500 in a join storm gets a few big frames instead of many small ones.
//!
//! Without IO: the awareness service adds changes with their due time and takes the batches
//! that are due when its flush timer fires. Each user appears once per room and batch, with their latest entry (the highest
//! version): clients apply entries by version, so the earlier ones would be superseded anyway.

use std::collections::HashMap;

use super::RoomKey;
use crate::proto::presence::PresenceEntry;

/// How long a room of `members` users collects its changes: one millisecond per member, at
/// least `batch_ms` and at most `max_batch_ms` (as Phoenix Presence and Discord slow down the
/// updates of big rooms: what each member receives then stays about constant per second).
pub fn interval_ms(members: usize, batch_ms: u64, max_batch_ms: u64) -> u64 {
    (members as u64).clamp(batch_ms, max_batch_ms.max(batch_ms))
}

/// One room's pending changes, in the order users first changed.
struct Pending {
    /// When the batch is to be sent (ms).
    due_ms: u64,
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
    /// Adds a change; a room's first pending change makes its batch due at `due_ms`. True when
    /// the room had nothing pending (the caller's timer may have to wake earlier).
    pub fn add(&mut self, room: &RoomKey, entry: PresenceEntry, due_ms: u64) -> bool {
        let first = !self.rooms.contains_key(room);
        let pending = match self.rooms.get_mut(room) {
            Some(pending) => pending,
            None => self.rooms.entry(room.clone()).or_insert_with(|| Pending {
                due_ms,
                entries: Vec::new(),
                at: HashMap::new(),
            }),
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

    /// When the earliest batch is due.
    pub fn next_due(&self) -> Option<u64> {
        self.rooms.values().map(|p| p.due_ms).min()
    }

    /// Takes every room's batch.
    pub fn take(&mut self) -> Vec<(RoomKey, Vec<PresenceEntry>)> {
        self.rooms.drain().map(|(room, pending)| (room, pending.entries)).collect()
    }

    /// Takes the batches due at `now_ms`.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<(RoomKey, Vec<PresenceEntry>)> {
        let due: Vec<RoomKey> = self.rooms.iter().filter(|(_, p)| p.due_ms <= now_ms).map(|(r, _)| r.clone()).collect();
        due.into_iter().filter_map(|room| self.rooms.remove(&room).map(|p| (room, p.entries))).collect()
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
        assert!(b.add(&key("r"), entry("bob", Status::Online, 5), 50), "the first change starts the timer");
        assert!(!b.add(&key("r"), entry("alice", Status::Online, 3), 60));
        assert!(!b.add(&key("r"), entry("bob", Status::Away, 7), 60));
        assert!(!b.add(&key("r"), entry("bob", Status::Busy, 6), 60), "an older entry does not replace a newer one");
        assert!(b.add(&key("s"), entry("bob", Status::Away, 7), 60), "another room's first change");
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
        assert!(b.add(&key("r"), entry("bob", Status::Offline, 8), 90), "after a take the timer starts again");
        b.forget(&key("r"));
        assert!(b.is_empty());
    }

    #[test]
    fn each_room_is_due_its_own_interval_after_its_first_change() {
        let mut b = Batches::default();
        b.add(&key("small"), entry("bob", Status::Online, 1), 1_050);
        b.add(&key("big"), entry("ann", Status::Online, 1), 1_250);
        b.add(&key("small"), entry("cat", Status::Online, 1), 1_100);
        assert_eq!(b.next_due(), Some(1_050), "a later change does not delay the room's batch");
        assert!(b.take_due(1_049).is_empty());
        let due = b.take_due(1_050);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, key("small"));
        assert_eq!(due[0].1.len(), 2);
        assert_eq!(b.next_due(), Some(1_250));
        assert_eq!(b.take_due(2_000).len(), 1);
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn the_interval_grows_with_the_room_between_the_bounds() {
        assert_eq!(interval_ms(10, 50, 250), 50, "a small room hears within batch_ms");
        assert_eq!(interval_ms(120, 50, 250), 120);
        assert_eq!(interval_ms(5_000, 50, 250), 250);
        assert_eq!(interval_ms(5_000, 50, 0), 50, "a cap below batch_ms means no growth");
    }
}
