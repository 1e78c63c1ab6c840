//! In-app notifications (docs/notifications.md): a durable feed per user, preferences, push
//! devices, and the offline webhook.
//!
//! Why this shape: the feed is the user's personal channel for notifications, so it is keyed by
//! user, not by connection, and every device reads the same one; ids grow per user, so "read up
//! to" is one number and paging is a range. Backends add notifications through the server API.
//! Whether one is *pushed* is the user's preferences' call ([`prefs`], pure); whether it goes to
//! the webhook depends on the user's connections: only when none is in the foreground. A pushed
//! notification for an offline user goes to a durable outbox with the feed entry, and
//! [`webhook`] drains it with retries and backoff, so a restart between the API's answer and the
//! call loses nothing. The relay never talks to FCM or APNs: the webhook gets the user's tokens
//! and does.
//!
//! Where the state lives is the [`backend`]'s business: this node's embedded store, or a Redis
//! region's keys ([`redis`]), where feeds, devices, the outbox and dead letters are shared, each
//! node tells the others about feed changes ([`region`]) and writes which users have a
//! foreground connection on it, so "foreground" is decided region-wide (docs/decisions.md,
//! "Notifications across a Redis region").

pub mod api;
pub mod backend;
pub mod prefs;
pub mod redis;
pub mod region;
pub mod store;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NotificationsConfig;
use crate::hub::presence::UserKey;
use crate::lock::lock;
use crate::outbox::{CONTROL, Outbox, Reply};
use crate::proto::{EncodeOnce, ErrorCode, Notification, NotifyAction, NotifyEvent, RoomName, ServerFrame};
use backend::Backend;
use store::{Delivery, Device, MarkError, NewNotification, NotifyStore};

/// Most notifications in one `feed` page.
pub const MAX_PAGE: u32 = 100;
/// Longest device id and push token.
pub const MAX_DEVICE_ID_BYTES: usize = 128;
pub const MAX_TOKEN_BYTES: usize = 4096;

/// A connection of a user on this node.
struct Conn {
    id: u64,
    outbox: Arc<Outbox>,
    /// It asked for the feed: it gets new notifications, reads and preference changes.
    listening: bool,
    /// Its app reported being in the background.
    background: bool,
}

/// What `add` did for one user.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AddResult {
    pub user: String,
    pub id: u64,
    pub duplicate: bool,
    /// The user's preferences held it back from the webhook.
    pub silent: bool,
    /// Connections of the user here that got it live.
    pub delivered_here: usize,
    /// Queued for the webhook (no foreground connection on any node, not silent, a webhook set).
    pub webhook: bool,
}

/// A notification as the server API gives it, for one or more users.
pub struct Spec {
    pub kind: String,
    pub priority: crate::proto::Priority,
    pub title: String,
    pub body: String,
    pub data: crate::proto::Payload,
    pub room: Option<RoomName>,
    pub key: Option<String>,
}

type Refusal = (ErrorCode, String);

/// A user whose foreground state here must be written for the region; the answer once it is.
type ForegroundWrite = (UserKey, Option<oneshot::Sender<()>>);

/// What a node of a Redis region shares with the others.
struct Region {
    node: String,
    /// [`region::Shared`] lines for the other nodes.
    out: mpsc::UnboundedSender<String>,
    inbound: Mutex<Option<mpsc::UnboundedReceiver<(String, String)>>>,
    /// Users whose foreground state here changed, for [`Notifications::write_foreground`].
    foreground: mpsc::UnboundedSender<ForegroundWrite>,
    foreground_rx: Mutex<Option<mpsc::UnboundedReceiver<ForegroundWrite>>>,
}

pub struct Notifications {
    config: NotificationsConfig,
    backend: Arc<dyn Backend>,
    conns: Mutex<HashMap<UserKey, Vec<Conn>>>,
    /// The webhook's queue, when one is configured.
    webhook: Option<webhook::Webhook>,
    region: Option<Region>,
    /// The store calls on the blocking pool and the region's loops (waited for when the relay
    /// stops).
    tasks: TaskTracker,
}

fn store_refusal(e: impl std::fmt::Display) -> Refusal {
    (ErrorCode::STORE_UNAVAILABLE, e.to_string())
}

impl Notifications {
    /// On this node's embedded store; `config` is validated. Loads the deliveries a previous run
    /// left in the outbox.
    pub fn new(
        config: &NotificationsConfig,
        store: NotifyStore,
    ) -> Result<Arc<Notifications>, crate::store::StoreError> {
        let tasks = TaskTracker::new();
        let embedded = backend::Embedded::new(store, tasks.clone());
        let left = embedded.outbox()?;
        Ok(Self::with(config, Arc::new(embedded), left, tasks, None))
    }

    /// On a Redis region's keys, sharing feed events over `link` (the engine's notifications
    /// channel).
    pub fn region(
        config: &NotificationsConfig,
        backend: redis::RedisNotify,
        link: crate::engine::CallLink,
    ) -> Arc<Notifications> {
        let (foreground, foreground_rx) = mpsc::unbounded_channel();
        let region = Region {
            node: link.node,
            out: link.out,
            inbound: Mutex::new(Some(link.inbound)),
            foreground,
            foreground_rx: Mutex::new(Some(foreground_rx)),
        };
        Self::with(config, Arc::new(backend), Vec::new(), TaskTracker::new(), Some(region))
    }

    fn with(
        config: &NotificationsConfig,
        backend: Arc<dyn Backend>,
        left: Vec<Delivery>,
        tasks: TaskTracker,
        region: Option<Region>,
    ) -> Arc<Notifications> {
        let webhook = webhook::Webhook::new(config, backend.clone(), left);
        Arc::new(Notifications { config: config.clone(), backend, conns: Mutex::default(), webhook, region, tasks })
    }

    /// Delivers the outbox to the webhook until `stop` (nothing to do without one) and, in a
    /// region, follows the other nodes' events and keeps this node's foreground users written;
    /// then waits for the store calls in flight.
    pub async fn run(self: Arc<Self>, now: fn() -> u64, stop: CancellationToken) {
        if let Some(region) = &self.region {
            if let Some(inbound) = lock(&region.inbound).take() {
                self.tasks.spawn(self.clone().listen(inbound, stop.clone()));
            }
            if let Some(writes) = lock(&region.foreground_rx).take() {
                self.tasks.spawn(self.clone().write_foreground(writes, now, stop.clone()));
            }
        }
        if let Some(webhook) = &self.webhook {
            webhook.run(now, stop).await;
        } else {
            stop.cancelled().await;
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Other nodes' feed events, to this node's listening connections.
    async fn listen(self: Arc<Self>, mut inbound: mpsc::UnboundedReceiver<(String, String)>, stop: CancellationToken) {
        while let Some((node, text)) = stop.run_until_cancelled(inbound.recv()).await.flatten() {
            match serde_json::from_str::<region::Shared>(&text) {
                Ok(shared) => {
                    self.broadcast_here(&shared.user(), None, shared.event);
                }
                Err(error) => tracing::warn!(%node, %error, "undecodable notifications event from another node"),
            }
        }
    }

    /// Writes, one user at a time in the order asked, whether the user has a foreground
    /// connection here (read when written, so the last write is the current state), and every
    /// third of `foreground_ttl_ms` renews every foreground user's; at `stop`, takes them back.
    async fn write_foreground(
        self: Arc<Self>,
        mut writes: mpsc::UnboundedReceiver<ForegroundWrite>,
        now: fn() -> u64,
        stop: CancellationToken,
    ) {
        let Some(node) = self.region.as_ref().map(|r| r.node.clone()) else { return };
        let ttl = self.config.foreground_ttl_ms;
        let mut renew = tokio::time::interval(Duration::from_millis((ttl / 3).max(1)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut written: HashSet<UserKey> = HashSet::new();
        loop {
            let (users, done) = tokio::select! {
                _ = stop.cancelled() => break,
                _ = renew.tick() => (written.iter().cloned().collect::<Vec<_>>(), None),
                write = writes.recv() => match write {
                    Some((user, done)) => (vec![user], done),
                    None => break,
                },
            };
            let (fore, back): (Vec<UserKey>, Vec<UserKey>) = users.into_iter().partition(|u| self.foreground(u));
            for (users, until) in [(fore, Some(now() + ttl)), (back, None)] {
                if users.is_empty() {
                    continue;
                }
                if let Err(error) = self.backend.set_foreground(users.clone(), node.clone(), until).await {
                    tracing::warn!(%error, "notifications: writing foreground users");
                }
                for user in users {
                    if until.is_some() {
                        written.insert(user);
                    } else {
                        written.remove(&user);
                    }
                }
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
        if !written.is_empty() {
            let _ = self.backend.set_foreground(written.into_iter().collect(), node, None).await;
        }
    }

    /// In a region: has the user's foreground state here written (awaited with `wait`).
    async fn share_foreground(&self, user: &UserKey, wait: bool) {
        let Some(region) = &self.region else { return };
        let (tx, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if region.foreground.send((user.clone(), tx)).is_ok()
            && let Some(rx) = rx
        {
            let _ = rx.await;
        }
    }

    /// `notifications` frames per second per connection, and burst.
    pub fn rate(&self) -> (u32, u32) {
        (self.config.rate, self.config.burst)
    }

    /// A connection of the user authenticated on this node.
    pub fn connected(&self, user: &UserKey, id: u64, outbox: Arc<Outbox>) {
        let conn = Conn { id, outbox, listening: false, background: false };
        lock(&self.conns).entry(user.clone()).or_default().push(conn);
        if let Some(region) = &self.region {
            let _ = region.foreground.send((user.clone(), None));
        }
    }

    /// The connection ended.
    pub fn disconnected(&self, user: &UserKey, id: u64) {
        let mut conns = lock(&self.conns);
        if let Some(list) = conns.get_mut(user) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                conns.remove(user);
            }
        }
        drop(conns);
        if let Some(region) = &self.region {
            let _ = region.foreground.send((user.clone(), None));
        }
    }

    /// Whether one of the user's connections here is in the foreground.
    fn foreground(&self, user: &UserKey) -> bool {
        lock(&self.conns).get(user).is_some_and(|list| list.iter().any(|c| !c.background))
    }

    /// Sets a flag on one connection of the user.
    fn with_conn(&self, user: &UserKey, id: u64, f: impl FnOnce(&mut Conn)) {
        if let Some(conn) = lock(&self.conns).get_mut(user).and_then(|l| l.iter_mut().find(|c| c.id == id)) {
            f(conn);
        }
    }

    /// Sends `event` (`req` 0) to the user's listening connections here but `except`, and to
    /// the other nodes of a region; how many here.
    fn broadcast(&self, user: &UserKey, except: Option<u64>, event: NotifyEvent) -> usize {
        if let Some(region) = &self.region
            && let Ok(line) = serde_json::to_string(&region::Shared::new(user, event.clone()))
        {
            let _ = region.out.send(line);
        }
        self.broadcast_here(user, except, event)
    }

    /// Sends `event` (`req` 0) to the user's listening connections here but `except`; how many.
    fn broadcast_here(&self, user: &UserKey, except: Option<u64>, event: NotifyEvent) -> usize {
        let frame = ServerFrame::Notifications { req: 0, event };
        let mut encoded = EncodeOnce::new(&frame);
        let conns = lock(&self.conns);
        let mut sent = 0;
        for conn in conns.get(user).into_iter().flatten().filter(|c| c.listening && Some(c.id) != except) {
            // A closing outbox needs nothing more.
            if conn.outbox.push(CONTROL, encoded.get(conn.outbox.codec())).is_ok() {
                sent += 1;
            }
        }
        sent
    }

    /// A `notifications` action of connection `conn`; the answer (or error) goes to `reply`.
    pub async fn handle(&self, user: UserKey, conn: u64, action: NotifyAction, mut reply: Reply) {
        let req = reply.req();
        let frame = match self.act(&user, conn, action).await {
            Ok(event) => ServerFrame::Notifications { req, event },
            Err((code, message)) => {
                metrics::counter!(crate::metrics::ERRORS_TOTAL, "code" => code.slug()).increment(1);
                ServerFrame::error(req, code, message)
            }
        };
        let _ = reply.send(&frame);
    }

    async fn act(&self, user: &UserKey, conn: u64, action: NotifyAction) -> Result<NotifyEvent, Refusal> {
        match action {
            NotifyAction::Feed { before, limit } => {
                if !(1..=MAX_PAGE).contains(&limit) {
                    return Err((ErrorCode::BAD_PAGE, format!("limit must be 1-{MAX_PAGE}")));
                }
                // Listening first: a notification added while the page is read is not missed.
                self.with_conn(user, conn, |c| c.listening = true);
                // From the answer on, every node knows whether this user is in the foreground.
                self.share_foreground(user, true).await;
                let (mut notifications, unread) =
                    self.backend.page(user.clone(), before, limit as usize + 1).await.map_err(store_refusal)?;
                let next = (notifications.len() > limit as usize).then(|| {
                    notifications.truncate(limit as usize);
                    notifications.last().map_or(0, |n| n.id)
                });
                Ok(NotifyEvent::Page { notifications, unread, next })
            }
            NotifyAction::MarkRead { id, up_to } => {
                let unread = match self.backend.mark_read(user.clone(), id, up_to).await {
                    Ok(unread) => unread,
                    Err(MarkError::Unknown(id)) => {
                        return Err((ErrorCode::UNKNOWN_NOTIFICATION, format!("no notification {id} in the feed")));
                    }
                    Err(MarkError::Store(e)) => return Err(store_refusal(e)),
                };
                self.broadcast(user, Some(conn), NotifyEvent::Read { id, up_to, unread });
                Ok(NotifyEvent::Read { id, up_to, unread })
            }
            NotifyAction::Prefs { set: None } => {
                let prefs = self.backend.prefs_many(vec![user.clone()]).await.map_err(store_refusal)?;
                Ok(NotifyEvent::Prefs { prefs: prefs.into_iter().next().unwrap_or_default() })
            }
            NotifyAction::Prefs { set: Some(prefs) } => {
                prefs::check(&prefs, self.config.max_mutes as usize).map_err(|m| (ErrorCode::BAD_PREFS, m))?;
                self.backend.set_prefs(user.clone(), prefs.clone()).await.map_err(store_refusal)?;
                self.broadcast(user, Some(conn), NotifyEvent::Prefs { prefs: prefs.clone() });
                Ok(NotifyEvent::Prefs { prefs })
            }
            NotifyAction::RegisterDevice { device, platform, token } => {
                if device.is_empty()
                    || device.len() > MAX_DEVICE_ID_BYTES
                    || token.is_empty()
                    || token.len() > MAX_TOKEN_BYTES
                {
                    let message =
                        format!("device id of 1-{MAX_DEVICE_ID_BYTES} bytes and token of 1-{MAX_TOKEN_BYTES} bytes");
                    return Err((ErrorCode::BAD_DEVICE, message));
                }
                let max = self.config.max_devices as usize;
                let device = Device { device, platform, token };
                if !self.backend.register_device(user.clone(), device, max).await.map_err(store_refusal)? {
                    return Err((ErrorCode::TOO_MANY_DEVICES, format!("at most {max} devices per user")));
                }
                Ok(NotifyEvent::Ok {})
            }
            NotifyAction::UnregisterDevice { device } => {
                let shown = device.clone();
                if !self.backend.unregister_device(user.clone(), device).await.map_err(store_refusal)? {
                    return Err((ErrorCode::UNKNOWN_DEVICE, format!("no device {shown:?} registered")));
                }
                Ok(NotifyEvent::Ok {})
            }
            NotifyAction::Background { background } => {
                self.with_conn(user, conn, |c| c.background = background);
                self.share_foreground(user, true).await;
                Ok(NotifyEvent::Ok {})
            }
        }
    }

    /// Adds a notification to each user's feed (server API), all in one commit; `now_ms` is the
    /// wall clock.
    pub async fn add(
        &self,
        tenant: &str,
        users: Vec<String>,
        spec: Spec,
        now_ms: u64,
    ) -> Result<Vec<AddResult>, Refusal> {
        let keys: Vec<UserKey> =
            users.iter().map(|name| UserKey { tenant: tenant.into(), user: name.as_str().into() }).collect();
        let prefs = self.backend.prefs_many(keys.clone()).await.map_err(store_refusal)?;
        let elsewhere = self.foreground_elsewhere(&keys, now_ms).await;
        let room = spec.room.as_ref().map(RoomName::as_str);
        let batch: Vec<(UserKey, NewNotification)> = keys
            .into_iter()
            .zip(prefs)
            .zip(elsewhere)
            .map(|((user, prefs), elsewhere)| {
                let silent = prefs::decide(&prefs, room, &spec.kind, spec.priority, now_ms).is_err();
                let webhook = self.webhook.is_some() && !silent && !elsewhere && !self.foreground(&user);
                let notification = Notification {
                    id: 0,
                    time: now_ms,
                    kind: spec.kind.clone(),
                    priority: spec.priority,
                    title: spec.title.clone(),
                    body: spec.body.clone(),
                    data: spec.data.clone(),
                    room: room.map(str::to_owned),
                    read: false,
                    silent,
                };
                let new =
                    NewNotification { notification, key: spec.key.clone(), deliver_at: webhook.then_some(now_ms) };
                (user, new)
            })
            .collect();
        let targets: Vec<UserKey> = batch.iter().map(|(user, _)| user.clone()).collect();
        let max_feed = u64::from(self.config.max_feed);
        let added = self.backend.add_many(batch, max_feed).await.map_err(store_refusal)?;
        let mut results = Vec::with_capacity(added.len());
        for ((user, name), added) in targets.iter().zip(users).zip(added) {
            let mut delivered_here = 0;
            if !added.duplicate {
                let event = NotifyEvent::New { notification: added.notification.clone(), unread: added.unread };
                delivered_here = self.broadcast(user, None, event);
            }
            let queued = added.delivery.is_some();
            if let (Some(webhook), Some(delivery)) = (&self.webhook, added.delivery) {
                webhook.queue(delivery);
            }
            results.push(AddResult {
                user: name,
                id: added.notification.id,
                duplicate: added.duplicate,
                silent: added.notification.silent,
                delivered_here,
                webhook: queued,
            });
        }
        Ok(results)
    }

    /// In a region, whether each user has a foreground connection on another node (only asked
    /// when a webhook is set). Unknown (Redis failing) counts as no: the push goes out.
    async fn foreground_elsewhere(&self, users: &[UserKey], now_ms: u64) -> Vec<bool> {
        let (Some(region), Some(_)) = (&self.region, &self.webhook) else { return vec![false; users.len()] };
        match self.backend.foreground_elsewhere(users.to_vec(), region.node.clone(), now_ms).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "notifications: reading other nodes' foreground users");
                vec![false; users.len()]
            }
        }
    }

    /// Dead letters after `after`, of one tenant or all (server API).
    pub async fn dead_letters(
        &self,
        tenant: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<store::DeadLetter>, Refusal> {
        self.backend.dead_letters(tenant, after, limit).await.map_err(store_refusal)
    }

    /// Deletes a dead letter; whether there was one.
    pub async fn delete_dead(&self, seq: u64, tenant: Option<String>) -> Result<bool, Refusal> {
        self.backend.delete_dead(seq, tenant).await.map_err(store_refusal)
    }

    /// Queues a dead letter again with fresh attempts; whether there was one.
    pub async fn replay_dead(&self, seq: u64, tenant: Option<String>, now_ms: u64) -> Result<bool, Refusal> {
        let delivery = self.backend.replay_dead(seq, tenant, now_ms).await.map_err(store_refusal)?;
        match (delivery, &self.webhook) {
            (Some(delivery), Some(webhook)) => {
                webhook.queue(delivery);
                Ok(true)
            }
            (delivery, _) => Ok(delivery.is_some()),
        }
    }
}
