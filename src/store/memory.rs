//! History kept in memory: for tests, and for operators who accept losing history on restart
//! (a restart then starts every room in a new epoch, so clients are told).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{Append, Cursor, ExpireStep, History, Retention, RoomMeta, StoreError, StoredMessage, UserCursors};
use crate::hub::RoomKey;
use crate::proto::RoomName;

#[derive(Default)]
struct Room {
    meta: Option<RoomMeta>,
    messages: BTreeMap<u64, StoredMessage>,
    /// `(from, id)` → offset, for retained messages.
    ids: HashMap<(String, String), u64>,
}

impl Room {
    fn delete(&mut self, offset: u64) {
        if let Some(m) = self.messages.remove(&offset) {
            self.ids.remove(&(m.from, m.id));
        }
    }

    /// Moves `first` past deleted messages.
    fn settle_first(&mut self) {
        if let Some(meta) = &mut self.meta {
            meta.first = self.messages.keys().next().copied().unwrap_or(meta.top + 1);
        }
    }
}

#[derive(Default)]
pub struct MemoryHistory {
    rooms: Mutex<HashMap<RoomKey, Room>>,
    cursors: Mutex<HashMap<(String, String), HashMap<RoomName, Cursor>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryHistory {
    pub fn new() -> Self {
        Self::default()
    }
}

impl History for MemoryHistory {
    fn append(&self, batch: &[Append], retention: &Retention) -> Result<(), StoreError> {
        let mut rooms = lock(&self.rooms);
        for append in batch {
            let room = rooms.entry(append.key.clone()).or_default();
            if room.meta.is_none_or(|m| m.epoch != append.epoch) {
                *room = Room { meta: Some(RoomMeta::empty(append.epoch)), ..Room::default() };
            }
            let m = &append.message;
            room.messages.insert(m.offset, m.clone());
            room.ids.insert((m.from.clone(), m.id.clone()), m.offset);
            if let Some(meta) = &mut room.meta {
                meta.top = meta.top.max(m.offset);
            }
            while room.messages.len() as u64 > retention.max_messages {
                let Some(&oldest) = room.messages.keys().next() else { break };
                room.delete(oldest);
            }
            room.settle_first();
        }
        Ok(())
    }

    fn meta(&self, key: &RoomKey) -> Result<Option<RoomMeta>, StoreError> {
        Ok(lock(&self.rooms).get(key).and_then(|r| r.meta))
    }

    fn read_after(&self, key: &RoomKey, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let rooms = lock(&self.rooms);
        let Some(room) = rooms.get(key) else { return Ok(Vec::new()) };
        Ok(room.messages.range(after.saturating_add(1)..).take(limit).map(|(_, m)| m.clone()).collect())
    }

    fn read_before(&self, key: &RoomKey, before: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let rooms = lock(&self.rooms);
        let Some(room) = rooms.get(key) else { return Ok(Vec::new()) };
        let mut out: Vec<StoredMessage> =
            room.messages.range(..before).rev().take(limit).map(|(_, m)| m.clone()).collect();
        out.reverse();
        Ok(out)
    }

    fn find_id(&self, key: &RoomKey, from: &str, id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let rooms = lock(&self.rooms);
        let Some(room) = rooms.get(key) else { return Ok(None) };
        let Some(&offset) = room.ids.get(&(from.to_owned(), id.to_owned())) else { return Ok(None) };
        Ok(room.messages.get(&offset).map(|m| (offset, m.time)))
    }

    /// Visits every room in one step (a map in memory is quick to walk).
    fn expire(&self, before_ms: u64, _resume: Option<&[u8]>, _max_rooms: usize) -> Result<ExpireStep, StoreError> {
        let mut deleted = 0;
        for room in lock(&self.rooms).values_mut() {
            let old: Vec<u64> = room.messages.iter().take_while(|(_, m)| m.time < before_ms).map(|(o, _)| *o).collect();
            deleted += old.len() as u64;
            for offset in old {
                room.delete(offset);
            }
            room.settle_first();
        }
        Ok(ExpireStep { deleted, resume: None })
    }

    fn save_cursors(&self, updates: &[UserCursors]) -> Result<(), StoreError> {
        let mut all = lock(&self.cursors);
        for update in updates {
            let mine = all.entry((update.tenant.clone(), update.user.clone())).or_default();
            for cursor in &update.cursors {
                mine.insert(cursor.room.clone(), cursor.clone());
            }
        }
        Ok(())
    }

    fn forget_cursor(&self, tenant: &str, user: &str, room: &RoomName) -> Result<(), StoreError> {
        if let Some(mine) = lock(&self.cursors).get_mut(&(tenant.to_owned(), user.to_owned())) {
            mine.remove(room);
        }
        Ok(())
    }

    fn cursors(&self, tenant: &str, user: &str, limit: usize) -> Result<Vec<Cursor>, StoreError> {
        let all = lock(&self.cursors);
        let mut out: Vec<Cursor> =
            all.get(&(tenant.to_owned(), user.to_owned())).map(|m| m.values().cloned().collect()).unwrap_or_default();
        out.sort_by(|a, b| b.updated.cmp(&a.updated).then_with(|| a.room.cmp(&b.room)));
        out.truncate(limit);
        Ok(out)
    }
}
