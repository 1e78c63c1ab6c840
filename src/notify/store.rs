//! Where notifications live between restarts: tables in the relay's redb file, next to the room
//! history (an in-memory redb for `store.engine = "memory"`). Users are keys `tenant \0 user`.
//!
//! - `notify_feed`: `(user, id)` → the [`Stored`] notification. Id-major per user, so a page is
//!   one reversed range read and the oldest entry is the range's first.
//! - `notify_meta`: `user` → [`Meta`] (next id, unread count, length): a count never needs a scan.
//! - `notify_idem`: `(user, key)` → id: a backend's retry with the same key adds nothing. Kept as
//!   long as the notification is in the feed.
//! - `notify_prefs`: `user` → [`NotifyPrefs`]; `notify_devices`: `(user, device)` → [`Device`].
//! - `notify_outbox`: `seq` → [`Delivery`]: webhook calls not yet answered with success. Written
//!   in the same commit as the notification, so an acknowledged notification reaches the webhook
//!   even if the relay restarts before the first call.
//! - `notify_dead`: `seq` → [`DeadLetter`]: deliveries that failed `webhook_max_attempts` times.
//!
//! Every method is one blocking transaction; callers on the runtime use `spawn_blocking`. The
//! shape (a feed per user with a meta record, an outbox keyed by sequence) maps onto a Redis
//! sorted set plus hash and a stream when the feed moves to a region.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::hub::presence::UserKey;
use crate::proto::{Notification, NotifyPrefs, PushPlatform};
use crate::store::{SideDb, StoreError, tenant_scoped};

const FEED: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("notify_feed");
const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("notify_meta");
const IDEM: TableDefinition<(&[u8], &str), u64> = TableDefinition::new("notify_idem");
const PREFS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("notify_prefs");
const DEVICES: TableDefinition<(&[u8], &str), &[u8]> = TableDefinition::new("notify_devices");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("notify_outbox");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("notify_dead");
const SEQ: TableDefinition<&str, u64> = TableDefinition::new("notify_seq");

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    next_id: u64,
    unread: u64,
    len: u64,
}

/// A feed entry as stored: the notification and the key it was added with.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    notification: Notification,
    key: Option<String>,
}

/// A registered push token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub device: String,
    pub platform: PushPlatform,
    pub token: String,
}

/// One notification for one user on its way to the webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub seq: u64,
    pub tenant: String,
    pub user: String,
    pub notification: Notification,
    /// Calls made so far.
    pub attempts: u32,
    /// Unix ms of the next call.
    pub next_at: u64,
    pub last_error: Option<String>,
    /// Its entry in a Redis region's outbox stream (not stored: the entry's own id).
    #[serde(skip)]
    pub entry: Option<String>,
}

impl Delivery {
    /// The first call of `notification` for `user`, due at `next_at` (its `seq` is the outbox's).
    pub fn first(seq: u64, user: &UserKey, notification: Notification, next_at: u64) -> Delivery {
        Delivery {
            seq,
            tenant: user.tenant.to_string(),
            user: user.user.to_string(),
            notification,
            attempts: 0,
            next_at,
            last_error: None,
            entry: None,
        }
    }
}

/// A delivery the webhook never accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub delivery: Delivery,
    /// Unix ms.
    pub failed_at: u64,
}

/// What adding a notification did.
#[derive(Debug, Clone)]
pub struct Added {
    pub notification: Notification,
    pub unread: u64,
    /// The key was used before: `notification` is the original, nothing else happened.
    pub duplicate: bool,
    /// The webhook delivery queued with it.
    pub delivery: Option<Delivery>,
}

/// A notification to add (its id and read state come from the store).
pub struct NewNotification {
    pub notification: Notification,
    pub key: Option<String>,
    /// Queue a webhook delivery due at this time.
    pub deliver_at: Option<u64>,
}

/// Why `mark_read` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("no notification {0} in the feed")]
    Unknown(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(e)
}

fn corrupt(table: &'static str) -> impl Fn(postcard::Error) -> StoreError {
    move |e| StoreError::Corrupt { table, detail: e.to_string() }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(err)
}

fn user_bytes(user: &UserKey) -> Vec<u8> {
    tenant_scoped(&user.tenant, &user.user)
}

pub struct NotifyStore {
    db: SideDb,
}

impl NotifyStore {
    /// Opens the tables, creating them.
    pub fn open(db: SideDb) -> Result<NotifyStore, StoreError> {
        let txn = db.db().begin_write().map_err(err)?;
        txn.open_table(FEED).map_err(err)?;
        txn.open_table(META).map_err(err)?;
        txn.open_table(IDEM).map_err(err)?;
        txn.open_table(PREFS).map_err(err)?;
        txn.open_table(DEVICES).map_err(err)?;
        txn.open_table(OUTBOX).map_err(err)?;
        txn.open_table(DEAD).map_err(err)?;
        txn.open_table(SEQ).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(NotifyStore { db })
    }

    /// Adds a notification to the user's feed (dropping the oldest beyond `max_feed`) and queues
    /// its webhook delivery, in one commit. A known `key` returns the original instead.
    pub fn add(&self, user: &UserKey, new: NewNotification, max_feed: u64) -> Result<Added, StoreError> {
        let mut added = self.add_many(vec![(user.clone(), new)], max_feed)?;
        added.pop().ok_or_else(|| StoreError::Backend("nothing added".into()))
    }

    /// [`NotifyStore::add`] for many users in one commit (one fsync for a call naming 1,000).
    pub fn add_many(&self, batch: Vec<(UserKey, NewNotification)>, max_feed: u64) -> Result<Vec<Added>, StoreError> {
        let txn = self.db.db().begin_write().map_err(err)?;
        let mut out = Vec::with_capacity(batch.len());
        for (user, new) in batch {
            out.push(add_in(&txn, &user, new, max_feed)?);
        }
        txn.commit().map_err(err)?;
        Ok(out)
    }

    /// Each user's preferences (defaults for those who set none), in one read.
    pub fn prefs_many(&self, users: &[UserKey]) -> Result<Vec<NotifyPrefs>, StoreError> {
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(PREFS).map_err(err)?;
        users
            .iter()
            .map(|user| match table.get(user_bytes(user).as_slice()).map_err(err)? {
                Some(v) => postcard::from_bytes(v.value()).map_err(corrupt("notify_prefs")),
                None => Ok(NotifyPrefs::default()),
            })
            .collect()
    }

    /// Up to `limit` notifications with ids below `before`, newest first; the unread count.
    pub fn page(
        &self,
        user: &UserKey,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Notification>, u64), StoreError> {
        let owner = user_bytes(user);
        let txn = self.db.db().begin_read().map_err(err)?;
        let feed = txn.open_table(FEED).map_err(err)?;
        let meta = read_meta(&txn.open_table(META).map_err(err)?, &owner)?;
        let range = (owner.as_slice(), 0)..(owner.as_slice(), before.unwrap_or(u64::MAX));
        let mut out = Vec::with_capacity(limit);
        for entry in feed.range(range).map_err(err)?.rev().take(limit) {
            let (_, value) = entry.map_err(err)?;
            let stored: Stored = postcard::from_bytes(value.value()).map_err(corrupt("notify_feed"))?;
            out.push(stored.notification);
        }
        Ok((out, meta.unread))
    }

    /// Marks `id` (with `up_to`: every notification up to it) read; the unread count after.
    pub fn mark_read(&self, user: &UserKey, id: u64, up_to: bool) -> Result<u64, MarkError> {
        let owner = user_bytes(user);
        let txn = self.db.db().begin_write().map_err(err)?;
        let unread = {
            let mut feed = txn.open_table(FEED).map_err(err)?;
            let mut meta_table = txn.open_table(META).map_err(err)?;
            let mut meta = read_meta(&meta_table, &owner)?;
            if id == 0
                || id >= meta.next_id.max(1)
                || (!up_to && feed.get((owner.as_slice(), id)).map_err(err)?.is_none())
            {
                return Err(MarkError::Unknown(id));
            }
            let first = if up_to { 0 } else { id };
            let mut changed = Vec::new();
            for entry in feed.range((owner.as_slice(), first)..=(owner.as_slice(), id)).map_err(err)? {
                let (key, value) = entry.map_err(err)?;
                let mut stored: Stored = postcard::from_bytes(value.value()).map_err(corrupt("notify_feed"))?;
                if !stored.notification.read {
                    stored.notification.read = true;
                    changed.push((key.value().1, encode(&stored)?));
                }
            }
            for (id, bytes) in &changed {
                feed.insert((owner.as_slice(), *id), bytes.as_slice()).map_err(err)?;
            }
            meta.unread = meta.unread.saturating_sub(changed.len() as u64);
            meta_table.insert(owner.as_slice(), encode(&meta)?.as_slice()).map_err(err)?;
            meta.unread
        };
        txn.commit().map_err(err)?;
        Ok(unread)
    }

    pub fn prefs(&self, user: &UserKey) -> Result<NotifyPrefs, StoreError> {
        Ok(self.prefs_many(std::slice::from_ref(user))?.pop().unwrap_or_default())
    }

    pub fn set_prefs(&self, user: &UserKey, prefs: &NotifyPrefs) -> Result<(), StoreError> {
        let txn = self.db.db().begin_write().map_err(err)?;
        txn.open_table(PREFS)
            .map_err(err)?
            .insert(user_bytes(user).as_slice(), encode(prefs)?.as_slice())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Registers (or replaces) a device's token; `false` when the user has `max` other devices.
    pub fn register_device(&self, user: &UserKey, device: &Device, max: usize) -> Result<bool, StoreError> {
        let owner = user_bytes(user);
        let txn = self.db.db().begin_write().map_err(err)?;
        {
            let mut table = txn.open_table(DEVICES).map_err(err)?;
            let known = table.get((owner.as_slice(), device.device.as_str())).map_err(err)?.is_some();
            if !known {
                let count = table
                    .range((owner.as_slice(), "")..)
                    .map_err(err)?
                    .take_while(|e| e.as_ref().is_ok_and(|(k, _)| k.value().0 == owner.as_slice()));
                if count.count() >= max {
                    return Ok(false);
                }
            }
            table.insert((owner.as_slice(), device.device.as_str()), encode(device)?.as_slice()).map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(true)
    }

    /// Forgets a device; whether it was registered.
    pub fn unregister_device(&self, user: &UserKey, device: &str) -> Result<bool, StoreError> {
        let txn = self.db.db().begin_write().map_err(err)?;
        let removed =
            txn.open_table(DEVICES).map_err(err)?.remove((user_bytes(user).as_slice(), device)).map_err(err)?.is_some();
        txn.commit().map_err(err)?;
        Ok(removed)
    }

    pub fn devices(&self, user: &UserKey) -> Result<Vec<Device>, StoreError> {
        let owner = user_bytes(user);
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(DEVICES).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.range((owner.as_slice(), "")..).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            if k.value().0 != owner.as_slice() {
                break;
            }
            out.push(postcard::from_bytes(v.value()).map_err(corrupt("notify_devices"))?);
        }
        Ok(out)
    }

    /// Every delivery not yet accepted (on start).
    pub fn outbox(&self) -> Result<Vec<Delivery>, StoreError> {
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(OUTBOX).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(err)? {
            let (_, v) = entry.map_err(err)?;
            out.push(postcard::from_bytes(v.value()).map_err(corrupt("notify_outbox"))?);
        }
        Ok(out)
    }

    /// The webhook accepted it.
    pub fn delivered(&self, seq: u64) -> Result<(), StoreError> {
        let txn = self.db.db().begin_write().map_err(err)?;
        txn.open_table(OUTBOX).map_err(err)?.remove(seq).map_err(err)?;
        txn.commit().map_err(err)
    }

    /// A failed call: the delivery with its next attempt.
    pub fn retry(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let txn = self.db.db().begin_write().map_err(err)?;
        txn.open_table(OUTBOX).map_err(err)?.insert(delivery.seq, encode(delivery)?.as_slice()).map_err(err)?;
        txn.commit().map_err(err)
    }

    /// The last attempt failed: out of the outbox, into the dead letters (keeping `max`).
    pub fn dead(&self, delivery: Delivery, failed_at: u64, max: u64) -> Result<(), StoreError> {
        let txn = self.db.db().begin_write().map_err(err)?;
        {
            txn.open_table(OUTBOX).map_err(err)?.remove(delivery.seq).map_err(err)?;
            let mut dead = txn.open_table(DEAD).map_err(err)?;
            dead.insert(delivery.seq, encode(&DeadLetter { delivery, failed_at })?.as_slice()).map_err(err)?;
            while dead.len().map_err(err)? > max {
                if dead.pop_first().map_err(err)?.is_none() {
                    break;
                }
            }
        }
        txn.commit().map_err(err)
    }

    /// Dead letters after `after` (a seq), oldest first, of one tenant or all.
    pub fn dead_letters(&self, tenant: Option<&str>, after: u64, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let txn = self.db.db().begin_read().map_err(err)?;
        let table = txn.open_table(DEAD).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.range(after.saturating_add(1)..).map_err(err)? {
            let (_, v) = entry.map_err(err)?;
            let letter: DeadLetter = postcard::from_bytes(v.value()).map_err(corrupt("notify_dead"))?;
            if tenant.is_none_or(|t| t == letter.delivery.tenant) {
                out.push(letter);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Deletes a dead letter; whether it existed (in `tenant`, when given).
    pub fn delete_dead(&self, seq: u64, tenant: Option<&str>) -> Result<bool, StoreError> {
        Ok(self.take_dead(seq, tenant, None)?.is_some())
    }

    /// Moves a dead letter back into the outbox, due at `now`, with its attempts reset.
    pub fn replay_dead(&self, seq: u64, tenant: Option<&str>, now: u64) -> Result<Option<Delivery>, StoreError> {
        self.take_dead(seq, tenant, Some(now))
    }

    fn take_dead(
        &self,
        seq: u64,
        tenant: Option<&str>,
        replay_at: Option<u64>,
    ) -> Result<Option<Delivery>, StoreError> {
        let txn = self.db.db().begin_write().map_err(err)?;
        let delivery = {
            let mut dead = txn.open_table(DEAD).map_err(err)?;
            let letter: Option<DeadLetter> = match dead.get(seq).map_err(err)? {
                Some(v) => Some(postcard::from_bytes(v.value()).map_err(corrupt("notify_dead"))?),
                None => None,
            };
            let Some(letter) = letter.filter(|l| tenant.is_none_or(|t| t == l.delivery.tenant)) else {
                return Ok(None);
            };
            dead.remove(seq).map_err(err)?;
            let mut delivery = letter.delivery;
            if let Some(now) = replay_at {
                delivery.attempts = 0;
                delivery.next_at = now;
                txn.open_table(OUTBOX).map_err(err)?.insert(seq, encode(&delivery)?.as_slice()).map_err(err)?;
            }
            delivery
        };
        txn.commit().map_err(err)?;
        Ok(Some(delivery))
    }
}

/// One user's part of [`NotifyStore::add_many`], inside its transaction.
fn add_in(
    txn: &redb::WriteTransaction,
    user: &UserKey,
    new: NewNotification,
    max_feed: u64,
) -> Result<Added, StoreError> {
    let owner = user_bytes(user);
    let mut feed = txn.open_table(FEED).map_err(err)?;
    let mut meta_table = txn.open_table(META).map_err(err)?;
    let mut idem = txn.open_table(IDEM).map_err(err)?;
    let mut meta = read_meta(&meta_table, &owner)?;
    if let Some(key) = &new.key
        && let Some(id) = idem.get((owner.as_slice(), key.as_str())).map_err(err)?.map(|v| v.value())
        && let Some(stored) = feed.get((owner.as_slice(), id)).map_err(err)?
    {
        let stored: Stored = postcard::from_bytes(stored.value()).map_err(corrupt("notify_feed"))?;
        return Ok(Added { notification: stored.notification, unread: meta.unread, duplicate: true, delivery: None });
    }
    meta.next_id = meta.next_id.max(1);
    let mut notification = new.notification;
    notification.id = meta.next_id;
    notification.read = false;
    meta.next_id += 1;
    meta.unread += 1;
    meta.len += 1;
    let stored = Stored { notification: notification.clone(), key: new.key.clone() };
    feed.insert((owner.as_slice(), notification.id), encode(&stored)?.as_slice()).map_err(err)?;
    if let Some(key) = &new.key {
        idem.insert((owner.as_slice(), key.as_str()), notification.id).map_err(err)?;
    }
    // The oldest go once the feed is over its length.
    while meta.len > max_feed {
        let oldest = feed.extract_from_if((owner.as_slice(), 0)..(owner.as_slice(), u64::MAX), |_, _| true);
        let Some(entry) = oldest.map_err(err)?.next() else { break };
        let (_, value) = entry.map_err(err)?;
        let dropped: Stored = postcard::from_bytes(value.value()).map_err(corrupt("notify_feed"))?;
        meta.len -= 1;
        if !dropped.notification.read {
            meta.unread = meta.unread.saturating_sub(1);
        }
        if let Some(key) = dropped.key {
            idem.remove((owner.as_slice(), key.as_str())).map_err(err)?;
        }
    }
    meta_table.insert(owner.as_slice(), encode(&meta)?.as_slice()).map_err(err)?;
    let delivery = match new.deliver_at {
        Some(next_at) => {
            let seq = next_seq(txn, "outbox")?;
            let delivery = Delivery::first(seq, user, notification.clone(), next_at);
            txn.open_table(OUTBOX).map_err(err)?.insert(seq, encode(&delivery)?.as_slice()).map_err(err)?;
            Some(delivery)
        }
        None => None,
    };
    Ok(Added { notification, unread: meta.unread, duplicate: false, delivery })
}

fn read_meta(table: &impl ReadableTable<&'static [u8], &'static [u8]>, owner: &[u8]) -> Result<Meta, StoreError> {
    match table.get(owner).map_err(err)? {
        Some(v) => postcard::from_bytes(v.value()).map_err(corrupt("notify_meta")),
        None => Ok(Meta::default()),
    }
}

fn next_seq(txn: &redb::WriteTransaction, name: &str) -> Result<u64, StoreError> {
    let mut table = txn.open_table(SEQ).map_err(err)?;
    let next = table.get(name).map_err(err)?.map_or(1, |v| v.value() + 1);
    table.insert(name, next).map_err(err)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Payload, Priority};

    fn note(title: &str) -> Notification {
        Notification {
            id: 0,
            time: 1,
            kind: "mention".into(),
            priority: Priority::Normal,
            title: title.into(),
            body: String::new(),
            data: Payload::from("null"),
            room: None,
            read: false,
            silent: false,
        }
    }

    fn add(store: &NotifyStore, user: &UserKey, title: &str, key: Option<&str>) -> Added {
        let new = NewNotification { notification: note(title), key: key.map(Into::into), deliver_at: None };
        store.add(user, new, 3).unwrap()
    }

    #[test]
    fn the_feed_pages_newest_first_drops_the_oldest_and_counts_unread() {
        let store = NotifyStore::open(SideDb::memory().unwrap()).unwrap();
        let alice = UserKey { tenant: "acme".into(), user: "alice".into() };
        let bob = UserKey { tenant: "acme".into(), user: "bob".into() };
        for i in 1..=4 {
            assert_eq!(add(&store, &alice, &format!("n{i}"), Some(&format!("k{i}"))).notification.id, i);
        }
        add(&store, &bob, "other", None);
        let (page, unread) = store.page(&alice, None, 2).unwrap();
        assert_eq!(page.iter().map(|n| n.id).collect::<Vec<_>>(), [4, 3]);
        assert_eq!(unread, 3, "n1 was dropped: the feed keeps 3");
        assert_eq!(store.page(&alice, Some(3), 10).unwrap().0.iter().map(|n| n.id).collect::<Vec<_>>(), [2]);
        // A repeated key is the original; the dropped one's key is free again.
        let again = add(&store, &alice, "again", Some("k4"));
        assert!(again.duplicate && again.notification.id == 4);
        assert!(!add(&store, &alice, "n1 again", Some("k1")).duplicate);
        assert_eq!(store.mark_read(&alice, 4, false).unwrap(), 2);
        assert_eq!(store.mark_read(&alice, 4, true).unwrap(), 1);
        assert!(matches!(store.mark_read(&alice, 1, false), Err(MarkError::Unknown(1))));
        assert!(matches!(store.mark_read(&alice, 99, true), Err(MarkError::Unknown(99))));
        assert_eq!(store.page(&bob, None, 10).unwrap().1, 1);
    }

    #[test]
    fn deliveries_move_between_outbox_and_dead_letters() {
        let store = NotifyStore::open(SideDb::memory().unwrap()).unwrap();
        let alice = UserKey { tenant: "acme".into(), user: "alice".into() };
        let new = NewNotification { notification: note("n"), key: None, deliver_at: Some(5) };
        let delivery = store.add(&alice, new, 10).unwrap().delivery.unwrap();
        assert_eq!(store.outbox().unwrap(), vec![delivery.clone()]);
        store.dead(delivery.clone(), 9, 10).unwrap();
        assert!(store.outbox().unwrap().is_empty());
        assert_eq!(store.dead_letters(Some("acme"), 0, 10).unwrap().len(), 1);
        assert!(store.dead_letters(Some("other"), 0, 10).unwrap().is_empty());
        let replayed = store.replay_dead(delivery.seq, None, 20).unwrap().unwrap();
        assert_eq!((replayed.attempts, replayed.next_at), (0, 20));
        assert_eq!(store.outbox().unwrap().len(), 1);
        assert!(!store.delete_dead(delivery.seq, None).unwrap());
    }
}
