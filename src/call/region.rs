//! 1:1 calls across the nodes of a Redis region: the messages the call services exchange on the
//! region's calls channel ([`crate::engine::CallLink`]) and the small table of every node's live
//! calls each node keeps. Without IO: times are passed in; [`super::service`] sends and applies.
//!
//! Why an owner node and one channel: a call's inputs must be applied one at a time in one
//! place for "first one wins" to hold (two devices answering on two nodes), so a call lives on
//! the node where `initiate` arrived, its owner, with the machine as on one node. Devices on
//! other nodes reach it through messages: their actions go to the owner ([`Message::Act`]), and
//! the owner's events come back ([`Message::Deliver`]). One channel, which every node receives,
//! keeps a reply ahead of the events it caused and signals in order, and needs no per-user
//! routing state in Redis; calls are few next to room messages (a call is a dozen messages plus
//! its signaling), so every node reading every call message is cheap.
//!
//! Pub/sub is at most once. A lost `deliver` leaves a device behind until its next connect (it
//! is told the state then); a lost `act` or `reply` is answered `store_unavailable` by the
//! requesting node after [`ACT_TIMEOUT_MS`]; a lost `device_up` leaves a device silent for that
//! call; a lost end leaves other nodes' entries until they lapse ([`LAPSE_MS`]), when those
//! nodes tell their devices the call ended (`connection_lost`). An owner that dies stops its
//! refreshes ([`REFRESH_MS`]): its calls end the same way on the other nodes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::types::CallId;
use crate::hub::presence::{DeviceId, UserKey};
use crate::proto::{CallAction, CallMedia, ServerFrame};

/// How often an owner repeats the list of its live calls.
pub const REFRESH_MS: u64 = 5_000;
/// How long another node's live call stays known without news from its owner.
pub const LAPSE_MS: u64 = 3 * REFRESH_MS;
/// How long a device's action on a call held elsewhere waits for the owner's answer.
pub const ACT_TIMEOUT_MS: u64 = 5_000;

/// Device ids are region-unique: the low bits are the connection's id on its node, the high
/// bits a tag of the node's name. Tags of two nodes collide with odds of 1 in 2^24 per pair.
const CONN_BITS: u32 = 40;

/// The tag in the high bits of this node's device ids.
pub fn node_tag(node: &str) -> u64 {
    (crate::hub::remote::node_hash(node) & 0xff_ffff) << CONN_BITS
}

/// The region-unique id of a connection of the node tagged `tag`.
pub fn device_id(tag: u64, conn: u64) -> DeviceId {
    tag | (conn & ((1 << CONN_BITS) - 1))
}

/// Whether `device` is a device of the node tagged `tag`.
pub fn is_local(tag: u64, device: DeviceId) -> bool {
    device >> CONN_BITS == tag >> CONN_BITS
}

/// A user as messages carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub tenant: String,
    pub user: String,
}

impl From<&UserKey> for User {
    fn from(key: &UserKey) -> User {
        User { tenant: key.tenant.to_string(), user: key.user.to_string() }
    }
}

impl User {
    pub fn key(&self) -> UserKey {
        UserKey::new(&self.tenant, &self.user)
    }
}

/// What every node knows of a live call: who holds it and who is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallInfo {
    /// The call id's wire form.
    pub id: String,
    pub tenant: String,
    pub caller: String,
    pub callee: String,
    pub media: CallMedia,
    /// The callee answered (for `busy`).
    pub answered: bool,
    pub ended: bool,
}

/// The messages on the calls channel. `to` names the one node a message is for; the others
/// ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Message {
    /// From an owner: a `call` frame for every device of `user`, or for one `device`; `call`
    /// is the call as it is now (every node updates its table first).
    Deliver { user: User, device: Option<DeviceId>, frame: ServerFrame, call: Option<CallInfo> },
    /// A device's action on a call the owner `to` holds; answered by [`Message::Reply`] with
    /// `token`.
    Act { to: String, token: u64, user: User, device: DeviceId, call: String, action: CallAction },
    /// The owner's answer to an [`Message::Act`]: ok, or the error's code and message.
    Reply { to: String, token: u64, error: Option<(u16, String)> },
    /// A device of a participant is connected on the sending node: it just connected (`sync`:
    /// tell it the state), or the node learned of a new call.
    DeviceUp { to: String, call: String, user: User, device: DeviceId, sync: bool },
    /// A device of a participant disconnected on the sending node.
    DeviceDown { to: String, call: String, user: User, device: DeviceId },
    /// The sender's live calls, every [`REFRESH_MS`]: they stay known elsewhere.
    Refresh { calls: Vec<CallInfo> },
}

impl Message {
    /// The node this message is for, if it is for one.
    pub fn to(&self) -> Option<&str> {
        match self {
            Message::Act { to, .. }
            | Message::Reply { to, .. }
            | Message::DeviceUp { to, .. }
            | Message::DeviceDown { to, .. } => Some(to),
            Message::Deliver { .. } | Message::Refresh { .. } => None,
        }
    }
}

/// A call another node holds, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub owner: String,
    pub info: CallInfo,
    pub caller: UserKey,
    pub callee: UserKey,
    /// Unix ms after which the entry is dropped: [`LAPSE_MS`] after the owner's last word while
    /// live, the ended linger once ended.
    pub until_ms: u64,
}

/// Other nodes' calls, learned from their messages.
#[derive(Debug, Default)]
pub struct RegionTable {
    calls: HashMap<CallId, Known>,
}

impl RegionTable {
    /// Records what `owner` says of a call now; `linger_ms` is how long an ended call is kept
    /// (late actions get `call_ended` from the owner). Returns whether the call is new here.
    pub fn learn(&mut self, owner: &str, info: CallInfo, now_ms: u64, linger_ms: u64) -> bool {
        let Some(id) = CallId::parse(&info.id) else { return false };
        let until_ms = now_ms.saturating_add(if info.ended { linger_ms } else { LAPSE_MS });
        if let Some(known) = self.calls.get_mut(&id) {
            if known.info.ended && !info.ended {
                // A late refresh crossing the end: the end stands.
                return false;
            }
            if !(known.info.ended && info.ended) {
                known.until_ms = until_ms;
            }
            known.info = info;
            return false;
        }
        let caller = UserKey::new(&info.tenant, &info.caller);
        let callee = UserKey::new(&info.tenant, &info.callee);
        self.calls.insert(id, Known { owner: owner.to_owned(), info, caller, callee, until_ms });
        true
    }

    /// The node holding call `id`, if known here (also for a while after it ended).
    pub fn owner(&self, id: CallId) -> Option<&str> {
        self.calls.get(&id).map(|known| known.owner.as_str())
    }

    /// Whether `user` is in an answered call held by another node.
    pub fn in_answered_call(&self, user: &UserKey) -> bool {
        self.calls.values().any(|k| k.info.answered && !k.info.ended && (k.caller == *user || k.callee == *user))
    }

    /// The live calls of `user` held elsewhere: (id, owner).
    pub fn live_calls_of(&self, user: &UserKey) -> Vec<(String, String)> {
        self.calls
            .values()
            .filter(|k| !k.info.ended && (k.caller == *user || k.callee == *user))
            .map(|k| (k.info.id.clone(), k.owner.clone()))
            .collect()
    }

    /// Drops entries whose time passed; returns the live calls among them (their owner went
    /// silent), whose devices here must be told the call ended.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Known> {
        let lapsed: Vec<CallId> = self.calls.iter().filter(|(_, k)| k.until_ms <= now_ms).map(|(id, _)| *id).collect();
        lapsed.into_iter().filter_map(|id| self.calls.remove(&id)).filter(|k| !k.info.ended).collect()
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "00000000000000a1";

    fn info(answered: bool, ended: bool) -> CallInfo {
        CallInfo {
            id: ID.into(),
            tenant: "acme".into(),
            caller: "alice".into(),
            callee: "bob".into(),
            media: CallMedia::Audio,
            answered,
            ended,
        }
    }

    #[test]
    fn a_call_is_known_by_its_owner_and_counts_for_busy_while_answered() {
        let mut t = RegionTable::default();
        assert!(t.learn("a", info(false, false), 0, 60_000));
        assert!(!t.learn("a", info(false, false), 10, 60_000), "seen before");
        let bob = UserKey::new("acme", "bob");
        assert_eq!(t.owner(CallId(0xa1)), Some("a"));
        assert!(!t.in_answered_call(&bob), "ringing is not busy");
        t.learn("a", info(true, false), 20, 60_000);
        assert!(t.in_answered_call(&bob) && t.in_answered_call(&UserKey::new("acme", "alice")));
        assert!(!t.in_answered_call(&UserKey::new("other", "bob")), "tenants apart");
        assert_eq!(t.live_calls_of(&bob), vec![(ID.to_owned(), "a".to_owned())]);
        t.learn("a", info(true, true), 30, 60_000);
        assert!(!t.in_answered_call(&bob) && t.live_calls_of(&bob).is_empty());
        assert_eq!(t.owner(CallId(0xa1)), Some("a"), "kept for late actions");
        assert!(!t.learn("a", info(true, false), 40, 60_000), "a stale refresh does not revive it");
        assert!(t.live_calls_of(&bob).is_empty());
        assert_eq!(t.expire(30 + 60_000), vec![], "an ended call just goes");
        assert!(t.is_empty());
    }

    #[test]
    fn a_live_call_lapses_without_news_from_its_owner() {
        let mut t = RegionTable::default();
        t.learn("a", info(true, false), 0, 60_000);
        t.learn("a", info(true, false), 1_000, 60_000);
        assert_eq!(t.expire(LAPSE_MS), vec![], "refreshed at 1 s");
        let lapsed = t.expire(1_000 + LAPSE_MS);
        assert_eq!(lapsed.len(), 1);
        assert_eq!((lapsed[0].owner.as_str(), lapsed[0].info.id.as_str()), ("a", ID));
        assert!(t.is_empty());
    }

    #[test]
    fn bad_ids_are_ignored_and_device_ids_carry_their_node() {
        let mut t = RegionTable::default();
        assert!(!t.learn("a", CallInfo { id: "nope".into(), ..info(false, false) }, 0, 1));
        assert!(t.is_empty());
        let (a, b) = (node_tag("0123456789abcdef"), node_tag("fedcba9876543210"));
        assert_ne!(a, b);
        assert_ne!(device_id(a, 7), device_id(b, 7));
        assert!(is_local(a, device_id(a, 7)) && !is_local(b, device_id(a, 7)));
        assert_eq!(device_id(0, 7), 7, "a single node keeps connection ids");
    }

    #[test]
    fn messages_round_trip_as_json() {
        let m = Message::Act {
            to: "a".into(),
            token: 3,
            user: User { tenant: "acme".into(), user: "bob".into() },
            device: 9,
            call: ID.into(),
            action: CallAction::Answer {},
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
        assert_eq!(m.to(), Some("a"));
        assert!(serde_json::from_str::<Message>(r#"{"t":"bogus"}"#).is_err());
    }
}
