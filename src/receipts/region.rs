//! What one node of a Redis region tells the others after a receipts write is durable, so their
//! caches and their synced devices follow at once: a mark moved (a read, a delivery, a follow),
//! a member left, a user was mentioned, a user changed whether they share reads. Each is a
//! JSON line on the engine's receipts channel (`Engine::share_receipts`).
//!
//! Pub/sub is at most once: a lost change is never wrong for long. Marks only move forward and
//! the store keeps the highest, so a receiver merges (never overwrites back); a node's cached
//! room is dropped once nobody here needs it and reloaded from Redis on next use, and every
//! `sync` reads the user's marks and mentions from Redis.

use serde::{Deserialize, Serialize};

use super::store::{Mark, Op};
use crate::hub::RoomKey;
use crate::hub::presence::UserKey;
use crate::proto::RoomName;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Mark { tenant: String, room: String, user: String, epoch: u64, read: u64, delivered: u64 },
    Unfollow { tenant: String, room: String, user: String },
    Mention { tenant: String, room: String, user: String, offset: u64 },
    Prefs { tenant: String, user: String, share_read: bool },
}

impl Change {
    /// The change another node needs for a committed op (mentions read travel with the mark).
    pub fn of(op: &Op) -> Option<Change> {
        let room_of = |key: &RoomKey| (key.tenant.to_string(), key.room.to_string());
        Some(match op {
            Op::Mark { room, user, mark } => {
                let (tenant, room) = room_of(room);
                Change::Mark {
                    tenant,
                    room,
                    user: user.clone(),
                    epoch: mark.epoch,
                    read: mark.read,
                    delivered: mark.delivered,
                }
            }
            Op::Unfollow { room, user } => {
                let (tenant, room) = room_of(room);
                Change::Unfollow { tenant, room, user: user.clone() }
            }
            Op::Mention { room, user, offset } => {
                let (tenant, room) = room_of(room);
                Change::Mention { tenant, room, user: user.clone(), offset: *offset }
            }
            Op::MentionsRead { .. } => return None,
            Op::Prefs { user, share_read } => {
                Change::Prefs { tenant: user.tenant.to_string(), user: user.user.to_string(), share_read: *share_read }
            }
        })
    }

    /// The room (if any) and user the change is about; `None` for a bad room name.
    pub fn subject(&self) -> Option<(Option<RoomKey>, UserKey)> {
        let key =
            |tenant: &str, room: &str| RoomName::parse(room).ok().map(|room| RoomKey { tenant: tenant.into(), room });
        let user = |tenant: &str, user: &str| UserKey { tenant: tenant.into(), user: user.into() };
        Some(match self {
            Change::Mark { tenant, room, user: u, .. }
            | Change::Unfollow { tenant, room, user: u }
            | Change::Mention { tenant, room, user: u, .. } => (Some(key(tenant, room)?), user(tenant, u)),
            Change::Prefs { tenant, user: u, .. } => (None, user(tenant, u)),
        })
    }

    pub fn mark(&self) -> Option<Mark> {
        match self {
            Change::Mark { epoch, read, delivered, .. } => {
                Some(Mark { epoch: *epoch, read: *read, delivered: *delivered })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_travel_as_json_and_come_back_as_the_same_subject() {
        let room = RoomKey { tenant: "acme".into(), room: RoomName::parse("chat:a").unwrap() };
        let mark = Mark { epoch: 3, read: 5, delivered: 7 };
        let change = Change::of(&Op::Mark { room: room.clone(), user: "bob".into(), mark }).unwrap();
        let back: Change = serde_json::from_str(&serde_json::to_string(&change).unwrap()).unwrap();
        assert_eq!(back, change);
        let (key, user) = back.subject().unwrap();
        assert_eq!((key, &*user.user), (Some(room.clone()), "bob"));
        assert_eq!(back.mark(), Some(mark));
        assert!(Change::of(&Op::MentionsRead { room, user: "bob".into(), upto: 1 }).is_none());
        let bad = Change::Unfollow { tenant: "acme".into(), room: "".into(), user: "bob".into() };
        assert!(bad.subject().is_none());
    }
}
