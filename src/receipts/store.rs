//! Where read marks live between restarts, behind [`ReceiptStore`] so the service does not care
//! which: the node's redb file ([`EmbeddedReceipts`], one node) or the region's Redis
//! (`super::redis`, several nodes). Reads are async (Redis answers over the network); writes are
//! queued and committed in order, `done` running once they are durable.
//!
//! The embedded store is four tables in the relay's redb file, next to the room history (or in
//! an in-memory redb for `store.engine = "memory"`):
//!
//! - `receipt_marks`: `(tenant \0 room, user)` → the member's [`Mark`] (postcard). Room-major, so
//!   a room's receipts are one range read.
//! - `receipt_follows`: `(tenant \0 user, room)` → empty. The user's rooms, for `sync`.
//! - `receipt_mentions`: `(tenant \0 user, room, offset)` → empty. Mentions not yet read.
//! - `receipt_prefs`: `tenant \0 user` → whether the user shares reads (one byte).
//!
//! Writes go through one writer thread that commits whatever queued meanwhile in a single durable
//! transaction (as the engine's writer does for messages), so a thousand members marking a room
//! read at once cost a few commits, not a thousand. Writes nobody waits for (the marks and
//! follows that joins, cursors and a user's own publishes move) are also paced
//! (`receipts.commit_interval_ms`): those arriving within the interval after a commit share the
//! next one, so busy rooms cost a couple of fsyncs a second here instead of one per history
//! commit. A write someone waits for (a `read` action's `ok`, `sync`'s barrier) commits at once,
//! taking the paced ones with it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
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

/// Where marks, follows, mentions and privacy settings live.
pub trait ReceiptStore: Send + Sync + 'static {
    /// Queues changes; `done` runs once they are durable (or failed), in the order queued. A
    /// same-epoch mark never moves back in the store, whatever order writers race in.
    fn write(&self, ops: Vec<Op>, done: Option<DoneFn>);

    /// As [`Self::write`], for changes nobody waits for (marks moved by joins, cursors and
    /// publishes): the store may hold them back a little so they share a commit with what
    /// follows. `done` still runs once they are durable.
    fn write_unawaited(&self, ops: Vec<Op>, done: Option<DoneFn>) {
        self.write(ops, done);
    }

    /// Every member's mark in a room.
    fn room(&self, room: &RoomKey) -> BoxFuture<'_, Result<BTreeMap<String, Mark>, StoreError>>;

    /// The user's mark in each of `rooms` (`None`: not followed).
    fn marks(&self, user: &UserKey, rooms: &[RoomName]) -> BoxFuture<'_, Result<Vec<Option<Mark>>, StoreError>>;

    /// The rooms the user follows.
    fn follows(&self, user: &UserKey) -> BoxFuture<'_, Result<Vec<RoomName>, StoreError>>;

    /// The offsets of the user's unread mentions in each room after the given offset.
    fn mentions(&self, user: &UserKey, rooms: &[(RoomName, u64)]) -> BoxFuture<'_, Result<Vec<Vec<u64>>, StoreError>>;

    /// Whether each user shares reads (the default).
    fn share_read(&self, users: &[UserKey]) -> BoxFuture<'_, Result<Vec<bool>, StoreError>>;
}

/// Waits until every write queued on `store` before this call is durable (or failed).
pub async fn settled(store: &dyn ReceiptStore) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.write(
        Vec::new(),
        Some(Box::new(move |_| {
            let _ = tx.send(());
        })),
    );
    let _ = rx.await;
}

/// The newer of two marks: the incoming one from another epoch replaces, the same epoch takes
/// the highest of each field.
pub fn merged(old: Option<Mark>, new: Mark) -> Mark {
    match old {
        Some(old) if old.epoch == new.epoch => {
            Mark { epoch: new.epoch, read: old.read.max(new.read), delivered: old.delivered.max(new.delivered) }
        }
        _ => new,
    }
}

/// The receipts tables in the node's redb file.
pub struct EmbeddedReceipts {
    db: Arc<SideDb>,
    writer: mpsc::Sender<Queued>,
    /// The writer thread, woken for a write someone waits for while it paces.
    thread: std::thread::Thread,
    /// Commits made (durable transactions), for the tests.
    #[cfg_attr(not(test), expect(dead_code))]
    commits: Arc<AtomicU64>,
}

/// One write waiting for the writer thread.
struct Queued {
    ops: Vec<Op>,
    done: Option<DoneFn>,
    /// Someone waits for it: it commits at once, not at the pace.
    awaited: bool,
}

impl EmbeddedReceipts {
    /// Opens the tables (creating them) and starts the writer thread, which ends when the store
    /// is dropped. Writes nobody waits for start a commit no sooner than `interval` after the
    /// previous one started (zero: at once).
    pub fn open(db: SideDb, interval: Duration) -> Result<EmbeddedReceipts, StoreError> {
        let txn = db.db().begin_write().map_err(err)?;
        txn.open_table(MARKS).map_err(err)?;
        txn.open_table(FOLLOWS).map_err(err)?;
        txn.open_table(MENTIONS).map_err(err)?;
        txn.open_table(PREFS).map_err(err)?;
        txn.commit().map_err(err)?;
        let db = Arc::new(db);
        let (writer, queue) = mpsc::channel();
        // Weak: the file closes when the store is dropped, not when this thread gets to notice
        // (a restarted relay opens it again at once).
        let shared = Arc::downgrade(&db);
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let thread = std::thread::Builder::new()
            .name("receipts-writer".into())
            .spawn(move || write_loop(&shared, queue, interval, &counted))
            .map_err(err)?
            .thread()
            .clone();
        Ok(EmbeddedReceipts { db, writer, thread, commits })
    }

    fn queue(&self, ops: Vec<Op>, done: Option<DoneFn>, awaited: bool) {
        if let Err(mpsc::SendError(Queued { done: Some(done), .. })) = self.writer.send(Queued { ops, done, awaited }) {
            done(Err(StoreError::Backend("the receipts writer stopped".into())));
        }
        if awaited {
            self.thread.unpark();
        }
    }

    fn room_now(&self, room: &RoomKey) -> Result<BTreeMap<String, Mark>, StoreError> {
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
            out.insert(user.to_owned(), decode_mark(v.value())?);
        }
        Ok(out)
    }

    fn marks_now(&self, user: &UserKey, rooms: &[RoomName]) -> Result<Vec<Option<Mark>>, StoreError> {
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(MARKS).map_err(err)?;
        let mut out = Vec::with_capacity(rooms.len());
        for room in rooms {
            let key = room_bytes(&RoomKey { tenant: user.tenant.clone(), room: room.clone() });
            let mark = match table.get((key.as_slice(), &*user.user)).map_err(err)? {
                Some(v) => Some(decode_mark(v.value())?),
                None => None,
            };
            out.push(mark);
        }
        Ok(out)
    }

    fn follows_now(&self, user: &UserKey) -> Result<Vec<RoomName>, StoreError> {
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

    fn mentions_now(&self, user: &UserKey, rooms: &[(RoomName, u64)]) -> Result<Vec<Vec<u64>>, StoreError> {
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(MENTIONS).map_err(err)?;
        let key = user_bytes(user);
        let mut out = Vec::with_capacity(rooms.len());
        for (room, after) in rooms {
            let range =
                (key.as_slice(), room.as_str(), after.saturating_add(1))..=(key.as_slice(), room.as_str(), u64::MAX);
            let mut offsets = Vec::new();
            for entry in table.range(range).map_err(err)? {
                offsets.push(entry.map_err(err)?.0.value().2);
            }
            out.push(offsets);
        }
        Ok(out)
    }

    fn share_read_now(&self, users: &[UserKey]) -> Result<Vec<bool>, StoreError> {
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(PREFS).map_err(err)?;
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            out.push(table.get(user_bytes(user).as_slice()).map_err(err)?.is_none_or(|v| v.value() != 0));
        }
        Ok(out)
    }
}

/// redb answers at once: each read is a ready future.
impl ReceiptStore for EmbeddedReceipts {
    fn write(&self, ops: Vec<Op>, done: Option<DoneFn>) {
        self.queue(ops, done, true);
    }

    fn write_unawaited(&self, ops: Vec<Op>, done: Option<DoneFn>) {
        self.queue(ops, done, false);
    }

    fn room(&self, room: &RoomKey) -> BoxFuture<'_, Result<BTreeMap<String, Mark>, StoreError>> {
        std::future::ready(self.room_now(room)).boxed()
    }

    fn marks(&self, user: &UserKey, rooms: &[RoomName]) -> BoxFuture<'_, Result<Vec<Option<Mark>>, StoreError>> {
        std::future::ready(self.marks_now(user, rooms)).boxed()
    }

    fn follows(&self, user: &UserKey) -> BoxFuture<'_, Result<Vec<RoomName>, StoreError>> {
        std::future::ready(self.follows_now(user)).boxed()
    }

    fn mentions(&self, user: &UserKey, rooms: &[(RoomName, u64)]) -> BoxFuture<'_, Result<Vec<Vec<u64>>, StoreError>> {
        std::future::ready(self.mentions_now(user, rooms)).boxed()
    }

    fn share_read(&self, users: &[UserKey]) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        std::future::ready(self.share_read_now(users)).boxed()
    }
}

fn decode_mark(bytes: &[u8]) -> Result<Mark, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { table: "receipt_marks", detail: e.to_string() })
}

fn write_loop(db: &Weak<SideDb>, queue: mpsc::Receiver<Queued>, interval: Duration, commits: &AtomicU64) {
    let mut last_start: Option<Instant> = None;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        batch.extend(queue.try_iter());
        let mut awaited = batch.iter().any(|q| q.awaited);
        // Paced: what nobody waits for waits until the interval since the last commit's start
        // is over, collecting what else comes. The thread parks rather than blocking on the
        // queue, so those writes do not wake it one by one; a waited-for write unparks it.
        if let Some(until) = last_start.map(|at| at + interval) {
            while !awaited {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::park_timeout(left);
                for q in queue.try_iter() {
                    awaited |= q.awaited;
                    batch.push(q);
                }
            }
        }
        // A batch of barriers only (see `settled`) has nothing to commit.
        let result = if batch.iter().all(|q| q.ops.is_empty()) {
            Ok(())
        } else if let Some(db) = db.upgrade() {
            last_start = Some(Instant::now());
            commits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::RECEIPT_COMMITS_TOTAL).increment(1);
            commit(&db, batch.iter().flat_map(|q| &q.ops))
        } else {
            Err(StoreError::Backend("the receipts store is closed".into()))
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "receipts: commit failed");
        }
        for q in batch {
            if let Some(done) = q.done {
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
                    let key = room_bytes(room);
                    let old = match marks.get((key.as_slice(), user.as_str())).map_err(err)? {
                        Some(v) => decode_mark(v.value()).ok(),
                        None => None,
                    };
                    let bytes = postcard::to_allocvec(&merged(old, *mark)).map_err(err)?;
                    marks.insert((key.as_slice(), user.as_str()), bytes.as_slice()).map_err(err)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_never_moves_back_within_an_epoch_and_a_new_epoch_replaces_it() {
        let old = Mark { epoch: 4, read: 10, delivered: 12 };
        assert_eq!(
            merged(Some(old), Mark { epoch: 4, read: 8, delivered: 15 }),
            Mark { epoch: 4, read: 10, delivered: 15 }
        );
        assert_eq!(
            merged(Some(old), Mark { epoch: 5, read: 1, delivered: 1 }),
            Mark { epoch: 5, read: 1, delivered: 1 }
        );
        assert_eq!(merged(None, old), old);
    }

    #[tokio::test]
    async fn the_embedded_store_keeps_the_highest_mark_whatever_order_writes_commit_in() {
        let store = EmbeddedReceipts::open(SideDb::memory().unwrap(), Duration::ZERO).unwrap();
        let room = RoomKey { tenant: "acme".into(), room: RoomName::parse("chat:a").unwrap() };
        let user = UserKey { tenant: "acme".into(), user: "bob".into() };
        for read in [7, 3] {
            let mark = Mark { epoch: 1, read, delivered: read };
            store.write(vec![Op::Mark { room: room.clone(), user: "bob".into(), mark }], None);
        }
        settled(&store).await;
        let marks = store.marks(&user, std::slice::from_ref(&room.room)).await.unwrap();
        assert_eq!(marks, vec![Some(Mark { epoch: 1, read: 7, delivered: 7 })]);
        assert_eq!(store.follows(&user).await.unwrap(), vec![room.room.clone()]);
    }

    #[tokio::test]
    async fn writes_nobody_waits_for_share_a_paced_commit_and_a_waited_for_one_commits_at_once() {
        use std::sync::atomic::AtomicUsize;
        // Far longer than the test: nothing here may wait for the pace to end.
        let store = EmbeddedReceipts::open(SideDb::memory().unwrap(), Duration::from_secs(600)).unwrap();
        let room = RoomKey { tenant: "acme".into(), room: RoomName::parse("chat:a").unwrap() };
        let user = UserKey { tenant: "acme".into(), user: "bob".into() };
        let durable = Arc::new(AtomicUsize::new(0));
        let write = |read: u64| {
            let mark = Mark { epoch: 1, read, delivered: read };
            let durable = durable.clone();
            let done: DoneFn = Box::new(move |result| {
                assert!(result.is_ok());
                durable.fetch_add(1, Ordering::SeqCst);
            });
            store.write_unawaited(vec![Op::Mark { room: room.clone(), user: "bob".into(), mark }], Some(done));
        };
        let read_mark = || store.marks_now(&user, std::slice::from_ref(&room.room)).unwrap()[0].map(|m| m.read);

        // After a quiet spell the first write commits at once.
        write(1);
        for _ in 0..500 {
            if durable.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(durable.load(Ordering::SeqCst), 1);
        assert_eq!(read_mark(), Some(1));

        // Within the interval they wait for the next commit...
        for read in 2..=10 {
            write(read);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(durable.load(Ordering::SeqCst), 1);
        assert_eq!(read_mark(), Some(1));

        // ...which a write someone waits for starts at once, taking them along.
        settled(&store).await;
        assert_eq!(durable.load(Ordering::SeqCst), 10);
        assert_eq!(read_mark(), Some(10));
        assert_eq!(store.commits.load(Ordering::SeqCst), 2);
    }
}
