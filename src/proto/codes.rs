//! Stable error and close codes of protocol v1.
//!
//! One table, used by every transport: an `error` frame carries the code, and when the error is
//! fatal the connection is closed with it (QUIC application close code = the code itself;
//! WebSocket close code = 4000 + the code). `docs/protocol.md` lists the same table; a golden
//! test keeps the two in step.

use serde::{Deserialize, Serialize};

/// A protocol error code. The numeric values are part of the wire format and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $slug:literal, fatal = $fatal:literal, retry = $retry:literal; )*) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $name: ErrorCode = ErrorCode($value); )*

            /// Every defined code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// Short stable name, e.g. `token_expired`.
            pub fn slug(self) -> &'static str {
                match self.0 { $($value => $slug,)* _ => "unknown" }
            }

            /// The connection is closed after this error.
            pub fn is_fatal(self) -> bool {
                match self.0 { $($value => $fatal,)* _ => true }
            }

            /// Retrying (the request, or reconnecting after a fatal error) can succeed without
            /// changing anything on the client side.
            pub fn is_retryable(self) -> bool {
                match self.0 { $($value => $retry,)* _ => false }
            }
        }
    };
}

codes! {
    /// Unexpected server failure.
    INTERNAL = 100, "internal", fatal = false, retry = true;
    /// A frame could not be decoded in the connection's codec.
    BAD_FRAME = 101, "bad_frame", fatal = true, retry = false;
    /// A frame exceeded `limits.max_frame_bytes`.
    FRAME_TOO_LARGE = 102, "frame_too_large", fatal = true, retry = false;
    /// The first frame was not `hello`, or `hello` was sent twice.
    HELLO_REQUIRED = 103, "hello_required", fatal = true, retry = false;
    /// The protocol version in `hello` is not served here.
    UNSUPPORTED_VERSION = 104, "unsupported_version", fatal = true, retry = false;
    /// No valid `hello` within `limits.auth_timeout_ms`.
    AUTH_TIMEOUT = 105, "auth_timeout", fatal = true, retry = true;
    /// A frame arrived on a stream it does not belong to (QUIC).
    WRONG_STREAM = 106, "wrong_stream", fatal = true, retry = false;
    /// The history store could not commit or read; nothing was acknowledged. Retry later
    /// (a publish with the same id is never stored twice).
    STORE_UNAVAILABLE = 107, "store_unavailable", fatal = false, retry = true;
    /// Token malformed, bad signature, unknown key or algorithm, missing claim.
    TOKEN_INVALID = 110, "token_invalid", fatal = true, retry = false;
    /// Token `exp` has passed.
    TOKEN_EXPIRED = 111, "token_expired", fatal = true, retry = false;
    /// Token `nbf` is in the future.
    TOKEN_NOT_YET_VALID = 112, "token_not_yet_valid", fatal = true, retry = false;
    /// The user already holds `limits.max_connections_per_user` connections.
    TOO_MANY_CONNECTIONS = 113, "too_many_connections", fatal = true, retry = true;
    /// The token was revoked (server API `revoke`); reconnect only with a new token.
    TOKEN_REVOKED = 114, "token_revoked", fatal = true, retry = false;
    /// A compressed WebSocket message inflated past `limits.max_frame_bytes` (a deflate bomb).
    /// Its WebSocket close code is 1009, not 4115.
    MESSAGE_TOO_BIG = 115, "message_too_big", fatal = true, retry = false;
    /// More than `connections.per_ip_rate` connection attempts per second from this address.
    CONNECTION_RATE_LIMITED = 116, "connection_rate_limited", fatal = true, retry = true;
    /// `connections.per_ip_max` connections are already open from this address.
    TOO_MANY_FROM_ADDRESS = 117, "too_many_from_address", fatal = true, retry = true;
    /// The token does not grant this operation on this room.
    PERMISSION_DENIED = 120, "permission_denied", fatal = false, retry = false;
    /// The room name is empty, too long or has characters outside `[A-Za-z0-9_:.@=+-]`.
    BAD_ROOM = 121, "bad_room", fatal = false, retry = false;
    /// The connection already joined `limits.max_rooms_per_connection` rooms.
    TOO_MANY_ROOMS = 122, "too_many_rooms", fatal = false, retry = false;
    /// The room is already joined on this connection.
    ALREADY_JOINED = 123, "already_joined", fatal = false, retry = false;
    /// The room is not joined on this connection.
    NOT_JOINED = 124, "not_joined", fatal = false, retry = false;
    /// The payload exceeds `limits.max_payload_bytes` (a call `signal`: `calls.max_signal_bytes`).
    PAYLOAD_TOO_LARGE = 125, "payload_too_large", fatal = false, retry = false;
    /// Publish rate above `limits.publish_rate` (with `limits.publish_burst`); call frames
    /// above `calls.rate` (with `calls.burst`).
    RATE_LIMITED = 126, "rate_limited", fatal = false, retry = true;
    /// A field is out of range (empty message id, id too long, ...).
    BAD_REQUEST = 127, "bad_request", fatal = false, retry = false;
    /// No such media track in a room this connection joined (or it ended), or not its own.
    UNKNOWN_TRACK = 128, "unknown_track", fatal = false, retry = false;
    /// A media limit: tracks per connection, layers, bitrate, frame size, names.
    MEDIA_LIMIT = 129, "media_limit", fatal = false, retry = false;
    /// Media needs raw QUIC or WebTransport (unidirectional streams); not on WebSocket.
    MEDIA_UNSUPPORTED = 140, "media_unsupported", fatal = false, retry = false;
    /// The connection's outbox overflowed `limits.outbox_bytes`: the client read too slowly.
    SLOW_CONSUMER = 130, "slow_consumer", fatal = true, retry = true;
    /// The relay is draining (shutdown or restart); reconnect, possibly to another node.
    GOING_AWAY = 131, "going_away", fatal = true, retry = true;
    /// No frame or keep-alive for longer than the idle timeout.
    IDLE_TIMEOUT = 132, "idle_timeout", fatal = true, retry = true;
    /// The application's backend disconnected this user (server API `disconnect`); they may
    /// reconnect unless their tokens were revoked too.
    DISCONNECTED = 133, "disconnected", fatal = true, retry = true;
    /// Calls (docs/calls.md, "Errors"): no such call, or this user is neither its caller nor
    /// its callee.
    NOT_PARTICIPANT = 150, "not_participant", fatal = false, retry = false;
    /// The call has ended.
    CALL_ENDED = 151, "call_ended", fatal = false, retry = false;
    /// Only the caller can do this (`cancel`).
    ONLY_CALLER = 152, "only_caller", fatal = false, retry = false;
    /// Only the callee can do this (`answer`, `reject`).
    ONLY_CALLEE = 153, "only_callee", fatal = false, retry = false;
    /// `answer` from a device that is not ringing for this call.
    NOT_RINGING = 154, "not_ringing", fatal = false, retry = false;
    /// The call was already answered (by another device, or before this `cancel`/`reject`).
    ALREADY_ANSWERED = 155, "already_answered", fatal = false, retry = false;
    /// `rejoin` while this side is not away.
    NOT_RECONNECTING = 156, "not_reconnecting", fatal = false, retry = false;
    /// `answer` or `rejoin` at or after its deadline; the end follows.
    TIMED_OUT = 157, "timed_out", fatal = false, retry = false;
    /// A user cannot call themselves.
    SELF_CALL = 158, "self_call", fatal = false, retry = false;
    /// Caller and callee are in different tenants.
    CROSS_TENANT = 159, "cross_tenant", fatal = false, retry = false;
    /// `signal` while the call is not connected on this device (ringing, reconnecting, or another
    /// device of this user is in the call).
    NOT_CONNECTED = 160, "not_connected", fatal = false, retry = false;
    /// Group calls (docs/calls.md, "Group calls"): only the host can do this (invite, remove,
    /// mute, make_host, end).
    NOT_HOST = 161, "not_host", fatal = false, retry = false;
    /// The group call has `calls.group_max_participants` active participants already.
    CALL_FULL = 162, "call_full", fatal = false, retry = false;
    /// `invite` of a user already invited or in the call.
    ALREADY_INVITED = 163, "already_invited", fatal = false, retry = false;
    /// `decline` without a ringing invitation.
    NOT_INVITED = 164, "not_invited", fatal = false, retry = false;
    /// The action needs the user (or its target) in the call: joined or away.
    NOT_IN_CALL = 165, "not_in_call", fatal = false, retry = false;
    /// `join` by a participant the host removed (until invited again).
    REMOVED = 166, "removed", fatal = false, retry = false;
    /// The host cannot remove, mute or hand the role to themselves.
    SELF_TARGET = 167, "self_target", fatal = false, retry = false;
    /// Call quality (docs/calls.md, "Quality"): a `quality` report with a field that is not a
    /// finite number, is negative or is above its bound.
    BAD_REPORT = 168, "bad_report", fatal = false, retry = false;
    /// A `quality` report less than `calls.quality.min_interval_ms` after this participant's
    /// previous accepted one.
    REPORT_TOO_FREQUENT = 169, "report_too_frequent", fatal = false, retry = true;
    /// Sessions (docs/sessions.md, "Errors"): no such session in this tenant (never created,
    /// destroyed or expired).
    UNKNOWN_SESSION = 170, "unknown_session", fatal = false, retry = false;
    /// `create` with the id of a session that exists.
    SESSION_EXISTS = 171, "session_exists", fatal = false, retry = false;
    /// `patch` on a closed session.
    SESSION_CLOSED = 172, "session_closed", fatal = false, retry = false;
    /// The action needs this device joined to the session (`patch`, `cursor`, `leave`, owner
    /// actions).
    NOT_IN_SESSION = 173, "not_in_session", fatal = false, retry = false;
    /// `patch` by a viewer (the session's role or the token's `session_read` bound).
    READ_ONLY = 174, "read_only", fatal = false, retry = false;
    /// Only the owner can do this (`role`, `close`, `destroy`).
    NOT_OWNER = 175, "not_owner", fatal = false, retry = false;
    /// The patch is not an RFC 6902 JSON Patch (not a JSON array of operations, a bad pointer),
    /// or the document is not JSON.
    BAD_PATCH = 176, "bad_patch", fatal = false, retry = false;
    /// The patch does not apply: a path that does not exist, a failed `test` (compare-and-set
    /// lost). The message names the operation's index and path.
    PATCH_FAILED = 177, "patch_failed", fatal = false, retry = false;
    /// The document would exceed the session's size limit.
    DOCUMENT_TOO_LARGE = 178, "document_too_large", fatal = false, retry = false;
    /// `base` is above the session's version.
    BAD_VERSION = 179, "bad_version", fatal = false, retry = false;
    /// The document would not validate against the session's JSON Schema (a `create` whose
    /// document does not, or a `patch` whose result would not).
    SCHEMA_VIOLATION = 180, "schema_violation", fatal = false, retry = false;
    /// Yjs sessions (docs/sessions.md, "Yjs sessions"): a `yjs` message that is not a y-protocols
    /// sync or awareness message, or an update that does not decode or apply.
    BAD_YJS_MESSAGE = 181, "bad_yjs_message", fatal = false, retry = false;
    /// A `patch` to a `yjs` session, or a `yjs` message to a JSON session.
    WRONG_SESSION_KIND = 182, "wrong_session_kind", fatal = false, retry = false;
    /// Sessions in a Redis region (docs/sessions.md, "Sessions in a Redis region"): the node
    /// that held a session this connection had joined went away or gave the session up. The
    /// connection is closed; reconnect and join again with the version you have.
    SESSION_MOVED = 183, "session_moved", fatal = true, retry = true;
    /// Events (docs/events.md): a topic name or subscription pattern is empty, longer than 127
    /// bytes, has an empty segment or characters outside `[A-Za-z0-9_:@=+-]`, or a `>` that is
    /// not the last segment (`*` and `>` only in patterns).
    BAD_TOPIC = 185, "bad_topic", fatal = false, retry = false;
    /// The subscription's filter does not parse; the message says where and why.
    BAD_FILTER = 186, "bad_filter", fatal = false, retry = false;
    /// A subscription with this pattern is already made on this connection.
    ALREADY_SUBSCRIBED = 187, "already_subscribed", fatal = false, retry = false;
    /// No subscription with this pattern on this connection.
    NOT_SUBSCRIBED = 188, "not_subscribed", fatal = false, retry = false;
    /// The connection already holds `events.max_subscriptions` subscriptions.
    TOO_MANY_SUBSCRIPTIONS = 189, "too_many_subscriptions", fatal = false, retry = false;
    /// An event's tags: more than 16, a key outside 1-64 of `[A-Za-z0-9_.-]`, or a value above
    /// 256 bytes.
    BAD_TAGS = 190, "bad_tags", fatal = false, retry = false;
    /// Backend hooks (docs/events.md, "Backend hooks"): the operator's backend refused this
    /// connection (`connect` hook); the message is its reason.
    CONNECT_DENIED = 191, "connect_denied", fatal = true, retry = false;
    /// The backend refused this request (`subscribe` hook on `join`/`subscribe`, `publish`
    /// hook); the message is its reason.
    HOOK_DENIED = 192, "hook_denied", fatal = false, retry = false;
    /// The backend could not be asked (timeout, error, circuit breaker open, too many calls in
    /// flight) and the hook fails closed; retry later.
    HOOK_UNAVAILABLE = 193, "hook_unavailable", fatal = false, retry = true;
    /// As `hook_unavailable`, for the `connect` hook: the connection is closed; reconnect later.
    CONNECT_UNAVAILABLE = 194, "connect_unavailable", fatal = true, retry = true;
    /// Receipts (docs/receipts.md): a `read` or `status` for a room this user does not follow
    /// (never joined on any device, or left).
    NOT_FOLLOWING = 200, "not_following", fatal = false, retry = false;
    /// A read mark beyond the room's last message, or in an epoch that is not the room's
    /// current one (history was lost: take positions from the room again).
    BAD_MARK = 201, "bad_mark", fatal = false, retry = false;
    /// A `read` with no marks, more than `receipts.max_marks`, or the same room twice.
    TOO_MANY_MARKS = 202, "too_many_marks", fatal = false, retry = false;
    /// `publish_mentions` with more than `receipts.max_mentions` users, or a user id that is empty,
    /// longer than 256 bytes or has control characters.
    BAD_MENTIONS = 203, "bad_mentions", fatal = false, retry = false;
    /// Notifications (docs/notifications.md): `mark_read` of an id that is not in the feed
    /// (never there, or dropped as the feed grew past `notifications.max_feed`).
    UNKNOWN_NOTIFICATION = 204, "unknown_notification", fatal = false, retry = false;
    /// Preferences that cannot be kept: an unknown time zone, a time that is not `HH:MM`, a
    /// bad room name, more than `notifications.max_mutes` mutes or 32 skipped types.
    BAD_PREFS = 205, "bad_prefs", fatal = false, retry = false;
    /// `register_device` with a device id outside 1-128 bytes or a token outside 1-4096 bytes.
    BAD_DEVICE = 206, "bad_device", fatal = false, retry = false;
    /// The user already registered `notifications.max_devices` devices: unregister one first.
    TOO_MANY_DEVICES = 207, "too_many_devices", fatal = false, retry = false;
    /// `unregister_device` of a device this user has not registered.
    UNKNOWN_DEVICE = 208, "unknown_device", fatal = false, retry = false;
    /// Server API: a notification with a bad field (no user, more than 1000 users, an empty
    /// or long type, a title or body too long, an id outside 1-64 bytes).
    BAD_NOTIFICATION = 209, "bad_notification", fatal = false, retry = false;
    /// A `feed` page `limit` outside 1-100.
    BAD_PAGE = 210, "bad_page", fatal = false, retry = false;
    /// Server API: no dead letter with this id (replayed or deleted already).
    UNKNOWN_DEAD_LETTER = 211, "unknown_dead_letter", fatal = false, retry = false;
}

impl ErrorCode {
    /// WebSocket close code for a fatal error (RFC 6455 private range 4000-4999), except
    /// `message_too_big`, which closes with RFC 6455's own 1009.
    pub fn ws_close_code(self) -> u16 {
        match self {
            ErrorCode::MESSAGE_TOO_BIG => 1009,
            _ => 4000 + self.0,
        }
    }

    /// The code carried by a WebSocket close code, if it is one of ours.
    pub fn from_ws_close_code(code: u16) -> Option<ErrorCode> {
        match code {
            1009 => Some(ErrorCode::MESSAGE_TOO_BIG),
            _ => (4000..5000).contains(&code).then(|| ErrorCode(code - 4000)),
        }
    }
}

/// Why a connection ends: normally (client left, relay stopped without error) or with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    Normal,
    Error(ErrorCode),
}

impl CloseReason {
    /// QUIC application close code: 0 for a normal close, else the error code.
    pub fn quic_code(self) -> u32 {
        match self {
            CloseReason::Normal => 0,
            CloseReason::Error(code) => u32::from(code.0),
        }
    }

    /// WebSocket close code: 1000 for a normal close, else 4000 + the error code.
    pub fn ws_code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::Error(code) => code.ws_close_code(),
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::Error(code) => code.slug(),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.0, self.slug())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_named() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.0), "duplicate code {}", code.0);
            assert_ne!(code.slug(), "unknown");
        }
        assert_eq!(ErrorCode(999).slug(), "unknown");
        assert!(ErrorCode(999).is_fatal());
    }

    #[test]
    fn ws_close_codes_round_trip() {
        for code in ErrorCode::ALL {
            let ws = code.ws_close_code();
            assert!((4000..5000).contains(&ws) || (*code == ErrorCode::MESSAGE_TOO_BIG && ws == 1009));
            assert_eq!(ErrorCode::from_ws_close_code(ws), Some(*code));
        }
        assert_eq!(ErrorCode::from_ws_close_code(1000), None);
    }
}
