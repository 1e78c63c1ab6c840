//! Live cursors of one session: at most one delivery per user per interval, the latest wins.
//!
//! A cursor that arrives within the interval after the user's last delivered one is held (a
//! newer one replaces it) and goes out when the interval has passed ([`Cursors::due`], called by
//! the service's tick), so the last position always arrives and the rate stays bounded however
//! fast a client sends. Pure: `now_ms` is passed in.

use std::collections::HashMap;

use crate::proto::Payload;

#[derive(Debug, Default)]
struct UserCursor {
    last_sent_ms: Option<u64>,
    held: Option<Payload>,
}

#[derive(Debug)]
pub struct Cursors {
    interval_ms: u64,
    users: HashMap<String, UserCursor>,
}

impl Cursors {
    /// At most `rate` deliveries per second per user.
    pub fn new(rate: u32) -> Cursors {
        Cursors { interval_ms: 1000 / u64::from(rate.max(1)), users: HashMap::new() }
    }

    /// A user's new cursor: `Some` to deliver now, `None` when it is held for later.
    pub fn update(&mut self, user: &str, data: Payload, now_ms: u64) -> Option<Payload> {
        let entry = self.users.entry(user.to_owned()).or_default();
        match entry.last_sent_ms {
            Some(last) if now_ms < last + self.interval_ms => {
                entry.held = Some(data);
                None
            }
            _ => {
                entry.last_sent_ms = Some(now_ms);
                entry.held = None;
                Some(data)
            }
        }
    }

    /// The held cursors whose interval has passed, to deliver now.
    pub fn due(&mut self, now_ms: u64) -> Vec<(String, Payload)> {
        let interval = self.interval_ms;
        let mut out = Vec::new();
        for (user, c) in &mut self.users {
            if c.held.is_some() && c.last_sent_ms.is_none_or(|last| now_ms >= last + interval) {
                c.last_sent_ms = Some(now_ms);
                out.extend(c.held.take().map(|data| (user.clone(), data)));
            }
        }
        out
    }

    /// Whether any cursor is held.
    pub fn pending(&self) -> bool {
        self.users.values().any(|c| c.held.is_some())
    }

    /// The user left: their cursor is gone.
    pub fn remove(&mut self, user: &str) {
        self.users.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_delivery_per_interval_and_the_latest_wins() {
        let mut c = Cursors::new(10);
        assert_eq!(c.update("a", Payload::from("1"), 1000), Some(Payload::from("1")));
        assert_eq!(c.update("a", Payload::from("2"), 1010), None);
        assert_eq!(c.update("a", Payload::from("3"), 1050), None);
        assert_eq!(c.update("b", Payload::from("x"), 1050), Some(Payload::from("x")), "per user");
        assert!(c.due(1099).is_empty(), "not yet");
        assert_eq!(c.due(1100), vec![("a".to_string(), Payload::from("3"))], "the latest, once");
        assert!(c.due(1300).is_empty());
        assert!(!c.pending());
        assert_eq!(c.update("a", Payload::from("4"), 1150), None, "within the interval of the held one sent");
        assert_eq!(c.due(1200).len(), 1);
    }

    #[test]
    fn a_user_who_left_has_nothing_held() {
        let mut c = Cursors::new(5);
        c.update("a", Payload::from("1"), 0);
        c.update("a", Payload::from("2"), 10);
        c.remove("a");
        assert!(c.due(10_000).is_empty());
        assert_eq!(c.update("a", Payload::from("3"), 20), Some(Payload::from("3")), "a fresh start");
    }
}
