//! Where read marks live between restarts: four tables in the relay's redb file, next to the
//! room history (or in an in-memory redb for `store.engine = "memory"`):
//!
//! - `receipt_marks`: `(tenant \0 room, user)` → the member's [`Mark`] (postcard). Room-major, so
//!   a room's receipts are one range read.
//! - `receipt_follows`: `(tenant \0 user, room)` → empty. The user's rooms, for `sync`.
//! - `receipt_mentions`: `(tenant \0 user, room, offset)` → empty. Mentions not yet read.
//! - `receipt_prefs`: `tenant \0 user` → whether the user shares reads (one byte).
//!
//! Writes go through one writer thread that commits whatever queued meanwhile in a single durable
//! transaction (as the engine's writer does for messages), so a thousand members marking a room
//! read at once cost a few commits, not a thousand.

use std::collections::BTreeMap;
use std::sync::mpsc;

use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::hub::RoomKey;
use crate::hub::presence::UserKey;
use crate::proto::RoomName;
use crate::store::{SideDb, StoreError, room_bytes, tenant_scoped};

const MARKS: TableDefinition<(&[u8], &str), &[u8]> = TableDefinition::new("receipt_marks");
const FOLLOWS: TableDefinition<(&[u8], &str), ()> = TableDefinition::new("receipt_follows");
const MENTIONS: TableDefinition<(&[u8], &str, u64), ()> = TableDefinition::new("receipt_mentions");
const PREFS: TableDefinition<&[u8], u8> = TableDefinition::new("receipt_prefs");

/// A member's progress in a room, within `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mark {
    pub epoch: u64,
    /// Read up to this offset (inclusive).
    pub read: u64,
    /// One of the member's devices has every message up to this offset.
    pub delivered: u64,
}

/// One change to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The member's mark (the user follows the room).
    Mark {
        room: RoomKey,
        user: String,
        mark: Mark,
    },
    /// The user left the room: mark, follow and mentions go.
    Unfollow {
        room: RoomKey,
        user: String,
    },
    /// `user` was mentioned at `offset`.
    Mention {
        room: RoomKey,
        user: String,
        offset: u64,
    },
    /// The user's mentions up to `offset` are read.
    MentionsRead {
        room: RoomKey,
        user: String,
        upto: u64,
    },
    Prefs {
        user: UserKey,
        share_read: bool,
    },
}

/// What runs once a write is durable (or failed).
pub type DoneFn = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(e)
}

fn user_bytes(user: &UserKey) -> Vec<u8> {
    tenant_scoped(&user.tenant, &user.user)
}

pub struct ReceiptStore {
    db: std::sync::Arc<SideDb>,
    writer: mpsc::Sender<(Vec<Op>, Option<DoneFn>)>,
}

impl ReceiptStore {
    /// Opens the tables (creating them) and starts the writer thread, which ends when the store
    /// is dropped.
    pub fn open(db: SideDb) -> Result<ReceiptStore, StoreError> {
        let txn = db.db().begin_write().map_err(err)?;
        txn.open_table(MARKS).map_err(err)?;
        txn.open_table(FOLLOWS).map_err(err)?;
        txn.open_table(MENTIONS).map_err(err)?;
        txn.open_table(PREFS).map_err(err)?;
        txn.commit().map_err(err)?;
        let db = std::sync::Arc::new(db);
        let (writer, queue) = mpsc::channel();
        // Weak: the file closes when the store is dropped, not when this thread gets to notice
        // (a restarted relay opens it again at once).
        let shared = std::sync::Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("receipts-writer".into())
            .spawn(move || write_loop(&shared, queue))
            .map_err(err)?;
        Ok(ReceiptStore { db, writer })
    }

    /// Queues changes; `done` runs once they are durable (or failed).
    pub fn write(&self, ops: Vec<Op>, done: Option<DoneFn>) {
        if let Err(mpsc::SendError((_, Some(done)))) = self.writer.send((ops, done)) {
            done(Err(StoreError::Backend("the receipts writer stopped".into())));
        }
    }

    /// Waits until every write queued before this call is durable (or failed).
    pub async fn settled(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.write(
            Vec::new(),
            Some(Box::new(move |_| {
                let _ = tx.send(());
            })),
        );
        let _ = rx.await;
    }

    /// Every member's mark in a room.
    pub fn room(&self, room: &RoomKey) -> Result<BTreeMap<String, Mark>, StoreError> {
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(MARKS).map_err(err)?;
        let key = room_bytes(room);
        let mut out = BTreeMap::new();
        for entry in table.range((key.as_slice(), "")..).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            let (r, user) = k.value();
            if r != key.as_slice() {
                break;
            }
            let mark = postcard::from_bytes(v.value())
                .map_err(|e| StoreError::Corrupt { table: "receipt_marks", detail: e.to_string() })?;
            out.insert(user.to_owned(), mark);
        }
        Ok(out)
    }

    /// The rooms the user follows.
    pub fn follows(&self, user: &UserKey) -> Result<Vec<RoomName>, StoreError> {
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(FOLLOWS).map_err(err)?;
        let key = user_bytes(user);
        let mut out = Vec::new();
        for entry in table.range((key.as_slice(), "")..).map_err(err)? {
            let (k, _) = entry.map_err(err)?;
            let (u, room) = k.value();
            if u != key.as_slice() {
                break;
            }
            // Only names the relay stored; a bad one is skipped rather than failing the list.
            if let Ok(room) = RoomName::parse(room) {
                out.push(room);
            }
        }
        Ok(out)
    }

    /// The user's unread mentions in a room after `after`.
    pub fn mentions(&self, user: &UserKey, room: &RoomName, after: u64) -> Result<u64, StoreError> {
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(MENTIONS).map_err(err)?;
        let key = user_bytes(user);
        let range =
            (key.as_slice(), room.as_str(), after.saturating_add(1))..=(key.as_slice(), room.as_str(), u64::MAX);
        Ok(table.range(range).map_err(err)?.count() as u64)
    }

    /// Whether the user shares reads (the default).
    pub fn share_read(&self, user: &UserKey) -> Result<bool, StoreError> {
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(PREFS).map_err(err)?;
        Ok(table.get(user_bytes(user).as_slice()).map_err(err)?.is_none_or(|v| v.value() != 0))
    }
}

fn write_loop(db: &std::sync::Weak<SideDb>, queue: mpsc::Receiver<(Vec<Op>, Option<DoneFn>)>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        // A batch of barriers only (see `ReceiptStore::settled`) has nothing to commit.
        let result = if batch.iter().all(|(ops, _)| ops.is_empty()) {
            Ok(())
        } else if let Some(db) = db.upgrade() {
            commit(&db, batch.iter().flat_map(|(ops, _)| ops))
        } else {
            Err(StoreError::Backend("the receipts store is closed".into()))
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "receipts: commit failed");
        }
        for (_, done) in batch {
            if let Some(done) = done {
                done(result.as_ref().map(|_| ()).map_err(|e| StoreError::Backend(e.to_string())));
            }
        }
    }
}

fn commit<'a>(db: &SideDb, ops: impl Iterator<Item = &'a Op>) -> Result<(), StoreError> {
    let txn = db.db().begin_write().map_err(err)?;
    {
        let mut marks = txn.open_table(MARKS).map_err(err)?;
        let mut follows = txn.open_table(FOLLOWS).map_err(err)?;
        let mut mentions = txn.open_table(MENTIONS).map_err(err)?;
        let mut prefs = txn.open_table(PREFS).map_err(err)?;
        for op in ops {
            match op {
                Op::Mark { room, user, mark } => {
                    let bytes = postcard::to_allocvec(mark).map_err(err)?;
                    marks.insert((room_bytes(room).as_slice(), user.as_str()), bytes.as_slice()).map_err(err)?;
                    let owner = tenant_scoped(&room.tenant, user);
                    follows.insert((owner.as_slice(), room.room.as_str()), ()).map_err(err)?;
                }
                Op::Unfollow { room, user } => {
                    marks.remove((room_bytes(room).as_slice(), user.as_str())).map_err(err)?;
                    let owner = tenant_scoped(&room.tenant, user);
                    follows.remove((owner.as_slice(), room.room.as_str())).map_err(err)?;
                    let name = room.room.as_str();
                    mentions
                        .retain_in((owner.as_slice(), name, 0)..=(owner.as_slice(), name, u64::MAX), |_, _| false)
                        .map_err(err)?;
                }
                Op::Mention { room, user, offset } => {
                    let owner = tenant_scoped(&room.tenant, user);
                    mentions.insert((owner.as_slice(), room.room.as_str(), *offset), ()).map_err(err)?;
                }
                Op::MentionsRead { room, user, upto } => {
                    let owner = tenant_scoped(&room.tenant, user);
                    let name = room.room.as_str();
                    mentions
                        .retain_in((owner.as_slice(), name, 0)..=(owner.as_slice(), name, *upto), |_, _| false)
                        .map_err(err)?;
                }
                Op::Prefs { user, share_read } => {
                    prefs.insert(user_bytes(user).as_slice(), u8::from(*share_read)).map_err(err)?;
                }
            }
        }
    }
    txn.commit().map_err(err)
}
