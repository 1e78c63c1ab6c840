//! Where sessions live between restarts: three tables in the relay's redb file, next to the
//! room history and the call history (or in an in-memory redb for `store.engine = "memory"`):
//!
//! - `session_meta`: `tenant \0 id` → the session's [`Meta`] (JSON)
//! - `session_patches`: `(tenant \0 id, version)` → the applied patch ([`SessionPatch`], JSON)
//! - `session_snapshots`: `(tenant \0 id, version)` → the document at that version (JSON text)
//! - `session_ids`: `tenant \0 id \0 user` → the user's latest patch ids and versions (dedupe)
//!
//! Only the latest snapshot is kept, and the patches after it plus `keep_patches` before it (so
//! a device that says its version gets just what it missed). Why tables of their own rather than
//! a room log: sessions expire by their own rule (nobody joined for `expire_after_secs`), not by
//! room retention, and a snapshot replaces history instead of trailing it.

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::machine::{Meta, Write};
use crate::hub::RoomKey;
use crate::proto::{Payload, RoomName, SessionPatch, SessionSnapshot};
use crate::store::{EmbeddedHistory, SideDb, StoreError, room_bytes};

type VersionKey = (&'static [u8], u64);

const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("session_meta");
const PATCHES: TableDefinition<VersionKey, &[u8]> = TableDefinition::new("session_patches");
const SNAPSHOTS: TableDefinition<VersionKey, &[u8]> = TableDefinition::new("session_snapshots");
const IDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("session_ids");

/// The `session_ids` key of a user: the session's key, a zero byte, the user.
fn ids_key(session: &[u8], user: &str) -> Vec<u8> {
    let mut k = session.to_vec();
    k.push(0);
    k.extend_from_slice(user.as_bytes());
    k
}

/// The `session_ids` keys of every user of a session.
fn ids_range(session: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut from, mut to) = (session.to_vec(), session.to_vec());
    from.push(0);
    to.push(1);
    (from, to)
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(e)
}

fn corrupt(table: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { table, detail: e.to_string() }
}

/// One change to commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Write(Write),
    /// The session and everything stored about it.
    Delete,
}

/// A stored session, as [`super::CollabSession::restore`] takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub meta: Meta,
    pub snapshot: SessionSnapshot,
    /// Kept patches up to the snapshot's version.
    pub earlier: Vec<SessionPatch>,
    /// Patches after the snapshot, in order.
    pub after: Vec<SessionPatch>,
    /// Each user's latest patch ids and versions.
    pub ids: std::collections::HashMap<String, Vec<(String, u64)>>,
}

pub struct SessionStore {
    backing: SideDb,
    /// Patches kept before the latest snapshot.
    keep: u64,
}

impl SessionStore {
    /// The session tables in the relay's redb file (added if they are not there yet).
    pub fn embedded(history: Arc<EmbeddedHistory>, keep: u64) -> Result<SessionStore, StoreError> {
        SessionStore::init(SessionStore { backing: SideDb::File(history), keep })
    }

    /// The session tables in memory (lost on restart).
    pub fn memory(keep: u64) -> Result<SessionStore, StoreError> {
        SessionStore::init(SessionStore { backing: SideDb::memory()?, keep })
    }

    fn init(store: SessionStore) -> Result<SessionStore, StoreError> {
        let txn = store.db().begin_write().map_err(err)?;
        txn.open_table(META).map_err(err)?;
        txn.open_table(PATCHES).map_err(err)?;
        txn.open_table(SNAPSHOTS).map_err(err)?;
        txn.open_table(IDS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(store)
    }

    fn db(&self) -> &Database {
        self.backing.db()
    }

    /// Commits the changes, in order, in one durable transaction.
    pub fn commit(&self, batch: &[(RoomKey, Op)]) -> Result<(), StoreError> {
        let txn = self.db().begin_write().map_err(err)?;
        {
            let mut meta = txn.open_table(META).map_err(err)?;
            let mut patches = txn.open_table(PATCHES).map_err(err)?;
            let mut snapshots = txn.open_table(SNAPSHOTS).map_err(err)?;
            let mut ids = txn.open_table(IDS).map_err(err)?;
            for (key, op) in batch {
                let k = room_bytes(key);
                let k = k.as_slice();
                match op {
                    Op::Write(Write::Meta(m)) => {
                        meta.insert(k, serde_json::to_vec(m).map_err(err)?.as_slice()).map_err(err)?;
                    }
                    Op::Write(Write::Patch(p)) => {
                        patches.insert((k, p.version), serde_json::to_vec(p).map_err(err)?.as_slice()).map_err(err)?;
                    }
                    Op::Write(Write::Ids { user, ids: list }) => {
                        let value = serde_json::to_vec(list).map_err(err)?;
                        ids.insert(ids_key(k, user).as_slice(), value.as_slice()).map_err(err)?;
                    }
                    Op::Write(Write::Snapshot(s)) => {
                        snapshots.insert((k, s.version), &*s.doc.0).map_err(err)?;
                        snapshots.retain_in((k, 0)..(k, s.version), |_, _| false).map_err(err)?;
                        let drop_to = s.version.saturating_sub(self.keep);
                        patches.retain_in((k, 0)..=(k, drop_to), |_, _| false).map_err(err)?;
                    }
                    Op::Delete => {
                        meta.remove(k).map_err(err)?;
                        patches.retain_in((k, 0)..=(k, u64::MAX), |_, _| false).map_err(err)?;
                        snapshots.retain_in((k, 0)..=(k, u64::MAX), |_, _| false).map_err(err)?;
                        let (from, to) = ids_range(k);
                        ids.retain_in(from.as_slice()..to.as_slice(), |_, _| false).map_err(err)?;
                    }
                }
            }
        }
        txn.commit().map_err(err)
    }

    /// The stored session, `None` if there is none.
    pub fn load(&self, key: &RoomKey) -> Result<Option<Stored>, StoreError> {
        let k = room_bytes(key);
        let k = k.as_slice();
        let txn = self.db().begin_read().map_err(err)?;
        let Some(meta) = txn.open_table(META).map_err(err)?.get(k).map_err(err)? else { return Ok(None) };
        let meta: Meta = serde_json::from_slice(meta.value()).map_err(|e| corrupt("session_meta", e))?;
        let snapshots = txn.open_table(SNAPSHOTS).map_err(err)?;
        let Some(last) = snapshots.range((k, 0)..=(k, u64::MAX)).map_err(err)?.next_back() else {
            return Err(corrupt("session_snapshots", "a session without a snapshot"));
        };
        let (version, doc) = last.map_err(err)?;
        let snapshot = SessionSnapshot { version: version.value().1, doc: Payload::from(doc.value().to_vec()) };
        let all = read_patches(&txn.open_table(PATCHES).map_err(err)?, k, 0, usize::MAX)?;
        let (earlier, after) = all.into_iter().partition(|p| p.version <= snapshot.version);
        let mut ids = std::collections::HashMap::new();
        let (from, to) = ids_range(k);
        for entry in txn.open_table(IDS).map_err(err)?.range(from.as_slice()..to.as_slice()).map_err(err)? {
            let (user, list) = entry.map_err(err)?;
            let user = String::from_utf8_lossy(&user.value()[from.len()..]).into_owned();
            ids.insert(user, serde_json::from_slice(list.value()).map_err(|e| corrupt("session_ids", e))?);
        }
        Ok(Some(Stored { meta, snapshot, earlier, after, ids }))
    }

    /// Up to `limit` stored patches after version `after`, in order.
    pub fn patches_after(&self, key: &RoomKey, after: u64, limit: usize) -> Result<Vec<SessionPatch>, StoreError> {
        let k = room_bytes(key);
        let txn = self.db().begin_read().map_err(err)?;
        read_patches(&txn.open_table(PATCHES).map_err(err)?, &k, after, limit)
    }

    /// The stored sessions whose last join or leave was before `before_ms`.
    pub fn idle(&self, before_ms: u64) -> Result<Vec<RoomKey>, StoreError> {
        let txn = self.db().begin_read().map_err(err)?;
        let meta = txn.open_table(META).map_err(err)?;
        let mut out = Vec::new();
        for entry in meta.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            let Ok(m) = serde_json::from_slice::<Meta>(v.value()) else { continue };
            if m.last_active_ms >= before_ms {
                continue;
            }
            let key = k.value();
            let Some(split) = key.iter().position(|b| *b == 0) else { continue };
            let (Ok(tenant), Ok(id)) = (std::str::from_utf8(&key[..split]), std::str::from_utf8(&key[split + 1..]))
            else {
                continue;
            };
            if let Ok(room) = RoomName::parse(id) {
                out.push(RoomKey { tenant: tenant.into(), room });
            }
        }
        Ok(out)
    }
}

fn read_patches(
    table: &impl ReadableTable<VersionKey, &'static [u8]>,
    k: &[u8],
    after: u64,
    limit: usize,
) -> Result<Vec<SessionPatch>, StoreError> {
    let Some(from) = after.checked_add(1) else { return Ok(Vec::new()) };
    table
        .range((k, from)..=(k, u64::MAX))
        .map_err(err)?
        .take(limit)
        .map(|entry| {
            let (_, v) = entry.map_err(err)?;
            serde_json::from_slice(v.value()).map_err(|e| corrupt("session_patches", e))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::proto::{SessionRole, SessionStatus};

    fn key(id: &str) -> RoomKey {
        RoomKey { tenant: "acme".into(), room: RoomName::parse(id).unwrap() }
    }

    /// A stored session's meta, for tests of either store.
    pub(crate) fn meta(last_active_ms: u64) -> Meta {
        Meta {
            owner: "alice".into(),
            roles: BTreeMap::new(),
            default_role: SessionRole::Editor,
            status: SessionStatus::Open,
            max_bytes: 1000,
            created_ms: 0,
            last_active_ms,
            schema: None,
            kind: Default::default(),
        }
    }

    fn patch(version: u64) -> Op {
        Op::Write(Write::Patch(SessionPatch {
            version,
            user: "bob".into(),
            id: format!("p{version}"),
            patch: Payload::from("[]"),
            time: version,
        }))
    }

    fn snapshot(version: u64, doc: &str) -> Op {
        Op::Write(Write::Snapshot(SessionSnapshot { version, doc: Payload::from(doc) }))
    }

    #[test]
    fn load_is_the_latest_snapshot_with_the_kept_and_later_patches() {
        let store = SessionStore::memory(2).unwrap();
        let (a, b) = (key("doc:a"), key("doc:b"));
        assert_eq!(store.load(&a).unwrap(), None);
        let mut batch = vec![(a.clone(), Op::Write(Write::Meta(meta(5)))), (a.clone(), snapshot(0, "{}"))];
        batch.extend((1..=6).map(|v| (a.clone(), patch(v))));
        batch.push((a.clone(), snapshot(5, r#"{"v":5}"#)));
        batch.extend([(b.clone(), Op::Write(Write::Meta(meta(50)))), (b.clone(), snapshot(0, "[]"))]);
        store.commit(&batch).unwrap();
        let stored = store.load(&a).unwrap().unwrap();
        assert_eq!(stored.snapshot, SessionSnapshot { version: 5, doc: Payload::from(r#"{"v":5}"#) });
        let versions = |ps: &[SessionPatch]| ps.iter().map(|p| p.version).collect::<Vec<_>>();
        assert_eq!(versions(&stored.earlier), vec![4, 5], "keep_patches before the snapshot");
        assert_eq!(versions(&stored.after), vec![6]);
        assert_eq!(versions(&store.patches_after(&a, 4, 10).unwrap()), vec![5, 6]);
        assert_eq!(store.idle(10).unwrap(), vec![a.clone()], "last active before 10");
        let ids = vec![("p6".to_string(), 6)];
        store.commit(&[(a.clone(), Op::Write(Write::Ids { user: "bob".into(), ids: ids.clone() }))]).unwrap();
        assert_eq!(store.load(&a).unwrap().unwrap().ids, [("bob".to_string(), ids)].into());
        store.commit(&[(a.clone(), Op::Delete)]).unwrap();
        assert_eq!(store.load(&a).unwrap(), None);
        assert!(store.patches_after(&a, 0, 10).unwrap().is_empty());
        assert_eq!(store.load(&b).unwrap().map(|s| s.snapshot.version), Some(0), "others untouched");
    }
}
