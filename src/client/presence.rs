//! A client's view of one room's presence and typing, without IO (`now_ms` passed in): what
//! the relay's `presence`, `presence_snapshot`, `presence_refresh` and `typing` frames add up
//! to, in whatever order and with whatever losses they arrive.
//!
//! - Updates apply only with a version higher than the one held for that user; versions of
//!   users who went offline are kept, so a late `online` never resurrects them.
//! - A snapshot replaces the set of present users (an entry the client already holds at a
//!   higher version wins: it is newer than the snapshot).
//! - A refresh whose count or digest differs from the view means something was lost: the owner
//!   asks for a snapshot ([`RoomPresence::needs_sync`]). A refresh with digest 0 and a count
//!   above 0 is a quiet room's: its members are counted ([`RoomPresence::count`]), not listed.
//! - A `presence_batch` is its entries applied one by one.
//! - A typing view replaces the previous one unless older, and is shown until `ttl_ms` after
//!   it arrived.

use std::collections::{BTreeMap, HashMap};

use crate::proto::presence::{PresenceEntry, Status, digest, typing_text};

#[derive(Debug, Clone, Default)]
struct TypingSeen {
    users: Vec<String>,
    others: u32,
    version: u64,
    until_ms: u64,
}

#[derive(Debug, Clone, Default)]
pub struct RoomPresence {
    present: BTreeMap<String, PresenceEntry>,
    versions: HashMap<String, u64>,
    typing: TypingSeen,
    /// The latest `presence_refresh` count.
    count: u32,
}

impl RoomPresence {
    /// Applies one `presence` update; false when it was stale.
    pub fn apply(&mut self, entry: PresenceEntry) -> bool {
        let known = self.versions.entry(entry.user.clone()).or_insert(0);
        if entry.version <= *known {
            return false;
        }
        *known = entry.version;
        if entry.status == Status::Offline {
            self.present.remove(&entry.user);
        } else {
            self.present.insert(entry.user.clone(), entry);
        }
        true
    }

    /// Applies a `presence_snapshot`.
    pub fn apply_snapshot(&mut self, users: Vec<PresenceEntry>) {
        let mut present = BTreeMap::new();
        for entry in users {
            let newer = self.present.get(&entry.user).filter(|held| held.version > entry.version).cloned();
            let known = self.versions.entry(entry.user.clone()).or_insert(0);
            *known = (*known).max(entry.version);
            let entry = newer.unwrap_or(entry);
            present.insert(entry.user.clone(), entry);
        }
        self.present = present;
    }

    /// Whether a `presence_refresh` disagrees with this view. A refresh of a quiet room (digest
    /// 0 with members) lists nobody: it only gives the count, which this view keeps.
    pub fn needs_sync(&self, count: u32, refresh_digest: u64) -> bool {
        if refresh_digest == 0 && count > 0 {
            return !self.present.is_empty();
        }
        self.present.len() as u32 != count || digest(self.present.values()) != refresh_digest
    }

    /// Applies a `presence_refresh`: keeps its count; true when the view needs a snapshot.
    pub fn apply_refresh(&mut self, count: u32, refresh_digest: u64) -> bool {
        self.count = count;
        self.needs_sync(count, refresh_digest)
    }

    /// How many members the room has: the latest refresh's count, or (before any, or when the
    /// view lists more) how many the view lists. Quiet rooms list nobody but are counted.
    pub fn count(&self) -> u32 {
        self.count.max(self.present.len() as u32)
    }

    /// Present users, sorted by user id.
    pub fn entries(&self) -> Vec<PresenceEntry> {
        self.present.values().cloned().collect()
    }

    /// A user's status in this room (offline when not present).
    pub fn status(&self, user: &str) -> Status {
        self.present.get(user).map_or(Status::Offline, |e| e.status)
    }

    /// Applies a `typing` view received at `now_ms`; false when older than the one held.
    pub fn apply_typing(&mut self, users: Vec<String>, others: u32, version: u64, ttl_ms: u32, now_ms: u64) -> bool {
        if version < self.typing.version {
            return false;
        }
        self.typing = TypingSeen { users, others, version, until_ms: now_ms.saturating_add(u64::from(ttl_ms)) };
        true
    }

    /// Who types at `now_ms`: the names the relay listed and the total.
    pub fn typing(&self, now_ms: u64) -> (Vec<String>, usize) {
        if now_ms >= self.typing.until_ms {
            return (Vec::new(), 0);
        }
        (self.typing.users.clone(), self.typing.users.len() + self.typing.others as usize)
    }

    /// The line to show, leaving out `me` (a user does not see themselves typing).
    pub fn typing_text(&self, me: &str, now_ms: u64) -> String {
        let (users, mut total) = self.typing(now_ms);
        let names: Vec<&str> = users.iter().map(String::as_str).filter(|u| *u != me).collect();
        if names.len() < users.len() {
            total -= 1;
        }
        typing_text(&names, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, status: Status, version: u64) -> PresenceEntry {
        PresenceEntry { user: user.into(), status, custom: None, version, last_seen: 0 }
    }

    #[test]
    fn late_and_reordered_updates_never_roll_back() {
        let mut v = RoomPresence::default();
        assert!(v.apply(entry("alice", Status::Online, 10)));
        assert!(v.apply(entry("alice", Status::Offline, 12)));
        assert!(!v.apply(entry("alice", Status::Away, 11)), "older than what we hold");
        assert_eq!(v.status("alice"), Status::Offline);
        assert!(!v.apply(entry("alice", Status::Online, 12)), "same version: already applied");
        assert!(v.apply(entry("alice", Status::Busy, 13)));
        assert_eq!(v.status("alice"), Status::Busy);
    }

    #[test]
    fn snapshot_replaces_the_view_but_keeps_newer_entries() {
        let mut v = RoomPresence::default();
        v.apply(entry("ghost", Status::Online, 5));
        v.apply(entry("bob", Status::Busy, 20));
        v.apply_snapshot(vec![entry("alice", Status::Online, 7), entry("bob", Status::Online, 19)]);
        assert_eq!(v.status("ghost"), Status::Offline, "not in the snapshot: gone");
        assert_eq!(v.status("bob"), Status::Busy, "our update is newer than the snapshot's");
        assert!(!v.apply(entry("alice", Status::Away, 6)), "the snapshot's version counts");
    }

    #[test]
    fn a_refresh_detects_what_was_lost() {
        let relay = vec![entry("alice", Status::Online, 1), entry("bob", Status::Away, 2)];
        let (count, d) = (2, digest(&relay));
        let mut v = RoomPresence::default();
        v.apply(relay[0].clone());
        assert!(v.needs_sync(count, d), "bob's update was lost");
        v.apply(relay[1].clone());
        assert!(!v.needs_sync(count, d));
        v.apply(entry("bob", Status::Online, 1_000));
        assert!(v.needs_sync(count, d), "a different status is a different digest");
    }

    #[test]
    fn a_quiet_rooms_refresh_gives_a_count_and_asks_for_nothing() {
        let mut v = RoomPresence::default();
        assert!(!v.apply_refresh(4, 0), "digest 0 with members: counted, not listed");
        assert_eq!((v.count(), v.entries().len()), (4, 0));
        v.apply(entry("alice", Status::Online, 1));
        assert!(v.apply_refresh(4, 0), "a quiet room lists nobody: this view is stale");
    }

    #[test]
    fn typing_views_expire_on_the_client_and_leave_out_me() {
        let mut v = RoomPresence::default();
        assert!(v.apply_typing(vec!["me".into(), "bob".into()], 0, 3, 6_000, 1_000));
        assert_eq!(v.typing_text("me", 2_000), "bob is typing…");
        assert!(!v.apply_typing(vec![], 0, 2, 6_000, 2_000), "older view ignored");
        assert!(v.apply_typing(vec!["me".into(), "bob".into()], 0, 3, 6_000, 4_000), "same version refreshes");
        assert_eq!(v.typing_text("me", 9_999), "bob is typing…");
        assert_eq!(v.typing_text("me", 10_000), "", "expired without a refresh");
        v.apply_typing(vec!["a".into(), "b".into(), "c".into()], 4, 9, 6_000, 10_000);
        assert_eq!(v.typing_text("me", 10_000), "a, b and 5 others are typing…");
    }
}
