//! The wire form of in-app notifications (docs/notifications.md): what a `notifications` frame
//! asks (`NotifyAction`) and what a relay's `notifications` frame tells (`NotifyEvent`). One
//! frame type per direction with a nested action or event, as receipts do; the feature grows by
//! appending actions and events here. The rules (feed length, what is pushed, the webhook) are
//! `crate::notify`'s.

use serde::{Deserialize, Serialize};

use super::payload::Payload;

/// How much a notification matters. Ordered: a user's `min_priority` lets through this level
/// and above; quiet hours hold back everything below `urgent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

/// One entry of a user's feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Per user, increasing: newer notifications have higher ids.
    pub id: u64,
    /// Unix ms when the relay accepted it.
    pub time: u64,
    /// The backend's type (`mention`, `invite`, ...): what `skip_types` matches. `type` on the
    /// wire.
    #[serde(rename = "type")]
    pub kind: String,
    pub priority: Priority,
    pub title: String,
    pub body: String,
    /// Any JSON the backend attached (`null` when none).
    pub data: Payload,
    /// The room it is about, if any: what a mute matches.
    pub room: Option<String>,
    pub read: bool,
    /// The user's preferences held it back from pushes and webhooks (muted room, quiet hours,
    /// below `min_priority`, skipped type): it only lands in the feed and counts.
    pub silent: bool,
}

/// A room muted until a time (unix ms) or, without `until`, until unmuted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mute {
    pub room: String,
    pub until: Option<u64>,
}

/// Daily quiet hours: from `start` to `end` (`HH:MM`, 24 h; `end` before `start` spans
/// midnight) in the IANA time zone `tz` (e.g. `Europe/Berlin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    pub start: String,
    pub end: String,
    pub tz: String,
}

/// A user's notification preferences, shared by all its devices.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NotifyPrefs {
    pub mutes: Vec<Mute>,
    pub quiet_hours: Option<QuietHours>,
    pub min_priority: Priority,
    /// Types that are never pushed (they still land in the feed).
    pub skip_types: Vec<String>,
}

/// A push service a device token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushPlatform {
    Fcm,
    Apns,
}

/// What a client asks in a `notifications` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyAction {
    /// A page of the feed, newest first: at most `limit` (1-100) notifications with ids below
    /// `before` (a page's `next`; the newest when absent). Answered by `page`. From then on this
    /// connection also gets new notifications, reads and preference changes as they happen.
    Feed { before: Option<u64>, limit: u32 },
    /// Marks notification `id` read, or with `up_to` every notification up to and including it.
    /// Answered by `read` once durable; the user's other listening devices get the same `read`.
    MarkRead { id: u64, up_to: bool },
    /// Replaces the preferences (`set`), or only reads them (absent). Answered by `prefs`; a
    /// change reaches the user's other listening devices as `prefs` too.
    Prefs { set: Option<NotifyPrefs> },
    /// Registers this device's push token (replacing the device's previous one); this
    /// connection is then that device. Answered by `ok`.
    RegisterDevice { device: String, platform: PushPlatform, token: String },
    /// Forgets a device's push token. Answered by `ok`.
    UnregisterDevice { device: String },
    /// This connection's app went to the background (`true`) or came back (`false`). While
    /// every connection of the user is in the background, notifications go to the webhook.
    /// Answered by `ok`.
    Background { background: bool },
}

/// What the relay tells in a `notifications` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// The request `req` was done.
    Ok {},
    /// A page of the feed, newest first; `next` is the `before` of the next (older) page,
    /// absent at the end. `unread` counts the whole feed's unread notifications.
    Page { notifications: Vec<Notification>, unread: u64, next: Option<u64> },
    /// A new notification (`req` 0), and the feed's unread count with it.
    New { notification: Notification, unread: u64 },
    /// Notifications were marked read (the answer to `mark_read`, or `req` 0 when another device
    /// did it): `id` alone, or every one up to it with `up_to`.
    Read { id: u64, up_to: bool, unread: u64 },
    /// The user's preferences (the answer to `prefs`, or `req` 0 after a change elsewhere).
    Prefs { prefs: NotifyPrefs },
}
