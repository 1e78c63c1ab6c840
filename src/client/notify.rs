//! In-app notifications in the Rust client (docs/notifications.md): the `notifications`
//! requests. Updates (`req` 0: new notifications, reads and preference changes made elsewhere)
//! arrive as [`Event::Notifications`] once this connection asked for the feed.

use super::{Client, ClientError, Event, Route, unexpected};
use crate::proto::{ClientFrame, Notification, NotifyAction, NotifyEvent, NotifyPrefs, PushPlatform, ServerFrame};

/// A page of the feed, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    pub notifications: Vec<Notification>,
    pub unread: u64,
    /// The `before` of the next (older) page; `None` at the end.
    pub next: Option<u64>,
}

impl Client {
    async fn notify_request(&self, action: NotifyAction) -> Result<NotifyEvent, ClientError> {
        match self.request(Route::Control, |req| ClientFrame::Notifications { req, action }).await? {
            ServerFrame::Notifications { event, .. } => Ok(event),
            other => Err(unexpected("notifications", &other)),
        }
    }

    /// A page of the feed (ids below `before`, the newest when `None`); this connection then
    /// gets new notifications, reads and preference changes as [`Event::Notifications`].
    pub async fn feed(&self, before: Option<u64>, limit: u32) -> Result<FeedPage, ClientError> {
        match self.notify_request(NotifyAction::Feed { before, limit }).await? {
            NotifyEvent::Page { notifications, unread, next } => Ok(FeedPage { notifications, unread, next }),
            other => Err(ClientError::Protocol(format!("expected page, got {other:?}"))),
        }
    }

    /// Marks notification `id` read (with `up_to`, every one up to it); the unread count after.
    pub async fn mark_notifications_read(&self, id: u64, up_to: bool) -> Result<u64, ClientError> {
        match self.notify_request(NotifyAction::MarkRead { id, up_to }).await? {
            NotifyEvent::Read { unread, .. } => Ok(unread),
            other => Err(ClientError::Protocol(format!("expected read, got {other:?}"))),
        }
    }

    /// The user's notification preferences, replaced by `set` when given.
    pub async fn notify_prefs(&self, set: Option<NotifyPrefs>) -> Result<NotifyPrefs, ClientError> {
        match self.notify_request(NotifyAction::Prefs { set }).await? {
            NotifyEvent::Prefs { prefs } => Ok(prefs),
            other => Err(ClientError::Protocol(format!("expected prefs, got {other:?}"))),
        }
    }

    /// Registers this device's push token.
    pub async fn register_device(&self, device: &str, platform: PushPlatform, token: &str) -> Result<(), ClientError> {
        let action = NotifyAction::RegisterDevice { device: device.into(), platform, token: token.into() };
        self.notify_request(action).await.map(drop)
    }

    /// Forgets a device's push token.
    pub async fn unregister_device(&self, device: &str) -> Result<(), ClientError> {
        self.notify_request(NotifyAction::UnregisterDevice { device: device.into() }).await.map(drop)
    }

    /// Reports the app in the background (`true`) or back in the foreground.
    pub async fn set_background(&self, background: bool) -> Result<(), ClientError> {
        self.notify_request(NotifyAction::Background { background }).await.map(drop)
    }

    /// The next notifications update, skipping other events.
    pub async fn next_notification_event(&mut self) -> Result<NotifyEvent, ClientError> {
        self.next_of(|event| match event {
            Event::Notifications(e) => Some(e),
            _ => None,
        })
        .await
    }
}
