//! Where the notifications service keeps users' feeds, preferences, devices, the webhook outbox
//! and the dead letters: [`Backend`], implemented by [`Embedded`] (this node's redb tables,
//! [`super::store`]) and by [`super::redis::RedisNotify`] (a Redis region's keys).
//!
//! Why a trait: the service above it (feed rules, live frames, the webhook's calls and retries)
//! is the same on one node and in a region, as it is for receipts; only where the state lives
//! and who may take a delivery differ. Every call is async: the embedded store runs its
//! blocking transactions on the blocking pool (tracked, so a stopping relay waits for them).

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio_util::task::TaskTracker;

use super::store::{Added, DeadLetter, Delivery, Device, MarkError, NewNotification, NotifyStore};
use crate::hub::presence::UserKey;
use crate::proto::{Notification, NotifyPrefs};
use crate::store::StoreError;

pub type Fut<'a, T, E = StoreError> = BoxFuture<'a, Result<T, E>>;

pub trait Backend: Send + Sync + 'static {
    /// Adds each notification to its user's feed (trimming to `max_feed`) and queues the
    /// webhook deliveries asked for; a known key returns the original.
    fn add_many(&self, batch: Vec<(UserKey, NewNotification)>, max_feed: u64) -> Fut<'_, Vec<Added>>;
    /// Each user's preferences (defaults for those who set none).
    fn prefs_many(&self, users: Vec<UserKey>) -> Fut<'_, Vec<NotifyPrefs>>;
    /// Up to `limit` notifications with ids below `before`, newest first; the unread count.
    fn page(&self, user: UserKey, before: Option<u64>, limit: usize) -> Fut<'_, (Vec<Notification>, u64)>;
    /// Marks `id` (with `up_to`: every one up to it) read; the unread count after.
    fn mark_read(&self, user: UserKey, id: u64, up_to: bool) -> Fut<'_, u64, MarkError>;
    fn set_prefs(&self, user: UserKey, prefs: NotifyPrefs) -> Fut<'_, ()>;
    /// Registers (or replaces) a device; `false` when the user has `max` other devices.
    fn register_device(&self, user: UserKey, device: Device, max: usize) -> Fut<'_, bool>;
    /// Forgets a device; whether it was registered.
    fn unregister_device(&self, user: UserKey, device: String) -> Fut<'_, bool>;
    fn devices(&self, user: UserKey) -> Fut<'_, Vec<Device>>;
    /// Dead letters after `after` (a seq), oldest first, of one tenant or all.
    fn dead_letters(&self, tenant: Option<String>, after: u64, limit: usize) -> Fut<'_, Vec<DeadLetter>>;
    /// Deletes a dead letter (of `tenant`, when given); whether there was one.
    fn delete_dead(&self, seq: u64, tenant: Option<String>) -> Fut<'_, bool>;
    /// Queues a dead letter again, due at `now`, attempts reset.
    fn replay_dead(&self, seq: u64, tenant: Option<String>, now: u64) -> Fut<'_, Option<Delivery>>;
    /// The webhook answered 2xx: the delivery leaves the outbox.
    fn delivered(&self, delivery: Delivery) -> Fut<'_, ()>;
    /// A failed call: the delivery with its attempts and next time, kept for later.
    fn retry(&self, delivery: Delivery) -> Fut<'_, ()>;
    /// The last attempt failed: out of the outbox, into the dead letters (keeping `max`).
    fn dead(&self, delivery: Delivery, failed_at: u64, max: u64) -> Fut<'_, ()>;

    /// Whether the outbox is shared by a region: deliveries are then taken with [`Backend::pull`]
    /// rather than handed over by the node that queued them.
    fn shared(&self) -> bool {
        false
    }

    /// A region's outbox: keeps the entries this node holds (`held`, so no other node takes
    /// them over), takes over those a silent node held too long (`claim`), and takes up to
    /// `max` new ones.
    fn pull(&self, held: Vec<String>, claim: bool, max: usize) -> Fut<'_, Vec<Delivery>> {
        let _ = (held, claim, max);
        async { Ok(Vec::new()) }.boxed()
    }

    /// Records whether one of the user's connections on `node` is in the foreground (until
    /// `until`, unix ms), for the other nodes of a region; nothing to do on one node.
    fn set_foreground(&self, users: Vec<UserKey>, node: String, until: Option<u64>) -> Fut<'_, ()> {
        let _ = (users, node, until);
        async { Ok(()) }.boxed()
    }

    /// Whether another node than `node` has one of each user's connections in the foreground
    /// at `now`; all `false` on one node.
    fn foreground_elsewhere(&self, users: Vec<UserKey>, node: String, now: u64) -> Fut<'_, Vec<bool>> {
        let _ = (node, now);
        async move { Ok(vec![false; users.len()]) }.boxed()
    }
}

/// The node's embedded store.
pub struct Embedded {
    store: Arc<NotifyStore>,
    tasks: TaskTracker,
}

impl Embedded {
    pub fn new(store: NotifyStore, tasks: TaskTracker) -> Embedded {
        Embedded { store: Arc::new(store), tasks }
    }

    /// The deliveries a previous run left in the outbox.
    pub fn outbox(&self) -> Result<Vec<Delivery>, StoreError> {
        self.store.outbox()
    }

    /// Runs a blocking store call off the runtime's threads.
    fn blocking<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(&NotifyStore) -> Result<T, E> + Send + 'static,
    ) -> Fut<'static, T, E> {
        let store = self.store.clone();
        let call = self.tasks.spawn_blocking(move || f(&store));
        async move { call.await.map_err(|e| E::from(StoreError::Backend(e.to_string())))? }.boxed()
    }
}

impl Backend for Embedded {
    fn add_many(&self, batch: Vec<(UserKey, NewNotification)>, max_feed: u64) -> Fut<'_, Vec<Added>> {
        self.blocking(move |s| s.add_many(batch, max_feed))
    }

    fn prefs_many(&self, users: Vec<UserKey>) -> Fut<'_, Vec<NotifyPrefs>> {
        self.blocking(move |s| s.prefs_many(&users))
    }

    fn page(&self, user: UserKey, before: Option<u64>, limit: usize) -> Fut<'_, (Vec<Notification>, u64)> {
        self.blocking(move |s| s.page(&user, before, limit))
    }

    fn mark_read(&self, user: UserKey, id: u64, up_to: bool) -> Fut<'_, u64, MarkError> {
        self.blocking(move |s| s.mark_read(&user, id, up_to))
    }

    fn set_prefs(&self, user: UserKey, prefs: NotifyPrefs) -> Fut<'_, ()> {
        self.blocking(move |s| s.set_prefs(&user, &prefs))
    }

    fn register_device(&self, user: UserKey, device: Device, max: usize) -> Fut<'_, bool> {
        self.blocking(move |s| s.register_device(&user, &device, max))
    }

    fn unregister_device(&self, user: UserKey, device: String) -> Fut<'_, bool> {
        self.blocking(move |s| s.unregister_device(&user, &device))
    }

    fn devices(&self, user: UserKey) -> Fut<'_, Vec<Device>> {
        self.blocking(move |s| s.devices(&user))
    }

    fn dead_letters(&self, tenant: Option<String>, after: u64, limit: usize) -> Fut<'_, Vec<DeadLetter>> {
        self.blocking(move |s| s.dead_letters(tenant.as_deref(), after, limit))
    }

    fn delete_dead(&self, seq: u64, tenant: Option<String>) -> Fut<'_, bool> {
        self.blocking(move |s| s.delete_dead(seq, tenant.as_deref()))
    }

    fn replay_dead(&self, seq: u64, tenant: Option<String>, now: u64) -> Fut<'_, Option<Delivery>> {
        self.blocking(move |s| s.replay_dead(seq, tenant.as_deref(), now))
    }

    fn delivered(&self, delivery: Delivery) -> Fut<'_, ()> {
        self.blocking(move |s| s.delivered(delivery.seq))
    }

    fn retry(&self, delivery: Delivery) -> Fut<'_, ()> {
        self.blocking(move |s| s.retry(&delivery))
    }

    fn dead(&self, delivery: Delivery, failed_at: u64, max: u64) -> Fut<'_, ()> {
        self.blocking(move |s| s.dead(delivery, failed_at, max))
    }
}
