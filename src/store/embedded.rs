//! History in an embedded redb file: the default engine's store.
//!
//! Tables (keys sort big-endian, so a room's messages are one contiguous range):
//! - `messages`: `(room, offset)` → record (time, from, id, payload)
//! - `rooms`: `room` → meta `{epoch, first, top}`
//! - `ids`: `(room, from, id)` → offset, for idempotent publish across restarts
//! - `cursors`: `(user, room)` → `{epoch, offset, updated}`, for offline replay
//! - `users`: `user` → presence record `{last_seen, hide_presence, hide_typing}` (postcard)
//! - `calls`, `call_index`, `call_times`: the call history ([`crate::call::history`])
//!
//! - `state`: `"unclean_if_running"` → 1 while a run that delivers before commit is running
//!   ([`History::begin_run`])
//!
//! Every `append` is one write transaction committed with redb's default (immediate, fsync'd)
//! durability. A file redb reports as corrupted is moved aside and a fresh one created: rooms
//! then start new epochs, so clients are told that history was lost rather than shown a gap.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Append, Cursor, ExpireStep, History, Retention, RoomMeta, StoreError, StoredMessage, UserCursors, room_bytes,
    tenant_scoped,
};
use crate::hub::RoomKey;
use crate::hub::last_seen::{RecordStore, RecordsError, UserRecord};
use crate::hub::presence::UserKey;
use crate::proto::{Payload, Position, RoomName};

const MESSAGES: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("messages");
const ROOMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rooms");
const IDS: TableDefinition<(&[u8], &str, &str), u64> = TableDefinition::new("ids");
const CURSORS: TableDefinition<(&[u8], &str), &[u8]> = TableDefinition::new("cursors");
const USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("users");
const STATE: TableDefinition<&str, u64> = TableDefinition::new("state");

/// Present in `state` while a run that delivers before commit is running; found at startup, it
/// says that run did not stop cleanly.
const EARLY_RUN: &str = "unclean_if_running";

pub struct EmbeddedHistory {
    db: Database,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(e)
}

impl EmbeddedHistory {
    /// Opens (or creates) the store at `path`. A corrupted file is renamed to
    /// `<path>.corrupt-<unix ms>` and replaced by an empty one; the returned flag says so.
    pub fn open(path: &Path) -> Result<(EmbeddedHistory, bool), StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let db = match Database::create(path) {
            Ok(db) => return Self::init(db).map(|h| (h, false)),
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail))) => detail,
            Err(e) => return Err(err(e)),
        };
        let aside = path.with_extension(format!("redb.corrupt-{}", crate::connection::unix_ms()));
        tracing::error!(path = %path.display(), aside = %aside.display(), detail = %db,
            "history store is corrupted; moving it aside and starting empty (rooms get new epochs)");
        std::fs::rename(path, &aside).map_err(err)?;
        Self::init(Database::create(path).map_err(err)?).map(|h| (h, true))
    }

    /// The open file, for the other tables that live in it (the call history).
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    fn init(db: Database) -> Result<EmbeddedHistory, StoreError> {
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(MESSAGES).map_err(err)?;
        txn.open_table(ROOMS).map_err(err)?;
        txn.open_table(IDS).map_err(err)?;
        txn.open_table(CURSORS).map_err(err)?;
        txn.open_table(USERS).map_err(err)?;
        txn.open_table(STATE).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(EmbeddedHistory { db })
    }
}

/// A message record: time (8 bytes BE), from and id (u16 BE length + UTF-8 each), payload.
fn encode_record(m: &StoredMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + m.from.len() + m.id.len() + m.data.len());
    out.extend_from_slice(&m.time.to_be_bytes());
    for text in [&m.from, &m.id] {
        out.extend_from_slice(&(text.len() as u16).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&m.data.0);
    out
}

fn decode_record(offset: u64, bytes: &[u8]) -> Result<StoredMessage, StoreError> {
    let corrupt =
        |detail: &str| StoreError::Corrupt { table: "messages", detail: format!("offset {offset}: {detail}") };
    let (time, mut rest) = bytes.split_first_chunk::<8>().ok_or_else(|| corrupt("short record"))?;
    let mut text = || -> Result<String, StoreError> {
        let (len, tail) = rest.split_first_chunk::<2>().ok_or_else(|| corrupt("short record"))?;
        let len = u16::from_be_bytes(*len) as usize;
        let (s, tail) = tail.split_at_checked(len).ok_or_else(|| corrupt("short record"))?;
        rest = tail;
        String::from_utf8(s.to_vec()).map_err(|_| corrupt("text is not UTF-8"))
    };
    let from = text()?;
    let id = text()?;
    Ok(StoredMessage { offset, time: u64::from_be_bytes(*time), from, id, data: Payload(Bytes::copy_from_slice(rest)) })
}

fn decode_meta(bytes: &[u8]) -> Result<RoomMeta, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { table: "rooms", detail: e.to_string() })
}

fn encode_meta(meta: &RoomMeta) -> Vec<u8> {
    postcard::to_allocvec(meta).unwrap_or_default()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCursor {
    epoch: u64,
    offset: u64,
    updated: u64,
}

type Messages<'t> = redb::Table<'t, (&'static [u8], u64), &'static [u8]>;
type Ids<'t> = redb::Table<'t, (&'static [u8], &'static str, &'static str), u64>;

/// Deletes the room's messages with offsets in `range` (and their ids).
fn delete_range(
    messages: &mut Messages<'_>,
    ids: &mut Ids<'_>,
    room: &[u8],
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, StoreError> {
    let doomed: Vec<StoredMessage> = messages
        .range((room, *range.start())..=(room, *range.end()))
        .map_err(err)?
        .map(|entry| {
            let (k, v) = entry.map_err(err)?;
            decode_record(k.value().1, v.value())
        })
        .collect::<Result<_, _>>()?;
    for m in &doomed {
        messages.remove((room, m.offset)).map_err(err)?;
        ids.remove((room, m.from.as_str(), m.id.as_str())).map_err(err)?;
    }
    Ok(doomed.len() as u64)
}

impl History for EmbeddedHistory {
    fn append(&self, batch: &[Append], retention: &Retention) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut messages = txn.open_table(MESSAGES).map_err(err)?;
            let mut rooms = txn.open_table(ROOMS).map_err(err)?;
            let mut ids = txn.open_table(IDS).map_err(err)?;
            let mut metas: HashMap<Vec<u8>, RoomMeta> = HashMap::new();
            for append in batch {
                let room = room_bytes(&append.key);
                let meta = match metas.get(&room) {
                    Some(meta) => *meta,
                    None => match rooms.get(room.as_slice()).map_err(err)? {
                        Some(v) => decode_meta(v.value())?,
                        None => RoomMeta::empty(append.epoch),
                    },
                };
                let mut meta = if meta.epoch == append.epoch {
                    meta
                } else {
                    // A new epoch replaces whatever the room had.
                    delete_range(&mut messages, &mut ids, &room, 0..=u64::MAX)?;
                    RoomMeta::empty(append.epoch)
                };
                let m = &append.message;
                messages.insert((room.as_slice(), m.offset), encode_record(m).as_slice()).map_err(err)?;
                ids.insert((room.as_slice(), m.from.as_str(), m.id.as_str()), m.offset).map_err(err)?;
                meta.top = meta.top.max(m.offset);
                if meta.top.saturating_sub(meta.first) + 1 > retention.max_messages {
                    let last_doomed = meta.top - retention.max_messages;
                    delete_range(&mut messages, &mut ids, &room, meta.first..=last_doomed)?;
                    meta.first = last_doomed + 1;
                }
                metas.insert(room, meta);
            }
            for (room, meta) in &metas {
                rooms.insert(room.as_slice(), encode_meta(meta).as_slice()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)
    }

    fn meta(&self, key: &RoomKey) -> Result<Option<RoomMeta>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let rooms = txn.open_table(ROOMS).map_err(err)?;
        let value = rooms.get(room_bytes(key).as_slice()).map_err(err)?;
        value.map(|v| decode_meta(v.value())).transpose()
    }

    fn read_after(&self, key: &RoomKey, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let messages = txn.open_table(MESSAGES).map_err(err)?;
        let room = room_bytes(key);
        let Some(start) = after.checked_add(1) else { return Ok(Vec::new()) };
        messages
            .range((room.as_slice(), start)..=(room.as_slice(), u64::MAX))
            .map_err(err)?
            .take(limit)
            .map(|entry| {
                let (k, v) = entry.map_err(err)?;
                decode_record(k.value().1, v.value())
            })
            .collect()
    }

    fn read_before(&self, key: &RoomKey, before: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let messages = txn.open_table(MESSAGES).map_err(err)?;
        let room = room_bytes(key);
        let mut out: Vec<StoredMessage> = messages
            .range((room.as_slice(), 0)..(room.as_slice(), before))
            .map_err(err)?
            .rev()
            .take(limit)
            .map(|entry| {
                let (k, v) = entry.map_err(err)?;
                decode_record(k.value().1, v.value())
            })
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn find_id(&self, key: &RoomKey, from: &str, id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let ids = txn.open_table(IDS).map_err(err)?;
        let room = room_bytes(key);
        let Some(offset) = ids.get((room.as_slice(), from, id)).map_err(err)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let messages = txn.open_table(MESSAGES).map_err(err)?;
        let Some(record) = messages.get((room.as_slice(), offset)).map_err(err)? else { return Ok(None) };
        Ok(Some((offset, decode_record(offset, record.value())?.time)))
    }

    fn expire(&self, before_ms: u64, resume: Option<&[u8]>, max_rooms: usize) -> Result<ExpireStep, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let mut step = ExpireStep::default();
        {
            let mut messages = txn.open_table(MESSAGES).map_err(err)?;
            let mut rooms = txn.open_table(ROOMS).map_err(err)?;
            let mut ids = txn.open_table(IDS).map_err(err)?;
            let range = match resume {
                Some(after) => rooms.range::<&[u8]>((Bound::Excluded(after), Bound::Unbounded)),
                None => rooms.range::<&[u8]>(..),
            };
            // One more than asked: whether it exists says if the pass is complete.
            let mut visit: Vec<(Vec<u8>, RoomMeta)> = range
                .map_err(err)?
                .take(max_rooms.max(1) + 1)
                .map(|entry| {
                    let (k, v) = entry.map_err(err)?;
                    Ok((k.value().to_vec(), decode_meta(v.value())?))
                })
                .collect::<Result<_, StoreError>>()?;
            if visit.len() > max_rooms.max(1) {
                visit.pop();
                step.resume = visit.last().map(|(room, _)| room.clone());
            }
            for (room, mut meta) in visit {
                if meta.first > meta.top {
                    continue;
                }
                // Messages are in time order within a room: find the last one that is too old.
                let mut last_old = None;
                for entry in messages.range((room.as_slice(), meta.first)..=(room.as_slice(), meta.top)).map_err(err)? {
                    let (k, v) = entry.map_err(err)?;
                    let offset = k.value().1;
                    if decode_record(offset, v.value())?.time >= before_ms {
                        break;
                    }
                    last_old = Some(offset);
                }
                if let Some(last) = last_old {
                    step.deleted += delete_range(&mut messages, &mut ids, &room, meta.first..=last)?;
                    meta.first = last + 1;
                    rooms.insert(room.as_slice(), encode_meta(&meta).as_slice()).map_err(err)?;
                }
            }
        }
        txn.commit().map_err(err)?;
        Ok(step)
    }

    fn save_cursors(&self, updates: &[UserCursors]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(CURSORS).map_err(err)?;
            for update in updates {
                let who = tenant_scoped(&update.tenant, &update.user);
                for c in &update.cursors {
                    let value = StoredCursor { epoch: c.position.epoch, offset: c.position.offset, updated: c.updated };
                    let value = postcard::to_allocvec(&value).unwrap_or_default();
                    table.insert((who.as_slice(), c.room.as_str()), value.as_slice()).map_err(err)?;
                }
            }
        }
        txn.commit().map_err(err)
    }

    fn forget_cursor(&self, tenant: &str, user: &str, room: &RoomName) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(CURSORS).map_err(err)?;
            table.remove((tenant_scoped(tenant, user).as_slice(), room.as_str())).map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    fn cursors(&self, tenant: &str, user: &str, limit: usize) -> Result<Vec<Cursor>, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(CURSORS).map_err(err)?;
        let who = tenant_scoped(tenant, user);
        let mut out = Vec::new();
        for entry in table.range((who.as_slice(), "")..).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            let (owner, room) = k.value();
            if owner != who.as_slice() {
                break;
            }
            let stored: StoredCursor = postcard::from_bytes(v.value())
                .map_err(|e| StoreError::Corrupt { table: "cursors", detail: e.to_string() })?;
            // Rows written by this relay always hold valid room names; skip any that do not.
            let Ok(room) = RoomName::parse(room) else { continue };
            let position = Position { epoch: stored.epoch, offset: stored.offset };
            out.push(Cursor { room, position, updated: stored.updated });
        }
        out.sort_by(|a, b| b.updated.cmp(&a.updated).then_with(|| a.room.cmp(&b.room)));
        out.truncate(limit);
        Ok(out)
    }

    fn begin_run(&self, deliver_before_commit: bool) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        let mut renewed = 0;
        {
            let mut state = txn.open_table(STATE).map_err(err)?;
            let unclean = state.get(EARLY_RUN).map_err(err)?.is_some();
            if unclean {
                // Offsets past each room's top may have been seen by subscribers: a new epoch
                // per room, same messages and offsets, so those positions are never reused.
                let mut rooms = txn.open_table(ROOMS).map_err(err)?;
                let all: Vec<(Vec<u8>, RoomMeta)> = rooms
                    .iter()
                    .map_err(err)?
                    .map(|entry| {
                        let (k, v) = entry.map_err(err)?;
                        Ok((k.value().to_vec(), decode_meta(v.value())?))
                    })
                    .collect::<Result<_, StoreError>>()?;
                for (room, meta) in all {
                    let meta = RoomMeta { epoch: super::new_epoch(), ..meta };
                    rooms.insert(room.as_slice(), encode_meta(&meta).as_slice()).map_err(err)?;
                    renewed += 1;
                }
            }
            if deliver_before_commit {
                state.insert(EARLY_RUN, 1).map_err(err)?;
            } else if unclean {
                state.remove(EARLY_RUN).map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        Ok(renewed)
    }

    fn end_run(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(STATE).map_err(err)?.remove(EARLY_RUN).map_err(err)?;
        txn.commit().map_err(err)
    }
}

/// Presence's user records (last seen, privacy) live in the same file as history.
impl RecordStore for EmbeddedHistory {
    fn load(&self, user: &UserKey) -> Result<Option<UserRecord>, RecordsError> {
        let txn = self.db.begin_read().map_err(records_err)?;
        let table = txn.open_table(USERS).map_err(records_err)?;
        let Some(value) = table.get(tenant_scoped(&user.tenant, &user.user).as_slice()).map_err(records_err)? else {
            return Ok(None);
        };
        postcard::from_bytes(value.value()).map(Some).map_err(|e| RecordsError(format!("corrupt user record: {e}")))
    }

    fn save(&self, records: &[(UserKey, UserRecord)]) -> Result<(), RecordsError> {
        let txn = self.db.begin_write().map_err(records_err)?;
        {
            let mut table = txn.open_table(USERS).map_err(records_err)?;
            for (user, record) in records {
                let value = postcard::to_allocvec(record).unwrap_or_default();
                let key = tenant_scoped(&user.tenant, &user.user);
                table.insert(key.as_slice(), value.as_slice()).map_err(records_err)?;
            }
        }
        txn.commit().map_err(records_err)
    }
}

fn records_err(e: impl std::fmt::Display) -> RecordsError {
    RecordsError(e.to_string())
}
