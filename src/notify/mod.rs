//! In-app notifications (docs/notifications.md): a durable feed per user, preferences, push
//! devices, and the offline webhook.
//!
//! Why this shape: the feed is the user's personal channel for notifications, so it is keyed by
//! user, not by connection, and every device reads the same one; ids grow per user, so "read up
//! to" is one number and paging is a range. Backends add notifications through the server API.
//! Whether one is *pushed* is the user's preferences' call ([`prefs`], pure); whether it goes to
//! the webhook is this node's: only when none of the user's connections here is in the
//! foreground. A pushed notification for an offline user is written to a durable outbox in the
//! same commit as the feed entry ([`store`]), and [`webhook`] drains it with retries and
//! backoff, so a restart between the API's answer and the call loses nothing. The relay never
//! talks to FCM or APNs: the webhook gets the user's tokens and does.
//!
//! Per node: connections are known only to the node that holds them; the stores are the
//! relay's embedded store (docs/decisions.md, "Notifications").

pub mod api;
pub mod prefs;
pub mod store;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::task::TaskTracker;

use crate::config::NotificationsConfig;
use crate::hub::presence::UserKey;
use crate::lock::lock;
use crate::outbox::{CONTROL, Outbox, Reply};
use crate::proto::{EncodeOnce, ErrorCode, Notification, NotifyAction, NotifyEvent, RoomName, ServerFrame};
use store::{Device, MarkError, NewNotification, NotifyStore};

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
    /// Queued for the webhook (no foreground connection here, not silent, a webhook set).
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

pub struct Notifications {
    config: NotificationsConfig,
    store: Arc<NotifyStore>,
    conns: Mutex<HashMap<UserKey, Vec<Conn>>>,
    /// The webhook's queue, when one is configured.
    webhook: Option<webhook::Webhook>,
    /// The store calls running on the blocking pool (waited for when the relay stops).
    tasks: TaskTracker,
}

fn store_refusal(e: impl std::fmt::Display) -> Refusal {
    (ErrorCode::STORE_UNAVAILABLE, e.to_string())
}

impl Notifications {
    /// `config` is validated. Loads the deliveries a previous run left in the outbox.
    pub fn new(
        config: &NotificationsConfig,
        store: NotifyStore,
    ) -> Result<Arc<Notifications>, crate::store::StoreError> {
        let store = Arc::new(store);
        let tasks = TaskTracker::new();
        let webhook = webhook::Webhook::new(config, store.clone(), tasks.clone())?;
        Ok(Arc::new(Notifications { config: config.clone(), store, conns: Mutex::default(), webhook, tasks }))
    }

    /// Delivers the outbox to the webhook until `stop` (nothing to do without one), then waits
    /// for the store calls in flight.
    pub async fn run(self: Arc<Self>, now: fn() -> u64, stop: tokio_util::sync::CancellationToken) {
        if let Some(webhook) = &self.webhook {
            webhook.run(now, stop).await;
        } else {
            stop.cancelled().await;
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Runs a blocking store call off the runtime's threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&NotifyStore) -> T + Send + 'static,
    ) -> Result<T, Refusal> {
        let store = self.store.clone();
        self.tasks.spawn_blocking(move || f(&store)).await.map_err(|e| (ErrorCode::INTERNAL, e.to_string()))
    }

    /// `notifications` frames per second per connection, and burst.
    pub fn rate(&self) -> (u32, u32) {
        (self.config.rate, self.config.burst)
    }

    /// A connection of the user authenticated on this node.
    pub fn connected(&self, user: &UserKey, id: u64, outbox: Arc<Outbox>) {
        let conn = Conn { id, outbox, listening: false, background: false };
        lock(&self.conns).entry(user.clone()).or_default().push(conn);
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

    /// Sends `event` (`req` 0) to the user's listening connections here but `except`; how many.
    fn broadcast(&self, user: &UserKey, except: Option<u64>, event: NotifyEvent) -> usize {
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
                let who = user.clone();
                let (mut notifications, unread) =
                    self.blocking(move |s| s.page(&who, before, limit as usize + 1)).await?.map_err(store_refusal)?;
                let next = (notifications.len() > limit as usize).then(|| {
                    notifications.truncate(limit as usize);
                    notifications.last().map_or(0, |n| n.id)
                });
                Ok(NotifyEvent::Page { notifications, unread, next })
            }
            NotifyAction::MarkRead { id, up_to } => {
                let who = user.clone();
                let unread = match self.blocking(move |s| s.mark_read(&who, id, up_to)).await? {
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
                let who = user.clone();
                let prefs = self.blocking(move |s| s.prefs(&who)).await?.map_err(store_refusal)?;
                Ok(NotifyEvent::Prefs { prefs })
            }
            NotifyAction::Prefs { set: Some(prefs) } => {
                prefs::check(&prefs, self.config.max_mutes as usize).map_err(|m| (ErrorCode::BAD_PREFS, m))?;
                let (who, saved) = (user.clone(), prefs.clone());
                self.blocking(move |s| s.set_prefs(&who, &saved)).await?.map_err(store_refusal)?;
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
                let (who, max) = (user.clone(), self.config.max_devices as usize);
                let device = Device { device, platform, token };
                if !self.blocking(move |s| s.register_device(&who, &device, max)).await?.map_err(store_refusal)? {
                    return Err((ErrorCode::TOO_MANY_DEVICES, format!("at most {max} devices per user")));
                }
                Ok(NotifyEvent::Ok {})
            }
            NotifyAction::UnregisterDevice { device } => {
                let who = user.clone();
                let shown = device.clone();
                if !self.blocking(move |s| s.unregister_device(&who, &device)).await?.map_err(store_refusal)? {
                    return Err((ErrorCode::UNKNOWN_DEVICE, format!("no device {shown:?} registered")));
                }
                Ok(NotifyEvent::Ok {})
            }
            NotifyAction::Background { background } => {
                self.with_conn(user, conn, |c| c.background = background);
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
        let who = keys.clone();
        let prefs = self.blocking(move |s| s.prefs_many(&who)).await?.map_err(store_refusal)?;
        let room = spec.room.as_ref().map(RoomName::as_str);
        let batch: Vec<(UserKey, NewNotification)> = keys
            .into_iter()
            .zip(prefs)
            .map(|(user, prefs)| {
                let silent = prefs::decide(&prefs, room, &spec.kind, spec.priority, now_ms).is_err();
                let webhook = self.webhook.is_some() && !silent && !self.foreground(&user);
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
        let added = self.blocking(move |s| s.add_many(batch, max_feed)).await?.map_err(store_refusal)?;
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

    /// Dead letters after `after`, of one tenant or all (server API).
    pub async fn dead_letters(
        &self,
        tenant: Option<String>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<store::DeadLetter>, Refusal> {
        self.blocking(move |s| s.dead_letters(tenant.as_deref(), after, limit)).await?.map_err(store_refusal)
    }

    /// Deletes a dead letter; whether there was one.
    pub async fn delete_dead(&self, seq: u64, tenant: Option<String>) -> Result<bool, Refusal> {
        self.blocking(move |s| s.delete_dead(seq, tenant.as_deref())).await?.map_err(store_refusal)
    }

    /// Queues a dead letter again with fresh attempts; whether there was one.
    pub async fn replay_dead(&self, seq: u64, tenant: Option<String>, now_ms: u64) -> Result<bool, Refusal> {
        let delivery =
            self.blocking(move |s| s.replay_dead(seq, tenant.as_deref(), now_ms)).await?.map_err(store_refusal)?;
        match (delivery, &self.webhook) {
            (Some(delivery), Some(webhook)) => {
                webhook.queue(delivery);
                Ok(true)
            }
            (delivery, _) => Ok(delivery.is_some()),
        }
    }
}
