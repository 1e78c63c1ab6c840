//! What one node of a Redis region tells the others about a user's feed, so that their
//! devices there follow at once: a notification added, a read, a preference change. Each is a
//! JSON line on the engine's notifications channel (`Engine::share_notifications`), sent after
//! the change is in Redis; the receiving node sends the same `notifications` frame to the user's
//! listening connections it holds.
//!
//! Pub/sub is at most once: a lost event leaves a device behind until its next `feed` page
//! (which reads Redis) or the next event, which carries the current unread count.

use serde::{Deserialize, Serialize};

use crate::hub::presence::UserKey;
use crate::proto::NotifyEvent;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    pub tenant: String,
    pub user: String,
    pub event: NotifyEvent,
}

impl Shared {
    pub fn new(user: &UserKey, event: NotifyEvent) -> Shared {
        Shared { tenant: user.tenant.to_string(), user: user.user.to_string(), event }
    }

    pub fn user(&self) -> UserKey {
        UserKey { tenant: self.tenant.as_str().into(), user: self.user.as_str().into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_travel_as_json_lines() {
        let user = UserKey { tenant: "acme".into(), user: "alice".into() };
        let shared = Shared::new(&user, NotifyEvent::Read { id: 3, up_to: true, unread: 1 });
        let line = serde_json::to_string(&shared).unwrap();
        assert!(!line.contains('\n'));
        let back: Shared = serde_json::from_str(&line).unwrap();
        assert_eq!((back.user(), back.event.clone()), (user, shared.event));
    }
}
