//! What the relay remembers about a user while they are away: when they were last seen and
//! their privacy setting.
//!
//! Presence reads a record when a user's first device connects and writes one when their last
//! device leaves (or the setting changes). Writes must not block the connection that triggers
//! them, so [`StoredRecords`] keeps records in memory and writes the changed ones to a
//! [`RecordStore`] (the embedded redb store, `users` table) in one commit on the presence tick
//! and at shutdown, off the async threads. A crash loses at most the changes of the last tick.
//! With the memory store engine, [`MemoryRecords`] keeps them for the process's life only.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::lock;
use super::presence::UserKey;

/// One user's remembered state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Unix ms the user was last seen online; 0 when never.
    pub last_seen: u64,
    pub hide_presence: bool,
    pub hide_typing: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("user records: {0}")]
pub struct RecordsError(pub String);

/// Where user records live, as presence uses them.
pub trait UserRecords: Send + Sync {
    fn get(&self, user: &UserKey) -> Option<UserRecord>;
    fn put(&self, user: &UserKey, record: UserRecord);
    /// Makes what was put durable (a no-op for stores that keep nothing). Blocking.
    fn flush(&self) -> Result<(), RecordsError>;
}

/// A durable table of user records (blocking calls).
pub trait RecordStore: Send + Sync {
    fn load(&self, user: &UserKey) -> Result<Option<UserRecord>, RecordsError>;
    /// Saves all of them in one durable commit.
    fn save(&self, records: &[(UserKey, UserRecord)]) -> Result<(), RecordsError>;
}

/// Records in memory only (the memory store engine, tests).
#[derive(Default)]
pub struct MemoryRecords {
    records: Mutex<HashMap<UserKey, UserRecord>>,
}

impl UserRecords for MemoryRecords {
    fn get(&self, user: &UserKey) -> Option<UserRecord> {
        lock(&self.records).get(user).copied()
    }

    fn put(&self, user: &UserKey, record: UserRecord) {
        lock(&self.records).insert(user.clone(), record);
    }

    fn flush(&self) -> Result<(), RecordsError> {
        Ok(())
    }
}

/// Records cached in memory and written to a [`RecordStore`] in batches.
pub struct StoredRecords {
    store: Arc<dyn RecordStore>,
    cache: MemoryRecords,
    dirty: Mutex<HashSet<UserKey>>,
}

impl StoredRecords {
    pub fn new(store: Arc<dyn RecordStore>) -> Self {
        StoredRecords { store, cache: MemoryRecords::default(), dirty: Mutex::new(HashSet::new()) }
    }
}

impl UserRecords for StoredRecords {
    fn get(&self, user: &UserKey) -> Option<UserRecord> {
        if let Some(record) = self.cache.get(user) {
            return Some(record);
        }
        // A read of one key (redb: memory-mapped, no lock against the writer).
        let record = match self.store.load(user) {
            Ok(record) => record?,
            Err(err) => {
                tracing::warn!(%err, "reading a user record failed");
                return None;
            }
        };
        self.cache.put(user, record);
        Some(record)
    }

    fn put(&self, user: &UserKey, record: UserRecord) {
        self.cache.put(user, record);
        lock(&self.dirty).insert(user.clone());
    }

    fn flush(&self) -> Result<(), RecordsError> {
        let dirty: Vec<UserKey> = lock(&self.dirty).drain().collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let batch: Vec<(UserKey, UserRecord)> =
            dirty.iter().filter_map(|u| self.cache.get(u).map(|r| (u.clone(), r))).collect();
        let result = self.store.save(&batch);
        if result.is_err() {
            // Try again on the next flush.
            lock(&self.dirty).extend(dirty);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedHistory;

    #[test]
    fn records_survive_reopening_the_store_and_are_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.redb");
        let alice = UserKey::new("acme", "alice");
        let other = UserKey::new("globex", "alice");
        let record = UserRecord { last_seen: 1_234, hide_presence: false, hide_typing: true };
        {
            let (store, _) = EmbeddedHistory::open(&path).unwrap();
            let records = StoredRecords::new(Arc::new(store));
            assert_eq!(records.get(&alice), None);
            records.put(&alice, record);
            assert_eq!(records.get(&alice), Some(record), "visible before the flush");
            records.flush().unwrap();
        }
        let (store, _) = EmbeddedHistory::open(&path).unwrap();
        let reopened = StoredRecords::new(Arc::new(store));
        assert_eq!(reopened.get(&alice), Some(record));
        assert_eq!(reopened.get(&other), None, "records are per tenant");
    }
}
