//! What the relay remembers about a user while they are away: when they were last seen and
//! their privacy setting. Behind a small trait so the embedded store (`src/store/`) can back it;
//! until then [`FileRecords`] keeps a JSON file in the data directory, written atomically
//! (temporary file + rename) when something changed, on the presence tick and at shutdown. A
//! crash loses at most the changes of the last tick.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

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
pub enum RecordsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a user record file: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
}

/// Where user records live.
pub trait UserRecords: Send + Sync {
    fn get(&self, user: &UserKey) -> Option<UserRecord>;
    fn put(&self, user: &UserKey, record: UserRecord);
    /// Makes what was put durable (a no-op for stores that write through).
    fn flush(&self) -> Result<(), RecordsError>;
}

/// Records in memory only (tests, and the base of [`FileRecords`]).
#[derive(Default)]
pub struct MemoryRecords {
    records: Mutex<HashMap<(String, String), UserRecord>>,
}

impl MemoryRecords {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), UserRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(user: &UserKey) -> (String, String) {
    (user.tenant.to_string(), user.user.to_string())
}

impl UserRecords for MemoryRecords {
    fn get(&self, user: &UserKey) -> Option<UserRecord> {
        self.lock().get(&key(user)).copied()
    }

    fn put(&self, user: &UserKey, record: UserRecord) {
        self.lock().insert(key(user), record);
    }

    fn flush(&self) -> Result<(), RecordsError> {
        Ok(())
    }
}

/// One line of the file: tenant, user and the record.
#[derive(Serialize, Deserialize)]
struct Line {
    tenant: String,
    user: String,
    #[serde(flatten)]
    record: UserRecord,
}

/// Records in memory, saved to a JSON file.
pub struct FileRecords {
    path: PathBuf,
    memory: MemoryRecords,
    dirty: Mutex<bool>,
}

impl FileRecords {
    /// Loads `path` if it exists.
    pub fn open(path: PathBuf) -> Result<FileRecords, RecordsError> {
        let memory = MemoryRecords::default();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let lines: Vec<Line> = serde_json::from_slice(&bytes)
                    .map_err(|source| RecordsError::Format { path: path.clone(), source })?;
                let mut records = memory.lock();
                for line in lines {
                    records.insert((line.tenant, line.user), line.record);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RecordsError::Io { path, source }),
        }
        Ok(FileRecords { path, memory, dirty: Mutex::new(false) })
    }
}

impl UserRecords for FileRecords {
    fn get(&self, user: &UserKey) -> Option<UserRecord> {
        self.memory.get(user)
    }

    fn put(&self, user: &UserKey, record: UserRecord) {
        self.memory.put(user, record);
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    fn flush(&self) -> Result<(), RecordsError> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if !*dirty {
            return Ok(());
        }
        let mut lines: Vec<Line> = self
            .memory
            .lock()
            .iter()
            .map(|((tenant, user), record)| Line { tenant: tenant.clone(), user: user.clone(), record: *record })
            .collect();
        lines.sort_by(|a, b| (&a.tenant, &a.user).cmp(&(&b.tenant, &b.user)));
        let bytes =
            serde_json::to_vec(&lines).map_err(|source| RecordsError::Format { path: self.path.clone(), source })?;
        let tmp = self.path.with_extension("tmp");
        let io = |source| RecordsError::Io { path: self.path.clone(), source };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        *dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let alice = UserKey::new("acme", "alice");
        let other = UserKey::new("globex", "alice");
        let records = FileRecords::open(path.clone()).unwrap();
        assert_eq!(records.get(&alice), None);
        let record = UserRecord { last_seen: 1_234, hide_presence: false, hide_typing: true };
        records.put(&alice, record);
        records.flush().unwrap();
        let reopened = FileRecords::open(path).unwrap();
        assert_eq!(reopened.get(&alice), Some(record));
        assert_eq!(reopened.get(&other), None, "records are per tenant");
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        std::fs::write(&path, b"{oops").unwrap();
        let err = FileRecords::open(path).err().unwrap();
        assert!(err.to_string().contains("users.json"), "{err}");
    }
}
