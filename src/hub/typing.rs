//! Who is typing in each room, without IO: `now_ms` passed in, the caller fans out the views.
//!
//! A user types in a room while any of their devices does. A device's typing expires by itself
//! `ttl_ms` after its last `start` unless refreshed, so a crashed client never types forever;
//! `stop` and a device disconnecting end it at once. A room's state travels as a whole
//! ([`TypingView`]: the first typists by the time they started, and how many type in all),
//! so one datagram replaces the previous one and a lost one is healed by the next.
//!
//! Each room's view has a version that grows on every change ([`super::presence::next_version`]).
//! A `start` that only refreshes a typist returns the view again with the same version so that
//! clients (which expire views after the TTL themselves) keep showing it.
//!
//! Privacy (hidden typing) and rate limits are the caller's: they decide whether to call here.

use std::collections::HashMap;
use std::sync::Arc;

use super::RoomKey;
use super::presence::{DeviceId, next_version};
use crate::proto::presence::TYPING_NAMES;

/// A room's typing state as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypingView {
    /// The first typists, in the order they started (at most [`TYPING_NAMES`]).
    pub names: Vec<String>,
    /// How many users type in all.
    pub total: u32,
    pub version: u64,
}

struct Typist {
    user: Arc<str>,
    /// Each typing device and when its typing expires.
    devices: HashMap<DeviceId, u64>,
}

#[derive(Default)]
struct RoomTyping {
    /// In the order they started.
    typists: Vec<Typist>,
    version: u64,
}

impl RoomTyping {
    fn view(&self) -> TypingView {
        TypingView {
            names: self.typists.iter().take(TYPING_NAMES).map(|t| t.user.to_string()).collect(),
            total: self.typists.len() as u32,
            version: self.version,
        }
    }
}

pub struct Typing {
    ttl_ms: u64,
    rooms: HashMap<RoomKey, RoomTyping>,
}

impl Typing {
    pub fn new(ttl_ms: u64) -> Self {
        Typing { ttl_ms, rooms: HashMap::new() }
    }

    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// A device started (or keeps) typing. Returns the view to send: changed, or refreshed.
    pub fn start(&mut self, room: &RoomKey, user: &str, device: DeviceId, now_ms: u64) -> TypingView {
        let state = self.rooms.entry(room.clone()).or_default();
        let expires = now_ms.saturating_add(self.ttl_ms);
        match state.typists.iter_mut().find(|t| &*t.user == user) {
            Some(typist) => {
                typist.devices.insert(device, expires);
            }
            None => {
                state.typists.push(Typist { user: user.into(), devices: HashMap::from([(device, expires)]) });
                state.version = next_version(state.version, now_ms);
            }
        }
        state.view()
    }

    /// A device stopped typing (or left the room, or disconnected). Returns the view to send
    /// when the user no longer types on any device.
    pub fn stop(&mut self, room: &RoomKey, user: &str, device: DeviceId, now_ms: u64) -> Option<TypingView> {
        let state = self.rooms.get_mut(room)?;
        let index = state.typists.iter().position(|t| &*t.user == user)?;
        let typist = state.typists.get_mut(index)?;
        typist.devices.remove(&device);
        if !typist.devices.is_empty() {
            return None;
        }
        state.typists.remove(index);
        state.version = next_version(state.version, now_ms);
        Some(state.view())
    }

    /// Ends every device's typing that was not refreshed within the TTL. Returns the rooms
    /// whose view changed.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(RoomKey, TypingView)> {
        let mut changed = Vec::new();
        for (room, state) in &mut self.rooms {
            let before = state.typists.len();
            for typist in &mut state.typists {
                typist.devices.retain(|_, expires| *expires > now_ms);
            }
            state.typists.retain(|t| !t.devices.is_empty());
            if state.typists.len() != before {
                state.version = next_version(state.version, now_ms);
                changed.push((room.clone(), state.view()));
            }
        }
        // Forget idle rooms once a fresh one would start at a higher version anyway.
        self.rooms.retain(|_, s| !s.typists.is_empty() || s.version >= now_ms);
        changed
    }

    /// A room's current view (empty, version 0, when nobody typed lately).
    pub fn view(&self, room: &RoomKey) -> TypingView {
        self.rooms.get(room).map_or(TypingView { names: Vec::new(), total: 0, version: 0 }, RoomTyping::view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RoomName;
    use crate::proto::presence::typing_text;

    const TTL: u64 = 5_000;

    fn room(name: &str) -> RoomKey {
        RoomKey { tenant: "acme".into(), room: RoomName::parse(name).unwrap() }
    }

    fn text(v: &TypingView) -> String {
        let names: Vec<&str> = v.names.iter().map(String::as_str).collect();
        typing_text(&names, v.total as usize)
    }

    #[test]
    fn typing_expires_after_the_ttl_unless_refreshed() {
        let mut t = Typing::new(TTL);
        let r = room("lobby");
        let v = t.start(&r, "alice", 1, 1_000);
        assert_eq!(text(&v), "alice is typing…");
        assert!(t.expire(1_000 + TTL - 1).is_empty());
        let refreshed = t.start(&r, "alice", 1, 4_000);
        assert_eq!(refreshed.version, v.version, "a refresh is not a change");
        assert!(t.expire(1_000 + TTL).is_empty(), "the refresh moved the expiry");
        let expired = t.expire(4_000 + TTL);
        assert_eq!(expired.len(), 1);
        assert_eq!((expired[0].1.total, expired[0].1.version > v.version), (0, true));
        assert_eq!(t.view(&r).total, 0);
    }

    #[test]
    fn a_user_types_while_any_device_does() {
        let mut t = Typing::new(TTL);
        let r = room("lobby");
        t.start(&r, "bob", 1, 0);
        t.start(&r, "bob", 2, 3_000);
        assert_eq!(t.stop(&r, "bob", 1, 3_100), None, "device 2 still types");
        assert_eq!(t.view(&r).total, 1);
        assert!(t.expire(TTL).is_empty(), "device 1 stopped; device 2 lasts until 8,000");
        assert_eq!(t.stop(&r, "bob", 2, 4_000).map(|v| v.total), Some(0));
        assert_eq!(t.stop(&r, "bob", 2, 4_001), None, "stopping twice changes nothing");
    }

    #[test]
    fn views_aggregate_in_start_order_and_count_the_rest() {
        let mut t = Typing::new(TTL);
        let r = room("lobby");
        let names = ["Alice", "Bob", "Carol", "Dan"];
        let mut last = None;
        for (i, n) in names.iter().enumerate() {
            last = Some(t.start(&r, n, i as u64, i as u64));
        }
        let v = last.unwrap();
        assert_eq!(v.names, vec!["Alice", "Bob", "Carol"]);
        assert_eq!(text(&v), "Alice, Bob and 2 others are typing…");
        t.stop(&r, "Dan", 3, 10);
        assert_eq!(text(&t.view(&r)), "Alice, Bob and Carol are typing…");
        t.stop(&r, "Alice", 0, 11);
        assert_eq!(text(&t.view(&r)), "Bob and Carol are typing…");
        // Other rooms and tenants are separate.
        assert_eq!(t.view(&room("other")).total, 0);
        let globex = RoomKey { tenant: "globex".into(), room: RoomName::parse("lobby").unwrap() };
        assert_eq!(t.view(&globex).total, 0);
    }

    #[test]
    fn versions_grow_on_every_change() {
        let mut t = Typing::new(TTL);
        let r = room("lobby");
        let a = t.start(&r, "a", 1, 7).version;
        let b = t.start(&r, "b", 2, 7).version;
        let c = t.stop(&r, "a", 1, 7).unwrap().version;
        let d = t.expire(7 + TTL).pop().unwrap().1.version;
        let e = t.start(&r, "a", 1, 7 + TTL).version;
        assert!(a < b && b < c && c < d && d < e, "{a} {b} {c} {d} {e}");
    }
}
