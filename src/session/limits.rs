//! Per-connection and per-user limits, as plain values with time passed in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use crate::rate::TokenBucket;

type UserKey = (Arc<str>, Arc<str>);

/// Counts open connections per `(tenant, user)` to enforce `limits.max_connections_per_user`.
#[derive(Default)]
pub struct UserConnections {
    counts: Mutex<HashMap<UserKey, u32>>,
}

/// One counted connection; dropping it gives the slot back.
pub struct ConnectionSlot {
    owner: Arc<UserConnections>,
    key: UserKey,
}

impl UserConnections {
    /// Counts a connection for the user, unless they already hold `max`.
    pub fn acquire(self: &Arc<Self>, tenant: &str, user: &str, max: u32) -> Option<ConnectionSlot> {
        let key: UserKey = (tenant.into(), user.into());
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot { owner: self.clone(), key })
    }

    #[cfg(test)]
    fn count(&self, tenant: &str, user: &str) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&(Arc::from(tenant), Arc::from(user))).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::new(10, 3, 0);
        assert!(b.try_take(0) && b.try_take(0) && b.try_take(0));
        assert!(!b.try_take(0));
        assert!(!b.try_take(50));
        assert!(b.try_take(100));
        assert!(!b.try_take(100));
        // Refill never exceeds the burst.
        assert!((0..3).all(|_| b.try_take(10_000)));
        assert!(!b.try_take(10_000));
    }

    #[test]
    fn user_connections_are_capped_and_released() {
        let users = Arc::new(UserConnections::default());
        let a = users.acquire("acme", "alice", 2).unwrap();
        let _b = users.acquire("acme", "alice", 2).unwrap();
        assert!(users.acquire("acme", "alice", 2).is_none());
        assert!(users.acquire("globex", "alice", 2).is_some());
        drop(a);
        assert_eq!(users.count("acme", "alice"), 1);
        assert!(users.acquire("acme", "alice", 2).is_some());
    }
}
