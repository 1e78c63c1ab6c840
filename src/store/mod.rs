//! Room history: the durable log behind every acknowledged message.
//!
//! A [`History`] stores each room's messages by `(room, offset)` and a small per-room meta
//! `{epoch, first, top}`. It is a plain, synchronous storage backend: ordering, offsets and
//! idempotency are decided by the engine in front of it (`crate::engine`), which hands it batches
//! to append in one durable commit. Two backends implement it: [`EmbeddedHistory`] (redb, the
//! default) and [`MemoryHistory`] (tests, and operators who want no disk). Both pass the same
//! test suite (`suite`).
//!
//! Retention is by count (applied on append) and by age ([`History::expire`]). Expired messages
//! move a room's `first` forward but never its `top`: offsets keep counting, and a client whose
//! position fell out of retention is told "not recovered" instead of seeing a gap. A room whose
//! meta is gone (store wiped or replaced) gets a new epoch from the engine.

mod embedded;
mod memory;
#[cfg(test)]
pub(crate) mod suite;

use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedHistory;
pub use memory::MemoryHistory;

use crate::hub::RoomKey;
use crate::proto::{Payload, Position, RoomName};

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub offset: u64,
    /// Unix milliseconds when the relay accepted it.
    pub time: u64,
    /// Publishing user.
    pub from: String,
    /// The publisher's message id (idempotency key, together with `from`).
    pub id: String,
    pub data: Payload,
}

/// A room's log bounds. `first` is the lowest retained offset; nothing is retained when
/// `first == top + 1`. A room that never had a message has `top == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMeta {
    pub epoch: u64,
    pub first: u64,
    pub top: u64,
}

impl RoomMeta {
    /// The meta of a room that has no history yet.
    pub fn empty(epoch: u64) -> Self {
        RoomMeta { epoch, first: 1, top: 0 }
    }

    pub fn position(&self) -> Position {
        Position { epoch: self.epoch, offset: self.top }
    }
}

/// One message to append, with the epoch its offset belongs to.
#[derive(Debug, Clone)]
pub struct Append {
    pub key: RoomKey,
    pub epoch: u64,
    pub message: StoredMessage,
}

/// What one step of an age-retention pass did ([`History::expire`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpireStep {
    pub deleted: u64,
    /// Where the next step starts (an opaque room key), or `None`: the pass is complete.
    pub resume: Option<Vec<u8>>,
}

/// How much history each room keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per room; older ones are deleted as new ones arrive.
    pub max_messages: u64,
    /// Messages older than this are deleted by [`History::expire`].
    pub max_age_ms: u64,
}

/// The last position a user was known to have received in a room (offline replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub room: RoomName,
    pub position: Position,
    /// Unix milliseconds of the update.
    pub updated: u64,
}

/// Cursors of one user, to save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCursors {
    pub tenant: String,
    pub user: String,
    pub cursors: Vec<Cursor>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("history store: {0}")]
    Backend(String),
    #[error("history store: corrupt record in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

impl StoreError {
    pub(crate) fn backend(err: impl std::fmt::Display) -> Self {
        StoreError::Backend(err.to_string())
    }
}

/// A durable, per-room message log. All methods are blocking; the engine calls `append` and
/// `expire` from its single writer thread only, reads from anywhere.
pub trait History: Send + Sync + 'static {
    /// Appends the batch, in order, in one durable commit; when this returns `Ok` every message
    /// survives a crash. A room's first append creates its meta with the batch's epoch; an append
    /// with another epoch than the stored one replaces the room's history (the engine only does
    /// that when it started a new epoch). Count retention is applied in the same commit.
    fn append(&self, batch: &[Append], retention: &Retention) -> Result<(), StoreError>;

    /// The room's meta, `None` if the store has never seen the room (or lost it).
    fn meta(&self, key: &RoomKey) -> Result<Option<RoomMeta>, StoreError>;

    /// Up to `limit` messages with offsets greater than `after`, oldest first.
    fn read_after(&self, key: &RoomKey, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError>;

    /// Up to `limit` messages with offsets lower than `before`, the newest of them, oldest first.
    fn read_before(&self, key: &RoomKey, before: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError>;

    /// The offset and time of the retained message `id` published by `from`, if any.
    fn find_id(&self, key: &RoomKey, from: &str, id: &str) -> Result<Option<(u64, u64)>, StoreError>;

    /// Deletes messages older than `before_ms` in at most `max_rooms` rooms, starting after the
    /// room `resume` names (from the start when `None`). A pass is the steps from `None` until a
    /// step answers `resume: None`; it visits every room. Steps keep each write short, so commits
    /// never wait long behind age retention.
    fn expire(&self, before_ms: u64, resume: Option<&[u8]>, max_rooms: usize) -> Result<ExpireStep, StoreError>;

    /// Records cursors of any number of users, in one commit.
    fn save_cursors(&self, updates: &[UserCursors]) -> Result<(), StoreError>;

    /// Forgets the user's cursor in a room (the user left it).
    fn forget_cursor(&self, tenant: &str, user: &str, room: &RoomName) -> Result<(), StoreError>;

    /// The user's cursors, most recently updated first, at most `limit`.
    fn cursors(&self, tenant: &str, user: &str, limit: usize) -> Result<Vec<Cursor>, StoreError>;

    /// Called once at startup, before any publish: if the previous run delivered messages
    /// before their commit (`store.deliver_before_commit`) and did not stop cleanly, every room
    /// gets a new epoch (history kept), so a position a subscriber saw but the store lost is
    /// never reused for another message. Then records whether this run delivers early.
    /// Returns how many rooms got a new epoch. Stores that do not survive a restart do nothing.
    fn begin_run(&self, _deliver_before_commit: bool) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Records a clean stop: everything delivered was committed ([`History::begin_run`]).
    fn end_run(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Where a subsystem keeps tables of its own (sessions, receipts): the relay's redb file next to
/// the room history, or an in-memory redb (`store.engine = "memory"`, lost on restart).
pub enum SideDb {
    File(std::sync::Arc<EmbeddedHistory>),
    Memory(redb::Database),
}

impl SideDb {
    pub fn memory() -> Result<SideDb, StoreError> {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(StoreError::backend)?;
        Ok(SideDb::Memory(db))
    }

    /// Another subsystem's tables in the same place: the same file, or a new in-memory redb.
    pub fn sibling(&self) -> Result<SideDb, StoreError> {
        match self {
            SideDb::File(history) => Ok(SideDb::File(history.clone())),
            SideDb::Memory(_) => SideDb::memory(),
        }
    }

    pub fn db(&self) -> &redb::Database {
        match self {
            SideDb::File(history) => history.database(),
            SideDb::Memory(db) => db,
        }
    }
}

/// A new epoch: random, non-zero, below 2^53 (exact in JavaScript numbers).
pub fn new_epoch() -> u64 {
    (rand::random::<u64>() >> 11).max(1)
}

/// A name scoped by tenant, as store keys hold it: tenant, a zero byte, name. Neither part can
/// contain a zero byte, so the encoding is unambiguous and sorts a tenant's names together.
pub(crate) fn tenant_scoped(tenant: &str, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(tenant.len() + 1 + name.len());
    out.extend_from_slice(tenant.as_bytes());
    out.push(0);
    out.extend_from_slice(name.as_bytes());
    out
}

/// The store key of a room.
pub(crate) fn room_bytes(key: &RoomKey) -> Vec<u8> {
    tenant_scoped(&key.tenant, key.room.as_str())
}
