//! The frames of protocol v1, one enum per direction.
//!
//! Both codecs use serde's externally tagged form: postcard writes the variant index as a varint
//! followed by the fields in order; JSON writes `{"<variant>": {<fields>}}`. New variants are
//! only ever appended, so the indices below are stable. See `docs/protocol.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::call::{CallAction, CallEvent};
use super::codes::ErrorCode;
use super::collab::{SessionAction, SessionEvent};
use super::media::{LayerInfo, SpeakerLevel, TrackInfo, TrackKind};
use super::notify::{NotifyAction, NotifyEvent};
use super::payload::Payload;
use super::presence::{PresenceEntry, Status};
use super::receipts::{ReceiptAction, ReceiptEvent};
use crate::call::history::CallRecord;

/// The protocol version this relay speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// A room's log position. Offsets start at 1 and are contiguous within an epoch; the epoch
/// changes whenever the room's history was lost, so a client can tell a gap from a restart.
/// Epochs are below 2^53 so that JSON clients in JavaScript read them exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

/// Limits the relay enforces on this connection, announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireLimits {
    pub max_frame_bytes: u32,
    pub max_payload_bytes: u32,
    pub max_rooms: u32,
    pub publish_rate: u32,
    pub publish_burst: u32,
    /// The client should send `ping` (or any frame) at least this often.
    pub ping_interval_ms: u32,
    /// The relay closes a connection silent for this long.
    pub idle_timeout_ms: u32,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame on a connection (on QUIC: on the control stream). Its encoding fixes the codec.
    Hello { version: u16, token: String, client: String },
    /// Join a room. On QUIC it is the first frame of a new bidirectional stream that then carries
    /// everything about this room. `since` is the last position the client saw, if any.
    Join { req: u64, room: String, since: Option<Position> },
    /// Leave a room.
    Leave { req: u64, room: String },
    /// Publish to a room. `id` is the client's message id (1-64 bytes), echoed in the ack and in
    /// the delivered message.
    Publish { req: u64, room: String, id: String, data: Payload },
    /// Liveness and round-trip probe; answered by `pong`.
    Ping { req: u64 },
    /// Replace the connection's token before it expires (same user and tenant).
    Refresh { req: u64, token: String },
    /// Set the user's status (for all their devices) and custom text. Counts as activity.
    /// May be a datagram; no answer (members see the resulting `presence`).
    SetStatus { status: Status, custom: Option<String> },
    /// The user is active on this device (resets idle → away). May be a datagram.
    Activity {},
    /// This device started (`typing: true`, repeat every few seconds while typing) or stopped
    /// typing in a joined room. May be a datagram.
    Typing { room: String, typing: bool },
    /// Ask for a room's presence snapshot again (after a `presence_refresh` disagreed with the
    /// client's view). Answered by `presence_snapshot` with the same `req`.
    PresenceSync { req: u64, room: String },
    /// The user's privacy setting, kept by the relay across connections and restarts.
    Privacy { hide_presence: bool, hide_typing: bool },
    /// A page of a room's history: up to `limit` messages before offset `before` (the newest
    /// when `before` is absent), answered by `history`. Needs permission to join the room.
    History { req: u64, room: String, before: Option<u64>, limit: u32 },
    /// The rooms this user follows (joined and not left, on any device) with the last position
    /// the relay knows they have, answered by `rooms`. For offline replay.
    Rooms { req: u64 },
    /// "I have every message of `room` up to `position`": moves the user's cursor (no answer).
    Cursor { room: String, position: Position },
    /// Publish a media track in a joined room (a call): answered by `track_published` with the
    /// track's id, which the publisher's group streams then carry. Needs the `media` capability.
    TrackPublish { req: u64, room: String, name: String, kind: TrackKind, codec: String, layers: Vec<LayerInfo> },
    /// Stop publishing a track; members get it in `tracks.ended`. Answered by `track_ok`.
    TrackUnpublish { req: u64, track: u64 },
    /// Receive a track of a joined room (or change the request: the highest layer wanted, or
    /// pause it). Answered by `track_ok`; groups follow on unidirectional streams.
    TrackSubscribe { req: u64, track: u64, max_layer: u8, paused: bool },
    /// Stop receiving a track. Answered by `track_ok`.
    TrackUnsubscribe { req: u64, track: u64 },
    /// Mark an own track muted or not (members see it in `tracks`). Answered by `track_ok`.
    TrackMute { req: u64, track: u64, muted: bool },
    /// The STUN and TURN servers this user may use for WebRTC, with fresh TURN credentials:
    /// answered by `ice_servers`.
    IceServers { req: u64 },
    /// A 1:1 call action (docs/calls.md): `call` is the call's id (empty for `initiate`).
    /// Answered by `call` with event `ok` (for `initiate`, carrying the new id) or `error`.
    Call { req: u64, call: String, action: CallAction },
    /// A page of this user's own call history (docs/calls.md, "History"), newest first:
    /// at most `limit` (1-50) calls that started before `before` (a page's `next`, or a time
    /// in unix ms; the newest when absent). Answered by `call_history`.
    CallHistory { req: u64, before: Option<String>, limit: u32 },
    /// A collaborative session action (docs/sessions.md): `session` is the session's id (room
    /// name rules). Answered by `session` with the action's event, or `error`.
    Session { req: u64, session: String, action: SessionAction },
    /// Receive the events of the topics `pattern` matches (docs/events.md): a topic, or one with
    /// `*` (one segment) or a final `>` (one or more segments). `filter`, in the filter
    /// language, selects events by their tags. `since` resumes an exact persistent topic after
    /// that position. Answered by `subscribed`; events follow as `event` frames.
    Subscribe { req: u64, pattern: String, filter: Option<String>, since: Option<Position> },
    /// Stop a subscription made with this exact `pattern`. Answered by `unsubscribed`.
    Unsubscribe { req: u64, pattern: String },
    /// Read marks, unread counts and receipts (docs/receipts.md). Answered by `receipts`.
    Receipts { req: u64, action: ReceiptAction },
    /// A `publish` that names the users it mentions (user ids of the room's members, at most
    /// `receipts.max_mentions`), counted apart in their unread counts (docs/receipts.md). The
    /// relay reads `mentions`, never `data`; members receive an ordinary `message`. Answered by
    /// `ack` like `publish`.
    PublishMentions { req: u64, room: String, id: String, data: Payload, mentions: Vec<String> },
    /// In-app notifications, their preferences and push devices (docs/notifications.md).
    /// Answered by `notifications`.
    Notifications { req: u64, action: NotifyAction },
    /// A page of a room's history forward: up to `limit` messages after offset `after`, oldest
    /// first, answered by `history`. What a client missed since the last message it holds, in
    /// one request; the Rust client sends it on a stream of its own after a network change, so
    /// the room's stream, still waiting for QUIC to resend what the outage lost, does not hold
    /// it back. Needs permission to join the room.
    HistoryAfter { req: u64, room: String, after: u64, limit: u32 },
}

impl ClientFrame {
    /// The request id, for the frames that have one.
    pub fn req(&self) -> Option<u64> {
        match self {
            ClientFrame::Join { req, .. }
            | ClientFrame::Leave { req, .. }
            | ClientFrame::Publish { req, .. }
            | ClientFrame::Ping { req }
            | ClientFrame::Refresh { req, .. }
            | ClientFrame::PresenceSync { req, .. }
            | ClientFrame::History { req, .. }
            | ClientFrame::HistoryAfter { req, .. }
            | ClientFrame::Rooms { req }
            | ClientFrame::TrackPublish { req, .. }
            | ClientFrame::TrackUnpublish { req, .. }
            | ClientFrame::TrackSubscribe { req, .. }
            | ClientFrame::TrackUnsubscribe { req, .. }
            | ClientFrame::TrackMute { req, .. }
            | ClientFrame::IceServers { req }
            | ClientFrame::Call { req, .. }
            | ClientFrame::CallHistory { req, .. }
            | ClientFrame::Session { req, .. }
            | ClientFrame::Subscribe { req, .. }
            | ClientFrame::Unsubscribe { req, .. }
            | ClientFrame::Receipts { req, .. }
            | ClientFrame::PublishMentions { req, .. }
            | ClientFrame::Notifications { req, .. } => Some(*req),
            ClientFrame::Hello { .. }
            | ClientFrame::SetStatus { .. }
            | ClientFrame::Activity {}
            | ClientFrame::Typing { .. }
            | ClientFrame::Privacy { .. }
            | ClientFrame::Cursor { .. } => None,
        }
    }
}

/// Frames the relay sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to a valid `hello`.
    Welcome { version: u16, session: String, user: String, server_time: u64, limits: WireLimits },
    /// The room is joined; `position` is its current top (the last offset published, 0 if none).
    /// `recovered` tells whether nothing was missed since the client's `since` position.
    Joined { req: u64, room: String, position: Position, recovered: bool },
    /// The room is left.
    Left { req: u64, room: String },
    /// The publish with client id `id` is stored at `position`.
    Ack { req: u64, room: String, id: String, position: Position },
    /// A message published to a joined room.
    Message { room: String, position: Position, from: String, time: u64, id: String, data: Payload },
    /// Answer to `ping`.
    Pong { req: u64, server_time: u64 },
    /// A request failed (`req` names it; 0 when the error is about the connection). If the code
    /// is fatal the relay closes the connection with the same code right after.
    Error { req: u64, code: ErrorCode, message: String },
    /// The relay is going away: reconnect after `reconnect_after_ms`, possibly to another node.
    GoAway { code: ErrorCode, reason: String, reconnect_after_ms: u32 },
    /// The token was replaced; the connection now expires at `expires_at` (unix seconds).
    Refreshed { req: u64, expires_at: u64 },
    /// One member's presence in a joined room changed (usually a datagram). Apply it only when
    /// `entry.version` is higher than the one held for that user.
    Presence { room: String, entry: PresenceEntry },
    /// Every present member of a room, sent reliably after `joined` (`req` 0) and in answer
    /// to `presence_sync`. It replaces the client's view of the room.
    PresenceSnapshot { req: u64, room: String, users: Vec<PresenceEntry> },
    /// Periodic compact check (usually a datagram): how many members are present and the
    /// digest of their entries. A client whose view differs sends `presence_sync`.
    PresenceRefresh { room: String, count: u32, digest: u64 },
    /// Who is typing in a room, as a whole (usually a datagram): the first typists, how many
    /// others type, the view's version, and how long to show it without a newer one.
    Typing { room: String, users: Vec<String>, others: u32, version: u64, ttl_ms: u32 },
    /// A page of history, oldest first. `position` is the room's top; `first` the lowest offset
    /// still retained. An empty page with `first` above the requested range means history does
    /// not reach back that far.
    History { req: u64, room: String, position: Position, first: u64, messages: Vec<HistoryEntry> },
    /// The user's followed rooms, most recently active first.
    Rooms { req: u64, rooms: Vec<RoomCursor> },
    /// A track is published; `track` is its id.
    TrackPublished { req: u64, room: String, track: u64 },
    /// A track request (unpublish, subscribe, unsubscribe, mute) was done.
    TrackOk { req: u64, track: u64 },
    /// A room's tracks: every track after `joined` (following the presence snapshot), then the
    /// tracks that were published or changed (`tracks`) and the ids of those that ended.
    Tracks { room: String, tracks: Vec<TrackInfo>, ended: Vec<u64> },
    /// The subscriber now receives this layer of a track (from the next group on).
    Layer { track: u64, layer: u8 },
    /// To a publisher: start a new group with a keyframe on this layer soon.
    KeyframeRequest { track: u64, layer: u8 },
    /// To a publisher: the layers of a track anybody receives (bit n = layer n); pause the rest.
    LayersWanted { track: u64, layers: u8 },
    /// Who speaks in a room, loudest first, and the dominant speaker (with hysteresis).
    Speakers { room: String, speakers: Vec<SpeakerLevel>, dominant: Option<String> },
    /// Answer to `ice_servers`: entries shaped like WebRTC's `RTCIceServer` (STUN ones without
    /// credentials, TURN ones with), and when the TURN credentials expire (unix seconds).
    IceServers { req: u64, servers: Vec<IceServer>, expires_at: u64 },
    /// About a 1:1 call: the answer to a `call` request (`req`, event `ok`), or an event of the
    /// call (`req` 0): its state, ringing, answered elsewhere, the other side's signaling.
    Call { req: u64, call: String, event: CallEvent },
    /// Answer to `call_history`: the calls, newest first, each the history entry the server
    /// API returns; `next` is the `before` of the next (older) page, absent at the end.
    CallHistory { req: u64, calls: Vec<CallRecord>, next: Option<String> },
    /// About a collaborative session: the answer to a `session` request (`req`), or an event of
    /// the session (`req` 0): patches, members, lifecycle, cursors.
    Session { req: u64, session: String, event: SessionEvent },
    /// The subscription is made. For an exact persistent topic `position` is its top (the last
    /// event stored, offset 0 if none) and `recovered` tells whether every event after `since`
    /// follows; otherwise `position` is absent and `recovered` is true only without `since`.
    Subscribed { req: u64, pattern: String, position: Option<Position>, recovered: bool },
    /// The subscription with this pattern ended.
    Unsubscribed { req: u64, pattern: String },
    /// An event of a subscribed topic. `position` is its place in a persistent topic's log
    /// (absent for an ephemeral topic); `id` the publisher's event id; `tags` what filters see.
    Event {
        topic: String,
        position: Option<Position>,
        time: u64,
        id: String,
        tags: BTreeMap<String, String>,
        data: Payload,
    },
    /// About read marks, unread counts and receipts (docs/receipts.md): the answer to a
    /// `receipts` request (`req`), or an update (`req` 0).
    Receipts { req: u64, event: ReceiptEvent },
    /// Several members' presence changes in a joined room, collected over the relay's
    /// `presence.batch_ms` (usually a datagram). Apply each entry as a `presence` frame's.
    PresenceBatch { room: String, entries: Vec<PresenceEntry> },
    /// About in-app notifications (docs/notifications.md): the answer to a `notifications`
    /// request (`req`), or an update (`req` 0) to the user's connections that asked for the feed.
    Notifications { req: u64, event: NotifyEvent },
}

/// One ICE server entry, the shape of WebRTC's `RTCIceServer`: `username` and `credential` are
/// set for TURN URLs (the TURN REST form, docs/protocol.md) and absent (`null`) for STUN ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

/// One message in a `history` page (its room and epoch are the page's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub offset: u64,
    pub from: String,
    pub time: u64,
    pub id: String,
    pub data: Payload,
}

/// A followed room and the last position the user is known to have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomCursor {
    pub room: String,
    pub position: Position,
}

impl ServerFrame {
    pub fn error(req: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error { req, code, message: message.into() }
    }

    /// The request this frame answers: `None` for frames that answer nothing, and 0 inside
    /// `Some` for an `error` about the connection or a snapshot that follows `joined`.
    pub fn req(&self) -> Option<u64> {
        match self {
            ServerFrame::Joined { req, .. }
            | ServerFrame::Left { req, .. }
            | ServerFrame::Ack { req, .. }
            | ServerFrame::Pong { req, .. }
            | ServerFrame::Refreshed { req, .. }
            | ServerFrame::PresenceSnapshot { req, .. }
            | ServerFrame::History { req, .. }
            | ServerFrame::Rooms { req, .. }
            | ServerFrame::TrackPublished { req, .. }
            | ServerFrame::TrackOk { req, .. }
            | ServerFrame::IceServers { req, .. }
            | ServerFrame::Call { req, .. }
            | ServerFrame::CallHistory { req, .. }
            | ServerFrame::Session { req, .. }
            | ServerFrame::Subscribed { req, .. }
            | ServerFrame::Unsubscribed { req, .. }
            | ServerFrame::Receipts { req, .. }
            | ServerFrame::Notifications { req, .. }
            | ServerFrame::Error { req, .. } => Some(*req),
            _ => None,
        }
    }
}
