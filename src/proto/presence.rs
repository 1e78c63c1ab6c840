//! Presence and typing as they appear on the wire, shared by the relay and clients: the status
//! enum, one user's presence entry, the digest that lets a client check its view of a room
//! against the relay's, and the aggregation text for typing ("Alice and Bob are typing…").
//!
//! Versions are per user (presence) and per room (typing). They only grow, and they are based
//! on the relay's clock in milliseconds (`max(previous + 1, now_ms)`), so they also keep growing
//! across a relay restart. A client applies an update only when its version is higher than the
//! one it holds: late or reordered datagrams never roll state back.

use serde::{Deserialize, Serialize};

/// A user's status as others see it, and as a user sets it. Setting `offline` while connected
/// means "appear offline" (invisible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Away,
    Busy,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }
}

/// Longest custom status text, in bytes.
pub const MAX_CUSTOM_STATUS_LEN: usize = 128;

/// Names a `typing` frame lists; the rest are counted in `others`.
pub const TYPING_NAMES: usize = 3;

/// One user's presence in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub user: String,
    pub status: Status,
    /// Short custom status text, if the user set one (never shown while offline).
    pub custom: Option<String>,
    pub version: u64,
    /// Unix ms the user was last seen online (meaningful when `status` is offline; 0: unknown).
    pub last_seen: u64,
}

/// The digest of a room's presence view: the low 53 bits of the wrapping sum, over the present
/// users, of FNV-1a 64 over `user, 0x00, status name, 0x00, custom text (empty if none)` as
/// UTF-8. It covers what a user sees, not versions, and order does not matter, so a client that
/// holds the same view as the relay computes the same value however it stores it.
pub fn digest<'a>(entries: impl IntoIterator<Item = &'a PresenceEntry>) -> u64 {
    entries.into_iter().fold(0u64, |sum, e| sum.wrapping_add(entry_hash(e))) & DIGEST_MASK
}

/// Digests keep their low 53 bits, so JSON clients in JavaScript read them exactly.
pub const DIGEST_MASK: u64 = (1 << 53) - 1;

fn entry_hash(e: &PresenceEntry) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let custom = e.custom.as_deref().unwrap_or("");
    let bytes = e.user.bytes().chain([0]).chain(e.status.as_str().bytes()).chain([0]).chain(custom.bytes());
    bytes.fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// What a client renders for a room's typing users: `names` are the first typists (at most
/// [`TYPING_NAMES`]), `total` how many type in all. Empty when nobody does.
pub fn typing_text(names: &[&str], total: usize) -> String {
    let total = total.max(names.len());
    match names {
        [] => String::new(),
        [a, ..] if total == 1 => format!("{a} is typing…"),
        [a, b, ..] if total == 2 => format!("{a} and {b} are typing…"),
        [a, b, c, ..] if total == 3 => format!("{a}, {b} and {c} are typing…"),
        _ => {
            let shown = &names[..names.len().min(2)];
            let rest = total - shown.len();
            let (noun, verb) = if rest == 1 { ("other", "is") } else { ("others", "are") };
            format!("{} and {rest} {noun} {verb} typing…", shown.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregation_text() {
        assert_eq!(typing_text(&[], 0), "");
        assert_eq!(typing_text(&["Alice"], 1), "Alice is typing…");
        assert_eq!(typing_text(&["Alice", "Bob"], 2), "Alice and Bob are typing…");
        assert_eq!(typing_text(&["Alice", "Bob", "Carol"], 3), "Alice, Bob and Carol are typing…");
        assert_eq!(typing_text(&["Alice", "Bob", "Carol"], 4), "Alice, Bob and 2 others are typing…");
        assert_eq!(typing_text(&["Alice", "Bob"], 9), "Alice, Bob and 7 others are typing…");
        assert_eq!(typing_text(&["Alice"], 2), "Alice and 1 other is typing…");
    }

    fn entry(user: &str, status: Status, custom: Option<&str>, version: u64) -> PresenceEntry {
        PresenceEntry { user: user.into(), status, custom: custom.map(Into::into), version, last_seen: 0 }
    }

    #[test]
    fn digest_ignores_order_and_versions_but_sees_state() {
        let alice = entry("alice", Status::Online, None, 5);
        let bob = entry("bob", Status::Busy, Some("in a call"), 7);
        let a = digest([&alice, &bob]);
        assert_eq!(a, digest([&bob, &alice]));
        assert_eq!(a, digest([&entry("alice", Status::Online, None, 6), &bob]));
        assert_ne!(a, digest([&alice, &entry("bob", Status::Busy, Some("lunch"), 7)]));
        assert_ne!(a, digest([&entry("alice", Status::Away, None, 5), &bob]));
        assert_ne!(a, digest([&alice]));
        assert_eq!(digest([]), 0);
        // Pinned so other-language clients can check their implementation.
        assert_eq!(format!("{:016x}", digest([&alice])), PINNED_ALICE_ONLINE);
    }

    const PINNED_ALICE_ONLINE: &str = "000ea9180c3d431e";
}
